"""JupyterHub's configuration (manual 4.1.2.10-4.1.2.15) as data.

`inputs(plan, host)` gathers what the hub needs from the plan (public and internal URLs,
tenancies and their SuperLinks, images); `settings(inputs, client_secret)` turns it into the
settings JupyterHub loads: GenericOAuthenticator against Keycloak (the browser goes to the
public authorize URL; the hub calls the token and userinfo endpoints on the Keycloak host's
fixed address, verified with the local CA), DockerSpawner (images, per-user volumes, a
network per tenancy), configurable-http-proxy and the idle culler. `files(...)` gives every
file of the hub's config directory: `jupyterhub_config.py` (a fixed template), the settings
as JSON, the runtime module (`nina/jupyterhub_runtime.py`, the only logic run inside the
hub), the CA certificate, and per tenancy the CA and a flwr `config.toml` whose connection,
named for the tenancy, is its SuperLink's Control API, so that `flwr run . <tenancy>` works
from a notebook terminal.

`realm_client(inputs)` and `realm_groups(plan)` are what the Keycloak realm must hold for this
hub (its client, redirect URI, group claim, groups); the tests configure their OIDC provider
from them.

`jupyterhub_delivery(plan, client_secret, ca, cert, key)` is the hub host's `<host>-jupyterhub`
payload: those files with their owners, the hub's TLS key pair (`certificate(plan)` is what the
local CA signs for it), `jupyterhub.service`, the host's notebook firewall
(`nina.notebook_firewall.firewall_files`), and two oneshot steps every delivery runs
(`nina-install-files` "run"): the tenancies' docker networks and the notebook images' pre-pull
(`nina.host.hub_docker`, from `docker_plan_json`) followed by the builds of the derived notebook
images (`notebook_builds`: per tenancy and configured image, the image with the tenancy's
training-environment lock in a venv; their contexts under facts.JUPYTERHUB_BUILDS). The settings
map each image label to the tenancy's derived image, which the pre-spawn hook makes the spawner
run. Only a change of the hub's own files restarts
the hub (`restart_when`); only a change of the firewall's restarts the firewall.

Pure: never imports pulumi; deterministic output.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from nina import config, facts, flwrcli, keycloak, render, services, templating
from nina.plan import Certificate, Host, Plan, host_certificate

RUNTIME_SOURCE = Path(__file__).with_name("jupyterhub_runtime.py")
AUTHENTICATOR = "oauthenticator.generic.GenericOAuthenticator"
SPAWNER = "dockerspawner.DockerSpawner"
PROXY = "jupyterhub.proxy.ConfigurableHTTPProxy"
IDLE_CULLER = "idle-culler"
OPERATOR_ROLE = "nina-operator"
OPERATOR_SCOPES = ("admin-ui", "list:users", "read:users", "read:users:activity", "read:servers", "delete:servers", "read:groups")
SCOPES = ("openid", "profile", "email", facts.KEYCLOAK_GROUPS_CLAIM)


def tenancy_group(tenancy: str) -> str:
    """The realm group whose members use `tenancy`'s federation from JupyterHub (nina.keycloak's)."""
    return keycloak.tenancy_group(tenancy)


def tenancy_network(tenancy: str) -> str:
    """The docker network of `tenancy`'s notebook containers."""
    return f"{facts.JUPYTERHUB_NETWORK_PREFIX}{tenancy}"


def tenancy_bridge(tenancy: str) -> str:
    """The Linux bridge of `tenancy`'s docker network (`com.docker.network.bridge.name`): a
    fixed name of at most 15 characters (IFNAMSIZ - 1), which the hub host's firewall matches."""
    digest = hashlib.sha256(tenancy.encode("utf-8")).hexdigest()[: facts.JUPYTERHUB_BRIDGE_HASH_CHARS]
    return f"{facts.JUPYTERHUB_BRIDGE_PREFIX}{digest}"


def realm_path(realm: str = facts.KEYCLOAK_REALM) -> str:
    return f"/realms/{realm}/protocol/openid-connect"


@dataclass(frozen=True)
class TenancyAccess:
    name: str
    control_address: str  # the SuperLink's Control API, ip:port
    environment: str = ""  # its training environment's name
    lock: str = ""  # ... and that environment's committed lock, which its notebook images install


