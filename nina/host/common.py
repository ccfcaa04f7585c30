"""Small helpers several host programs share: a file's SHA-256, the UTC time stamp that names a
backup, the version of a package dpkg has installed, and text someone else wrote made fit for a
terminal. A module of nina (nina.host): standard library only."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time


def sha256_file(path: str) -> str:
    """The hex SHA-256 of the file at `path`, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def utc_stamp() -> str:
    """The UTC time as YYYYmmddTHHMMSSZ (a backup's name), or $NINA_NOW when set (tests)."""
    return os.environ.get("NINA_NOW") or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def installed_version(package: str, dpkg_query: str = "dpkg-query") -> str | None:
    """The version of `package` dpkg has installed, or None when it is not installed (the
    install programs' and nina-gpu-driver's one question to dpkg)."""
    proc = subprocess.run([dpkg_query, "-W", "-f=${Status}\t${Version}", package], capture_output=True, text=True, timeout=60, check=False)
    status, _, version = proc.stdout.strip().partition("\t")
    return version if proc.returncode == 0 and status == "install ok installed" and version else None


def printable(value: str, limit: int | None = None) -> str:
    """Text that someone else wrote (a node's report, a server's reply), fit for an operator's
    terminal and log: each non-printable character (control, escape, format, separator) written as
    its Python escape, so it is seen and never acted on, and at most `limit` characters, then
    "...". Not a refusal: the operator needs to see what was sent."""
    out = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in value)
    return out if limit is None or len(out) <= limit else out[:limit] + "..."
