"""nina-keycloak-realm (nina.host.keycloak_realm), in-process, against a STAND-IN for Keycloak.

Keycloak cannot run here (no release to install), so `StandIn` below is a small in-memory
imitation of exactly the endpoints the program uses (the master realm's token endpoint,
/health/ready, and the admin REST API's realm, roles, groups, group realm-role mappings,
clients, client secret and protocol mappers), served over HTTPS on loopback with a local-CA
certificate for 127.0.0.1. It answers as Keycloak 26 documents (201 with a Location for
creations, 404 for a missing realm, 409 for duplicates, 401 without a valid token), keeps
users' group memberships, and logs every request. It is not Keycloak: what it proves is
the program's logic (what it reads, what it writes and when, and how it fails), not that
Keycloak accepts each representation (tests/test_keycloak.py checks those against the
representation classes)."""

from __future__ import annotations

import contextlib
import copy
import http.server
import json
import ssl
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nina import config, facts, keycloak, localpki
from nina.host import keycloak_realm as kr
from nina.plan import build_plan

ADMIN, ADMIN_PASSWORD = facts.KEYCLOAK_BOOTSTRAP_ADMIN, "bootstrap-admin-password-0123"
SECRETS = {"jupyterhub": "j" * 40, "grafana": "g" * 40}


