"""nina-keycloak-install (nina.host.keycloak_install), in-process, against a zip built here and
served by a loopback HTTP server. Keycloak itself is not installable here, so the zip holds a
stand-in `bin/kc.sh` (a shell script recording its arguments and writing what a build writes);
apt-get and dpkg-query are stand-ins too. What is real: the download, the digest check, the
checks of every zip entry, the unpacking, the owners and modes, the rename into place."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import pwd
import stat
import threading
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from nina import facts
from nina.host import keycloak_install as ki

VERSION = "26.3.1"
TOP = f"keycloak-{VERSION}"
KC_SH = """#!/bin/sh
# stand-in for Keycloak's kc.sh: records its arguments, writes what a build writes
home="$(cd "$(dirname "$0")/.." && pwd)"
echo "$@" >> "$KC_LOG"
mkdir -p "$home/lib/quarkus" "$home/data/tmp"
echo built > "$home/lib/quarkus/build-system.properties"
"""


def make_zip(extra: Sequence[tuple[zipfile.ZipInfo, bytes]] = (), kc_sh: str = KC_SH) -> bytes:
    """The release's zip (deterministic: fixed times), with `extra` entries appended."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in (f"{TOP}/", f"{TOP}/bin/", f"{TOP}/lib/", f"{TOP}/conf/"):
            zf.writestr(_info(name, stat.S_IFDIR | 0o775), b"")
        zf.writestr(_info(f"{TOP}/bin/kc.sh", stat.S_IFREG | 0o775), kc_sh)
        zf.writestr(_info(f"{TOP}/lib/keycloak.jar", stat.S_IFREG | 0o664), b"jar" * 100)
        zf.writestr(_info(f"{TOP}/conf/keycloak.conf", stat.S_IFREG | 0o664), b"# upstream's\n")
        zf.writestr(_info(f"{TOP}/version.txt", stat.S_IFREG | 0o664), VERSION.encode())
        for entry, data in extra:
            zf.writestr(entry, data)
    return buf.getvalue()


def _info(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
    info.external_attr = mode << 16
    return info


class Server:
    """A loopback HTTP server of `files` (path -> bytes) that counts its requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((facts.LOOPBACK, 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://{facts.LOOPBACK}:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The host as the program sees it: its opt directory, keycloak.conf and the stand-ins."""
    opt = tmp_path / "opt-keycloak"
    opt.mkdir(mode=0o755)
    conf = tmp_path / "keycloak.conf"
    conf.write_text("db=postgres\nhealth-enabled=true\n")
    log, apt_log = tmp_path / "kc.log", tmp_path / "apt.log"
    apt = tmp_path / "apt-get"
    apt.write_text(f'#!/bin/sh\necho "$@" >> {apt_log}\n')
    dpkg = tmp_path / "dpkg-query"
    dpkg.write_text("#!/bin/sh\necho 'unknown ok not-installed'\nexit 1\n")
    for stub in (apt, dpkg):
        stub.chmod(0o755)
    monkeypatch.setattr(ki, "OPT", str(opt))
    monkeypatch.setattr(ki, "APT_GET", str(apt))
    monkeypatch.setattr(ki, "DPKG_QUERY", str(dpkg))
    owner = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    monkeypatch.setattr(ki, "OWNER", owner)
    monkeypatch.setattr(ki, "GROUP", __import__("grp").getgrgid(pwd.getpwnam(owner).pw_gid).gr_name)
    monkeypatch.setenv("KC_LOG", str(log))
    return {"opt": opt, "conf": conf, "log": log, "apt_log": apt_log, "dpkg": dpkg}


def run(server: Server, host: dict[str, Path], data: bytes, digest: str | None = None, jdk: bool = True) -> int:
    server.files["/keycloak.zip"] = data
    argv = ["--version", VERSION, "--sha256", digest or hashlib.sha256(data).hexdigest(), "--config", str(host["conf"])]
    argv += ["--url", server.url("/keycloak.zip")] + (["--jdk", facts.KEYCLOAK_JDK_PACKAGE] if jdk else [])
    return ki.main(argv)


def tree(path: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p.relative_to(path)): (p.lstat().st_uid, p.lstat().st_gid, stat.S_IMODE(p.lstat().st_mode)) for p in sorted(path.rglob("*"))
    }


def test_installs_verified_root_owned_built_and_gives_keycloak_only_data(server, host, capsys):
    assert run(server, host, make_zip()) == 0, capsys.readouterr().err
    home = host["opt"] / TOP
    assert capsys.readouterr().out.strip() == f"installed Keycloak {VERSION} into {home}"
    assert host["apt_log"].read_text().splitlines() == ["update -q", f"install -y -q --no-install-recommends {facts.KEYCLOAK_JDK_PACKAGE}"]
    assert host["log"].read_text().splitlines() == [f"--config-file={host['conf']} build"]
    me = os.geteuid()
    files = tree(home)
    owner = pwd.getpwnam(ki.OWNER)
    assert files.pop("data") == (owner.pw_uid, owner.pw_gid, 0o750)
    assert all(uid == me for uid, _, _ in files.values()), files
    assert all(mode & 0o022 == 0 for _, _, mode in files.values()), files  # nobody else writes what it runs
    assert files["bin/kc.sh"][2] == 0o755 and files["lib/keycloak.jar"][2] == 0o644 and files["bin"][2] == 0o755
    assert (home / "lib/quarkus/build-system.properties").read_text() == "built\n"
    assert not (home / "data/tmp").exists(), "what root's build wrote under data/ is removed"
    record = json.loads((home / ki.RECORD).read_text())
    assert record["version"] == VERSION and record["sha256"] == hashlib.sha256(make_zip()).hexdigest()
    assert sorted(os.listdir(host["opt"])) == [TOP], "no temporary file or directory left behind"


