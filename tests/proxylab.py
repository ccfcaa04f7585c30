"""A lab for the reverse proxy (tests/test_proxy.py): real nginx with the rendered configuration
in front of HTTPS upstreams it starts, all on loopback in a private network namespace.

`python proxylab.py SPEC.json` runs inside `unshare -n` (test_proxy.py starts it so): brings up
`lo`, puts each upstream's fixed address on it, starts the upstreams (Python ssl servers; one
answers WebSocket upgrades and then echoes bytes), starts nginx in the foreground, makes the
requests of the spec and prints one JSON object of what each request got. The test judges.

SPEC: {"nginx": [argv], "upstreams": [{"name", "ip", "port", "cert", "key"}],
"client_ca": path, "requests": [{"id", "port", "tls", "sni", "host", "path", "headers",
"websocket", "replace": upstream index, "with": {"cert", "key"}}]}. A request with "replace"
first restarts that upstream with another certificate (e.g. from another CA).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def upstream(name: str, ip: str, port: int, cert: str, key: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            # As a WebSocket server checks it (RFC 6455 4.2.1): both headers, else no upgrade.
            connection = {t.strip().lower() for t in self.headers.get("Connection", "").split(",")}
            if self.headers.get("Upgrade", "").lower() == "websocket" and "upgrade" in connection:
                self.send_response(101, "Switching Protocols")
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", ws_accept(self.headers["Sec-WebSocket-Key"]))
                self.end_headers()
                self.wfile.flush()
                while data := self.rfile.read1(4096):
                    self.wfile.write(data)
                    self.wfile.flush()
                self.close_connection = True
                return
            body = json.dumps({"upstream": name, "headers": [[k, v] for k, v in self.headers.items()]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Frame-Options", "DENY")  # the proxy must send its own, once
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((ip, port), Handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def request(req: dict[str, Any], client_ca: str) -> dict[str, Any]:
    """One request as the spec says; what came back (status, headers, body) or how it failed."""
    sock = socket.create_connection(("127.0.0.1", req["port"]), timeout=10)
    try:
        if req.get("tls", True):
            ctx = ssl.create_default_context(cafile=client_ca)
            if req.get("sni") is None:
                ctx.check_hostname = False
            try:
                sock = ctx.wrap_socket(sock, server_hostname=req.get("sni"))
            except (ssl.SSLError, OSError) as exc:
                return {"outcome": "handshake refused", "error": str(exc)}
        lines = [f"GET {req.get('path', '/')} HTTP/1.1", f"Host: {req['host']}"]
        key = base64.b64encode(os.urandom(16)).decode()
        if req.get("websocket"):
            lines += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        else:
            lines.append("Connection: close")
        lines += [f"{k}: {v}" for k, v in req.get("headers", {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            raw = _read_head(sock)
        except (ssl.SSLError, OSError) as exc:
            return {"outcome": "closed", "error": str(exc)}
        if not raw:
            return {"outcome": "closed without an answer"}
        head, _, rest = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = [[k.strip(), v.strip()] for k, _, v in (h.partition(":") for h in header_lines)]
        result: dict[str, Any] = {"outcome": "answered", "status": int(status_line.split()[1]), "headers": headers}
        if result["status"] == 101:
            result["accept_ok"] = any(k.lower() == "sec-websocket-accept" and v == ws_accept(key) for k, v in headers)
            frame = b"\x81\x85" + b"\x01\x02\x03\x04" + bytes(c ^ m for c, m in zip(b"hello", b"\x01\x02\x03\x04\x01", strict=True))
            sock.sendall(frame)
            echoed = b""
            while len(echoed) < len(frame):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                echoed += chunk
            result["echo_ok"] = echoed == frame
            return result
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), None)
        body = rest
        while length is not None and len(body) < length:
            chunk = sock.recv(4096)
            if not chunk:
                break
            body += chunk
        result["body"] = body.decode("utf-8", "replace")
        return result
    finally:
        sock.close()


def wait_port(ip: str, port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {ip}:{port}")


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for u in spec["upstreams"]:
        subprocess.run(["ip", "addr", "add", f"{u['ip']}/32", "dev", "lo"], check=True)
    servers = [upstream(u["name"], u["ip"], u["port"], u["cert"], u["key"]) for u in spec["upstreams"]]
    nginx = subprocess.Popen(spec["nginx"], stdin=subprocess.DEVNULL, start_new_session=True)
    results: dict[str, Any] = {}
    try:
        for port in (80, 443):
            wait_port("127.0.0.1", port)
        for req in spec["requests"]:
            if "replace" in req:
                i = req["replace"]
                u = spec["upstreams"][i]
                servers[i].shutdown()
                servers[i].server_close()
                servers[i] = upstream(u["name"], u["ip"], u["port"], req["with"]["cert"], req["with"]["key"])
            results[req["id"]] = request(req, spec["client_ca"])
    finally:
        os.killpg(nginx.pid, signal.SIGTERM)
        nginx.wait(timeout=10)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
