"""nina.host.download against hostile HTTP servers on loopback (raw sockets: each answers one
request with exactly the bytes given, however broken): every refusal is a Failure (one line from
the install programs, never a traceback) and leaves nothing in the directory."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nina import facts
from nina.host import download
from nina.host.failure import Failure

BODY = b"grafana" * 1000
SHA = hashlib.sha256(BODY).hexdigest()


class RawServer:
    """Answers every connection with `reply` (raw HTTP/1.1 bytes), then closes it."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.sock = socket.create_server((facts.LOOPBACK, 0))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(self.reply)

    def url(self, path: str = "/grafana.deb") -> str:
        return f"http://{facts.LOOPBACK}:{self.sock.getsockname()[1]}{path}"


@pytest.fixture
def serve() -> Iterator[list[RawServer]]:
    servers: list[RawServer] = []
    yield servers
    for s in servers:
        s.sock.close()


@pytest.fixture
def dir_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def fetch(servers: list[RawServer], reply: bytes, dir_fd: int, *, max_bytes: int = 1 << 20) -> str:
    s = RawServer(reply)
    servers.append(s)
    return download.download(s.url(), dir_fd, SHA, "nina:grafana.sha256", suffix=".deb", max_bytes=max_bytes)


def head(extra: str) -> bytes:
    return f"HTTP/1.1 200 OK\r\n{extra}Connection: close\r\n\r\n".encode()


def test_the_whole_body_with_the_right_digest_is_kept(serve, dir_fd, tmp_path):
    name = fetch(serve, head(f"Content-Length: {len(BODY)}\r\n") + BODY, dir_fd)
    assert (tmp_path / name).read_bytes() == BODY and (tmp_path / name).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "reply, words",
    [
        # A chunked body cut off inside a chunk: http.client raises IncompleteRead (not an OSError).
        (head("Transfer-Encoding: chunked\r\n") + b"%x\r\n" % len(BODY) + BODY[:100], "cannot download"),
        # A chunked body with a chunk size that is not hex.
        (head("Transfer-Encoding: chunked\r\n") + b"zz\r\n" + BODY, "cannot download"),
        # A Content-Length body cut short: read() returns what came, the digest refuses it.
        (head(f"Content-Length: {len(BODY)}\r\n") + BODY[:100], "refusing"),
        # No length at all, more than max_bytes: refused while it comes.
        (head("") + BODY * 200, "larger than"),
        # A redirect to a local file: urllib refuses the scheme.
        (b"HTTP/1.1 302 Found\r\nLocation: file:///etc/passwd\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", "cannot download"),
        # Not HTTP at all.
        (b"SSH-2.0-OpenSSH_9.6\r\n", "cannot download"),
        # A status reason with a terminal escape and a forged log line.
        (
            b"HTTP/1.1 404 Not Found\x1b[2J\rnina-grafana-install: installed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "cannot download",
        ),
    ],
    ids=[
        "truncated chunk",
        "bad chunk size",
        "short content-length",
        "endless body",
        "redirect to file://",
        "not http",
        "escape in reason",
    ],
)
def test_a_hostile_server_is_refused_in_one_failure_and_nothing_is_left(serve, dir_fd, tmp_path, reply, words):
    with pytest.raises(Failure) as err:
        fetch(serve, reply, dir_fd)
    assert words in str(err.value) and str(err.value).isprintable(), err.value
    assert os.listdir(tmp_path) == []


def test_files_a_killed_run_left_are_removed_by_the_next(serve, dir_fd, tmp_path):
    """Careless operator (or a reboot, or systemd's TimeoutStartSec): a run killed mid-download
    leaves `.download-<its pid>.deb` behind, up to the whole size each time; the next run, which
    the callers serialise with a lock on the directory, removes what earlier runs left of the
    same kind and nothing else."""
    for leftover in (".download-1.deb", ".download-99999.deb"):
        (tmp_path / leftover).write_bytes(b"x" * 1000)
    (tmp_path / ".download-7.zip").write_bytes(b"keycloak's")
    (tmp_path / "installed.json").write_text("{}")
    name = fetch(serve, head(f"Content-Length: {len(BODY)}\r\n") + BODY, dir_fd)
    assert sorted(os.listdir(tmp_path)) == sorted([name, ".download-7.zip", "installed.json"])


def test_a_server_that_drips_the_body_is_cut_off_at_the_deadline(dir_fd, tmp_path, monkeypatch):
    """Attack: a byte every so often, each within the per-read timeout, so the download never
    ends (up to the unit's TimeoutStartSec, then a kill). The whole body has DEADLINE seconds."""
    monkeypatch.setattr(download, "DEADLINE", 1)
    sock = socket.create_server((facts.LOOPBACK, 0))
    stop = threading.Event()

    def drip() -> None:
        conn, _ = sock.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(head(f"Content-Length: {len(BODY)}\r\n"))
            for byte in BODY:
                if stop.wait(0.1):
                    return
                conn.sendall(bytes([byte]))

    threading.Thread(target=drip, daemon=True).start()
    try:
        with pytest.raises(Failure, match="took longer than 1 seconds"):
            download.download(
                f"http://{facts.LOOPBACK}:{sock.getsockname()[1]}/x.deb",
                dir_fd,
                SHA,
                "nina:grafana.sha256",
                suffix=".deb",
                max_bytes=1 << 20,
            )
    finally:
        stop.set()
        sock.close()
    assert os.listdir(tmp_path) == []


def test_the_record_is_written_with_its_mode_read_back_and_never_through_a_link(dir_fd, tmp_path):
    download.write_record("installed.json", {"version": "1.2.3", "sha256": "ab" * 32}, dir_fd=dir_fd, mode=0o600)
    path = tmp_path / "installed.json"
    assert download.read_record(str(path)) == {"version": "1.2.3", "sha256": "ab" * 32}
    assert path.stat().st_mode & 0o777 == 0o600 and not (tmp_path / ".installed.json.tmp").exists()
    # A link planted where the temporary file goes is not followed: the write fails, its target is untouched.
    victim = tmp_path / "victim"
    victim.write_text("root's\n")
    (tmp_path / ".installed.json.tmp").symlink_to(victim)
    with pytest.raises(OSError):
        download.write_record("installed.json", {"version": "9.9.9"}, dir_fd=dir_fd, mode=0o600)
    assert victim.read_text() == "root's\n" and download.read_record(str(path)) == {"version": "1.2.3", "sha256": "ab" * 32}


@pytest.mark.parametrize("text", ["", "[1, 2]", "{not json", "\x00"])
def test_a_record_that_is_not_a_json_object_reads_as_none(tmp_path, text):
    (tmp_path / "r.json").write_text(text)
    assert download.read_record(str(tmp_path / "r.json")) is None
    assert download.read_record(str(tmp_path / "missing.json")) is None


@pytest.mark.parametrize(
    ("version", "sha256", "words"),
    [
        ("1.2", "ab" * 32, "is not a release like 12.0.2"),
        ("1.2.3", "xyz", "is not 64 hex digits"),
        ("1.2.3;id", "ab" * 32, "is not a release"),
    ],
)
def test_release_pins_are_checked_before_anything_runs(version, sha256, words):
    with pytest.raises(Failure, match=words) as info:
        download.release_pin(version, sha256, re.compile(r"\d+\.\d+\.\d+"), "12.0.2")
    assert info.value.code == 2
    assert download.release_pin("1.2.3", "AB" * 32, re.compile(r"\d+\.\d+\.\d+"), "12.0.2") == "ab" * 32