def test_second_run_does_nothing(server, host, capsys):
    assert run(server, host, make_zip()) == 0
    before = tree(host["opt"])
    requests, builds = len(server.requests), host["log"].read_text()
    # As dpkg-query answers nina's query (-f='${Status}\t${Version}') for an installed JDK.
    host["dpkg"].write_text("#!/bin/sh\nprintf 'install ok installed\\t21.0.5+11-1\\n'\n")
    host["apt_log"].unlink()
    capsys.readouterr()
    assert run(server, host, make_zip()) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (len(server.requests), host["log"].read_text(), tree(host["opt"])) == (requests, builds, before)
    assert not host["apt_log"].exists(), "the JDK is installed: no apt-get"


def test_a_changed_config_rebuilds_in_place_and_keeps_keycloaks_data(server, host, capsys):
    assert run(server, host, make_zip()) == 0
    data = host["opt"] / TOP / "data"
    (data / "kept").write_text("the keycloak user's\n")
    requests = len(server.requests)
    host["conf"].write_text("db=postgres\nhealth-enabled=true\nmetrics-enabled=true\n")
    capsys.readouterr()
    assert run(server, host, make_zip()) == 0
    assert "rebuilt" in capsys.readouterr().out
    assert len(server.requests) == requests, "no new download for a rebuild"
    assert len(host["log"].read_text().splitlines()) == 2
    assert (data / "kept").read_text() == "the keycloak user's\n" and not (data / "tmp").exists()


def test_a_failed_build_is_one_line_and_the_next_run_builds_again(server, host, capsys):
    failing = make_zip(kc_sh=KC_SH + 'echo "ERROR: no java" >&2\nexit 3\n')
    assert run(server, host, failing, jdk=False) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "build` failed (exit 3): ERROR: no java" in err[0], err
    assert not (host["opt"] / TOP / ki.RECORD).exists()
    assert run(server, host, make_zip(), jdk=False) == 0  # a new digest: downloaded, unpacked and built again
    assert (host["opt"] / TOP / ki.RECORD).exists() and len(host["log"].read_text().splitlines()) == 2


def test_a_damaged_zip_with_the_right_digest_is_one_line(server, host, capsys):
    assert run(server, host, b"PK\x03\x04 not a zip at all", jdk=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be read" in err[0] and "nina:keycloak.sha256" in err[0], err
    assert os.listdir(host["opt"]) == []


def test_a_wrong_digest_is_refused_in_one_line_and_nothing_is_unpacked(server, host, capsys):
    assert run(server, host, make_zip(), digest="0" * 64, jdk=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{ki.PROG}: error: refusing ") and "nina:keycloak.sha256" in err[0], err
    assert os.listdir(host["opt"]) == []
    assert not host["log"].exists()


@pytest.mark.parametrize(
    "entry, words",
    [
        (_info(f"{TOP}/../evil", stat.S_IFREG | 0o644), "'..'"),
        (_info(f"{TOP}/bin/../../evil", stat.S_IFREG | 0o644), "'..'"),
        (_info("/etc/evil", stat.S_IFREG | 0o644), "absolute"),
        (_info("elsewhere/evil", stat.S_IFREG | 0o644), "outside"),
        (_info(f"{TOP}/bin/link", stat.S_IFLNK | 0o777), "link"),
        (_info(f"{TOP}/dev", stat.S_IFCHR | 0o644), "special"),
    ],
)
def test_entries_that_could_write_elsewhere_are_refused(server, host, capsys, entry, words):
    assert run(server, host, make_zip([(entry, b"/etc/passwd")]), jdk=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing the zip" in err[0] and words in err[0], err
    assert os.listdir(host["opt"]) == [] and not (host["opt"].parent / "evil").exists()


def test_failures_are_one_line(server, host, capsys):
    assert ki.main(["--version", VERSION, "--sha256", "0" * 64, "--config", str(host["conf"]), "--url", server.url("/missing.zip")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot download" in err[0] and "404" in err[0], err
    assert ki.main(["--version", "latest", "--sha256", "0" * 64]) == 2
    assert ki.main(["--version", VERSION, "--sha256", "xyz"]) == 2
    assert ki.main(["--version", VERSION, "--sha256", "0" * 64, "--jdk", "default-jre"]) == 2
    assert all(len(e) == 1 for e in [capsys.readouterr().err.strip().splitlines()[-1:]])
    os.chmod(host["opt"], 0o777)
    assert run(server, host, make_zip(), jdk=False) == 2
    assert "will not install" in capsys.readouterr().err
