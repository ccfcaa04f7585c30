"""The JupyterHub login scenario of tests/test_jupyterhub.py, run in a private network namespace.

Usage: python jupyterhub_login.py SCENARIO.json, run as `unshare -n -p -f --kill-child` (its own
network namespace, whose loopback it brings up, and PID namespace: whatever it started ends with it). Starts
the OIDC provider (tests/node/oidc_provider.mjs) and JupyterHub with the rendered config, then
logs each user in as a browser would, without one: hub login -> provider's authorize URL ->
its login form -> back to the hub's callback. Prints one line `RESULT <json>`: per user the
callback's status and, when let in, /hub/home's status and /hub/api/user; the provider's request
log (which host each endpoint was called on) and the hub's log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests


def wait_for(url: str, verify: str | bool, timeout: float, proc: subprocess.Popen[str]) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {url} answered")
        try:
            if requests.get(url, verify=verify, timeout=2).ok:  # the proxy answers 404 until the hub is up
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def login(s: dict[str, Any], username: str, password: str) -> dict[str, Any]:
    """One browser-less login; returns what the hub answered."""
    hub = s["hub_url"]
    session = requests.Session()
    session.trust_env = False  # no proxy, no CA bundle from the environment: loopback, verified with the test CA
    session.verify = s["ca_file"]
    url = f"{hub}/hub/oauth_login"
    steps: list[str] = []
    response = session.get(url, allow_redirects=False, timeout=10)
    # Follow redirects by hand up to the hub's callback, submitting the provider's login form.
    for _ in range(12):
        if response.status_code in (301, 302, 303, 307):
            url = urljoin(url, response.headers["location"])
            steps.append(url.split("?")[0])
            response = session.get(url, allow_redirects=False, timeout=10)
            if url.startswith(f"{hub}/hub/oauth_callback"):
                break
            continue
        form = re.search(r'<form method="post" action="([^"]+)"', response.text)
        if response.status_code != 200 or form is None:
            raise RuntimeError(f"unexpected {response.status_code} at {url}: {response.text[:500]}")
        url = urljoin(url, form.group(1))
        steps.append(f"POST {url}")
        response = session.post(url, data={"username": username, "password": password}, allow_redirects=False, timeout=10)
    result: dict[str, Any] = {"steps": steps, "callback_status": response.status_code}
    if response.status_code in (302, 303):
        home = session.get(f"{hub}/hub/home", allow_redirects=False, timeout=10)
        result["home_status"] = home.status_code
        xsrf = session.cookies.get("_xsrf") or ""
        api = session.get(f"{hub}/hub/api/user", headers={"X-XSRFToken": xsrf}, timeout=10)
        result["api_status"] = api.status_code
        result["api_user"] = api.json() if api.ok else api.text[:500]
        result["admin_page_status"] = session.get(f"{hub}/hub/admin", allow_redirects=False, timeout=10).status_code
    return result


def stop(proc: subprocess.Popen[str], log: Path) -> str:
    """SIGTERM (JupyterHub stops its proxy and services), SIGKILL of the group after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return log.read_text(errors="replace")


def main() -> int:
    s = json.loads(Path(sys.argv[1]).read_text())
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    env = {**os.environ, "PATH": f"{Path(s['node']).parent}:{os.environ.get('PATH', '')}"}
    # Logs go to files (a pipe nobody reads while the logins run would fill and block the server).
    provider_log, hub_log = Path(s["hub_cwd"]) / "provider.log", Path(s["hub_cwd"]) / "hub.log"
    with provider_log.open("w") as out:
        provider = subprocess.Popen(
            [s["node"], s["provider_script"], s["provider_settings"]],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    with hub_log.open("w") as out:
        hub = subprocess.Popen(
            [s["jupyterhub"], "-f", s["hub_config"]],
            cwd=s["hub_cwd"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    result: dict[str, Any] = {}
    try:
        wait_for(s["provider_probe"], s["ca_file"], 30, provider)
        wait_for(f"{s['hub_url']}/hub/health", False, 60, hub)
        result["users"] = {u["name"]: login(s, u["name"], u["password"]) for u in s["users"]}
    except Exception as exc:
        result["error"] = repr(exc)
    finally:
        result["hub_log"] = stop(hub, hub_log)[-20000:]
        result["provider_log"] = stop(provider, provider_log)
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