@dataclass(frozen=True)
class HubInputs:
    """Everything the hub's settings derive from (the tests replace the URLs and paths)."""

    public_url: str  # https://hub.<domain>, what researchers' browsers see
    keycloak_public_url: str  # https://auth.<domain>: the authorize URL's base
    keycloak_internal_url: str  # https://<keycloak fixed ip>:8443: token and userinfo
    bind_url: str  # where the proxy listens for nginx
    hub_bind_url: str  # the hub's API, for the notebook containers
    tenancies: tuple[TenancyAccess, ...]
    images: tuple[str, ...]
    realm: str = facts.KEYCLOAK_REALM
    client_id: str = facts.JUPYTERHUB_CLIENT_ID
    admin_group: str = facts.KEYCLOAK_ADMIN_GROUP
    idle_timeout: int = facts.JUPYTERHUB_IDLE_TIMEOUT
    config_dir: str = facts.JUPYTERHUB_CONFIG
    state_dir: str = facts.JUPYTERHUB_OPT
    tenancies_dir: str = facts.JUPYTERHUB_TENANCIES
    python: str = f"{facts.JUPYTER_VENV}/bin/python3"
    proxy_command: tuple[str, ...] = (facts.JUPYTERHUB_PROXY_BIN,)
    # The proxy's TLS key pair (paths on the host); None: plain HTTP (the tests, on loopback).
    ssl_cert: str | None = None
    ssl_key: str | None = None

    @property
    def callback_url(self) -> str:
        return f"{self.public_url}/hub/oauth_callback"

    @property
    def ca_file(self) -> str:
        return posixpath.join(self.config_dir, facts.CA_CERT_FILE)

    def tenancy_dir(self, tenancy: str) -> str:
        return posixpath.join(self.tenancies_dir, tenancy)


def jupyterhub_host(plan: Plan) -> Host:
    hosts = [h for h in plan.hosts if "jupyterhub" in h.roles]
    if len(hosts) != 1:
        raise ValueError(f"the plan has {len(hosts)} hosts with role jupyterhub; JupyterHub needs exactly one")
    return hosts[0]


def keycloak_host(plan: Plan) -> Host:
    hosts = [h for h in plan.hosts if "keycloak" in h.roles]
    if len(hosts) != 1:
        raise ValueError(f"the plan has {len(hosts)} hosts with role keycloak; JupyterHub needs exactly one")
    return hosts[0]


def inputs(plan: Plan) -> HubInputs:
    """The hub's inputs from the plan: needs nina:researcher_access and one host each with the
    roles jupyterhub and keycloak."""
    access = plan.cfg.researcher_access
    if access is None:
        raise ValueError("JupyterHub needs nina:researcher_access (its public URL and Keycloak's)")
    hub = jupyterhub_host(plan)
    return HubInputs(
        public_url=access.public_url("jupyterhub"),
        keycloak_public_url=access.public_url("keycloak"),
        keycloak_internal_url=f"https://{keycloak_host(plan).fixed_ip}:{facts.KEYCLOAK_PORT}",
        bind_url=f"https://{hub.fixed_ip}:{facts.JUPYTERHUB_PORT}",
        hub_bind_url=f"http://{hub.fixed_ip}:{facts.JUPYTERHUB_HUB_PORT}",
        tenancies=tuple(TenancyAccess(t.name, t.control_address, t.environment.name, t.environment_lock) for t in plan.tenancies),
        images=tuple(access.notebook_images),
        realm=plan.cfg.keycloak.realm,
        ssl_cert=facts.JUPYTERHUB_SSL_CERT,
        # The key file (facts.JUPYTERHUB_SSL_KEY) is root's; systemd hands it to the hub here.
        ssl_key=facts.JUPYTERHUB_KEY_CREDENTIAL_PATH,
    )


def realm_groups(plan: Plan) -> list[str]:
    """The realm groups this hub relies on: one per tenancy, and the admins'."""
    return [*(tenancy_group(t.name) for t in plan.tenancies), facts.KEYCLOAK_ADMIN_GROUP]


def realm_client(hub: HubInputs) -> dict[str, Any]:
    """JupyterHub's client as the realm must define it (Keycloak's representation's names)."""
    return {
        "clientId": hub.client_id,
        "protocol": "openid-connect",
        "publicClient": False,
        "standardFlowEnabled": True,
        "redirectUris": [hub.callback_url],
        "webOrigins": [hub.public_url],
        # The groups claim, in userinfo, by group name (Keycloak's oidc-group-membership-mapper).
        "groupsClaim": facts.KEYCLOAK_GROUPS_CLAIM,
        "fullGroupPath": False,
    }


