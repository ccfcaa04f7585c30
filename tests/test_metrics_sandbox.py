"""The metrics timers' sandbox (nina/templates/metrics-sandbox.conf.j2) runs root's uid with one
capability and a read-only file system. A read-only mount does not stop connect() on a Unix
socket, and root's uid is all systemd's private socket, the system bus and the docker socket ask
for: one socket() would give the program (which parses the SuperLink's state, which researchers'
ServerApps can write) root's whole power back. So the sandbox allows no address family at all."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nina import render

SETPRIV = shutil.which("setpriv") or ""
UNSHARE = shutil.which("unshare") or ""

CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
print(s.recv(16).decode())
"""


@pytest.mark.skipif(os.geteuid() != 0 or not SETPRIV or not UNSHARE, reason="needs root, util-linux's unshare and setpriv")
def test_a_read_only_file_system_does_not_keep_root_from_a_root_only_socket():
    """Why the sandbox must refuse sockets: ProtectSystem=strict (here: the socket's directory
    bind-mounted read only) and a bounding set of CAP_DAC_READ_SEARCH leave connect() to root's
    0600 socket open to root's uid."""
    with tempfile.TemporaryDirectory(dir="/tmp") as top:
        path = str(Path(top) / "root.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        os.chmod(path, 0o600)
        server.listen(1)
        script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 99; shift; exec "$@"'
        sandbox = [SETPRIV, "--bounding-set=-all,+dac_read_search", "--inh-caps=-all", "--no-new-privs"]
        proc = subprocess.Popen(
            [UNSHARE, "-m", "sh", "-c", script, "sh", top, *sandbox, sys.executable, "-I", "-c", CLIENT, path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        server.settimeout(30)
        conn, _ = server.accept()
        conn.sendall(b"root's socket")
        conn.close()
        out, err = proc.communicate(timeout=30)
        server.close()
        assert proc.returncode == 0 and out.strip() == "root's socket", err


def _directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("unit", ["cert_expiry_service", "federation_metrics_service"])
def test_the_metrics_units_may_open_no_socket(unit):
    text = render.cert_expiry_service() if unit == "cert_expiry_service" else render.federation_metrics_service("main")
    found = _directives(text)
    assert found["RestrictAddressFamilies"] == ["none"], found.get("RestrictAddressFamilies")
    assert found["CapabilityBoundingSet"] == ["CAP_DAC_READ_SEARCH"]
