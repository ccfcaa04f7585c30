"""A backup program of nina.host run as the host runs it, for tests/test_state_backup.py and
tests/test_db_backup.py: its launcher (this Python, the source tree), a stand-in for `systemctl`
(it logs its arguments to `calls`; `is-active` answers yes while the file `active` exists), node
exporter's textfile directory `textfile` (NINA_TEXTFILE_DIR), and the program's own paths in `env`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from promtext import Samples, samples

from nina import facts, render


class BackupProgram:
    def __init__(self, tmp: Path, module: str, program: str, **paths: str) -> None:
        self.calls = tmp / "systemctl.log"
        self.active = tmp / "active"
        fake = tmp / "systemctl"
        fake.write_text(f'#!/bin/sh\necho "$*" >> {self.calls}\n[ -e {self.active} ] && exit 0\nexit 3\n')
        fake.chmod(0o755)
        self.textfile = tmp / "textfile"
        self.textfile.mkdir(mode=0o755)
        self.launcher = tmp / program
        self.launcher.write_text(render.launcher(module, render.SOURCE_ROOT).replace(facts.HOST_PYTHON, sys.executable, 1))
        self.launcher.chmod(0o755)
        self.env = {"PATH": os.environ["PATH"], "NINA_SYSTEMCTL": str(fake), "NINA_TEXTFILE_DIR": str(self.textfile), **paths}

    def run(self, *args: str, now: str, timeout: int, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.launcher), *args], env={**self.env, "NINA_NOW": now, **env}, capture_output=True, text=True, timeout=timeout
        )

    def metrics(self, what: str) -> Samples:
        """The freshness metrics the last backup run of `what` left (nina.host.backups)."""
        return samples((self.textfile / facts.BACKUP_METRICS_FILE.format(what=what)).read_text())
