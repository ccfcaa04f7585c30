"""How nina drives the flwr CLI (flwr 1.25): the one place that knows its connection model.

flwr 1.25 reads a connection from the app's `pyproject.toml`, `[tool.flwr.federations.NAME]`
with `address` and `root-certificates` (or `insecure = true`), and keeps its own state under
`FLWR_HOME`. The rehearsal (nina.rehearse) and the deployment validation (nina.validate) both
run the validation app through these functions; flwr 1.26 moves connections to
`~/.flwr/config.toml`, so an upgrade adapts this module.

Pure: never imports pulumi.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def federation(pyproject: str, name: str, address: str, root_certificates: str | None) -> str:
    """`pyproject` with federation `name` pointing at `address` (TLS verified against the CA file
    `root_certificates`; None: `insecure = true`), replacing any federation of that name."""
    header = f"[tool.flwr.federations.{name}]"
    body = f"address = {json.dumps(address)}\n"
    body += "insecure = true\n" if root_certificates is None else f"root-certificates = {json.dumps(root_certificates)}\n"
    if header in pyproject:
        head, _, rest = pyproject.partition(header)
        nxt = rest.find("\n[")
        rest = rest[nxt + 1 :] if nxt >= 0 else ""
        return f"{head}{header}\n{body}\n{rest}"
    return pyproject.rstrip("\n") + f"\n\n{header}\n{body}"


def app_copy(src: Path, dst: Path, name: str, address: str, root_certificates: str | None) -> Path:
    """A copy of the app at `src` in `dst` (replaced) whose pyproject names federation `name`."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    pyproject = dst / "pyproject.toml"
    pyproject.write_text(federation(pyproject.read_text(), name, address, root_certificates))
    return dst


def run_command(flwr: str | Path, app: Path, name: str, run_config: str) -> list[str]:
    """`flwr run` of the app on federation `name`, streaming the ServerApp's log until it ends."""
    return [str(flwr), "run", str(app), name, "--run-config", run_config, "--stream"]


def env(flwr_home: Path, base: dict[str, str]) -> dict[str, str]:
    """The environment of a flwr CLI call: `base` with flwr's state under `flwr_home`, no telemetry."""
    return {**base, "FLWR_HOME": str(flwr_home), "FLWR_TELEMETRY_ENABLED": "0", "NO_COLOR": "1", "TERM": "dumb"}


def executable() -> Path | None:
    """The flwr CLI of the venv nina runs from, or None."""
    path = Path(sys.executable).parent / "flwr"
    return path if path.exists() else None
