"""nina.services: one definition per service, and what the rest derives from it."""

from __future__ import annotations

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
            assert s.user == User(facts.SERVICE_USERS[s.name], s.user.home)
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
        # Keycloak's data/ is inside its release's directory, made by nina-keycloak-install.
        facts.JUPYTERHUB_OPT: "jupyterhub",  # not built yet
    }
    for d in every:
        assert d.mode & 0o022 == 0, d
        assert not any(d.path.startswith(o + "/") for o in owned), d
    assert (services.model.PYTHON_ROOT.owner, services.model.PYTHON_ROOT.group, services.model.PYTHON_ROOT.mode) == ("root", "root", 0o755)


def test_flower_services_need_the_venv_and_others_do_not():
    assert services.venv_programs(services.for_roles(["superlink", "supernode"])) == ["flower-superlink", "flwr", "flower-supernode"]
    assert services.venv_programs(services.for_roles(["bastion", "vpn", "monitoring"])) == []


def test_unbuilt_services_say_so():
    """JupyterHub has its first-boot layout only (its delivery is the researcher-access issue's)."""
    assert {n for n, s in services.SERVICES.items() if not s.built} == {"jupyterhub"}


def test_site_kits_set_up_a_supernode_host_plus_the_vpn_client():
    assert services.site_kit(False) == services.for_roles(["supernode"])
    assert services.site_kit(True) == [*services.for_roles(["supernode"]), services.vpn.CLIENT]
    assert services.vpn.CLIENT.name not in services.ROLES  # no cloud host runs it
    assert set(services.VENV_PACKAGES) <= set(services.BASE.packages)
    assert set(services.VENV_DIRECTORIES) <= set(services.directories(services.for_roles(["supernode"])))
