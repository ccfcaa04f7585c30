"""nina-grafana-install: the pinned Grafana OSS release on the monitoring host (issue 12 item 5).

  nina-grafana-install --version V --sha256 HEX [--url URL]

Grafana is not in Ubuntu's archive, and nina adds no third-party apt repository: this program,
run as root by facts.GRAFANA_INSTALL_UNIT (a oneshot grafana-server.service requires) with the
values of nina:grafana.* that the `<host>-grafana` delivery writes into the unit (so a new
release or digest re-runs a delivery, never a VM), in order:

1. if dpkg says package grafana V is installed and this program's record says it installed V
   from a .deb of the same SHA-256, nothing more (no download);
2. otherwise the .deb from facts.GRAFANA_RELEASE_URL (or --url) into a temporary file in
   facts.GRAFANA_DOWNLOADS (root's 0700), hashed while it is written (nina.host.download): a
   digest other than --sha256 is refused in one line and nothing is installed;
3. `apt-get update` and `apt-get install ./grafana_V_amd64.deb`, which checks the package and
   installs what it depends on from Ubuntu's archive; the record is written last and the .deb
   removed (a .deb or partial download that a killed run left is removed by the next run).

Grafana's own unit is not used: nina delivers grafana-server.service (nina.grafana), which
requires this unit. Environment overrides (tests): NINA_GRAFANA_DOWNLOADS, NINA_APT_GET,
NINA_DPKG_QUERY. Exit codes: 0 ok, 1 failed, 2 bad input or refused. A module of nina
(nina.host): standard library and nina.facts only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import sys

from nina import facts
from nina.host import common, trust
from nina.host import download as fetch
from nina.host.failure import Failure, sayer

PROG = "nina-grafana-install"
DOWNLOADS = os.environ.get("NINA_GRAFANA_DOWNLOADS", facts.GRAFANA_DOWNLOADS)
APT_GET = os.environ.get("NINA_APT_GET", "apt-get")
DPKG_QUERY = os.environ.get("NINA_DPKG_QUERY", "dpkg-query")
PACKAGE = "grafana"
RECORD = "installed.json"  # in DOWNLOADS, written last
VERSION_RE = re.compile(facts.GRAFANA_VERSION_PATTERN)
DEB_RE = re.compile(r"grafana_[0-9A-Za-z.+~-]{1,64}_amd64\.deb")  # what install() renames a download to
MAX_DEB_BYTES = 1 << 30  # Grafana 12's .deb is ~180 MB

say = sayer(PROG)


def installed_version() -> str | None:
    """The version of package grafana dpkg has installed, or None."""
    return common.installed_version(PACKAGE, DPKG_QUERY)


def _apt(argv: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, env=env, cwd=DOWNLOADS)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise Failure(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {tail[0]}")


def install(version: str, sha256: str, url: str) -> str:
    """Grafana `version` from the verified .deb at `url`; returns what was done."""
    why = trust.problem(DOWNLOADS)
    if why:
        raise Failure(f"will not download into {DOWNLOADS}: {why}", 2)
    wanted = {"version": version, "sha256": sha256}
    dir_fd = os.open(DOWNLOADS, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)  # one run at a time (the unit, or an operator by hand)
        if fetch.read_record(os.path.join(DOWNLOADS, RECORD)) == wanted and installed_version() == version:
            return f"Grafana {version} ({sha256[:12]}...) is installed; nothing to do"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(RECORD, dir_fd=dir_fd)  # no record until this install is done
        # A .deb a killed run renamed but never removed (any version: ~180 MB each).
        for leftover in os.listdir(dir_fd):
            if DEB_RE.fullmatch(leftover):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover, dir_fd=dir_fd)
        name = fetch.download(url, dir_fd, sha256, "nina:grafana.sha256", suffix=".deb", max_bytes=MAX_DEB_BYTES)
        deb = f"grafana_{version}_amd64.deb"
        try:
            os.rename(name, deb, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            _apt([APT_GET, "update", "-q"])
            # `./`: apt-get takes a path to a .deb (not a package name) and resolves its dependencies.
            _apt([APT_GET, "install", "-y", "-q", "--no-install-recommends", f"./{deb}"])
        finally:
            for leftover in (name, deb):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover, dir_fd=dir_fd)
        got = installed_version()
        if got != version:
            raise Failure(f"apt-get installed the .deb, but dpkg reports grafana {got or 'not installed'}, not {version}")
        fetch.write_record(RECORD, wanted, dir_fd=dir_fd, mode=0o600)
        return f"installed Grafana {version} from {url}"
    finally:
        os.close(dir_fd)


def main(argv: list[str] | None = None) -> int:
    parser = fetch.release_parser(
        PROG,
        "Install the pinned, verified Grafana OSS release.",
        version_example=facts.GRAFANA_VERSION,
        setting="nina:grafana",
        artifact=".deb",
        default_url="dl.grafana.com",
    )
    args = parser.parse_args(argv)
    try:
        sha256 = fetch.release_pin(args.version, args.sha256, VERSION_RE, facts.GRAFANA_VERSION)
        url = args.url or facts.GRAFANA_RELEASE_URL.format(version=args.version)
        print(install(args.version, sha256, url), flush=True)
    except Failure as exc:
        say(f"error: {exc}")
        return exc.code
    except (OSError, subprocess.SubprocessError) as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
