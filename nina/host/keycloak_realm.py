"""nina-keycloak-realm: the realm of facts.KEYCLOAK_REALM_FILE applied to the running Keycloak (manual 4.1.2.10).

  nina-keycloak-realm [--realm-file FILE] [--url URL] [--health-url URL] [--cafile PEM] [--wait SECONDS]

Run as root by facts.KEYCLOAK_REALM_UNIT after keycloak.service, re-run by every `<host>-keycloak`
delivery. It waits for Keycloak's readiness (facts.KEYCLOAK_MANAGEMENT_PORT, /health/ready), takes
an admin token (master realm, client facts.KEYCLOAK_ADMIN_CLIENT, password grant with the bootstrap
admin of KC_BOOTSTRAP_ADMIN_USERNAME/PASSWORD, which systemd reads from facts.KEYCLOAK_ENV), all
over HTTPS verified against the certificate the delivery gave Keycloak (--cafile, trusted as it
is: the local CA's leaf for this host, so nothing else on the host can answer in its place), and:

- creates the realm from the file if it is missing (POST /admin/realms, the whole representation);
- otherwise updates it in place, keeping its users and their group memberships:
  realm settings (the file's top-level values) by PUT /admin/realms/{realm} when one differs;
  realm roles created if missing, their descriptions updated (roles are never deleted);
  groups created if missing, the file's attributes set and its realm-role mappings added (a
  mapping to one of the file's roles that the file does not give the group is removed; others
  are left alone); tenancy groups (name facts.KEYCLOAK_TENANCY_GROUP_PREFIX..., attribute
  `nina_tenancy`) that the file no longer has are deleted, with only their own memberships;
  OIDC clients created, or updated by clientId (settings, the file's attributes, secret,
  protocol mappers by name).

Nothing is written where Keycloak already holds what the file says: a second run with the same
file only reads. Admin REST API (Keycloak 26): /admin/realms/{realm}, .../roles, .../roles/{name},
.../groups, .../groups/{id}, .../groups/{id}/role-mappings/realm, .../clients?clientId=,
.../clients/{id}, .../clients/{id}/client-secret, .../clients/{id}/protocol-mappers/models[/{id}].
Errors (401, 5xx, unreachable, not JSON, the wait running out) end with one line and exit 1.
A module of nina (nina.host): standard library and nina.facts only.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from nina import facts
from nina.host.failure import Failure, sayer

PROG = "nina-keycloak-realm"
TENANCY_ATTRIBUTE = "nina_tenancy"
# The parts of the realm file that are not realm settings: applied by their own endpoints.
NESTED = ("roles", "groups", "clients")
MAX_GROUPS = 10000
TIMEOUT = 30  # seconds for one request
# Keycloak is the keycloak user's; this runs as root with the admin token: an answer larger than
# this is refused (a realm of MAX_GROUPS groups is a few MB), and no redirect is followed.
MAX_ANSWER_BYTES = 32 << 20

say = sayer(PROG)


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are answers, not directions: the admin token goes to Keycloak's URL only."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None  # urllib then raises HTTPError with the 3xx


def _read_bounded(response: Any, what: str) -> bytes:
    raw = response.read(MAX_ANSWER_BYTES + 1)
    if len(raw) > MAX_ANSWER_BYTES:
        raise Failure(f"{what}: the answer is larger than {MAX_ANSWER_BYTES} bytes; refusing it")
    return bytes(raw)


class Api:
    """The admin REST API of one Keycloak over verified HTTPS; `writes` records every PUT/POST/DELETE."""

    def __init__(self, base: str, context: ssl.SSLContext) -> None:
        self.base = base.rstrip("/")
        self.context = context
        self.token: str | None = None
        self.writes: list[str] = []
        self.opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect())

    def call(self, method: str, path: str, body: Any = None, *, form: Mapping[str, str] | None = None, missing_ok: bool = False) -> Any:
        """One request; the decoded JSON answer (None for an empty one, or a 404 with missing_ok).
        POST answers with a Location header return {"id": its last segment}."""
        url = self.base + path
        headers = {"Accept": "application/json"}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token and form is None:
            headers["Authorization"] = f"Bearer {self.token}"
        what = f"{method} {path.split('?')[0]}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self.opener.open(request, timeout=TIMEOUT) as response:
                raw = _read_bounded(response, what)
                location = response.headers.get("Location")
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and missing_ok:
                return None
            detail = exc.read(200).decode("utf-8", "replace").replace("\n", " ").strip()
            hint = "; check KC_BOOTSTRAP_ADMIN_USERNAME/PASSWORD in " + facts.KEYCLOAK_ENV if exc.code == 401 else ""
            raise Failure(f"{what}: HTTP {exc.code} {exc.reason}{': ' + detail if detail else ''}{hint}") from None
        except urllib.error.URLError as exc:
            raise Failure(f"{what}: cannot reach {self.base}: {exc.reason}") from None
        except (OSError, ValueError) as exc:
            raise Failure(f"{what}: {exc}") from None
        if method != "GET" and form is None:
            self.writes.append(what)
        if not raw.strip():
            return {"id": location.rstrip("/").rsplit("/", 1)[-1]} if location else None
        try:
            return json.loads(raw)
        except ValueError:
            raise Failure(f"{what}: the answer is not JSON: {raw[:80]!r}") from None
        except RecursionError:
            raise Failure(f"{what}: the answer is JSON nested too deeply to be Keycloak's") from None

    def login(self, username: str, password: str) -> None:
        answer = self.call(
            "POST",
            "/realms/master/protocol/openid-connect/token",
            form={"grant_type": "password", "client_id": facts.KEYCLOAK_ADMIN_CLIENT, "username": username, "password": password},
        )
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise Failure("the token endpoint answered without an access_token")
        self.token = token


def tls_context(cafile: str) -> ssl.SSLContext:
    """Verify the server (and its name: 127.0.0.1 is in the certificate) against `cafile`, which
    may be the server's own certificate: a leaf given as trusted is a trust anchor of its own."""
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise Failure(f"cannot load {cafile}: {exc}") from None
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def wait_ready(url: str, context: ssl.SSLContext, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    last = "no answer yet"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10, context=context) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise Failure(f"{url}: {reason.verify_message or reason}: not the certificate Keycloak was given") from None
            last = str(reason)
        if time.monotonic() >= deadline:
            raise Failure(f"Keycloak is not ready after {seconds:.0f}s ({url}: {last}); see `journalctl -u {facts.KEYCLOAK_UNIT}`")
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def _same_list(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list) and all(isinstance(x, str) for x in a + b):
        return sorted(a) == sorted(b)
    return bool(a == b)


