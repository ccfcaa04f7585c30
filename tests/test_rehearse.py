"""The offline rehearsal (nina.rehearse, `nina rehearse`): real flwr (the pinned release) SuperLink and SuperNodes
on loopback, started from the rendered scripts and the organisations' own site kits, running
validation_app/. Two organisations (stack uat) and two rounds keep each test well under 2 minutes.
"""

from __future__ import annotations

import datetime as dt
import re
import socket
import ssl
import subprocess
import sys
import time

import pytest

from nina import cli, facts, localpki, troubleshooting
from nina.config import load_config
from nina.plan import build_plan
from nina.rehearse import build_pki

pytestmark = pytest.mark.slow

ROUNDS = 2


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _full_federation(r):
    r.start_superlink()
    r.register_all()
    r.start_supernodes()
    r.wait_online(len(r.members))


@pytest.mark.timeout(300)
def test_nina_rehearse_uat_every_partition_every_round(cfg_repo_root, reh_uat_plan, capsys):
    # uat's tenancy uses its own environment (Pulumi.uat.yaml `tabular`), not the built-in one.
    env = reh_uat_plan.tenancies[0].environment
    assert env.name == "tabular" and {"numpy", "scikit-learn"} <= set(env.pins())
    rc = cli.main(["rehearse", "--stack", "uat", "--dir", str(cfg_repo_root), "--rounds", str(ROUNDS)])
    out, err = capsys.readouterr()
    assert rc == cli.EXIT_OK, out + err
    rows = re.findall(r"^\s+(\d+)\s+(\S+)\s+(.*)$", out, re.M)
    assert [(int(n), parts) for n, parts, _ in rows] == [(i, "0,1") for i in range(1, ROUNDS + 1)], out
    assert f"VPN public IP {facts.REHEARSAL_PUBLIC_IP} is a documentation address" in out
    assert "rehearsal edit: each kit's supernode.conf copy: superlink_server=127.0.0.1" in out
    assert "ok: every organisation took part in every round" in out
    # Every node reports the same training environment: the tenancy's pins, Python, the GPU and how that was found.
    envs = re.findall(r"^\s+env (\S+)\s+python (\S+), (.*), gpu (.*)$", out, re.M)
    assert len(envs) == ROUNDS and {e[0] for e in envs} == {"0,1"}, out
    assert {e[2] for e in envs} == {" ".join(env.requirements())}, out
    assert {e[2] for e in envs} == {f"flwr=={facts.FLWR_VERSION} numpy=={env.pins()['numpy']} scikit-learn=={env.pins()['scikit-learn']}"}
    assert "ENV DIFFERS" not in out
    # Its nodes run this project's venv: only the definition's pins are compared, and it says so.
    assert "environments compared with the definition's pins (full-lock comparison: validate only)" in out


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("package", "dist_name", "other_version"), [("numpy", "numpy", "2.4.5"), ("scikit-learn", "scikit_learn", "1.8.0")]
)
def test_a_node_with_another_version_of_a_locked_package_fails_validation(reh_rehearsal, tmp_path, package, dist_name, other_version):
    """One SuperNode sees another version's metadata of one of uat's pinned packages first on its
    path (as if someone had installed another numpy or scikit-learn on that host): the run fails,
    naming its partition, host, package and both versions."""
    r = reh_rehearsal()
    locked = r.plan.tenancies[0].environment.pins()[package]
    assert locked != other_version
    other = tmp_path / "other-site"
    dist = other / f"{dist_name}-{other_version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {other_version}\n")
    odd, fine = r.members[0], r.members[1]
    r.start_superlink()
    r.register_all()
    r.start_supernode(odd.slug, env={"PYTHONPATH": str(other)})
    r.start_supernode(fine.slug)
    r.wait_online(len(r.members))
    result = r.run_app(1)
    assert not result.ok
    assert f"partition {odd.partition_id} (" in (result.error or "")
    assert f"{package} {other_version} installed, the tenancy's lock has {locked}" in (result.error or ""), result.error
    assert f"partition {fine.partition_id} (" not in (result.error or "")
    table = result.table()
    assert "ENV DIFFERS" in table and f"env {fine.partition_id}" in table and f"env {odd.partition_id}" in table, table


def _check(row_id: str, **values: str) -> str:
    """Run troubleshooting row `row_id`'s check (with the rehearsal's values) as the table prints it; its output."""
    command = troubleshooting.fill(troubleshooting.row(row_id).check, values)
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
    return proc.stdout + proc.stderr


