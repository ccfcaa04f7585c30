"""nina-keycloak-install: the pinned Keycloak release on the keycloak host (manual 4.1.2.9).

  nina-keycloak-install --version V --sha256 HEX [--jdk PACKAGE] [--config FILE] [--url URL]

Run as root by facts.KEYCLOAK_INSTALL_UNIT (a oneshot keycloak.service requires) with the values
of nina:keycloak.* that the `<host>-keycloak` delivery writes into the unit, so a new release,
digest or JDK re-runs a delivery, never a VM. In order:

1. the JDK package (nina:keycloak.jdk_package) with apt-get, unless dpkg says it is installed;
2. if facts.KEYCLOAK_OPT/keycloak-V/ holds this program's record of V, the same SHA-256 and the
   same keycloak.conf, nothing more (no download);
3. otherwise the zip from facts.KEYCLOAK_RELEASE_URL (or --url) into a temporary file in
   facts.KEYCLOAK_OPT, hashed while it is written: a digest other than --sha256 is refused in
   one line and nothing is unpacked. Every entry must lie under `keycloak-V/`, be a regular
   file or a directory (no links, devices), and have no absolute path and no `..`;
4. unpacked into a fresh temporary directory beside the target, root's (files 0644, or 0755
   where the zip says executable; directories 0755), then renamed into place (a previous tree
   of that version is renamed aside first and removed after);
5. `bin/kc.sh --config-file=FILE build` as root (Keycloak's build-time options, `db` and
   `health-enabled`, come from keycloak.conf; its runtime options are ignored by the build);
   the keycloak user's `data/` (Keycloak's only writable directory) is moved aside while root
   builds, so the build never writes where that user could have put a link;
6. `data/` (keycloak:fl_system 0750) made if missing, and the record written last.

The keycloak user owns nothing it runs: only data/. Environment overrides (tests):
NINA_KEYCLOAK_OPT, NINA_APT_GET, NINA_DPKG_QUERY, NINA_KEYCLOAK_OWNER, NINA_KEYCLOAK_GROUP.
Exit codes: 0 ok, 1 failed, 2 bad input or refused. A module of nina (nina.host): standard
library and nina.facts only.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator

from nina import facts
from nina.host import download as fetch
from nina.host import trust
from nina.host.common import installed_version, sha256_file
from nina.host.failure import Failure, sayer

PROG = "nina-keycloak-install"
OPT = os.environ.get("NINA_KEYCLOAK_OPT", facts.KEYCLOAK_OPT)
APT_GET = os.environ.get("NINA_APT_GET", "apt-get")
DPKG_QUERY = os.environ.get("NINA_DPKG_QUERY", "dpkg-query")
OWNER = os.environ.get("NINA_KEYCLOAK_OWNER", facts.SERVICE_USERS["keycloak"])
GROUP = os.environ.get("NINA_KEYCLOAK_GROUP", facts.SYSTEM_GROUP)
RECORD = ".nina-install.json"  # in the release's directory, written last
DATA = facts.KEYCLOAK_DATA_DIR
VERSION_RE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}")
PACKAGE_RE = re.compile(r"openjdk-\d{2}-jre-headless")
MAX_ZIP_BYTES = 1 << 30  # Keycloak 26's zip is ~300 MB

say = sayer(PROG)


def ensure_jdk(package: str) -> bool:
    """apt-get install `package` unless dpkg has it installed; True if it installed it."""
    if not PACKAGE_RE.fullmatch(package):
        raise Failure(f"--jdk {package!r} is not an openjdk-NN-jre-headless package", 2)
    if installed_version(package, DPKG_QUERY) is not None:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in ([APT_GET, "update", "-q"], [APT_GET, "install", "-y", "-q", "--no-install-recommends", package]):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, env=env)
        if proc.returncode:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise Failure(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {tail[0]}")
    return True


def download(url: str, dir_fd: int, expected: str) -> str:
    """The zip at `url` into a new root-only temporary file in `dir_fd` (its name returned),
    refused unless its SHA-256 is `expected` (nina.host.download)."""
    return fetch.download(url, dir_fd, expected, "nina:keycloak.sha256", suffix=".zip", max_bytes=MAX_ZIP_BYTES)


def _entries(zf: zipfile.ZipFile, top: str) -> Iterator[tuple[zipfile.ZipInfo, list[str], bool, bool]]:
    """Each entry as (info, its path's parts below `top`, is a directory, is executable); refuses
    absolute paths, `..`, anything outside `top`, links and other non-regular entries."""
    for info in zf.infolist():
        name = info.filename
        parts = name.rstrip("/").split("/")
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts) or "\0" in name:
            raise Failure(f"refusing the zip: entry {name!r} has an absolute path, '..', '.', '\\' or an empty component", 2)
        if parts[0] != top:
            raise Failure(f"refusing the zip: entry {name!r} lies outside {top}/", 2)
        is_dir = name.endswith("/")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR) or ((kind == stat.S_IFDIR) != is_dir and kind != 0):
            raise Failure(f"refusing the zip: entry {name!r} is a link, a special file or a directory typed as a file (mode {mode:06o})", 2)
        yield info, parts[1:], is_dir, bool(mode & 0o111) and not is_dir


def unpack(zip_path: str, dest: str, top: str) -> None:
    """`top/` of the zip into the new directory `dest` (root's: files 0644 or 0755, directories
    0755, whatever the zip says), after checking every entry."""
    with zipfile.ZipFile(zip_path) as zf:
        entries = list(_entries(zf, top))  # all checked before anything is written
        os.mkdir(dest, 0o755)
        for info, parts, is_dir, executable in entries:
            target = os.path.join(dest, *parts) if parts else dest
            if is_dir:
                os.makedirs(target, 0o755, exist_ok=True)
                os.chmod(target, 0o755)
                continue
            os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with open(fd, "wb") as out, zf.open(info) as src:
                shutil.copyfileobj(src, out)
                os.fchmod(out.fileno(), 0o755 if executable else 0o644)
    for root, dirs, _ in os.walk(dest):  # what makedirs made for parents the zip did not list
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
    os.chmod(dest, 0o755)


def _owner_ids() -> tuple[int, int]:
    try:
        return pwd.getpwnam(OWNER).pw_uid, grp.getgrnam(GROUP).gr_gid
    except KeyError:
        raise Failure(f"user {OWNER} or group {GROUP} does not exist (the host's first boot makes them)", 2) from None


def build(home: str, config: str) -> None:
    """`kc.sh --config-file=config build` as root, with data/ (the keycloak user's) moved aside."""
    data, held = os.path.join(home, DATA), os.path.join(home, ".data-held")
    if os.path.lexists(held):
        raise Failure(f"{held} exists (an interrupted build?); move it back to {data} or remove it, then run again", 2)
    had_data = os.path.lexists(data)
    if had_data:
        os.rename(data, held)
    try:
        kc = os.path.join(home, "bin", "kc.sh")
        proc = subprocess.run([kc, f"--config-file={config}", "build"], capture_output=True, text=True, timeout=1800, cwd=home)
        if proc.returncode:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:] or ["no output"]
            raise Failure(f"`{kc} build` failed (exit {proc.returncode}): {' | '.join(tail)}")
    finally:
        if os.path.lexists(data) and not os.path.islink(data) and os.path.isdir(data):
            shutil.rmtree(data)  # what root's build wrote: root's alone, nobody else's
        elif os.path.lexists(data):
            os.unlink(data)
        if had_data:
            os.rename(held, data)


def install(version: str, sha256: str, url: str, config: str) -> str:
    """The release in OPT/keycloak-<version>, verified and built; returns what was done."""
    why = trust.problem(OPT)
    if why:
        raise Failure(f"will not install into {OPT}: {why}", 2)
    if not os.path.isfile(config):
        raise Failure(f"{config} is missing (the <host>-keycloak delivery writes it)", 2)
    conf_sha = sha256_file(config)
    top = f"keycloak-{version}"
    home = os.path.join(OPT, top)
    wanted = {"version": version, "sha256": sha256, "config_sha256": conf_sha}
    dir_fd = os.open(OPT, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)  # one run at a time (the unit, or an operator by hand)
        record = fetch.read_record(os.path.join(home, RECORD))
        if record == wanted and not trust.problem(home):
            return f"{home} already holds Keycloak {version} ({sha256[:12]}...) built with {config}; nothing to do"
        uid, gid = _owner_ids()
        same_release = record is not None and record.get("version") == version and record.get("sha256") == sha256
        if not (same_release and not trust.problem(home)):
            zip_name = download(url, dir_fd, sha256)
            zip_path = os.path.join(OPT, zip_name)
            staging = tempfile.mkdtemp(prefix=f".{top}.", dir=OPT)
            try:
                unpack(zip_path, os.path.join(staging, top), top)
                if os.path.lexists(home):  # an unfinished or other build of this version: removed with staging
                    os.rename(home, os.path.join(staging, "previous"))
                os.rename(os.path.join(staging, top), home)
            finally:
                os.unlink(zip_path)
                shutil.rmtree(staging, ignore_errors=True)
            done = f"installed Keycloak {version} into {home}"
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(home, RECORD))  # rebuilt below: no record until it is done
            done = f"rebuilt Keycloak {version} in {home} for the changed {config}"
        build(home, config)
        data = os.path.join(home, DATA)
        if not os.path.lexists(data):
            os.mkdir(data, 0o750)
            os.chown(data, uid, gid)
            os.chmod(data, 0o750)
        home_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fetch.write_record(RECORD, wanted, dir_fd=home_fd, mode=0o644)
        finally:
            os.close(home_fd)
        return done
    finally:
        os.close(dir_fd)


def main(argv: list[str] | None = None) -> int:
    parser = fetch.release_parser(
        PROG,
        "Install the pinned, verified Keycloak release and build it.",
        version_example=facts.KEYCLOAK_VERSION,
        setting="nina:keycloak",
        artifact="zip",
        default_url="GitHub",
    )
    parser.add_argument("--jdk", help="the JDK package to install first (nina:keycloak.jdk_package)")
    parser.add_argument("--config", default=facts.KEYCLOAK_CONF, help="keycloak.conf, whose build-time options the build takes")
    args = parser.parse_args(argv)
    try:
        sha256 = fetch.release_pin(args.version, args.sha256, VERSION_RE, facts.KEYCLOAK_VERSION)
        if args.jdk and ensure_jdk(args.jdk):
            say(f"installed {args.jdk}")
        url = args.url or facts.KEYCLOAK_RELEASE_URL.format(version=args.version)
        print(install(args.version, sha256, url, args.config), flush=True)
    except Failure as exc:
        say(f"error: {exc}")
        return exc.code
    except zipfile.BadZipFile as exc:
        say(f"error: the release zip cannot be read ({exc}); is nina:keycloak.sha256 the digest of the real release?")
        return 2
    except (OSError, subprocess.SubprocessError) as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
