"""A pinned release downloaded and checked against its configured SHA-256, for the install
programs of nina.host (nina-keycloak-install's zip, nina-grafana-install's .deb).

`download(url, dir_fd, expected, setting, ...)` first removes the `.download-*<suffix>` files
runs killed mid-download left (the caller holds an exclusive lock on the directory), then writes
the body into a new root-only temporary file in the directory `dir_fd`, hashing it while it is
written, and refuses it (the file removed) when it is larger than `max_bytes`, takes longer than
DEADLINE, or its digest is not `expected`: the refusal names the config key (`setting`) the
digest came from. A module of nina (nina.host): standard library only.

Also what both install programs share around it: their command line (`release_parser`,
`release_pin`: --version, --sha256, --url, checked) and the record each writes last, once an
install is done (`read_record`, `write_record`), that makes the next run a no-op.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request

from nina.host import common
from nina.host.failure import Failure

TIMEOUT = 60  # seconds for each network read
# Seconds for the whole body: a server that sends a byte a minute never trips TIMEOUT. Below the
# install units' TimeoutStartSec (30 min), so the run ends in its own one line, not a kill.
DEADLINE = 25 * 60
REASON_CHARS = 200  # of what the server said, in the refusal
SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _printable(text: str) -> str:
    """What a server sent (a status line, a reason), as one printable line: control characters
    escaped (no new log line, no terminal escape), at most REASON_CHARS."""
    return common.printable(text.strip(), REASON_CHARS)


def download(url: str, dir_fd: int, expected: str, setting: str, *, suffix: str, max_bytes: int) -> str:
    """The body at `url` in a new 0600 file `.download-<pid><suffix>` in `dir_fd` (its name is
    returned), refused (exit code 2) unless its SHA-256 is `expected`; `setting` names the config
    key that holds `expected` (in the refusal)."""
    name = f".download-{os.getpid()}{suffix}"
    # What earlier runs killed mid-download left (the callers hold a lock on the directory, so
    # none of these is being written now), this run's own name included.
    for leftover in os.listdir(dir_fd):
        if leftover.startswith(".download-") and leftover.endswith(suffix):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover, dir_fd=dir_fd)
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    digest, size = hashlib.sha256(), 0
    try:
        with open(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            deadline = time.monotonic() + DEADLINE
            # read1: what one read of the socket gives (read(n) waits for all n bytes).
            for chunk in iter(lambda: response.read1(1 << 20), b""):
                if time.monotonic() > deadline:
                    raise Failure(f"{url} took longer than {DEADLINE} seconds; refusing it")
                size += len(chunk)
                if size > max_bytes:
                    raise Failure(f"{url} is larger than {max_bytes} bytes; refusing it")
                digest.update(chunk)
                out.write(chunk)
    # http.client.HTTPException (a body cut off inside a chunk, a reply that is not HTTP) is no
    # OSError: without it here a hostile or broken server is a traceback, not one line.
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        os.unlink(name, dir_fd=dir_fd)
        reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", None) or exc
        raise Failure(f"cannot download {url}: {_printable(str(reason))}") from None
    except BaseException:
        os.unlink(name, dir_fd=dir_fd)
        raise
    got = digest.hexdigest()
    if got != expected:
        os.unlink(name, dir_fd=dir_fd)
        raise Failure(
            f"refusing {url}: its SHA-256 is {got}, not {setting} {expected} (a wrong digest in the config, or not the release it should be)",
            2,
        )
    return name


def release_parser(
    prog: str, description: str, *, version_example: str, setting: str, artifact: str, default_url: str
) -> argparse.ArgumentParser:
    """The install programs' common arguments: --version, --sha256 (of `artifact`, from the
    config key `setting`.sha256) and --url; the caller adds its own."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", required=True, help=f"the release, e.g. {version_example} ({setting}.version)")
    parser.add_argument("--sha256", required=True, help=f"the {artifact}'s SHA-256 ({setting}.sha256)")
    parser.add_argument("--url", help=f"where the {artifact} is (default: the release on {default_url})")
    return parser


def release_pin(version: str, sha256: str, version_re: re.Pattern[str], example: str) -> str:
    """The digest, lower case, once --version and --sha256 are well formed (else Failure, code 2)."""
    if not version_re.fullmatch(version):
        raise Failure(f"--version {version!r} is not a release like {example}", 2)
    digest = sha256.lower()
    if not SHA256_RE.fullmatch(digest):
        raise Failure(f"--sha256 {sha256!r} is not 64 hex digits", 2)
    return digest


def read_record(path: str) -> dict[str, str] | None:
    """An install's record (a JSON object), or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_record(name: str, data: dict[str, str], *, dir_fd: int, mode: int) -> None:
    """`data` as the record `name` in the directory `dir_fd`, with `mode`: written beside it and
    renamed into place (never through a link), so a killed run leaves no half record."""
    tmp = f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    with open(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True)
        fh.write("\n")
        os.fchmod(fh.fileno(), mode)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