def _symptom(row_id: str, **values: str) -> str:
    return troubleshooting.fill(troubleshooting.row(row_id).symptom, values)


def _s_client_values(r, slug: str, host: str = facts.LOOPBACK) -> dict[str, str]:
    """The site rows' values on this rehearsal: the kit's CA, the SuperLink's address as dialled."""
    ca = r.kits[slug] / facts.SUPERNODE_CERTS.lstrip("/") / facts.CA_CERT_FILE
    return {"superlink_host": host, "fleet_port": str(r.fleet_port), "ca": str(ca)}


@pytest.mark.troubleshooting("supernode-not-registered", "supernode-key-unknown-at-superlink")
def test_removed_organisation_is_refused_and_the_rest_completes(reh_rehearsal):
    r = reh_rehearsal()
    keep, gone = r.members[0], r.members[1]
    r.start_superlink()
    r.register_all()
    assert r.unregister(gone.slug)["changed"] is True
    r.start_supernodes()
    refused = r.supernode(gone.slug)
    _wait_for(lambda: not refused.alive(), 60, f"{gone.slug}'s SuperNode to exit")
    assert refused.popen.returncode != 0
    assert "FAILED_PRECONDITION" in refused.output(), refused.output()[-2000:]
    assert _symptom("supernode-not-registered") in refused.output(), refused.output()[-2000:]
    # The site's check: the kit key's fingerprint, which no registration holds.
    pub = r.kits[gone.slug] / facts.SUPERNODE_CERTS.lstrip("/") / facts.SUPERNODE_PUB_FILE
    shown = _check("supernode-not-registered", supernode_pub=str(pub))
    fingerprint = re.search(r"SHA256:\S+", shown)
    assert fingerprint, shown
    assert gone.slug not in r.registered()
    # The operator's check: nina-membership list (the rehearsal's copy, with its environment) names no such member.
    assert _symptom("supernode-key-unknown-at-superlink") == _symptom("supernode-not-registered")
    listing = subprocess.run(
        [
            "sh",
            "-c",
            troubleshooting.fill(
                troubleshooting.row("supernode-key-unknown-at-superlink").check, {"membership": f"{sys.executable} {r.membership}"}
            ),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=r._membership_env(1),
    )
    assert listing.returncode == 0, listing.stderr
    assert f'"{keep.slug}"' in listing.stdout and f'"{gone.slug}"' not in listing.stdout, listing.stdout
    r.wait_online(1)
    result = r.run_app(ROUNDS, expected_partitions=[keep.partition_id])
    assert result.ok, result.error
    assert [row["partitions"] for row in result.rounds] == [[keep.partition_id]] * ROUNDS
    assert r.supernode(keep.slug).alive()


def test_supernode_without_the_ca_fails_tls(reh_rehearsal):
    r = reh_rehearsal()
    slug = r.members[0].slug
    r.start_superlink()
    r.register(slug)
    node = r.start_supernode(slug, trust_ca=False)
    _wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in node.output() or not node.alive(), 60, "a TLS failure")
    assert "CERTIFICATE_VERIFY_FAILED" in node.output(), node.output()[-2000:]
    assert not [n for n in r.nodes() if n.get("status") == "online"]


@pytest.mark.troubleshooting("tls-name-mismatch")
def test_supernode_dialling_an_address_outside_the_sans_fails_verification(reh_rehearsal, reh_uat_plan):
    # 127.0.0.2 reaches this machine's loopback but is not in the certificate's SANs (which hold
    # the SuperLink's fixed IP, 127.0.0.1 and its names): the Fleet API listens on every address here.
    cert = reh_uat_plan.tenancies[0].certificate
    target = "127.0.0.2"
    assert target not in cert.dns_names + cert.ip_addresses
    r = reh_rehearsal(fleet_bind=facts.ANY_ADDRESS)
    wrong, right = r.members[0].slug, r.members[1].slug
    r.start_superlink()
    # The certificate check itself: reachable, trusted CA, but the address is not in the SANs.
    ctx = ssl.create_default_context(cafile=str(r.ca_path))
    with socket.create_connection((target, r.fleet_port), timeout=5) as raw, pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        ctx.wrap_socket(raw, server_hostname=target)
    r.register_all()
    bad = r.start_supernode(wrong, superlink_host=target)
    r.start_supernode(right)  # same SuperLink, same CA, dialling 127.0.0.1: admitted
    r.wait_online(1)
    # Two of the bad node's connection attempts failed (flwr logs no reason for them).
    _wait_for(
        lambda: bad.output().count("Connection attempt failed") >= 2,
        90,
        "the SuperNode dialling 127.0.0.2 to report failed connection attempts",
    )
    online = {str(n["node-id"]) for n in r.nodes() if n.get("status") == "online"}
    ids = r.registered()
    assert online == {ids[right]}, (online, ids)
    assert _symptom("tls-name-mismatch") in bad.output()
    shown = _check("tls-name-mismatch", **_s_client_values(r, wrong, target))
    assert "IP address mismatch" in shown, shown
    assert "IP address mismatch" not in _check("tls-name-mismatch", **_s_client_values(r, wrong)), "the right address must verify"


