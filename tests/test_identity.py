"""Resource identity: a live stack's resources keep their URNs, or are found through an alias.

A resource whose URN changes (new name, type or parent chain) is deleted and created anew by
`pulumi up` unless an alias names its old URN: a new CA key would invalidate every hospital's
kit, a new SuperNode key unregisters the organisation, and the Cinder volumes hold state.
`fixtures/urns-7975d59.json` lists every URN the program declared at commit 7975d59 (before
the components took focused arguments and the Platform's private methods became components),
for the repo's stacks and two more shapes (several tenancies with cloud and on-premise
organisations; the "one large VM"). Each must still be declared, or be taken over through an
alias as the engine resolves aliases (`harness.engine_match`).

The fixture records live stacks' identity: never regenerate it to make this test pass. A
resource that moves or is renamed needs an alias, not a new fixture; one removed on purpose
leaves the fixture by hand, in the commit that removes it. (`record()` wrote it at 68db760:
this harness, the program of 7975d59.)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from harness import INSTANCE, Run, engine_match, run_program, stack_config

from nina import facts

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "urns-7975d59.json"


def cases() -> dict[str, tuple[dict, str]]:
    """Config (full keys) and stack name of each recorded case."""
    from conftest import render_raw_configs

    raw = render_raw_configs()
    full = lambda c: {f"nina:{k}": v for k, v in c.items()}  # noqa: E731
    return {
        "test": (stack_config("test"), "test"),
        "uat": (stack_config("uat"), "uat"),
        "multi-tenancy": (full(raw["multi-tenancy"]), "test"),
        "all-in-one": (full(raw["all-in-one"]), "test"),
    }


def declared(case: str) -> Run:
    config, stack = cases()[case]
    run = run_program(config, stack)
    assert run.error is None, run.error
    return run


# Resources added after the fixture's commit (new, so no alias): the platform's kit-signing key;
# the proxy's port-80 rule (Let's Encrypt HTTP-01);
# the VPN hub's tls-crypt-v2 server key and one tls-crypt-v2 client key per on-premise
# organisation, which replaced the tenancy-wide tls-auth key (`<vpn host>-tls-auth`, taken out of
# the fixture by hand in the same commit).
ADDED_SINCE_FIXTURE = (
    "$nina:pki:SigningKey$tls:index/privateKey:PrivateKey::platform-signing-key",
    "-tls-crypt-v2-server",
    "-tls-crypt-v2",
    # The proxy's port 80 for Let's Encrypt's HTTP-01 challenges (nina.firewall).
    "$openstack:networking/secGroupRule:SecGroupRule::public->proxy-tcp-80",
    # The proxy's rule to JupyterHub's internal port 8000, which replaced the rule to 443
    # (`proxy->jupyterhub-tcp-443`, taken out of the fixture by hand in the same commit: no
    # JupyterHub was ever deployed behind it).
    "$openstack:networking/secGroupRule:SecGroupRule::proxy->jupyterhub-tcp-8000",
    # The monitoring host's volume for Prometheus's time series and its attachment (its VM is
    # replaced once for it: nothing was deployed on it before the monitoring issue).
    f"$openstack:blockstorage/volume:Volume::monitor-{facts.MONITORING_VOLUME_NAME}",
    f"$openstack:compute/volumeAttach:VolumeAttach::monitor-{facts.MONITORING_VOLUME_NAME}-attach",
    # The JupyterHub host's volume, docker's data root (nina.plan: every host with role jupyterhub),
    # and its attachment: on the "one large VM" of the all-in-one case.
    "$openstack:blockstorage/volume:Volume::gateway-docker",
    "$openstack:compute/volumeAttach:VolumeAttach::gateway-docker-attach",
    # The keycloak host's volume for the Trove databases' backups (nina-db-backup; nina.plan: every
    # host with role keycloak) and its attachment: on the "one large VM" of the all-in-one case.
    f"$openstack:blockstorage/volume:Volume::gateway-{facts.DB_BACKUP_VOLUME_NAME}",
    f"$openstack:compute/volumeAttach:VolumeAttach::gateway-{facts.DB_BACKUP_VOLUME_NAME}-attach",
    # The monitoring host's delivery (Prometheus, Alertmanager), new with the operations issue.
    "$nina:flower:FileDelivery$command:remote:Command::monitor-monitoring-install",
    # A cloud GPU SuperNode's driver delivery (nina.gpu), new with issue 13: the all-in-one case's
    # GPU organisation.
    "$nina:flower:FileDelivery$command:remote:Command::supernode-test-org-b-gpu-install",
    # ... and the reboot that `pulumi up` carries out and waits for after it (nina.gpu, issue 13):
    # commands only, no cloud state.
    "$nina:flower:FileDelivery$command:remote:Command::supernode-test-org-b-gpu-reboot",
    "$nina:flower:FileDelivery$command:remote:Command::supernode-test-org-b-gpu-ready",
)


def recorded(case: str) -> set[str]:
    return set(json.loads(FIXTURE.read_text())["urns"][case])


@pytest.mark.parametrize("case", ["test", "uat", "multi-tenancy", "all-in-one"])
def test_every_resource_of_a_live_stack_keeps_its_identity(case):
    run = declared(case)
    old = recorded(case)
    match = engine_match(run, old)
    assert not match.errors, match.errors
    lost = match.lost(old)
    assert not lost, f"{len(lost)} resource(s) would be deleted and created anew:\n" + "\n".join(sorted(lost))
    # ... and nothing physical is new: only the new components (which hold no cloud state) and
    # the resources added since the fixture, each named here.
    created = sorted(r.urn for r in run.registrations if r.custom and r.urn not in match.old_of)
    assert all(urn.endswith(ADDED_SINCE_FIXTURE) for urn in created), created


def without_aliases(run: Run, names: set[str] | None = None) -> Run:
    """`run` as if the resources named `names` (all, if None) had been declared without aliases."""
    regs = [dataclasses.replace(r, aliases=()) if names is None or r.name in names else r for r in run.registrations]
    return Run(regs, run.outputs, run.output_secret, stack=run.stack, project=run.project)


def test_the_check_fails_when_a_moved_resource_has_no_alias():
    """The resources the Platform declared until 7975d59 and a component declares now have a
    new parent chain: without their aliases, they and their children (whose URNs carry the
    whole chain) would be replaced. The check sees both, and nothing else."""
    run = declared("uat")
    old = recorded("uat")
    assert not engine_match(run, old).lost(old)
    lost_urns = engine_match(without_aliases(run), old).lost(old)
    lost = {urn.rsplit("::", 1)[1] for urn in lost_urns}
    assert {"superlink-main", "superlink-main-key", "vpn-client-gold-coast", "supernode-metro-north-auth"} <= lost, lost
    assert {"gold-coast-registration", "gold-coast-registration-register", "vpn-main-vpn-install"} <= lost, lost
    assert not [urn for urn in lost_urns if f"${INSTANCE}::" in urn or "$nina:compute:Host::" in urn]  # hosts did not move
    # One alias dropped: that resource and its children only.
    lost = engine_match(without_aliases(run, {"supernode-gold-coast"}), old).lost(old)
    assert {urn.rsplit("::", 1)[1] for urn in lost} == {"supernode-gold-coast", "supernode-gold-coast-auth"}, lost


def record(commit: str) -> None:
    """Writes the fixture from the program as it is at `commit` (one whose URNs live stacks hold)."""
    urns = {case: sorted(r.urn for r in declared(case).registrations) for case in sorted(cases())}
    FIXTURE.write_text(json.dumps({"commit": commit, "urns": urns}, indent=1, sort_keys=True) + "\n")
