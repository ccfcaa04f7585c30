"""The deployment plan, as plain data (no Pulumi)."""

from __future__ import annotations

from nina import facts
from nina.config import load_config
from nina.plan import build_plan, host_certificate


def base(**extra) -> dict:
    cfg = {
        "environment": "test",
        "network": {"admin_cidrs": ["203.0.113.0/24"]},
        "organisations": [
            {"slug": "org-a", "name": "A", "placement": "cloud", "partition_id": 0, "cidr": "10.101.0.0/24"},
            {"slug": "org-b", "name": "B", "placement": "onprem", "partition_id": 1},
        ],
    }
    cfg.update(extra)
    return cfg


def test_fixed_addresses_are_planned_from_the_config():
    plan = build_plan(load_config(base()))
    ips = {h.name: h.fixed_ip for h in plan.hosts}
    assert ips == {"gateway": "10.100.0.10", "superlink-main": "10.100.0.40", "vpn-main": "10.100.0.70", "supernode-org-a": "10.101.0.10"}
    assert plan.database_ip == "10.100.0.5"
    server = next(s for s in plan.segments if s.name == "server")
    assert server.pool == ("10.100.0.100", "10.100.0.254") and server.gateway_ip == "10.100.0.1"


def test_only_cloud_organisations_get_vms_and_segments():
    plan = build_plan(load_config(base()))
    assert [s.name for s in plan.segments] == ["server", "org-org-a"]
    assert [h.org for h in plan.hosts if "supernode" in h.roles] == ["org-a"]


def test_superlink_certificate_names_every_address_it_is_dialled_on():
    plan = build_plan(load_config(base(cloud={"dns_domain": "proj.cloud.edu.au."})))
    cert = plan.tenancies[0].certificate
    assert cert.server and cert.common_name == "superlink-main"
    assert set(cert.ip_addresses) == {"10.100.0.40", "127.0.0.1"}
    assert set(cert.dns_names) == {"superlink-main", "localhost", "superlink-main.proj.cloud.edu.au"}


def test_members_carry_their_partition_ids_and_nothing_about_the_others():
    plan = build_plan(load_config(base()))
    assert [(m.slug, m.partition_id, m.placement) for m in plan.members()] == [("org-a", 0, "cloud"), ("org-b", 1, "onprem")]
    # No federation-wide count (or other membership-wide value) in a member: adding one
    # organisation leaves the others' members as they were.
    bigger = base()
    bigger["organisations"] = [*bigger["organisations"], {"slug": "org-c", "name": "C", "placement": "onprem", "partition_id": 2}]
    assert build_plan(load_config(bigger)).members()[:2] == plan.members()
    t = plan.tenancies[0]
    assert t.fleet_address == f"10.100.0.40:{facts.SUPERLINK_FLEET_PORT}"
    assert t.control_address == f"10.100.0.40:{facts.SUPERLINK_CONTROL_PORT}"


def test_one_large_vm_carries_the_single_superlink_and_its_state_volume():
    plan = build_plan(load_config(base(hosts=[{"name": "allinone", "roles": ["bastion", "superlink", "keycloak"], "flavor": "m3.xlarge"}])))
    (host,) = [h for h in plan.hosts if "superlink" in h.roles]
    assert host.name == "allinone" and host.tenancy == "main" and host.public
    # ... and, with the keycloak role, the Trove databases' backups.
    assert [v.mount_point for v in host.volumes] == [facts.SUPERLINK_STATE_DIR, facts.DB_BACKUP_VOLUME]
    assert plan.tenancies[0].superlink_host == "allinone"
    assert set(host.security_groups) == {"bastion", "keycloak", "managed", "superlink-main"}
    # Keycloak uses the database: its /32 is the allow-list.
    assert plan.database_allowed_cidrs == ("10.100.0.10/32",)