@pytest.mark.troubleshooting("superlink-unreachable")
def test_supernode_without_a_superlink_reports_it_unreachable(reh_rehearsal):
    r = reh_rehearsal()
    slug = r.members[0].slug
    # No SuperLink: the SuperNode dials a port held bound but never listening (so no other
    # program on this machine can take it meanwhile), which refuses connections.
    hold = socket.socket()
    hold.bind((facts.LOOPBACK, 0))
    r.fleet_port = hold.getsockname()[1]
    try:
        node = r.start_supernode(slug)
        symptom = _symptom("superlink-unreachable")
        _wait_for(lambda: node.output().count(symptom) >= 2, 60, f"the SuperNode to log {symptom!r} twice")
        shown = _check("superlink-unreachable", **_s_client_values(r, slug))
    finally:
        hold.close()
    assert "Connection refused" in shown and "BEGIN CERTIFICATE" not in shown and "Certificate chain" not in shown, shown


@pytest.mark.troubleshooting("clock-skew")
def test_supernode_whose_clock_is_behind_the_certificate_fails_tls(reh_rehearsal, reh_uat_plan):
    """The SuperLink's certificate starts two days after this host's clock: what a SuperNode host
    whose clock is two days behind sees (the certificate is the platform's, from its CA, with its names)."""
    pki = build_pki(reh_uat_plan)
    tenancy = reh_uat_plan.tenancies[0]
    spec = tenancy.certificate
    key = localpki.generate_key(facts.KEY_ALGORITHM, facts.KEY_CURVE).private_key_pem
    csr = localpki.cert_request(
        key, {"common_name": spec.common_name, "organization": facts.LEAF_ORGANIZATION}, spec.dns_names, spec.ip_addresses
    )
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    pki.superlinks[tenancy.name] = (
        localpki.sign_certificate(csr, pki.ca_key, pki.ca_cert, facts.LEAF_VALIDITY_HOURS, facts.SERVER_CERT_USES, now=later),
        key,
    )
    r = reh_rehearsal(pki=pki)
    slug = r.members[0].slug
    r.start_superlink()
    node = r.start_supernode(slug)  # TLS fails before any registration matters
    symptom = _symptom("clock-skew")
    _wait_for(lambda: symptom in node.output(), 60, f"the SuperNode to log {symptom!r}")
    shown = _check("clock-skew", **_s_client_values(r, slug))
    assert "certificate is not yet valid" in shown, shown
    today = dt.datetime.now(dt.UTC)
    printed_date = shown.splitlines()[0]
    assert str(today.year) in printed_date, printed_date  # `date -u` came first
    not_before = re.search(r"notBefore=(.+ GMT)", shown)
    assert not_before, shown
    assert dt.datetime.strptime(not_before.group(1), "%b %d %H:%M:%S %Y GMT").replace(tzinfo=dt.UTC) > today, shown


def test_superlink_killed_mid_federation_and_restarted_on_its_state(reh_rehearsal):
    r = reh_rehearsal()
    _full_federation(r)
    nodes_before = {m.slug: r.supernode(m.slug).popen.pid for m in r.members}
    run = r.start_app(rounds=4, tag="killed")
    _wait_for(lambda: run.rounds_so_far(), 90, "round 1 of the first run")
    r.kill_superlink()
    first = run.wait()
    assert not first.ok
    r.restart_superlink()
    r.wait_online(len(r.members), timeout=90)
    # Same SuperNode processes: they reconnected by themselves.
    assert {m.slug: r.supernode(m.slug).popen.pid for m in r.members} == nodes_before
    assert all(r.supernode(m.slug).alive() for m in r.members)
    result = r.run_app(ROUNDS, tag="after-restart")
    assert result.ok, (result.error, result.output[-2000:])
    assert [row["partitions"] for row in result.rounds] == [[0, 1]] * ROUNDS


