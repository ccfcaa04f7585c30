"""nina-grafana-install (nina.host.grafana_install), in-process, against a .deb-shaped file served by
a loopback HTTP server. Grafana's package cannot be installed here (not in Debian's archive, and
this machine's dpkg is not for a test to change), so apt-get and dpkg-query are stand-ins that
record what they were asked and what they saw; what is real: the download, the digest check, the
refusals, the directory's trust check, the record, and what is left behind."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from test_keycloak_install import Server, server  # noqa: F401

from nina import facts
from nina.host import grafana_install as gi

VERSION = "12.0.2"
DEB = b"!<arch>\ndebian-binary   " + b"grafana" * 1000


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    downloads = tmp_path / "downloads"
    downloads.mkdir(mode=0o700)
    state, log = tmp_path / "dpkg-state", tmp_path / "apt.log"
    apt = tmp_path / "apt-get"
    # Installs ./grafana_V_amd64.deb only if it is there and is the served file (its digest).
    apt.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        "for last; do :; done\n"
        'case "$last" in ./grafana_*_amd64.deb)\n'
        '  [ -f "$last" ] || { echo "E: Unsupported file $last" >&2; exit 100; }\n'
        f'  sha256sum "$last" | cut -d" " -f1 >> {log}\n'
        "  v=${last#./grafana_}; v=${v%_amd64.deb}\n"
        f'  [ -n "$APT_FAIL" ] && {{ echo "E: Unable to correct problems, you have held broken packages." >&2; exit 100; }}\n'
        f'  printf "install ok installed\\t%s" "$v" > {state};;\n'
        "esac\n"
    )
    apt.chmod(0o755)
    dpkg = tmp_path / "dpkg-query"
    dpkg.write_text(f"#!/bin/sh\n[ -f {state} ] || {{ echo 'dpkg-query: no packages found matching grafana' >&2; exit 1; }}\ncat {state}\n")
    dpkg.chmod(0o755)
    monkeypatch.setattr(gi, "DOWNLOADS", str(downloads))
    monkeypatch.setattr(gi, "APT_GET", str(apt))
    monkeypatch.setattr(gi, "DPKG_QUERY", str(dpkg))
    monkeypatch.delenv("APT_FAIL", raising=False)
    return {"downloads": downloads, "state": state, "log": log}


def run(server: Server, data: bytes = DEB, digest: str | None = None, version: str = VERSION) -> int:  # noqa: F811
    server.files["/grafana.deb"] = data
    return gi.main(["--version", version, "--sha256", digest or hashlib.sha256(data).hexdigest(), "--url", server.url("/grafana.deb")])


def test_installs_the_verified_deb_with_apt_get_and_keeps_only_the_record(server, host, capsys):  # noqa: F811
    assert run(server) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == f"installed Grafana {VERSION} from {server.url('/grafana.deb')}"
    assert host["log"].read_text().splitlines() == [
        "update -q",
        f"install -y -q --no-install-recommends ./grafana_{VERSION}_amd64.deb",
        hashlib.sha256(DEB).hexdigest(),  # apt-get got exactly the verified bytes
    ]
    assert sorted(os.listdir(host["downloads"])) == [gi.RECORD], "the .deb and temporary files are gone"
    assert (host["downloads"] / gi.RECORD).stat().st_mode & 0o777 == 0o600


def test_second_run_does_nothing_and_a_new_version_installs_again(server, host, capsys):  # noqa: F811
    assert run(server) == 0
    requests, log = len(server.requests), host["log"].read_text()
    capsys.readouterr()
    assert run(server) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (len(server.requests), host["log"].read_text()) == (requests, log)
    # Removed by hand (dpkg says so): installed again. A new digest for the same version too.
    host["state"].unlink()
    assert run(server) == 0 and len(server.requests) == requests + 1
    assert run(server, DEB + b"rebuilt") == 0 and len(server.requests) == requests + 2
    assert run(server, DEB, version="12.1.0") == 0 and host["state"].read_text().endswith("\t12.1.0")


def test_a_wrong_digest_is_refused_in_one_line_and_nothing_is_installed(server, host, capsys):  # noqa: F811
    assert run(server, digest="0" * 64) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{gi.PROG}: error: refusing ") and "nina:grafana.sha256" in err[0], err
    assert os.listdir(host["downloads"]) == [] and not host["log"].exists() and not host["state"].exists()


def test_a_failed_apt_get_is_one_line_leaves_no_record_and_the_next_run_tries_again(server, host, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("APT_FAIL", "1")
    assert run(server) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "held broken packages" in err[0], err
    assert os.listdir(host["downloads"]) == []
    monkeypatch.delenv("APT_FAIL")
    assert run(server) == 0 and (host["downloads"] / gi.RECORD).exists()


def test_a_package_that_is_not_the_version_asked_for_is_an_error(server, host, capsys, tmp_path):  # noqa: F811
    # apt-get "succeeds" but dpkg reports another version (a held or newer package): no record.
    fake = Path(gi.APT_GET)
    fake.write_text(f"#!/bin/sh\nprintf 'install ok installed\\t11.0.0' > {host['state']}\n")
    assert run(server) == 1
    assert "dpkg reports grafana 11.0.0, not 12.0.2" in capsys.readouterr().err
    assert not (host["downloads"] / gi.RECORD).exists()


def test_bad_input_and_an_untrusted_directory_are_refused(server, host, capsys):  # noqa: F811
    assert gi.main(["--version", "latest", "--sha256", "0" * 64]) == 2
    assert gi.main(["--version", "12.0.2;id", "--sha256", "0" * 64]) == 2
    assert gi.main(["--version", "12.0.02", "--sha256", "0" * 64]) == 2
    assert gi.main(["--version", VERSION, "--sha256", "xyz"]) == 2
    assert gi.main(["--version", VERSION, "--sha256", "0" * 64, "--url", server.url("/missing.deb")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith(f"{gi.PROG}: error: ") for line in err) and len(err) == 5, err
    assert "cannot download" in err[-1] and "404" in err[-1]
    os.chmod(host["downloads"], 0o777)
    assert run(server) == 2
    assert "will not download" in capsys.readouterr().err


def test_the_default_url_is_the_pinned_release_on_dl_grafana_com():
    assert facts.GRAFANA_RELEASE_URL.format(version=VERSION) == f"https://dl.grafana.com/oss/release/grafana_{VERSION}_amd64.deb"


def test_a_deb_that_a_killed_run_left_behind_is_removed_by_the_next_run(server, host, capsys):  # noqa: F811
    # Killed between the rename and apt-get: its .deb (another version's) stays; the next run removes it.
    (host["downloads"] / "grafana_11.6.1_amd64.deb").write_bytes(b"x" * 1000)
    (host["downloads"] / "operator-notes.txt").write_text("not ours\n")
    assert run(server) == 0, capsys.readouterr().err
    assert sorted(os.listdir(host["downloads"])) == sorted([gi.RECORD, "operator-notes.txt"])
