"""Small helpers several host programs share: a file's SHA-256 and the UTC time stamp that names a
backup. A module of nina (nina.host): standard library only."""

from __future__ import annotations

import hashlib
import os
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