def _plan(n: int):
    """A one-tenancy stack of n on-premise organisations (the uat layout)."""
    orgs = [{"slug": f"org-{i}", "name": f"Organisation {i}", "placement": "onprem", "partition_id": i} for i in range(n)]
    network = {"server_cidr": "10.110.0.0/24", "vpn_pool_cidr": "192.168.99.0/24", "admin_cidrs": ["203.0.113.0/24"]}
    return build_plan(load_config({"environment": "reh", "network": network, "organisations": orgs}))


@pytest.mark.timeout(480)
def test_supernode_killed_mid_run_is_restarted_and_the_next_run_has_everyone(reh_rehearsal):
    logs: list[str] = []
    r = reh_rehearsal(plan=_plan(3), log=logs.append)
    everyone = sorted(m.partition_id for m in r.members)
    victim, others = r.members[1].slug, [m.slug for m in r.members if m.slug != r.members[1].slug]
    _full_federation(r)
    policy = r.restart_policy(victim)
    assert policy.restart == "always"  # from the kit's supernode.service
    killed_pid = r.supernode(victim).popen.pid
    run = r.start_app(rounds=3, round_timeout=30, tag="killed")
    _wait_for(lambda: run.rounds_so_far(), 120, "round 1 of the first run")
    node_id = r.registered()[victim]
    r.kill_supernode(victim)
    killed_at = time.monotonic()
    first = run.wait()  # the round in flight misses the victim, unless the kill fell between rounds
    # Restarted after RestartSec; flwr refuses it ("could not be activated") while the SuperLink
    # still holds the killed node online (until its heartbeat expires: 2 x 30 s in flwr 1.31), so
    # it may take a few restarts, as under systemd. Online alone is not enough: the killed node
    # stays "online" until then, so wait for an activation after the kill.
    _wait_for(lambda: r.restarts()[victim] >= 1, 60, f"{victim}'s supervisor to restart it")
    assert any(f"supernode-{victim} exited (killed by SIGKILL); restarting in {policy.restart_sec:g} s" in line for line in logs), logs

    def reconnected() -> bool:
        since_kill = time.monotonic() - killed_at
        ours = [n for n in r.nodes() if str(n.get("node-id")) == node_id and n.get("status") == "online"]
        return r.supernode(victim).alive() and any(float(n.get("online-elapsed") or since_kill) < since_kill for n in ours)

    _wait_for(reconnected, 180, f"{victim} to be activated again after the kill")
    r.wait_online(len(r.members), timeout=180)
    assert r.supernode(victim).popen.pid != killed_pid and r.supernode(victim).alive()
    result = r.run_app(ROUNDS, tag="after-kill")
    assert result.ok, (result.error, first.error, result.output[-2000:])
    assert [row["partitions"] for row in result.rounds] == [everyone] * ROUNDS
    restarts = r.restarts()
    assert restarts[victim] >= 1 and all(restarts[slug] == 0 for slug in others), restarts


@pytest.mark.timeout(300)
def test_replaced_supernode_key_old_refused_new_admitted(reh_rehearsal):
    """Revocation at the SuperLink (real flwr): the organisation's kit is replaced (what
    `kit_generation` does: a new SuperNode key pair). Registering the new key through
    nina-membership, as the deployment's registration resource does when its key changes,
    unregisters the old node: the SuperNode still holding the old key is refused from then on
    (its restarts too); the same organisation with its new kit joins and takes part."""
    r = reh_rehearsal()
    org, other = r.members[0].slug, r.members[1].slug
    _full_federation(r)
    old_ids = r.registered()
    old_node = r.supernode(org)

    certs = r.kits[org] / facts.SUPERNODE_CERTS.lstrip("/")
    new = localpki.generate_key(facts.KEY_ALGORITHM, facts.KEY_CURVE)
    (certs / facts.SUPERNODE_KEY_FILE).write_text(new.private_key_openssh)
    (certs / facts.SUPERNODE_PUB_FILE).write_text(new.public_key_openssh)
    new_id = r.register(org)  # reads the kit's (new) public key
    assert new_id != old_ids[org] and r.registered() == {org: new_id, other: old_ids[other]}

    # The SuperNode with the old key is refused from its next request on: the SuperLink knows no
    # node of that key any more (flwr answers UNAUTHENTICATED "Invalid node ID"; the SuperNode
    # logs only "Connection attempt failed" and retries, never admitted again).
    mark = len(old_node.output())
    _wait_for(lambda: old_node.output()[mark:].count("Connection attempt failed") >= 3, 90, f"{org}'s old key to be refused")
    status = {str(n["node-id"]): n.get("status") for n in r.nodes()}
    assert status.get(old_ids[org]) in (None, "unregistered"), status
    assert status.get(new_id) != "online" and status[old_ids[other]] == "online", status
    r.stop_supernode(org)
    # The new kit: the same organisation, its new key, admitted.
    r.start_supernode(org)
    r.wait_online(2, timeout=120)
    online = {str(n["node-id"]) for n in r.nodes() if n.get("status") == "online"}
    assert online == {new_id, old_ids[other]}, online
    result = r.run_app(ROUNDS, tag="new-kit")
    assert result.ok, (result.error, result.output[-2000:])
    assert [row["partitions"] for row in result.rounds] == [[0, 1]] * ROUNDS


