"""The boot lab's only way out: an allow-listing HTTPS CONNECT proxy (test helper, not shipped).

Lab containers have no route to anything outside the lab's network namespaces. Their apt and
pip reach the package registries through this proxy, which listens *inside* the lab's router
namespace (the listening socket is made there with setns) and dials upstream from the
namespace it was started in. It forwards only `CONNECT host:443` for the hosts named with
`--allow`, and refuses everything else with 403; clients whose address is listed in the
`--deny-file` (re-read per connection) are refused too, which is how a test makes one host's
bootstrap fail as a registry outage would.

    python labproxy.py --netns /run/netns/X --listen 100.64.0.1:3128 --allow pypi.org:443 ... [--deny-file F] [--log F]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import socket
import sys
from pathlib import Path

CLONE_NEWNET = 0x40000000
MAX_HEADER = 16384
IDLE_SECONDS = 120


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def listen_in(netns: str, host: str, port: int) -> socket.socket:
    """A listening socket bound inside `netns`; the process itself stays in its own namespace."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        _setns(target)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
    sock.setblocking(False)
    return sock


class Proxy:
    def __init__(self, allow: set[tuple[str, int]], deny_file: Path | None, log) -> None:
        self.allow = allow
        self.deny_file = deny_file
        self.log = log

    def denied(self, peer: str) -> bool:
        if self.deny_file is None or not self.deny_file.exists():
            return False
        return peer in self.deny_file.read_text().split()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        target = None
        if len(parts) == 3 and parts[0] == "CONNECT" and ":" in parts[1]:
            host, _, port = parts[1].rpartition(":")
            if port.isdigit():
                target = (host.lower(), int(port))
        if target is None or target not in self.allow or self.denied(peer):
            why = "denied for this client" if target in self.allow else "not allowed"
            self.log(f"REFUSED {peer} {line!r} ({why})")
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*target), 30)
        except (TimeoutError, OSError) as exc:
            self.log(f"FAILED {peer} {line!r}: {exc}")
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        self.log(f"CONNECT {peer} {target[0]}:{target[1]}")
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(self.pipe(reader, up_writer), self.pipe(up_reader, writer))

    @staticmethod
    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await asyncio.wait_for(src.read(65536), IDLE_SECONDS)
                if not data:
                    break
                dst.write(data)
                await dst.drain()
        except (TimeoutError, OSError, ConnectionError):
            pass
        finally:
            dst.close()


async def serve(sock: socket.socket, proxy: Proxy) -> None:
    server = await asyncio.start_server(proxy.handle, sock=sock, limit=MAX_HEADER)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--netns", required=True, help="path of the network namespace to listen in (/run/netns/NAME)")
    ap.add_argument("--listen", required=True, metavar="ADDR:PORT")
    ap.add_argument("--allow", action="append", default=[], metavar="HOST:PORT")
    ap.add_argument("--deny-file", type=Path)
    ap.add_argument("--log", type=Path)
    args = ap.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    allow = set()
    for item in args.allow:
        h, _, p = item.rpartition(":")
        allow.add((h.lower(), int(p)))
    out = open(args.log, "a", buffering=1) if args.log else sys.stderr  # noqa: SIM115 - lives as long as the process
    proxy = Proxy(allow, args.deny_file, lambda msg: print(msg, file=out))
    sock = listen_in(args.netns, host, int(port))
    asyncio.run(serve(sock, proxy))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
