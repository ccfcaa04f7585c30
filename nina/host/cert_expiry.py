"""nina-cert-expiry: when the certificates nina put on this host expire, for node exporter's textfile collector.

  nina-cert-expiry [--cert GLOB ...] [--allow DIR ...] [--textfile-dir DIR] [--stdout]

Reads every certificate that facts.CERTIFICATE_PATHS names (globs: a host has those of its roles;
what matches nothing is left out) and writes <textfile dir>/facts.CERT_EXPIRY_FILE atomically
(0644), or prints it with --stdout:

  nina_certificate_expiry_timestamp_seconds{path,subject}   notAfter of the file's (first) certificate, Unix time
  nina_certificate_read_errors{path}                        1 if the file could not be read as a certificate, else 0

One series of each per file, sorted by path. A file is read only if its path, links resolved, lies
under one of facts.CERTIFICATE_DIRS (certbot's live/<name>/fullchain.pem links into its archive/,
which is one of them), every directory on the way is root's and writable by root only
(nina.host.trust: a service account cannot swap what root reads), and it is a regular file of at
most 1 MiB; it is opened without following links. Anything else is a read error (one line on
stderr naming the path and why), never read.

The certificate is parsed by `openssl x509 -noout -enddate -subject` (openssl is on every Ubuntu
host; a parser of DER written here would be more code to trust than the one every TLS service on
the host already uses), with the bytes on its stdin: openssl opens no path of its own. Subjects are
in RFC 2253 form, dates in ISO 8601 (OpenSSL 3's -dateopt).

Exit codes: 0 written (read errors are in the metrics, and on stderr); 1 the metrics file could
not be written; 2 bad arguments. A module of nina (nina.host): standard library and nina.facts only.
"""

from __future__ import annotations

import argparse
import calendar
import glob
import os
import stat
import subprocess
import sys
import time

from nina import facts
from nina.host import metrics, trust
from nina.host.failure import sayer

PROG = "nina-cert-expiry"
MAX_BYTES = 1 << 20
OPENSSL_TIMEOUT = 20

say = sayer(PROG)


class CertError(Exception):
    """Why a certificate file was not read, in one line."""


def _inside(path: str, dirs: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def read_file(path: str, allowed: list[str]) -> bytes:
    """The file's bytes, if nina may read it (see the module's docstring); CertError otherwise."""
    real = os.path.realpath(path)
    if not _inside(real, allowed):
        target = f" (it leads to {real})" if real != os.path.abspath(path) else ""
        raise CertError(f"lies outside the certificate directories{target}: not read")
    why = trust.problem(real, parents_only=True)
    if why:
        raise CertError(f"not read: {why}")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise CertError(f"cannot be opened ({exc.strerror})") from None
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise CertError("is not a regular file: not read")
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise CertError(f"is larger than {MAX_BYTES} bytes: not a certificate")
    return data


def parse(data: bytes, openssl: str) -> tuple[int, str]:
    """(notAfter as Unix time, subject in RFC 2253 form) of the first PEM certificate in `data`."""
    argv = [openssl, "x509", "-noout", "-enddate", "-subject", "-nameopt", "RFC2253", "-dateopt", "iso_8601"]
    try:
        proc = subprocess.run(argv, input=data, capture_output=True, timeout=OPENSSL_TIMEOUT, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CertError(f"cannot run {openssl}: {exc}") from None
    out = proc.stdout.decode("utf-8", "replace")
    fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    if proc.returncode != 0 or "notAfter" not in fields:
        first = next((line for line in proc.stderr.decode("utf-8", "replace").splitlines() if line.strip()), f"exit code {proc.returncode}")
        raise CertError(f"is not a PEM certificate (openssl: {first.strip()})")
    try:
        not_after = calendar.timegm(time.strptime(fields["notAfter"].strip(), "%Y-%m-%d %H:%M:%SZ"))
    except ValueError:
        raise CertError(f"has a notAfter openssl printed as {fields['notAfter'].strip()!r}, which is not ISO 8601") from None
    return not_after, fields.get("subject", "").strip()


def expand(patterns: list[str]) -> list[str]:
    """The files the globs name (sorted, each once)."""
    return sorted({p for pattern in patterns for p in glob.glob(pattern)})


def families(patterns: list[str], allowed: list[str], openssl: str) -> tuple[list[metrics.Family], list[str]]:
    expiry = metrics.Family(
        "nina_certificate_expiry_timestamp_seconds", "gauge", "notAfter of the certificate in the file (its first), Unix time"
    )
    errors = metrics.Family(
        "nina_certificate_read_errors", "gauge", "1 if the file could not be read as a certificate (see the journal), else 0"
    )
    problems = []
    real_allowed = [os.path.realpath(d) for d in allowed]
    for path in expand(patterns):
        try:
            not_after, subject = parse(read_file(path, real_allowed), openssl)
        except CertError as exc:
            errors.add(1, path=path)
            problems.append(f"{path} {exc}")
            continue
        expiry.add(not_after, path=path, subject=subject)
        errors.add(0, path=path)
    return [expiry, errors], problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Certificate expiry as node exporter textfile metrics.")
    parser.add_argument("--cert", action="append", help="a certificate file or glob (repeatable; default: facts.CERTIFICATE_PATHS)")
    parser.add_argument(
        "--allow", action="append", help="a directory certificates may lie in (repeatable; default: facts.CERTIFICATE_DIRS)"
    )
    parser.add_argument("--textfile-dir", default=facts.NODE_EXPORTER_TEXTFILE_DIR, help="node exporter's textfile directory")
    parser.add_argument("--openssl", default=facts.OPENSSL, help="the openssl program")
    parser.add_argument("--stdout", action="store_true", help="print the metrics instead of writing the file")
    args = parser.parse_args(argv)
    patterns = args.cert or list(facts.CERTIFICATE_PATHS)
    allowed = args.allow or list(facts.CERTIFICATE_DIRS)
    bad = [p for p in [*patterns, *allowed] if not os.path.isabs(p)]
    if bad:
        say(f"error: {bad[0]!r} is not an absolute path")
        return 2
    found, problems = families(patterns, allowed, args.openssl)
    for problem in problems:
        say(f"error: {problem}")
    text = metrics.exposition(found)
    if args.stdout:
        sys.stdout.write(text)
        return 0
    try:
        metrics.write(args.textfile_dir, facts.CERT_EXPIRY_FILE, text)
    except (OSError, trust.Untrusted) as exc:
        say(f"error: cannot write {os.path.join(args.textfile_dir, facts.CERT_EXPIRY_FILE)}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