# ---------------------------------------------------------------------------------------
# The judge reads what nodes reported: a hostile node must not write into the operator's terminal
# ---------------------------------------------------------------------------------------

ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[1A\r\u202e"  # retitle, clear the screen, move up, overwrite, reverse the text


def _hostile_round() -> dict:
    env = {
        "python": "3.12.3" + ESCAPES,
        "packages": "flwr==1.31.0,numpy==2.4.6" + ESCAPES,
        "gpu-usable": False,
        "gpu-how": "x" * 100_000 + ESCAPES,
        "distributions": ["flwr==1.31.0", "numpy==2.4.6" + ESCAPES, "evil" + ESCAPES + "==1"],
    }
    return {
        "round": 1,
        "partitions": [0],
        "hosts": {"0": "node" + ESCAPES},
        "environments": {"0": env},
        "environment-errors": ["partition 0 (node" + ESCAPES + "): numpy 2.4.6" + ESCAPES + " installed, the tenancy's lock has 2.4.6"],
    }


@pytest.mark.parametrize("lock", [None, {"flwr": "1.31.0", "numpy": "2.4.6"}])
def test_the_judge_shows_a_nodes_hostile_report_as_bounded_printable_text(lock):
    from nina.rehearse import judge_run

    result = judge_run("", {"ok": True, "rounds": [_hostile_round()]}, [0], 0, None, 1.0, "", lock=lock)
    assert not result.ok
    for shown in (result.table(), result.error or ""):
        assert not any(ch in shown for ch in "\x1b\x07\r\u202e"), repr(shown[:300])
        assert len(shown) < 20_000  # the 100 kB string is cut, not printed
    assert "\\x1b]0;owned" in result.table()  # shown escaped, so the operator sees what was sent
    # Validate mode names the planted distribution, escaped.
    if lock is not None:
        assert "evil\\x1b" in (result.error or "") or "evil\\x1b" in result.table()


@pytest.mark.parametrize(
    "bad",
    [
        {"round": 1, "partitions": [0], "environments": ["not", "a", "mapping"]},
        {"round": 1, "partitions": [0], "environments": {"0": "not a mapping"}},
        {"round": 1, "partitions": "0", "environments": {}},
        {"round": 1, "partitions": 5, "environments": {}},
        {"round": {"x": 1}, "partitions": [0], "environments": {}},
        {"round": [1], "partitions": [0], "environments": {}},
        {"round": 1, "partitions": [0], "hosts": [], "environments": {"0": {"distributions": "flwr==1"}}},
        "not a round",
    ],
)
def test_a_malformed_round_is_a_failed_run_not_a_traceback(bad):
    from nina.rehearse import judge_run

    for lock in (None, {"flwr": "1.31.0"}):
        result = judge_run("", {"ok": True, "rounds": [bad]}, [0], 0, None, 1.0, "", lock=lock)
        assert not result.ok and "malformed" in (result.error or ""), result.error
        result.table()


def test_the_serverapps_own_error_is_shown_printable_and_bounded():
    from nina.rehearse import judge_run

    error = "round 1: a node's training environment is not its tenancy's: " + "; ".join(f"partition {i} (n{i}\x1b[2J)" for i in range(2000))
    result = judge_run("", {"ok": False, "error": error, "rounds": []}, [0], 1, None, 1.0, "")
    assert not result.ok and (result.error or "").startswith("round 1: a node's training environment")
    assert "\x1b" not in (result.error or "") and "(n0\\x1b[2J)" in (result.error or "")
    assert len(result.error or "") <= facts.REPORT_ERROR_CHARS + 3
