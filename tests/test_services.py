"""nina.services: one definition per service, and what the rest derives from it."""

from __future__ import annotations

import json
import posixpath

import pytest

from nina import config, facts, services
from nina.services import Directory, Service, User


def test_roles_come_from_the_services():
    assert config.SHARED_ROLES == services.SHARED_ROLES
    assert set(services.ROLES) == set(services.SHARED_ROLES) | {"supernode", "vpn"}
    assert "base" not in services.SERVICES  # everywhere, never a role


def test_every_host_gets_the_base_first_and_unknown_roles_are_refused():
    assert services.for_roles([]) == [services.BASE]
    assert [s.name for s in services.for_roles(["vpn", "bastion"])] == ["base", "bastion", "vpn"]
    with pytest.raises(ValueError, match=r"unknown roles \['nginx'\]"):
        services.for_roles(["bastion", "nginx"])


def test_directories_are_deduplicated_sorted_and_conflicts_refused():
    svcs = services.for_roles(["superlink", "jupyterhub"])
    dirs = services.directories(svcs)
    paths = [d.path for d in dirs]
    assert paths == sorted(set(paths)) and paths.count("/opt/python") == 1
    for d in dirs:  # every parent that is listed comes before its children
        parent = posixpath.dirname(d.path)
        assert parent not in paths or paths.index(parent) < paths.index(d.path)
    a = Service("a", "x", directories=(Directory("/srv/x", 0o750),))
    b = Service("b", "y", directories=(Directory("/srv/x", 0o755),))
    with pytest.raises(ValueError, match="services disagree about /srv/x"):
        services.directories([a, b])


def test_service_users_live_in_the_system_group_with_their_home():
    for s in services.SERVICES.values():
        if s.user is not None:
            assert s.user == User(facts.SERVICE_USERS[s.name], s.user.home, s.user.groups)
            assert s.user.groups in ((), (facts.DOCKER_GROUP,)), s.name  # docker: JupyterHub's alone
            assert any(d.path == s.user.home for d in s.directories), s.name
            assert all(d.group == facts.SYSTEM_GROUP or d.owner == "root" for d in s.directories), s.name


def test_service_users_own_only_where_they_write():
    """Root reads, writes and runs nothing a service user could swap (nina.host.trust): a service
    user owns only its writable state, nothing root's lies below that, and no directory is group-
    or other-writable (the manual's /opt/python was 2775 root:fl_system)."""
    every = services.directories(services.SERVICES.values())
    owned = {d.path: d.owner for d in every if d.owner != "root"}
    assert owned == {
        facts.SUPERLINK_STATE_DIR: "superlink",
        facts.SUPERNODE_FLWR_HOME: "supernode",
        facts.SUPERNODE_DATA: "supernode",
        facts.JUPYTERHUB_OPT: "jupyterhub",
        facts.GRAFANA_DATA: "grafana",
        facts.GRAFANA_LOGS: "grafana",
    }
    for d in every:
        assert d.mode & 0o022 == 0, d
        assert not any(d.path.startswith(o + "/") for o in owned), d
    assert (services.model.PYTHON_ROOT.owner, services.model.PYTHON_ROOT.group, services.model.PYTHON_ROOT.mode) == ("root", "root", 0o755)


def test_each_service_states_its_venv_and_shared_venvs_merge():
    flower = services.venvs(services.for_roles(["superlink", "supernode"]))
    assert [(v.path, v.requirements, v.programs) for v in flower] == [
        (facts.FLOWER_VENV, (f"flwr=={facts.FLWR_VERSION}",), ("flower-superlink", "flwr", "flower-supernode"))
    ]
    assert services.venvs(services.for_roles(["bastion", "vpn", "monitoring"])) == []
    # The manual's "one large VM": the Flower venv and JupyterHub's, each with its own pins.
    both = services.venvs(services.for_roles(["superlink", "jupyterhub"]))
    assert [v.path for v in both] == [facts.JUPYTER_VENV, facts.FLOWER_VENV]
    assert both[0].requirements == facts.JUPYTERHUB_PACKAGES and both[0].pins()[0] == ("jupyterhub", "6.1.1")
    other = Service("x", "y", venv=services.Venv(facts.FLOWER_VENV, ("flwr==0.1",)))
    with pytest.raises(ValueError, match="disagree about the venv"):
        services.venvs([*services.for_roles(["superlink"]), other])
    with pytest.raises(ValueError, match="not an exact pin"):
        services.Venv("/opt/python/x", ("flwr>=1",))


def test_jupyterhub_service_is_built():
    svc = services.jupyterhub.SERVICE
    assert svc.built and {"docker.io", facts.JUPYTERHUB_PROXY_PACKAGE} <= set(svc.packages)
    assert svc.user == User("jupyterhub", facts.JUPYTERHUB_OPT, (facts.DOCKER_GROUP,))
    daemon = json.loads(services.jupyterhub.docker_daemon_json())
    assert daemon["data-root"] == facts.JUPYTERHUB_DOCKER_ROOT and daemon["data-root"].startswith(facts.JUPYTERHUB_VOLUME + "/")
    assert {f.path for f in svc.files} == {facts.DOCKER_DAEMON_JSON, facts.DOCKER_DROPIN}
    assert f"RequiresMountsFor={facts.JUPYTERHUB_DOCKER_ROOT}\n" in services.jupyterhub.docker_dropin()
    assert svc.restart_after_mount == (facts.DOCKER_UNIT,)


def test_unbuilt_services_say_so():
    """Every service is built: each has its delivery."""
    assert {n for n, s in services.SERVICES.items() if not s.built} == set()


def test_site_kits_set_up_a_supernode_host_plus_the_vpn_client():
    assert services.site_kit(False) == services.for_roles(["supernode"])
    assert services.site_kit(True) == [*services.for_roles(["supernode"]), services.vpn.CLIENT]
    assert services.vpn.CLIENT.name not in services.ROLES  # no cloud host runs it
    assert set(services.VENV_PACKAGES) <= set(services.BASE.packages)
    assert set(services.VENV_DIRECTORIES) <= set(services.directories(services.for_roles(["supernode"])))
