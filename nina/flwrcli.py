"""How nina drives the flwr CLI (flwr 1.26+, pinned 1.31): the one place that knows its connection model.

flwr 1.26+ reads SuperLink connections from `$FLWR_HOME/config.toml`, `[superlink.NAME]` with
`address` and `root-certificates` (or `insecure = true`), and no longer from the app's
`pyproject.toml` (a `[tool.flwr.federations]` table there is migrated into config.toml and
commented out, so the apps nina runs carry none). The rehearsal (nina.rehearse) and the
deployment validation (nina.validate) both run the validation app through these functions.

Pure: never imports pulumi.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

CONFIG_FILE = "config.toml"  # facts.FLWR_CONFIG_FILE


def connection(name: str, address: str, root_certificates: str | None) -> str:
    """A flwr `config.toml` whose default SuperLink connection `name` is `address` (TLS verified
    against the CA file `root_certificates`; None: `insecure = true`)."""
    body = f"address = {json.dumps(address)}\n"
    body += "insecure = true\n" if root_certificates is None else f"root-certificates = {json.dumps(root_certificates)}\n"
    return f"[superlink]\ndefault = {json.dumps(name)}\n\n[superlink.{name}]\n{body}"


def write_connection(flwr_home: Path, name: str, address: str, root_certificates: str | None) -> Path:
    """Write `connection(...)` as `flwr_home`/config.toml (the directory private); returns its path."""
    flwr_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(flwr_home, 0o700)
    path = flwr_home / CONFIG_FILE
    path.write_text(connection(name, address, root_certificates))
    return path


def app_copy(src: Path, dst: Path) -> Path:
    """A copy of the app at `src` in `dst` (replaced): flwr builds the FAB from the copy."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    return dst


def run_command(flwr: str | Path, app: Path, name: str, run_config: str) -> list[str]:
    """`flwr run` of the app on SuperLink connection `name`, streaming the ServerApp's log until it ends."""
    return [str(flwr), "run", str(app), name, "--run-config", run_config, "--stream"]


def env(flwr_home: Path, base: dict[str, str]) -> dict[str, str]:
    """The environment of a flwr CLI call: `base` with flwr's config and state under `flwr_home`, no
    telemetry and no update check (flwr 1.31 posts one to api.flower.ai from every CLI call without
    --format json and from every SuperLink, SuperNode and SuperExec start)."""
    return {
        **base,
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "NO_COLOR": "1",
        "TERM": "dumb",
    }


def executable() -> Path | None:
    """The flwr CLI of the venv nina runs from, or None."""
    path = Path(sys.executable).parent / "flwr"
    return path if path.exists() else None
