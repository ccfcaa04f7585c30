"""nina-receive LIB PROGRAM [ARG...]: the receiver of deliveries (stdlib only).

Each delivery runs it as `python3 -I -c <this source> LIB PROGRAM` (nina.render.receive_command),
so it travels with the delivery like the programs it installs; nothing of it is in user-data.

Reads {"programs": {relpath: source}, "payload": ...}, installs the programs as LIB/<hash>/ and
LIB/current, then runs nina.host.PROGRAM from there on the payload. Exit: PROGRAM's; 2: bad bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

PROG = "nina-receive"
REL_RE = re.compile(r"^nina(/[a-z_]+)*/[a-z_]+\.py$")
PROGRAM_RE = re.compile(r"^[a-z_]+$")


def fail(msg: str) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


def install(lib: str, programs: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps(programs, sort_keys=True).encode()).hexdigest()[:16]
    target = os.path.join(lib, digest)
    os.makedirs(lib, mode=0o755, exist_ok=True)
    if os.path.islink(lib) or (os.geteuid() == 0 and os.stat(lib).st_uid != 0):
        raise OSError(f"{lib} is a symlink or not owned by root")
    if not os.path.isdir(target):
        tmp = tempfile.mkdtemp(prefix=".new-", dir=lib)
        try:
            for rel, source in sorted(programs.items()):
                path = os.path.join(tmp, rel)
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(source)
                os.chmod(path, 0o644)
            os.chmod(tmp, 0o755)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if not os.path.isdir(target):  # else a concurrent delivery installed the same version
                raise
    link = os.path.join(lib, "current")
    if os.path.realpath(link) != os.path.realpath(target):
        tmp_link = os.path.join(lib, f".current-{digest}-{os.getpid()}")  # one per receiver
        if os.path.lexists(tmp_link):
            os.unlink(tmp_link)
        os.symlink(digest, tmp_link)
        os.replace(tmp_link, link)
    return target


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or not os.path.isabs(args[0]) or not PROGRAM_RE.match(args[1]):
        return fail("usage: nina-receive LIB PROGRAM [ARG...] < bundle.json")
    lib, program, rest = args[0], args[1], args[2:]
    try:
        bundle = json.load(sys.stdin)
    except ValueError as exc:
        return fail(f"the bundle on stdin is not JSON ({exc})")
    programs = bundle.get("programs") if isinstance(bundle, dict) else None
    if not isinstance(programs, dict) or not programs or "payload" not in bundle:
        return fail('the bundle must be {"programs": {relpath: source, ...}, "payload": ...}')
    for rel, source in programs.items():
        if not isinstance(rel, str) or not REL_RE.match(rel) or not isinstance(source, str):
            return fail(f"bad program path {rel!r} (want nina/.../name.py with source text)")
    if f"nina/host/{program}.py" not in programs:
        return fail(f"the bundle has no nina/host/{program}.py")
    target = install(lib, programs)
    code = (
        f"import runpy, sys; sys.path.insert(0, {target!r}); sys.argv[0] = 'nina-{program}'; "
        f"runpy.run_module('nina.host.{program}', run_name='__main__')"
    )
    payload = json.dumps(bundle["payload"])
    proc = subprocess.run([sys.executable, "-I", "-c", code, *rest], input=payload, text=True, check=False)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