class StandIn:
    """An in-memory stand-in for Keycloak's admin REST API (see the module's docstring)."""

    def __init__(self, cert_pem: str, key_pem: str, tmp: Path) -> None:
        self.realms: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, str]] = []
        self.tokens: set[str] = set()
        self.ready = True
        self.faults: dict[tuple[str, str], int | str] = {}  # (method, path) -> status, or "garbage"
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _go(self, method: str) -> None:
                url = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                outer.log.append((method, url.path))
                fault = outer.faults.get((method, url.path))
                if fault == "garbage":
                    return self._send(200, b"<html>proxy error</html>")
                if fault == "huge":  # 64 MiB of a JSON list, as a Keycloak in someone else's hands could send
                    return self._send(200, b"[" + b"0," * (32 << 20) + b"0]")
                if fault == "deep":
                    return self._send(200, b"[" * 100_000 + b"]" * 100_000)
                if isinstance(fault, str) and fault.startswith("redirect:"):
                    return self._send(302, b"", fault.removeprefix("redirect:"))
                if isinstance(fault, int):
                    return self._send(fault, b'{"error":"injected"}')
                status, body, location = outer.handle(method, url.path, urllib.parse.parse_qs(url.query), raw, self.headers)
                self._send(status, b"" if body is None else json.dumps(body).encode(), location)

            def _send(self, status: int, body: bytes, location: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if location:
                    self.send_header("Location", location)
                self.end_headers()
                with contextlib.suppress(OSError):  # a client that stopped reading (a refused answer)
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self._go("GET")

            def do_POST(self) -> None:
                self._go("POST")

            def do_PUT(self) -> None:
                self._go("PUT")

            def do_DELETE(self) -> None:
                self._go("DELETE")

            def log_message(self, *args: object) -> None:
                pass

        (tmp / "cert.pem").write_text(cert_pem)
        (tmp / "key.pem").write_text(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
        self.httpd = http.server.ThreadingHTTPServer((facts.LOOPBACK, 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"https://{facts.LOOPBACK}:{self.httpd.server_address[1]}"

    # --- what Keycloak holds --------------------------------------------------------------

    def create_realm(self, doc: dict[str, Any]) -> None:
        doc = copy.deepcopy(doc)
        realm: dict[str, Any] = {
            "settings": {k: v for k, v in doc.items() if k not in kr.NESTED},
            "roles": {},
            "groups": {},
            "clients": {},
            "members": {},
        }
        self.realms[doc["realm"]] = realm
        for role in (doc.get("roles") or {}).get("realm", []):
            self._add_role(realm, role)
        for group in doc.get("groups", []):
            gid = self._add_group(realm, group)
            realm["groups"][gid]["roles"] = set(group.get("realmRoles", []))
        for client in doc.get("clients", []):
            self._add_client(realm, client)

    def _add_role(self, realm: dict[str, Any], role: dict[str, Any]) -> None:
        realm["roles"][role["name"]] = {"id": str(uuid.uuid4()), "composite": False, "clientRole": False, **role}

    def _add_group(self, realm: dict[str, Any], group: dict[str, Any]) -> str:
        gid = str(uuid.uuid4())
        realm["groups"][gid] = {"name": group["name"], "attributes": copy.deepcopy(group.get("attributes") or {}), "roles": set()}
        realm["members"][gid] = set()
        return gid

    def _add_client(self, realm: dict[str, Any], client: dict[str, Any]) -> str:
        cid = str(uuid.uuid4())
        rep = {k: v for k, v in copy.deepcopy(client).items() if k != "protocolMappers"}
        # Keycloak adds attributes of its own; the program must compare only the file's.
        rep["attributes"] = {"backchannel.logout.session.required": "true", **rep.get("attributes", {})}
        mappers = {}
        for m in client.get("protocolMappers", []):
            mid = str(uuid.uuid4())
            mappers[mid] = {**copy.deepcopy(m), "id": mid}
        realm["clients"][cid] = {"rep": {**rep, "id": cid}, "mappers": mappers}
        return cid

    def group_id(self, realm: str, name: str) -> str:
        return next(gid for gid, g in self.realms[realm]["groups"].items() if g["name"] == name)

    def members(self, realm: str, name: str) -> set[str]:
        return self.realms[realm]["members"][self.group_id(realm, name)]

    def client(self, realm: str, client_id: str) -> dict[str, Any]:
        return next(c for c in self.realms[realm]["clients"].values() if c["rep"]["clientId"] == client_id)

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.log if m != "GET" and not p.endswith("/openid-connect/token")]

    # --- the endpoints ---------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], raw: bytes, headers: Any) -> tuple[int, Any, str | None]:
        if path == "/health/ready" and method == "GET":
            return (200, {"status": "UP", "checks": []}, None) if self.ready else (503, {"status": "DOWN"}, None)
        if path == "/realms/master/protocol/openid-connect/token" and method == "POST":
            form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
            if form == {"grant_type": "password", "client_id": "admin-cli", "username": ADMIN, "password": ADMIN_PASSWORD}:
                token = str(uuid.uuid4())
                self.tokens.add(token)
                return 200, {"access_token": token, "token_type": "Bearer", "expires_in": 60}, None
            return 401, {"error": "invalid_grant", "error_description": "Invalid user credentials"}, None
        if not path.startswith("/admin/realms"):
            return 404, {"error": "Unable to find matching target resource method"}, None
        if headers.get("Authorization", "").removeprefix("Bearer ") not in self.tokens:
            return 401, {"error": "HTTP 401 Unauthorized"}, None
        body: Any = json.loads(raw) if raw else None
        parts = [urllib.parse.unquote(p) for p in path.split("/")[3:]]  # after /admin/realms
        if not parts:
            if method == "POST":
                if body["realm"] in self.realms:
                    return 409, {"errorMessage": "Conflict detected. See logs for details"}, None
                self.create_realm(body)
                return 201, None, f"{self.url}/admin/realms/{body['realm']}"
            return 405, None, None
        realm = self.realms.get(parts[0])
        if realm is None:
            return 404, {"error": "Realm not found."}, None
        rest = parts[1:]
        if not rest:
            if method == "GET":
                return 200, {**realm["settings"], "id": parts[0]}, None
            if method == "PUT":
                realm["settings"].update({k: v for k, v in body.items() if k not in kr.NESTED})
                return 204, None, None
        elif rest[0] == "roles":
            return self._roles(realm, method, rest[1:], body)
        elif rest[0] == "groups":
            return self._groups(realm, method, rest[1:], query, body)
        elif rest[0] == "clients":
            return self._clients(realm, method, rest[1:], query, body)
        return 405, None, None

    def _roles(self, realm: dict[str, Any], method: str, rest: list[str], body: Any) -> tuple[int, Any, str | None]:
        if not rest and method == "GET":
            return 200, list(realm["roles"].values()), None
        if not rest and method == "POST":
            if body["name"] in realm["roles"]:
                return 409, {"errorMessage": f"Role with name {body['name']} already exists"}, None
            self._add_role(realm, body)
            return 201, None, f"{self.url}/roles/{body['name']}"
        if len(rest) == 1 and method == "PUT" and rest[0] in realm["roles"]:
            realm["roles"][rest[0]]["description"] = body.get("description")
            return 204, None, None
        return 404, None, None

    def _groups(
        self, realm: dict[str, Any], method: str, rest: list[str], query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any, str | None]:
        if not rest and method == "GET":
            full = query.get("briefRepresentation") == ["false"]
            out = []
            for gid, g in realm["groups"].items():
                rep = {"id": gid, "name": g["name"], "path": "/" + g["name"], "subGroupCount": 0, "subGroups": []}
                if full:
                    rep |= {"attributes": g["attributes"], "realmRoles": sorted(g["roles"])}
                out.append(rep)
            return 200, out, None
        if not rest and method == "POST":
            if any(g["name"] == body["name"] for g in realm["groups"].values()):
                return 409, {"errorMessage": f"Top level group named '{body['name']}' already exists."}, None
            gid = self._add_group(realm, body)
            return 201, None, f"{self.url}/groups/{gid}"
        if not rest or rest[0] not in realm["groups"]:
            return 404, {"error": "Could not find group by id"}, None
        gid, group = rest[0], realm["groups"][rest[0]]
        if len(rest) == 1 and method == "PUT":
            group["name"] = body["name"]
            if body.get("attributes") is not None:
                group["attributes"] = copy.deepcopy(body["attributes"])
            return 204, None, None
        if len(rest) == 1 and method == "DELETE":
            del realm["groups"][gid], realm["members"][gid]
            return 204, None, None
        if rest[1:] == ["role-mappings", "realm"]:
            if method == "GET":
                return 200, [realm["roles"][n] for n in sorted(group["roles"])], None
            by_id = {r["id"]: n for n, r in realm["roles"].items()}
            names = {by_id[r["id"]] for r in body}
            if method == "POST":
                group["roles"] |= names
            elif method == "DELETE":
                group["roles"] -= names
            return 204, None, None
        return 404, None, None

    def _clients(
        self, realm: dict[str, Any], method: str, rest: list[str], query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any, str | None]:
        if not rest and method == "GET":
            wanted = query.get("clientId", [None])[0]
            return 200, [c["rep"] for c in realm["clients"].values() if wanted is None or c["rep"]["clientId"] == wanted], None
        if not rest and method == "POST":
            if any(c["rep"]["clientId"] == body["clientId"] for c in realm["clients"].values()):
                return 409, {"errorMessage": f"Client {body['clientId']} already exists"}, None
            cid = self._add_client(realm, body)
            return 201, None, f"{self.url}/clients/{cid}"
        if not rest or rest[0] not in realm["clients"]:
            return 404, {"error": "Could not find client"}, None
        client = realm["clients"][rest[0]]
        if len(rest) == 1 and method == "GET":
            return 200, client["rep"], None
        if len(rest) == 1 and method == "PUT":
            attributes = {**client["rep"]["attributes"], **(body.get("attributes") or {})}
            client["rep"].update({k: v for k, v in body.items() if k != "protocolMappers"})
            client["rep"]["attributes"] = attributes
            return 204, None, None
        if rest[1:] == ["client-secret"] and method == "GET":
            return 200, {"type": "secret", "value": client["rep"].get("secret")}, None
        if rest[1:2] == ["protocol-mappers"] and rest[2:3] == ["models"]:
            if len(rest) == 3 and method == "GET":
                return 200, list(client["mappers"].values()), None
            if len(rest) == 3 and method == "POST":
                mid = str(uuid.uuid4())
                client["mappers"][mid] = {**body, "id": mid}
                return 201, None, f"{self.url}/models/{mid}"
            if len(rest) == 4 and method == "PUT" and rest[3] in client["mappers"]:
                client["mappers"][rest[3]] = {**body, "id": rest[3]}
                return 204, None, None
        return 404, None, None


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> dict[str, str]:
    """A local CA and Keycloak's server certificate for 127.0.0.1, as nina's PKI would issue it."""
    ca_key = localpki.generate_key().private_key_pem
    ca = localpki.self_signed_ca(ca_key, facts.CA_SUBJECT, 48, facts.CA_CERT_USES)
    key = localpki.generate_key().private_key_pem
    csr = localpki.cert_request(key, {"common_name": "idp"}, ["idp", "localhost"], ["10.100.0.11", facts.LOOPBACK])
    other_key = localpki.generate_key().private_key_pem
    other_csr = localpki.cert_request(other_key, {"common_name": "impostor"}, ["localhost"], [facts.LOOPBACK])
    return {
        "cert": localpki.sign_certificate(csr, ca_key, ca, 48, facts.SERVER_CERT_USES),
        "key": key,
        "other_cert": localpki.sign_certificate(other_csr, ca_key, ca, 48, facts.SERVER_CERT_USES),
        "other_key": other_key,
    }


@pytest.fixture
def standin(pki, tmp_path) -> Iterator[StandIn]:
    s = StandIn(pki["cert"], pki["key"], tmp_path)
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()


def _cfg(**update: Any) -> config.StackConfig:
    from conftest import render_raw_configs

    raw = copy.deepcopy(render_raw_configs()["multi-tenancy"])
    raw["researcher_access"] = {"public_domain": "fl.example.edu.au", "acme_email": "fl-ops@example.edu.au"}
    raw["keycloak"] = {"sha256": "ab" * 32}
    raw["hosts"] = [{"name": "gateway", "roles": ["bastion", "proxy"]}, {"name": "idp", "roles": ["keycloak", "jupyterhub"]}]
    raw.update(update)
    return config.load_config(raw)


def realm_file(tmp_path: Path, tenancies: list[str] | None = None, secrets: dict[str, str] | None = None, **update: Any) -> Path:
    cfg = _cfg(**update)
    names = tenancies if tenancies is not None else [t.name for t in build_plan(cfg).tenancies]
    path = tmp_path / f"realm-{uuid.uuid4().hex[:8]}.json"
    path.write_text(keycloak.realm_json(cfg, names, secrets or SECRETS))
    return path


@pytest.fixture
def run(standin, pki, tmp_path, monkeypatch, capsys):
    """run(realm file, **options) -> (exit code, stdout, stderr lines) of nina-keycloak-realm."""
    cafile = tmp_path / "server.pem"
    cafile.write_text(pki["cert"])
    monkeypatch.setenv("KC_BOOTSTRAP_ADMIN_USERNAME", ADMIN)
    monkeypatch.setenv("KC_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)

    def _run(path: Path, wait: float = 5, url: str | None = None, cafile_path: Path = cafile) -> tuple[int, str, list[str]]:
        capsys.readouterr()
        code = kr.main(
            ["--realm-file", str(path), "--url", url or standin.url, "--health-url", f"{standin.url}/health/ready",
             "--cafile", str(cafile_path), "--wait", str(wait)]
        )  # fmt: skip
        out = capsys.readouterr()
        return code, out.out, out.err.strip().splitlines()

    return _run


# --- tests ------------------------------------------------------------------------------------


def test_creates_the_realm_then_a_second_apply_only_reads(standin, run, tmp_path):
    path = realm_file(tmp_path)
    code, out, err = run(path)
    assert (code, err) == (0, []), err
    assert out.strip() == "created realm nina-fl"
    assert standin.writes() == [("POST", "/admin/realms")]
    realm = standin.realms["nina-fl"]
    assert sorted(realm["roles"]) == sorted(facts.KEYCLOAK_ROLES)
    assert sorted(g["name"] for g in realm["groups"].values()) == ["jupyter-admins", "tenancy-alpha", "tenancy-beta"]
    assert standin.client("nina-fl", "jupyterhub")["rep"]["secret"] == SECRETS["jupyterhub"]
    standin.log.clear()
    code, out, err = run(path)
    assert (code, err) == (0, []), err
    assert "already as the file says" in out
    assert standin.writes() == [], standin.writes()
    assert ("POST", "/realms/master/protocol/openid-connect/token") in standin.log  # a login is the only POST


def test_an_existing_realm_is_completed_in_place(standin, run, tmp_path):
    """A realm made by hand (or by an older file): missing roles, groups, mappings and mappers are
    added, changed settings put back, and nothing else is touched."""
    doc = json.loads(realm_file(tmp_path).read_text())
    partial = copy.deepcopy(doc)
    partial["roles"]["realm"] = partial["roles"]["realm"][:1]
    partial["roles"]["realm"][0]["description"] = "old words"
    partial["groups"] = [g for g in partial["groups"] if g["name"] != "tenancy-beta"]
    partial["groups"][0]["realmRoles"] = ["jupyter_admin"]
    partial["groups"][1]["attributes"] = {"nina_tenancy": ["alpha"], "note": ["kept"]}
    partial["clients"][0]["protocolMappers"] = partial["clients"][0]["protocolMappers"][:1]
    partial["displayName"] = "renamed by hand"
    standin.create_realm(partial)
    standin._add_role(standin.realms["nina-fl"], {"name": "offline_access", "description": "Keycloak's own"})
    standin.realms["nina-fl"]["groups"][standin.group_id("nina-fl", "jupyter-admins")]["roles"].add("offline_access")
    (tmp_path / "doc.json").write_text(json.dumps(doc))
    code, _, err = run(tmp_path / "doc.json")
    assert (code, err) == (0, []), err
    realm = standin.realms["nina-fl"]
    assert realm["settings"]["displayName"] == doc["displayName"]
    assert {n: r["description"] for n, r in realm["roles"].items()} == {
        **{r["name"]: r["description"] for r in doc["roles"]["realm"]},
        "offline_access": "Keycloak's own",
    }
    groups = {g["name"]: g for g in realm["groups"].values()}
    assert groups["jupyter-admins"]["roles"] == {*facts.KEYCLOAK_ROLES, "offline_access"}  # not the file's: left alone
    assert groups["tenancy-alpha"]["attributes"] == {"nina_tenancy": ["alpha"], "note": ["kept"]}
    assert groups["tenancy-beta"]["roles"] == {"jupyter_user", "superlink_user"}
    mappers = {m["name"] for m in standin.client("nina-fl", "jupyterhub")["mappers"].values()}
    assert mappers == {"groups", "realm roles"}
    standin.log.clear()
    assert run(tmp_path / "doc.json")[0] == 0 and standin.writes() == []


def test_a_removed_tenancy_loses_its_group_and_nobody_else_loses_anything(standin, run, tmp_path):
    assert run(realm_file(tmp_path))[0] == 0
    realm = standin.realms["nina-fl"]
    standin.members("nina-fl", "tenancy-alpha").add("alice")
    standin.members("nina-fl", "tenancy-beta").update({"bob", "carol"})
    standin.members("nina-fl", "jupyter-admins").add("bob")
    # Groups an administrator made by hand, one with the prefix but without nina's attribute.
    for name in ("staff", "tenancy-visitors"):
        realm["members"][standin._add_group(realm, {"name": name})].add("dave")
    standin.log.clear()
    code, out, err = run(realm_file(tmp_path, tenancies=["alpha"]))
    assert "updated (1 writes: DELETE" in out
    assert (code, err) == (0, []), err
    beta = [p for m, p in standin.writes() if m == "DELETE"]
    assert len(beta) == 1 and standin.writes() == [("DELETE", beta[0])]
    assert sorted(g["name"] for g in realm["groups"].values()) == ["jupyter-admins", "staff", "tenancy-alpha", "tenancy-visitors"]
    assert standin.members("nina-fl", "tenancy-alpha") == {"alice"}
    assert standin.members("nina-fl", "jupyter-admins") == {"bob"}
    assert standin.members("nina-fl", "staff") == standin.members("nina-fl", "tenancy-visitors") == {"dave"}


def test_a_changed_client_secret_and_domain_are_updated_in_place(standin, run, tmp_path):
    assert run(realm_file(tmp_path))[0] == 0
    hub = standin.client("nina-fl", "jupyterhub")
    before_id, mapper_ids = hub["rep"]["id"], set(hub["mappers"])
    standin.log.clear()
    assert run(realm_file(tmp_path, secrets={**SECRETS, "jupyterhub": "k" * 40}))[0] == 0
    assert standin.writes() == [("PUT", f"/admin/realms/nina-fl/clients/{before_id}")]
    assert hub["rep"]["secret"] == "k" * 40 and set(hub["mappers"]) == mapper_ids
    standin.log.clear()
    moved = realm_file(tmp_path, secrets={**SECRETS, "jupyterhub": "k" * 40},
                       researcher_access={"public_domain": "fl.other.org", "acme_email": "ops@other.org"})  # fmt: skip
    assert run(moved)[0] == 0
    assert hub["rep"]["redirectUris"] == ["https://hub.fl.other.org/hub/oauth_callback"]
    assert ("PUT", f"/admin/realms/nina-fl/clients/{before_id}") in standin.writes()
    # A mapper changed by hand is put back, by its id.
    mid = next(m for m, v in hub["mappers"].items() if v["name"] == "groups")
    hub["mappers"][mid]["config"]["claim.name"] = "grps"
    standin.log.clear()
    assert run(moved)[0] == 0
    assert standin.writes() == [("PUT", f"/admin/realms/nina-fl/clients/{before_id}/protocol-mappers/models/{mid}")]
    assert hub["mappers"][mid]["config"]["claim.name"] == "groups"


def test_failures_end_in_one_line(standin, run, tmp_path, monkeypatch, pki):
    path = realm_file(tmp_path)
    monkeypatch.setenv("KC_BOOTSTRAP_ADMIN_PASSWORD", "wrong-password")
    code, _, err = run(path)
    assert code == 1 and len(err) == 1 and "HTTP 401" in err[0] and "KC_BOOTSTRAP_ADMIN" in err[0], err
    monkeypatch.setenv("KC_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
    standin.faults[("POST", "/admin/realms")] = 500
    code, _, err = run(path)
    assert code == 1 and err == [f'{kr.PROG}: error: POST /admin/realms: HTTP 500 Internal Server Error: {{"error":"injected"}}'], err
    standin.faults = {("GET", "/admin/realms/nina-fl"): "garbage"}
    code, _, err = run(path)
    assert code == 1 and len(err) == 1 and "not JSON" in err[0], err
    standin.faults = {}
    standin.ready = False
    code, _, err = run(path, wait=0.5)
    assert code == 1 and len(err) == 1 and "not ready after" in err[0] and "503" in err[0], err
    standin.ready = True
    code, _, err = run(path, url="https://127.0.0.1:1")
    assert code == 1 and len(err) == 1 and "cannot reach" in err[0], err
    # Another certificate than the one Keycloak was given: refused before any password is sent.
    other = tmp_path / "other.pem"
    other.write_text(pki["other_cert"])
    standin.log.clear()
    code, _, err = run(path, cafile_path=other)
    assert code == 1 and len(err) == 1 and "certificate" in err[0], err
    assert not any(p.endswith("/token") for _, p in standin.log)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = run(bad)
    assert code == 2 and len(err) == 1 and "is not JSON" in err[0], err
    monkeypatch.delenv("KC_BOOTSTRAP_ADMIN_USERNAME")
    code, _, err = run(path)
    assert code == 2 and len(err) == 1 and facts.KEYCLOAK_ENV in err[0], err


def test_a_hostile_answer_ends_in_one_line_and_the_token_stays_home(standin, run, tmp_path):
    """Keycloak runs as the keycloak user; this program as root, with the master realm's admin
    token. An answer that redirects elsewhere (here: plain HTTP on loopback) is not followed, so
    the token is never sent there; a huge or absurdly nested answer is refused in one line."""
    path = realm_file(tmp_path)
    assert run(path)[0] == 0
    seen: list[str | None] = []

    class Thief(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args: object) -> None:
            pass

    thief = http.server.ThreadingHTTPServer((facts.LOOPBACK, 0), Thief)
    threading.Thread(target=thief.serve_forever, daemon=True).start()
    try:
        standin.faults = {("GET", "/admin/realms/nina-fl/roles"): f"redirect:http://{facts.LOOPBACK}:{thief.server_port}/steal"}
        code, _, err = run(path)
        assert seen == []
        assert code == 1 and len(err) == 1 and "HTTP 302" in err[0], err
    finally:
        thief.shutdown()
        thief.server_close()
    for fault, words in (("huge", "larger than"), ("deep", "nested")):
        standin.faults = {("GET", "/admin/realms/nina-fl/roles"): fault}
        code, _, err = run(path)
        assert code == 1 and len(err) == 1 and words in err[0], (fault, err)