def test_each_tenancy_has_its_own_superlink_and_fleet_sources():
    cfg = base()
    orgs = cfg.pop("organisations")
    cfg["tenancies"] = [{"name": "t1", "organisations": orgs[:1]}, {"name": "t2", "organisations": orgs[1:]}]
    plan = build_plan(load_config(cfg))
    assert [(t.name, t.superlink_ip) for t in plan.tenancies] == [("t1", "10.100.0.40"), ("t2", "10.100.0.41")]
    fleet = {r.name for r in plan.rules if r.port_min == facts.SUPERLINK_FLEET_PORT}
    assert fleet == {"org-org-a->superlink-t1-tcp-9092", "vpn-t2->superlink-t2-tcp-9092"}
    # Only the tenancy with an on-premise organisation gets an OpenVPN server.
    assert [t.vpn.host if t.vpn else None for t in plan.tenancies] == [None, "vpn-t2"]
    hub = plan.tenancies[1].vpn
    assert hub is not None and hub.pool == plan.cfg.network.vpn_pool_cidr
    assert [(m.tenancy, m.partition_id) for t in plan.tenancies for m in t.members] == [("t1", 0), ("t2", 1)]


def test_plan_is_deterministic():
    assert build_plan(load_config(base())) == build_plan(load_config(base()))


def test_vpn_plan_pins_each_onprem_organisation_to_a_fixed_address():
    plan = build_plan(load_config(base()))
    (t,) = plan.tenancies
    assert t.vpn is not None and t.vpn.internal_ip == "10.100.0.70" and t.vpn.server_ip == "192.168.99.1"
    assert [(m.slug, m.vpn_address) for m in t.members] == [("org-a", None), ("org-b", "192.168.99.11")]
    assert [(c.common_name, c.server) for c in t.vpn.clients] == [("org-b", False)]
    vpn_host = plan.host_by_name["vpn-main"]
    assert vpn_host.public and vpn_host.routed_cidrs == ("192.168.99.0/24",)
    assert {r.name for r in plan.rules if r.security_group == "vpn-main"} == {"public->vpn-main-udp-1194", "public->vpn-main-tcp-443"}


def test_the_jupyterhub_host_gets_docker_s_volume_with_or_without_researcher_access():
    """docker's data root lives on a Cinder volume of the host with role jupyterhub; it does not
    depend on nina:researcher_access, so turning that on or off adds or removes no volume (which
    would change the host's user-data and so replace the VM)."""
    hosts = [{"name": "gateway", "roles": ["bastion", "proxy", "keycloak"]}, {"name": "hub", "roles": ["jupyterhub"]}]
    access = {"public_domain": "fl.example.edu.au", "acme_email": "ops@example.edu.au"}
    plain = build_plan(load_config(base(hosts=hosts)))
    with_access = build_plan(load_config(base(hosts=hosts, researcher_access=access, keycloak={"sha256": "0" * 64})))
    sized = build_plan(load_config(base(hosts=hosts, jupyterhub={"volume_gb": 250})))
    want = (facts.JUPYTERHUB_VOLUME_NAME, facts.JUPYTERHUB_VOLUME_GB, facts.JUPYTERHUB_VOLUME, "root")
    for plan in (plain, with_access):
        (vol,) = plan.host_by_name["hub"].volumes
        assert (vol.name, vol.size_gb, vol.mount_point, vol.owner) == want
    assert sized.host_by_name["hub"].volumes[0].size_gb == 250
    # The gateway carries Keycloak: its volume is the database backups', not docker's.
    assert [v.name for v in plain.host_by_name["gateway"].volumes] == [facts.DB_BACKUP_VOLUME_NAME]
    assert all(not h.volumes or {"jupyterhub", "keycloak", "superlink", "supernode"} & set(h.roles) for h in plain.hosts)
    # Stacks without a JupyterHub host get no such volume.
    assert not any(v.name == facts.JUPYTERHUB_VOLUME_NAME for h in build_plan(load_config(base())).hosts for v in h.volumes)


def test_host_certificate_names_the_host_and_optionally_loopback():
    plan = build_plan(load_config(base()))
    host = next(h for h in plan.hosts if h.name == "gateway")
    cert = host_certificate("svc", plan.cfg, host)
    assert (cert.name, cert.common_name, cert.server) == ("svc", "gateway", True)
    assert (cert.dns_names, cert.ip_addresses) == (("gateway", "localhost"), ("10.100.0.10", facts.LOOPBACK))
    bare = host_certificate("svc", plan.cfg, host, loopback=False)
    assert (bare.dns_names, bare.ip_addresses) == (("gateway",), ("10.100.0.10",))
    named = build_plan(load_config(base(cloud={"dns_domain": "fl.example.org"})))
    cert = host_certificate("svc", named.cfg, next(h for h in named.hosts if h.name == "gateway"))
    assert cert.dns_names == ("gateway", "gateway.fl.example.org", "localhost")