def _differs(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return any(not _same_list(current.get(k), v) for k, v in wanted.items())


def apply_roles(api: Api, realm: str, wanted: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    base = f"/admin/realms/{_q(realm)}/roles"
    have = {r["name"]: r for r in api.call("GET", base)}
    created = False
    for role in wanted:
        current = have.get(role["name"])
        if current is None:
            api.call("POST", base, role)
            created = True
        elif (current.get("description") or "") != role.get("description", ""):
            api.call("PUT", f"{base}/{_q(role['name'])}", {**current, "description": role.get("description", "")})
    return {r["name"]: r for r in api.call("GET", base)} if created else have


def apply_groups(api: Api, realm: str, wanted: list[dict[str, Any]], roles: dict[str, dict[str, Any]], file_roles: set[str]) -> None:
    base = f"/admin/realms/{_q(realm)}/groups"
    have = {g["name"]: g for g in api.call("GET", f"{base}?briefRepresentation=false&first=0&max={MAX_GROUPS}")}
    names = {g["name"] for g in wanted}
    for group in wanted:
        attributes = group.get("attributes") or {}
        current = have.get(group["name"])
        if current is None:
            gid = api.call("POST", base, {"name": group["name"], "attributes": attributes})["id"]
            mapped: set[str] = set()
        else:
            gid = current["id"]
            now = current.get("attributes") or {}
            if _differs(now, attributes):
                api.call("PUT", f"{base}/{_q(gid)}", {"id": gid, "name": group["name"], "attributes": {**now, **attributes}})
            mapped = {r["name"] for r in api.call("GET", f"{base}/{_q(gid)}/role-mappings/realm")}
        want = set(group.get("realmRoles") or [])
        unknown = want - set(roles)
        if unknown:
            raise Failure(f"group {group['name']} names realm roles the realm does not have: {', '.join(sorted(unknown))}", 2)
        if want - mapped:
            api.call("POST", f"{base}/{_q(gid)}/role-mappings/realm", [_role_ref(roles[n]) for n in sorted(want - mapped)])
        extra = (mapped & file_roles) - want
        if extra:
            api.call("DELETE", f"{base}/{_q(gid)}/role-mappings/realm", [_role_ref(roles[n]) for n in sorted(extra)])
    for name, current in sorted(have.items()):
        gone_tenancy = name.startswith(facts.KEYCLOAK_TENANCY_GROUP_PREFIX) and TENANCY_ATTRIBUTE in (current.get("attributes") or {})
        if name not in names and gone_tenancy:
            api.call("DELETE", f"{base}/{_q(current['id'])}")


def _role_ref(role: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": role["id"], "name": role["name"]}


def apply_clients(api: Api, realm: str, wanted: list[dict[str, Any]]) -> None:
    base = f"/admin/realms/{_q(realm)}/clients"
    for client in wanted:
        found = api.call("GET", f"{base}?clientId={_q(client['clientId'])}")
        if not found:
            api.call("POST", base, client)
            continue
        cid = found[0]["id"]
        current = api.call("GET", f"{base}/{_q(cid)}")
        settings = {k: v for k, v in client.items() if k not in ("protocolMappers", "secret", "attributes")}
        attributes = client.get("attributes") or {}
        update: dict[str, Any] = {}
        if _differs(current, settings) or _differs(current.get("attributes") or {}, attributes):
            update = {**settings, "attributes": attributes}
        if "secret" in client:
            secret = api.call("GET", f"{base}/{_q(cid)}/client-secret") or {}
            if secret.get("value") != client["secret"]:
                update = {**settings, **update, "secret": client["secret"]}
        if update:
            api.call("PUT", f"{base}/{_q(cid)}", {"id": cid, **update})
        mappers = {m["name"]: m for m in api.call("GET", f"{base}/{_q(cid)}/protocol-mappers/models")}
        for mapper in client.get("protocolMappers") or []:
            now = mappers.get(mapper["name"])
            if now is None:
                api.call("POST", f"{base}/{_q(cid)}/protocol-mappers/models", mapper)
            elif now.get("protocolMapper") != mapper["protocolMapper"] or _differs(now.get("config") or {}, mapper.get("config") or {}):
                api.call("PUT", f"{base}/{_q(cid)}/protocol-mappers/models/{_q(now['id'])}", {**mapper, "id": now["id"]})


def apply(api: Api, doc: Mapping[str, Any]) -> str:
    """Make Keycloak hold `doc` (a RealmRepresentation as nina.keycloak.realm builds it)."""
    realm = doc["realm"]
    current = api.call("GET", f"/admin/realms/{_q(realm)}", missing_ok=True)
    if current is None:
        api.call("POST", "/admin/realms", dict(doc))
        return f"created realm {realm}"
    settings = {k: v for k, v in doc.items() if k not in NESTED}
    if _differs(current, settings):
        api.call("PUT", f"/admin/realms/{_q(realm)}", settings)
    wanted_roles = (doc.get("roles") or {}).get("realm") or []
    roles = apply_roles(api, realm, wanted_roles)
    apply_groups(api, realm, doc.get("groups") or [], roles, {r["name"] for r in wanted_roles})
    apply_clients(api, realm, doc.get("clients") or [])
    return f"realm {realm} " + (
        f"updated ({len(api.writes)} writes: {', '.join(api.writes)})" if api.writes else "already as the file says"
    )


def load(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise Failure(f"cannot read {path}: {exc.strerror}", 2) from None
    except ValueError as exc:
        raise Failure(f"{path} is not JSON: {exc}", 2) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("realm"), str):
        raise Failure(f'{path} is not a realm representation (no "realm" name)', 2)
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Apply the realm file to the running Keycloak, in place.")
    parser.add_argument("--realm-file", default=facts.KEYCLOAK_REALM_FILE)
    parser.add_argument("--url", default=f"https://{facts.LOOPBACK}:{facts.KEYCLOAK_PORT}", help="Keycloak's HTTPS base URL")
    parser.add_argument("--health-url", default=f"https://{facts.LOOPBACK}:{facts.KEYCLOAK_MANAGEMENT_PORT}/health/ready")
    parser.add_argument(
        "--cafile", default=f"{facts.KEYCLOAK_CERTS}/{facts.SERVER_CERT_FILE}", help="what the server's certificate is verified with"
    )
    parser.add_argument("--wait", type=float, default=facts.KEYCLOAK_READY_WAIT_SECONDS, help="seconds to wait for readiness")
    args = parser.parse_args(argv)
    try:
        doc = load(args.realm_file)
        username, password = os.environ.get("KC_BOOTSTRAP_ADMIN_USERNAME"), os.environ.get("KC_BOOTSTRAP_ADMIN_PASSWORD")
        if not username or not password:
            raise Failure(
                f"KC_BOOTSTRAP_ADMIN_USERNAME and KC_BOOTSTRAP_ADMIN_PASSWORD are not set (systemd reads them from {facts.KEYCLOAK_ENV})", 2
            )
        context = tls_context(args.cafile)
        wait_ready(args.health_url, context, args.wait)
        api = Api(args.url, context)
        api.login(username, password)
        print(apply(api, doc), flush=True)
    except Failure as exc:
        say(f"error: {exc}")
        return exc.code
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        say(f"error: Keycloak answered with something this program does not understand ({type(exc).__name__}: {exc})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