def _image_name(image: str) -> str:
    """The label researchers pick an image by: its last path part, without tag or digest
    (nina.config, which refuses images that share one)."""
    return config.image_name(image)


@dataclass(frozen=True)
class NotebookBuild:
    """The derived notebook image of one (tenancy, configured image): the files it is built from
    (file name -> text: its Dockerfile `Dockerfile.<image name>`, the tenancy's lock, the
    kernelspec; the tenancy's images share one context directory, so the lock is delivered once
    per tenancy) and a tag derived from the base reference and those files, so the same config
    gives the same tag and any change of the lock (or of the recipe) a new one."""

    tenancy: str
    base: str  # the configured image (nina:researcher_access.notebook_images)
    files: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        return _image_name(self.base)

    @property
    def context(self) -> str:
        """Where the delivery writes the tenancy's build context on the hub host."""
        return posixpath.join(facts.JUPYTERHUB_BUILDS, self.tenancy)

    @property
    def dockerfile(self) -> str:
        return dockerfile_name(self.label)

    @property
    def image(self) -> str:
        digest = hashlib.sha256(self.base.encode("utf-8"))
        for name, text in self.files:
            digest.update(f"\0{name}\0{len(text.encode('utf-8'))}\0".encode())
            digest.update(text.encode("utf-8"))
        return f"{facts.JUPYTERHUB_BUILD_REPO}/{self.tenancy}/{self.label}:{digest.hexdigest()[: facts.JUPYTERHUB_BUILD_TAG_CHARS]}"


def kernelspec(tenancy: TenancyAccess) -> dict[str, Any]:
    """The Jupyter kernelspec of the derived image's venv (ipykernel is the base image's, seen
    through --system-site-packages)."""
    return {
        "argv": [f"{facts.NOTEBOOK_ENV}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python 3 (nina: {tenancy.name}, environment {tenancy.environment or 'default'})",
        "language": "python",
        "metadata": {"debugger": True},
    }


def notebook_dockerfile(tenancy: TenancyAccess, base: str) -> str:
    return (
        _env()
        .get_template("Dockerfile.notebook.j2")
        .render(
            tenancy=tenancy.name,
            environment=tenancy.environment or "default",
            base=base,
            kernel_dir=posixpath.join(facts.NOTEBOOK_KERNELS_DIR, facts.NOTEBOOK_KERNEL_NAME),
            uid_ref="${" + facts.NOTEBOOK_UID_VARIABLE + "}",
        )
    )


def dockerfile_name(label: str) -> str:
    return f"{facts.JUPYTERHUB_BUILD_FILES['dockerfile']}.{label}"


def notebook_build(tenancy: TenancyAccess, base: str) -> NotebookBuild:
    if not tenancy.lock:
        raise ValueError(f"tenancy {tenancy.name!r} has no training environment lock: its notebook images cannot install it")
    names = facts.JUPYTERHUB_BUILD_FILES
    files = {
        dockerfile_name(_image_name(base)): notebook_dockerfile(tenancy, base),
        names["lock"]: tenancy.lock,
        names["kernel"]: json.dumps(kernelspec(tenancy), indent=2, sort_keys=True) + "\n",
    }
    return NotebookBuild(tenancy.name, base, tuple(sorted(files.items())))


def notebook_builds(hub: HubInputs) -> list[NotebookBuild]:
    """One derived image per (tenancy, configured image), in the plan's tenancy order and the
    images' configured order."""
    return [notebook_build(t, image) for t in hub.tenancies for image in hub.images]


def _tenancy_settings(hub: HubInputs, tenancy: TenancyAccess) -> dict[str, Any]:
    directory = hub.tenancy_dir(tenancy.name)
    builds = [notebook_build(tenancy, image) for image in hub.images]
    return {
        "name": tenancy.name,
        # What the pre-spawn hook makes the spawner run: the image label the researcher picks
        # (allowed_images' keys) -> this tenancy's derived image; and the default's.
        "images": {b.label: b.image for b in builds},
        "image": builds[0].image,
        "group": tenancy_group(tenancy.name),
        "network": tenancy_network(tenancy.name),
        "bridge": tenancy_bridge(tenancy.name),  # what the pre-spawn hook checks docker has (nina.notebook_firewall)
        "environment": {
            "FLWR_HOME": facts.NOTEBOOK_FLWR_HOME,
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "NINA_TENANCY": tenancy.name,
            "NINA_FEDERATION": tenancy.name,
            "NINA_CA_CERT": facts.NOTEBOOK_CA_CERT,
        },
        "volumes": {
            posixpath.join(directory, facts.FLWR_CONFIG_FILE): {
                "bind": posixpath.join(facts.NOTEBOOK_FLWR_HOME, facts.FLWR_CONFIG_FILE),
                "mode": "ro",
            },
            posixpath.join(directory, facts.CA_CERT_FILE): {"bind": facts.NOTEBOOK_CA_CERT, "mode": "ro"},
        },
    }


def settings(hub: HubInputs, client_secret: str) -> dict[str, Any]:
    """The settings file's content: `traits` (class -> trait -> value) and `tenancies`."""
    if not client_secret:
        raise ValueError("the JupyterHub client secret is empty")
    images = {_image_name(i): i for i in hub.images}
    if len(images) != len(hub.images):
        raise ValueError(f"notebook images {list(hub.images)} share a name; each needs its own last path part")
    oidc = realm_path(hub.realm)
    state = hub.state_dir
    jupyterhub: dict[str, Any] = {
        "authenticator_class": AUTHENTICATOR,
        "spawner_class": SPAWNER,
        "proxy_class": PROXY,
        "bind_url": hub.bind_url,
        "hub_bind_url": hub.hub_bind_url,
        "db_url": f"sqlite:///{posixpath.join(state, facts.JUPYTERHUB_STATE_FILES['db'])}",
        "cookie_secret_file": posixpath.join(state, facts.JUPYTERHUB_STATE_FILES["cookie_secret"]),
        "pid_file": posixpath.join(state, "jupyterhub.pid"),
        # Groups are read at login only (no auth state to refresh them): log in again this often.
        "cookie_max_age_days": facts.JUPYTERHUB_LOGIN_HOURS / 24,
        # A restart of the hub (a delivery that changed its files) leaves running notebooks alone.
        "cleanup_servers": False,
        "services": [
            {
                "name": IDLE_CULLER,
                "command": [hub.python, "-m", "jupyterhub_idle_culler", f"--timeout={hub.idle_timeout}"],
            }
        ],
        "load_roles": [
            # The realm's administrators operate the hub without becoming JupyterHub admins: an admin
            # may open any researcher's notebook (access:servers) or act as them (tokens), and so reach
            # every tenancy's Control API. Operators see users and servers and stop servers; no more.
            {
                "name": OPERATOR_ROLE,
                "description": "operators: see users and their servers, stop servers; never open or act as them",
                "scopes": list(OPERATOR_SCOPES),
                "groups": [hub.admin_group],
            },
            {
                "name": IDLE_CULLER,
                "description": "stop notebooks idle for longer than the timeout",
                "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
                "services": [IDLE_CULLER],
            },
        ],
    }
    if hub.ssl_cert and hub.ssl_key:
        jupyterhub |= {"ssl_cert": hub.ssl_cert, "ssl_key": hub.ssl_key}
    return {
        "traits": {
            "JupyterHub": jupyterhub,
            "ConfigurableHTTPProxy": {"command": list(hub.proxy_command)},
            "GenericOAuthenticator": {
                "client_id": hub.client_id,
                "client_secret": client_secret,
                "oauth_callback_url": hub.callback_url,
                "authorize_url": f"{hub.keycloak_public_url}{oidc}/auth",
                "token_url": f"{hub.keycloak_internal_url}{oidc}/token",
                "userdata_url": f"{hub.keycloak_internal_url}{oidc}/userinfo",
                "login_service": "NINA (Keycloak)",
                "scope": list(SCOPES),
                "username_claim": facts.USERNAME_CLAIM,
                "manage_groups": True,
                # oauthenticator 16+ (claim_groups_key is deprecated): a key of auth_state.
                "auth_state_groups_key": f"oauth_user.{facts.KEYCLOAK_GROUPS_CLAIM}",
                # Operators (the admins' group) may log in to operate the hub; only a tenancy group
                # lets anyone spawn (the pre-spawn hook refuses a user in none).
                "allowed_groups": [*(tenancy_group(t.name) for t in hub.tenancies), hub.admin_group],
                "validate_server_cert": True,
                # token and userinfo go to the Keycloak host itself: its certificate is the local CA's.
                "http_request_kwargs": {"ca_certs": hub.ca_file},
            },
            "DockerSpawner": {
                "allowed_images": images,
                "image": hub.images[0],
                "notebook_dir": facts.NOTEBOOK_DIR,
                "volumes": {facts.JUPYTERHUB_USER_VOLUME: facts.NOTEBOOK_DIR},
                "use_internal_ip": True,
                "remove": True,
                "pull_policy": "never",  # pre-pulled (manual 4.1.2.14): a spawn never waits for a registry
            },
        },
        "tenancies": [_tenancy_settings(hub, t) for t in hub.tenancies],
    }


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return templating.environment("jupyterhub")


def config_py() -> str:
    """`jupyterhub_config.py`: loads the settings file and the runtime module beside it."""
    return (
        _env()
        .get_template(f"{facts.JUPYTERHUB_CONFIG_FILE}.j2")
        .render(
            module=facts.JUPYTERHUB_RUNTIME_MODULE,
            settings_file=facts.JUPYTERHUB_SETTINGS_FILE,
            settings_literal=json.dumps(facts.JUPYTERHUB_SETTINGS_FILE),
        )
    )


def settings_json(hub: HubInputs, client_secret: str) -> str:
    return json.dumps(settings(hub, client_secret), indent=2, sort_keys=True) + "\n"


def tenancy_flwr_config(tenancy: TenancyAccess) -> str:
    """The flwr config.toml of `tenancy`'s notebooks: one connection, named for the tenancy."""
    return flwrcli.connection(tenancy.name, tenancy.control_address, facts.NOTEBOOK_CA_CERT)


def files(hub: HubInputs, client_secret: str, ca_cert_pem: str) -> dict[str, str]:
    """Every file of the hub's configuration: absolute path (under `hub`'s directories) -> text."""
    out = {
        posixpath.join(hub.config_dir, facts.JUPYTERHUB_CONFIG_FILE): config_py(),
        posixpath.join(hub.config_dir, facts.JUPYTERHUB_SETTINGS_FILE): settings_json(hub, client_secret),
        posixpath.join(hub.config_dir, f"{facts.JUPYTERHUB_RUNTIME_MODULE}.py"): RUNTIME_SOURCE.read_text(encoding="utf-8"),
        hub.ca_file: ca_cert_pem,
    }
    for t in hub.tenancies:
        out[posixpath.join(hub.tenancy_dir(t.name), facts.FLWR_CONFIG_FILE)] = tenancy_flwr_config(t)
        out[posixpath.join(hub.tenancy_dir(t.name), facts.CA_CERT_FILE)] = ca_cert_pem
    return out


# --- the hub host's delivery (`<host>-jupyterhub`) ------------------------------------------------


def certificate(plan: Plan) -> Certificate:
    """The hub's internal HTTPS certificate (its proxy, reached by nginx, which verifies the host
    name; nina.plan.host_certificate): the host's names and fixed address, no loopback names."""
    return host_certificate("jupyterhub", plan.cfg, jupyterhub_host(plan), loopback=False)


def docker_plan(tenancies: list[str], images: list[str], builds: Sequence[NotebookBuild] = ()) -> dict[str, Any]:
    """What nina.host.hub_docker makes: each tenancy's network (name and Linux bridge), the
    images it pulls, and the derived notebook images it builds (tag, base, context directory and
    Dockerfile in it)."""
    return {
        "networks": [{"tenancy": t, "network": tenancy_network(t), "bridge": tenancy_bridge(t)} for t in tenancies],
        "images": list(images),
        "builds": [
            {"tenancy": b.tenancy, "base": b.base, "image": b.image, "context": b.context, "dockerfile": b.dockerfile} for b in builds
        ],
    }


def docker_plan_json(tenancies: list[str], images: list[str], builds: Sequence[NotebookBuild] = ()) -> str:
    """facts.JUPYTERHUB_DOCKER_PLAN's content."""
    return json.dumps(docker_plan(tenancies, images, builds), indent=2, sort_keys=True) + "\n"


def build_files(builds: Sequence[NotebookBuild]) -> list[render.DeliveredFile]:
    """Every build context's files, once each (a tenancy's images share its lock and kernelspec),
    sorted, root's and world-readable (the lock is no secret)."""
    files: dict[str, str] = {}
    for b in builds:
        for name, text in b.files:
            path = posixpath.join(b.context, name)
            if files.setdefault(path, text) != text:
                raise ValueError(f"two notebook builds need different {path}")
    return [render.DeliveredFile(path, text, 0o644) for path, text in sorted(files.items())]


def service_unit() -> str:
    """facts.JUPYTERHUB_UNIT: `jupyterhub -f <config>` from the venv as the jupyterhub user, hardened."""
    return (
        _env()
        .get_template("jupyterhub.service.j2")
        .render(
            facts=facts,
            user=facts.SERVICE_USERS["jupyterhub"],
            config_file=posixpath.join(facts.JUPYTERHUB_CONFIG, facts.JUPYTERHUB_CONFIG_FILE),
        )
    )


_STEPS = {
    facts.JUPYTERHUB_NETWORKS_UNIT: ("networks", "each tenancy's docker network (bridge named for the firewall)", "5min"),
    facts.JUPYTERHUB_IMAGES_UNIT: ("images", "pull the notebook images (manual 4.1.2.14), build each tenancy's from them", "2h"),
}


def step_unit(unit: str) -> str:
    """One of the oneshot units of services.jupyterhub.STEPS."""
    step, summary, timeout = _STEPS[unit]
    return _env().get_template("docker-step.service.j2").render(facts=facts, step=step, summary=summary, timeout=timeout)


def _owned(path: str) -> tuple[int, str, str]:
    """Mode and owners of a file of `files()`: the settings (the client secret) readable by the hub's
    own group only; the rest world-readable; all root's, so the hub cannot change its config or code."""
    if posixpath.basename(path) == facts.JUPYTERHUB_SETTINGS_FILE:
        return 0o640, facts.ROOT_USER, facts.SERVICE_USERS["jupyterhub"]
    return 0o644, facts.ROOT_USER, facts.ROOT_USER


def jupyterhub_delivery(plan: Plan, client_secret: str, ca_cert_pem: str, cert_pem: str, key_pem: str) -> str:
    """The `<host>-jupyterhub` payload: the config (`files`), the TLS key pair, the units, the
    docker steps' program and plan, and the host's notebook firewall (`nina.notebook_firewall`).
    jupyterhub.service is restarted only when one of its own files changed (config, key pair,
    unit), the firewall only when its files did; the docker steps (networks, then images) are
    started on every delivery."""
    from nina import notebook_firewall  # it imports this module

    hub = inputs(plan)
    builds = notebook_builds(hub)
    ca = render.checked_text(ca_cert_pem, "CA certificate", "BEGIN CERTIFICATE")
    config = [render.DeliveredFile(path, text, *_owned(path)) for path, text in files(hub, client_secret, ca).items()]
    units = facts.SYSTEMD_SYSTEM_DIR
    own = [
        *(f for f in config if posixpath.dirname(f.path) == hub.config_dir),
        render.DeliveredFile(
            facts.JUPYTERHUB_SSL_CERT, render.checked_text(cert_pem, "JupyterHub certificate", "BEGIN CERTIFICATE"), 0o644
        ),
        render.DeliveredFile(facts.JUPYTERHUB_SSL_KEY, render.checked_text(key_pem, "JupyterHub key", "PRIVATE KEY"), 0o600),
        render.DeliveredFile(f"{units}/{facts.JUPYTERHUB_UNIT}", service_unit(), 0o644),
    ]
    firewall = notebook_firewall.firewall_files(plan)
    out = [
        *own,
        *(f for f in config if f not in own),
        render.DeliveredFile(
            facts.JUPYTERHUB_DOCKER_PLAN, docker_plan_json([t.name for t in hub.tenancies], list(hub.images), builds), 0o644
        ),
        *build_files(builds),
        render.DeliveredFile(facts.JUPYTERHUB_DOCKER_BIN, render.launcher("hub_docker"), 0o755),
        *(render.DeliveredFile(f"{units}/{unit}", step_unit(unit), 0o644) for unit in services.jupyterhub.STEPS),
        *firewall,
    ]
    restart = [*services.jupyterhub.UNITS, *notebook_firewall.UNITS]
    when = {facts.JUPYTERHUB_UNIT: [f.path for f in own]}
    when |= {unit: [f.path for f in firewall] for unit in notebook_firewall.UNITS}
    return render.delivery_payload(out, restart, run=list(services.jupyterhub.STEPS), restart_when=when)
