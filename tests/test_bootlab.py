"""The boot lab (tests/bootlab.py): the stack's hosts boot from the user-data the program
declares, take every delivery it declares over real SSH through the bastion, and federate
with a hospital that installed its site kit as its README says.

The stack is `test` (bastion, SuperLink with its state volume, two cloud SuperNodes on their
own segments) plus the first organisation of `uat` on premises (so the VPN server and one
hospital are in the same federation). Everything is taken from one mock run of the real
`__main__.py`: user-data, remote commands (their `create` and `stdin`), the operator key and
the stack outputs the hospital's kit is exported from.

Phases (each timed; the figures go to the test's output and to `bootlab-timings.json` in
the lab directory):
1. build (or reuse) the image; boot every declared host at once, with one SuperNode's
   registry access cut off, as an outage would: its cloud-init must report an error, its
   bootstrap check must not pass, and its delivery (as declared) must refuse the host;
2. replace that VM (fresh disk, new instance id) and let it boot;
3. run every declared remote command in declaration order (Pulumi's order for these);
   check the hosts' postconditions; run them all again and check nothing changed;
4. the hospital: a plain container on its own network that reaches only the VPN server's
   public address; export the kit, `install.sh --dry-run` (changes nothing), `install.sh`,
   then again (changes nothing); its VPN address is the pinned one;
5. the validation app through an SSH tunnel via the bastion: every organisation, every round;
6. the SuperLink VM is replaced (same volume): not reformatted, its delivery runs again (its
   trigger is the instance id), the registrations survive, the next run passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bootlab
import pytest
from harness import run_program, stack_config

from nina import facts, outputs, troubleshooting
from nina.host.membership import parse_json
from nina.rehearse import judge_run, validation_run_config

pytestmark = pytest.mark.slow
WHY_NOT = bootlab.missing_tools()
REPO = Path(__file__).resolve().parent.parent
HOSPITAL_IP = "198.51.100.10"
HOSPITAL_GW = "198.51.100.1"
ROUNDS = 2
ROUND_TIMEOUT = 120


def lab_config() -> dict:
    """Stack `test` plus uat's first (on-premise) organisation and its VPN pool."""
    cfg = stack_config("test")
    uat = stack_config("uat")
    cfg["nina:network"] = dict(cfg["nina:network"], vpn_pool_cidr=uat["nina:network"]["vpn_pool_cidr"])
    orgs = cfg["nina:organisations"]
    # The hospital joins with the next id after test's (its uat id is taken by test-org-a).
    hospital = {**uat["nina:organisations"][0], "partition_id": 1 + max(o["partition_id"] for o in orgs)}
    cfg["nina:organisations"] = [*orgs, hospital]
    # The monitoring host (Prometheus and Alertmanager from the archive), scraping every host and,
    # through the VPN server, the hospital.
    cfg["nina:hosts"] = [*cfg["nina:hosts"], {"name": MONITOR, "roles": ["monitoring"], "flavor": "m3.small"}]
    return cfg


MONITOR = "monitor"
TARGETS_SCRIPT = (
    "import json, urllib.request; "
    f"d = json.load(urllib.request.urlopen('http://{facts.LOOPBACK}:{facts.PROMETHEUS_PORT}/api/v1/targets?state=active', timeout=10)); "
    "print(json.dumps(sorted([t['labels']['job'], t['scrapeUrl'], t['health'], t['lastError']] for t in d['data']['activeTargets'])))"
)


def prometheus_targets(m: bootlab.Machine) -> list[list[str]]:
    """[job, scrape URL, health, last error] of each target Prometheus scrapes, asked on the host itself."""
    proc = m.sh(f'python3 -c "{TARGETS_SCRIPT}"', check=False, timeout=60)
    return json.loads(proc.stdout) if proc.returncode == 0 else []


def prometheus_api(m: bootlab.Machine, path: str) -> dict:
    script = f"import urllib.request; print(urllib.request.urlopen('http://{facts.LOOPBACK}:{facts.PROMETHEUS_PORT}{path}', timeout=10).read().decode())"
    return json.loads(m.sh(f'python3 -c "{script}"', timeout=60).stdout)


def wait_targets_up(m: bootlab.Machine, urls: set[str], timeout: float) -> list[list[str]]:
    """Prometheus's targets once every one of `urls` is up (or fails, listing what it saw)."""
    deadline = time.monotonic() + timeout
    seen: list[list[str]] = []
    while time.monotonic() < deadline:
        seen = prometheus_targets(m)
        if urls <= {url for _job, url, health, _err in seen if health == "up"}:
            return seen
        time.sleep(3)
    raise AssertionError(f"Prometheus did not see every target up in {timeout:g} s; wanted {sorted(urls)}, saw {seen}")


class Timer:
    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self.t0 = time.monotonic()

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.monotonic()
        print(f"[boot lab] {name} ...", flush=True)
        yield
        self.phases[name] = round(time.monotonic() - start, 1)
        print(f"[boot lab] {name}: {self.phases[name]} s", flush=True)


def wait_all(machines: dict[str, bootlab.Machine]) -> dict[str, dict]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(machines)) as pool:
        futures = {n: pool.submit(m.cloud_init_status) for n, m in machines.items()}
        return {n: f.result() for n, f in futures.items()}


def delivered_state(lab: bootlab.Lab, declared: bootlab.Declared) -> dict[str, str]:
    """sha256, mode and owner of every delivered file, and each service's main PID, per host."""
    state = {}
    for host in declared.hosts.values():
        m = lab.machines[host.name]
        out = m.sh(
            f"find /etc/flwr /etc/openvpn /usr/local/share/ca-certificates {facts.SUPERLINK_ADMIN_FLWR_HOME} {facts.PROMETHEUS_ETC} -type f "
            f"-exec sha256sum {{}} + 2>/dev/null | sort; stat -c '%n %a %U %G' $(find /etc/flwr /etc/openvpn {facts.PROMETHEUS_ETC} -type f "
            "2>/dev/null | sort) 2>/dev/null; for u in superlink supernode openvpn-server@server openvpn-server@server-tcp "
            f"{facts.PROMETHEUS_UNIT} {facts.ALERTMANAGER_UNIT}; do "
            "echo $u $(systemctl show -p MainPID --value $u 2>/dev/null); done",
            check=False,
        ).stdout
        state[host.name] = out
    return state


def registered_nodes(sl: bootlab.Machine) -> list[str]:
    """Node ids the SuperLink itself has registered (`flwr supernode ls` with its admin CLI config)."""
    # A SuperLink that was just (re)started is active before its Control API listens.
    sl.wait_for(f"ss -Hltn 'sport = :{facts.SUPERLINK_CONTROL_PORT}' | grep -q .", 60, "the SuperLink's Control API")
    proc = sl.sh(
        f"cd / && FLWR_TELEMETRY_ENABLED=0 FLWR_HOME={facts.SUPERLINK_ADMIN_FLWR_HOME} {facts.FLOWER_VENV}/bin/flwr "
        f"supernode ls {facts.SUPERLINK_ADMIN_CONNECTION} --format json",
        timeout=120,
        check=False,
    )
    doc = parse_json(proc.stdout)
    assert isinstance(doc, dict) and "nodes" in doc, f"flwr supernode ls failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return sorted(str(n["node-id"]) for n in doc["nodes"] or [])


def deliveries_to(by_host: dict[str, list[bootlab.DeclaredCommand]], host: bootlab.DeclaredHost) -> list[bootlab.DeclaredCommand]:
    """The host's declared FileDeliveries (`<host>-base` first), in declaration order."""
    return [c for c in by_host[host.fixed_ip] if c.stdin and '"programs"' in c.stdin]


def run_all(lab: bootlab.Lab, commands: list[bootlab.DeclaredCommand], label: str) -> dict[str, str]:
    outs = {}
    for cmd in commands:
        proc = lab.run_declared(cmd)
        assert proc.returncode == 0, (
            f"{label}: {cmd.name} on {cmd.host} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
        outs[cmd.name] = proc.stdout + proc.stderr
    return outs


def validate(lab: bootlab.Lab, declared: bootlab.Declared, workdir: Path, tag: str):
    """The validation app from the operator's namespace, through an SSH tunnel via the bastion."""
    superlink = next(h for h in declared.hosts.values() if h.name.startswith("superlink-"))
    port, tunnel = lab.tunnel(superlink.fixed_ip, facts.SUPERLINK_CONTROL_PORT)
    try:
        app = workdir / f"app-{tag}"
        shutil.rmtree(app, ignore_errors=True)
        shutil.copytree(REPO / "validation_app", app, ignore=shutil.ignore_patterns("__pycache__", ".*"))
        ca = workdir / "ca.crt"
        ca.write_text(declared.outputs["ca_cert_pem"])
        home = workdir / f"flwr-home-{tag}"
        home.mkdir(exist_ok=True)
        (home / facts.FLWR_CONFIG_FILE).write_text(f'[superlink.lab]\naddress = "127.0.0.1:{port}"\nroot-certificates = "{ca}"\n')
        expected = sorted(o["partition_id"] for t in declared.outputs["tenancies"].values() for o in t["organisations"].values())
        # As `nina validate` does: every node holds the environment's pins (the ServerApp compares
        # them) and its whole installed set is the tenancy's lock (judged below): what nina-env-sync
        # made of the cloud hosts' venvs and install.sh of the hospital's.
        [environment] = [t.environment for t in outputs.read(declared.outputs).tenancies.values()]
        config = validation_run_config(expected, ROUNDS, ROUND_TIMEOUT, environment=environment.requirements)
        flwr = Path(sys.executable).parent / "flwr"
        env = {
            "PATH": os.environ["PATH"],
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_HOME": str(home),
            "HOME": str(workdir),
        }
        t0 = time.monotonic()
        proc = subprocess.run(
            ["ip", "netns", "exec", lab.operator, str(flwr), "run", str(app), "lab", "--run-config", config, "--stream"],
            capture_output=True,
            text=True,
            timeout=ROUND_TIMEOUT * (ROUNDS + 1) + 120,
            env=env,
        )
        result = judge_run(
            proc.stdout + proc.stderr, None, expected, proc.returncode, None, time.monotonic() - t0, "", lock=environment.pins
        )
        return result
    finally:
        tunnel.terminate()


# The SuperLink's log line of flwr 1.25.0's pull_object bug (README, "Which flwr release"); fixed
# in 1.26.0, so with the pinned release the rerun below should never happen.
KNOWN_FLWR_BUG = "Both bytes_sent and bytes_recv cannot be zero"


def validate_as_an_operator(lab: bootlab.Lab, declared: bootlab.Declared, sl: bootlab.Machine, workdir: Path, tag: str):
    """validate(), run again once (as the README tells operators) only when the run failed with
    a missing organisation and the SuperLink logged the known upstream bug during it; any other
    failure, or the same failure twice, is the test's failure."""
    since = sl.sh("date +%s").stdout.strip()
    result = validate(lab, declared, workdir, tag)
    if result.ok or "did not answer" not in str(result.error):
        return result
    journal = sl.sh(f"journalctl -u {facts.SUPERLINK_UNIT} --since @{since} --no-pager", check=False).stdout
    if KNOWN_FLWR_BUG not in journal:
        return result
    print(f"[boot lab] {tag}: {result.error}; the SuperLink logged flwr 1.25.0's pull_object bug, running it once more", flush=True)
    return validate(lab, declared, workdir, f"{tag}-again")


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
@pytest.mark.timeout(2700)
@pytest.mark.troubleshooting("bootstrap-failed")
def test_boot_lab_hosts_boot_take_deliveries_and_federate_with_a_hospital():
    timer = Timer()
    run = run_program(lab_config(), "test")
    assert run.error is None, run.error
    declared = bootlab.Declared.from_run(run)
    hosts = declared.hosts
    names = {h.name for h in hosts.values()}
    assert {"gateway", "superlink-main", "vpn-main", "supernode-test-org-a", "supernode-test-org-b"} <= names, names
    broken = hosts["supernode-test-org-b"]
    workdir = Path(tempfile.mkdtemp(prefix="nina-bootlab-", dir=os.environ.get("NINA_BOOTLAB_WORKDIR")))
    try:
        with timer.phase("image"):
            image = bootlab.build_image()
        with bootlab.Lab(declared, workdir / "lab", image) as lab:
            try:
                _scenario(lab, declared, broken, workdir, timer)
            except BaseException:
                if os.environ.get("NINA_BOOTLAB_KEEP"):
                    print(f"[boot lab] kept for inspection: {workdir}; touch {workdir}/release to clean up", flush=True)
                    while not (workdir / "release").exists():
                        time.sleep(5)
                raise
    finally:
        timer.phases["total"] = round(time.monotonic() - timer.t0, 1)
        print("[boot lab] timings: " + json.dumps(timer.phases), flush=True)
        with contextlib.suppress(OSError):
            (workdir / "bootlab-timings.json").write_text(json.dumps(timer.phases, indent=1) + "\n")
        if not os.environ.get("NINA_BOOTLAB_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)


def _monitoring_comes_up(lab: bootlab.Lab, declared: bootlab.Declared, mon: bootlab.Machine) -> None:
    """The monitoring host after its deliveries: Prometheus and Alertmanager from the archive, on
    loopback only, with nina's rules loaded, Alertmanager found, and every cloud host's node
    exporter up (the on-premise one comes once the hospital has installed its kit)."""
    for unit in (facts.PROMETHEUS_UNIT, facts.ALERTMANAGER_UNIT):
        mon.wait_for(f"systemctl is-active --quiet {unit}", 120, f"{unit} active")
    for port in (facts.PROMETHEUS_PORT, facts.ALERTMANAGER_PORT):
        mon.wait_for(f"ss -Hltn 'sport = :{port}' | grep -q LISTEN", 60, f"port {port}")
        assert bootlab.port_of(mon, port) == {facts.LOOPBACK}, (port, bootlab.port_of(mon, port))
    # Its time series are on the host's volume, not its root disk.
    assert mon.sh(f"findmnt -n -o SOURCE --target {facts.PROMETHEUS_TSDB}").stdout.strip().startswith(facts.VOLUME_BY_ID_PREFIX)
    cloud = {f"http://{h.fixed_ip}:{facts.NODE_EXPORTER_PORT}/metrics" for h in declared.hosts.values()}
    seen = wait_targets_up(mon, cloud, 180)
    assert {job for job, *_ in seen} >= {"prometheus", "alertmanager", "node"}, seen
    rules = prometheus_api(mon, "/api/v1/rules")["data"]["groups"]
    names = {r["name"] for g in rules for r in g["rules"]}
    assert {"TargetDown", "BackupFailed", "CertificateExpiringSoon"} <= names, sorted(names)
    assert all(r.get("health") == "ok" for g in rules for r in g["rules"]), [
        r for g in rules for r in g["rules"] if r.get("health") != "ok"
    ]
    managers = prometheus_api(mon, "/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
    assert [a["url"] for a in managers] == [f"http://{facts.LOOPBACK}:{facts.ALERTMANAGER_PORT}/api/v2/alerts"], managers
    # The SuperLink's federation metrics (nina's textfile collector) reach Prometheus, one series per tenancy.
    deadline = time.monotonic() + 120
    while True:
        q = prometheus_api(mon, "/api/v1/query?query=nina_federation_supernodes_registered")["data"]["result"]
        if q or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert sorted(r["metric"].get("tenancy") for r in q) == sorted(declared.outputs["tenancies"]), q


def _scenario(lab: bootlab.Lab, declared: bootlab.Declared, broken: bootlab.DeclaredHost, workdir: Path, timer: Timer) -> None:
    hosts = declared.hosts
    by_host: dict[str, list[bootlab.DeclaredCommand]] = {}
    for cmd in declared.commands:
        by_host.setdefault(cmd.host, []).append(cmd)

    # --- 1. every host boots at once; one of them with its registries cut off -------------
    with timer.phase("boot all hosts (one with a registry outage)"):
        lab.deny_registries(broken.fixed_ip)
        machines = {h.name: lab.boot_declared(h) for h in hosts.values()}
        statuses = wait_all(machines)
    for name, st in statuses.items():
        if name == broken.name:
            continue
        assert st["status"] == "done", f"{name}: cloud-init {st['status']}:\n{st['text']}"
        machines[name].sh(f"test -f {facts.BOOTSTRAP_MARKER}")

    # The hidden-failure bug: pip could not reach the index, and cloud-init must say so.
    bad = lab.machines[broken.name]
    assert statuses[broken.name]["status"] == "error", statuses[broken.name]["text"]
    assert "scripts-user" in statuses[broken.name]["text"], statuses[broken.name]["text"]
    assert bad.sh(f"test -e {facts.BOOTSTRAP_MARKER}", check=False).returncode == 1
    row = troubleshooting.row("bootstrap-failed")
    check = bad.sh(troubleshooting.fill(row.check, {}), check=False)  # the row's check, on the host
    assert check.returncode == 1 and "does not have flwr==" in check.stderr and "FAILED:" in check.stderr, check.stderr
    assert bad.sh(f"test -e {facts.BOOTSTRAP_MARKER}", check=False).returncode == 1, "a failed check wrote the marker"
    deliveries = deliveries_to(by_host, broken)
    assert len(deliveries) == 2, [c.name for c in deliveries]  # <host>-base and <host>-supernode
    for delivery in deliveries:
        refused = lab.run_declared(delivery)
        assert refused.returncode == 1, refused
        assert troubleshooting.fill(row.symptom, {"hostname": broken.hostname}) in refused.stderr, refused.stderr
        assert "status: error" in refused.stderr, refused.stderr  # cloud-init's own account, for the operator
    for path in (facts.SUPERNODE_CONF, facts.JOURNALD_DROPIN, facts.HOST_LIB_DIR):
        assert bad.sh(f"test -e {path}", check=False).returncode == 1, f"a refused delivery installed {path}"

    # --- 2. the operator replaces that VM once the outage is over -------------------------
    with timer.phase("replace the failed SuperNode VM"):
        lab.deny_registries(broken.fixed_ip, denied=False)
        machines[broken.name] = lab.boot_declared(broken, instance_id=f"i-{broken.name}-2")
        st = machines[broken.name].cloud_init_status()
    assert st["status"] == "done", st["text"]

    # --- 3. every declared remote command, over ssh -J, then again --------------------------
    with timer.phase("deliveries and registrations (first run)"):
        lab.wait_ssh(hosts["gateway"].fixed_ip)
        run_all(lab, declared.commands, "first run")
    superlink = next(h for h in hosts.values() if h.name.startswith("superlink-"))
    vpn = next(h for h in hosts.values() if h.name.startswith("vpn-"))
    sl, vm = machines[superlink.name], machines[vpn.name]
    sl.wait_for(f"systemctl is-active --quiet {facts.SUPERLINK_UNIT}", 60, "superlink.service active")
    for port in (facts.SUPERLINK_FLEET_PORT, facts.SUPERLINK_CONTROL_PORT, facts.SUPERLINK_SERVERAPPIO_PORT):
        sl.wait_for(f"ss -Hltn 'sport = :{port}' | grep -q LISTEN", 60, f"port {port}")
    assert bootlab.port_of(sl, facts.SUPERLINK_SERVERAPPIO_PORT) == {facts.LOOPBACK}
    assert bootlab.port_of(sl, facts.SUPERLINK_FLEET_PORT) == {facts.ANY_ADDRESS}
    assert bootlab.port_of(sl, facts.SUPERLINK_CONTROL_PORT) == {facts.ANY_ADDRESS}
    assert sl.sh(f"findmnt -n -o SOURCE {facts.SUPERLINK_STATE_DIR}").stdout.strip().startswith(facts.VOLUME_BY_ID_PREFIX)
    modes = bootlab.stat(sl, [f"{facts.SUPERLINK_CERTS}/{facts.SERVER_KEY_FILE}", facts.SUPERLINK_STATE_DB])
    assert modes[f"{facts.SUPERLINK_CERTS}/{facts.SERVER_KEY_FILE}"] == "600 superlink fl_system", modes
    assert modes[facts.SUPERLINK_STATE_DB].endswith("superlink fl_system"), modes
    for h in hosts.values():
        m = machines[h.name]
        m.wait_for(f"ss -Hltn 'sport = :{facts.NODE_EXPORTER_PORT}' | grep -q LISTEN", 60, "node exporter")
        if h.name.startswith("supernode-"):
            m.wait_for(f"systemctl is-active --quiet {facts.SUPERNODE_UNIT}", 60, "supernode.service active")
            assert bootlab.port_of(m, facts.SUPERNODE_CLIENTAPPIO_PORT) <= {facts.LOOPBACK}
            key = bootlab.stat(m, [f"{facts.SUPERNODE_CERTS}/{facts.SUPERNODE_KEY_FILE}"])
            assert list(key.values()) == ["600 supernode fl_system"], key
        # The login user's keys (the only ones sshd reads), written whole by the base delivery:
        # the automation key (these deliveries log in with it) and one line per operator.
        keys = m.sh(f"cat {facts.LOGIN_AUTHORIZED_KEYS}").stdout.splitlines()
        operators = [f"nina-operator:{op['name']}" for op in lab_config().get("nina:operators", [])]
        assert [line.split()[-1] for line in keys] == ["nina-automation", *operators], (h.name, keys)
        assert list(bootlab.stat(m, [facts.LOGIN_AUTHORIZED_KEYS]).values()) == ["644 root root"], h.name
        effective = m.sh(f"sshd -T -C user={facts.DEFAULT_LOGIN_USER},host=x,addr=127.0.0.1 | grep -i '^authorizedkeysfile'").stdout
        assert effective.split() == ["authorizedkeysfile", f"{facts.AUTHORIZED_KEYS_DIR}/%u"], (h.name, effective)
    for unit in (facts.OPENVPN_SERVER_UNIT, facts.OPENVPN_TCP_SERVER_UNIT):
        vm.wait_for(f"systemctl is-active --quiet {unit}", 60, f"{unit} active")
    assert ("udp", facts.ANY_ADDRESS, facts.OPENVPN_UDP_PORT) in bootlab.listening(vm)
    assert ("tcp", facts.ANY_ADDRESS, facts.OPENVPN_TCP_PORT) in bootlab.listening(vm)
    members = json.loads(sl.sh(f"{facts.MEMBERSHIP_BIN} list").stdout)
    nodes = registered_nodes(sl)
    assert nodes == sorted(m["node-id"] for m in members["members"]) and len(nodes) == 3, (nodes, members)
    with timer.phase("monitoring: Prometheus scrapes every cloud host"):
        _monitoring_comes_up(lab, declared, machines[MONITOR])

    before = delivered_state(lab, declared)
    with timer.phase("deliveries and registrations (second run)"):
        run_all(lab, declared.commands, "second run")
    assert delivered_state(lab, declared) == before, "a second run of the same deliveries changed files or restarted services"
    assert json.loads(sl.sh(f"{facts.MEMBERSHIP_BIN} list").stdout) == members

    # --- 4. the hospital installs its kit as its README says ------------------------------------
    slug = next(s for t in declared.outputs["tenancies"].values() for s, o in t["organisations"].items() if o["placement"] == "onprem")
    org = next(t["organisations"][slug] for t in declared.outputs["tenancies"].values() if slug in t["organisations"])
    with timer.phase("hospital: export the kit, install.sh --dry-run, install.sh"):
        hospital = lab.boot_plain("hospital", HOSPITAL_IP, bootlab.HOSPITAL_CIDR, HOSPITAL_GW)
        outputs_file = workdir / "outputs.json"
        outputs_file.write_text(json.dumps(declared.outputs))
        outputs_file.chmod(0o600)
        kits = workdir / "kits"
        subprocess.run(
            [str(Path(sys.executable).parent / "nina"), "kit", "export", "--outputs", str(outputs_file), "--org", slug, "--out", str(kits)],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        archive = kits / f"{slug}{facts.SITEKIT_SUFFIX}.tar.gz"
        shutil.copy(archive, hospital.root / "root" / archive.name)
        kit_dir = f"/root/{slug}{facts.SITEKIT_SUFFIX}"
        hospital.sh(f"cd /root && tar xzf {archive.name}")
        # The platform key's fingerprint, as the operators tell the hospital by phone.
        install = f"./install.sh --platform-key-sha256 {declared.outputs['platform_signing_key']['sha256']}"
        dry = hospital.sh(f"cd {kit_dir} && {install} --dry-run", check=False, timeout=300)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert hospital.sh(f"test -e {facts.OPENVPN_CLIENT_CONF} || test -e {facts.SUPERNODE_CONF}", check=False).returncode == 1, (
            "install.sh --dry-run changed the host"
        )
        first = hospital.sh(f"cd {kit_dir} && {install}", check=False, timeout=900)
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    hospital.wait_for(f"ip -4 -o addr show | grep -q ' {org['vpn_address']}/'", 120, f"the pinned VPN address {org['vpn_address']}")
    hospital.wait_for(f"systemctl is-active --quiet {facts.SUPERNODE_UNIT}", 60, "the hospital's supernode.service")
    # The monitoring host scrapes the hospital's node exporter on its VPN address, through the router's
    # route to the pool and the VPN server's tunnel (nothing else of the hospital is reachable).
    with timer.phase("monitoring: the hospital's exporter through the tunnel"):
        hospital_exporter = f"http://{org['vpn_address']}:{facts.NODE_EXPORTER_PORT}/metrics"
        wait_targets_up(machines[MONITOR], {hospital_exporter}, 180)
    # The hospital's network reaches the VPN server's public address and nothing else of the cloud.
    blocked = hospital.sh(f"timeout 5 bash -c 'exec 3<>/dev/tcp/{vpn.floating_ip}/22'", check=False)
    assert blocked.returncode != 0, "the hospital reached SSH on the VPN server's public address"
    with timer.phase("hospital: install.sh again"):
        pids = hospital.sh(f"systemctl show -p MainPID --value {facts.SUPERNODE_UNIT} {facts.OPENVPN_CLIENT_UNIT}").stdout
        again = hospital.sh(f"cd {kit_dir} && {install}", check=False, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "done: 0 file(s) installed or updated" in again.stdout, again.stdout[-3000:]
    assert hospital.sh(f"systemctl show -p MainPID --value {facts.SUPERNODE_UNIT} {facts.OPENVPN_CLIENT_UNIT}").stdout == pids

    # --- 5. the validation app, through an SSH tunnel via the bastion --------------------------
    with timer.phase("validation run (every organisation, through the bastion)"):
        result = validate_as_an_operator(lab, declared, sl, workdir, "first")
    print(result.table(), flush=True)
    assert result.ok, f"{result.error}\n{result.output[-4000:]}"

    # --- 6. the SuperLink VM is replaced; its volume and registrations survive -------------------
    uuid = sl.sh(f"findmnt -n -o UUID {facts.SUPERLINK_STATE_DIR}").stdout.strip()
    with timer.phase("replace the SuperLink VM (same volume)"):
        sl = lab.boot_declared(superlink, instance_id=f"i-{superlink.name}-2")
        st = sl.cloud_init_status()
        assert st["status"] == "done", st["text"]
        # Pulumi re-runs what the new instance id triggers: the SuperLink's file delivery, not registrations.
        log = sl.sh(f"cat {facts.CLOUD_INIT_OUTPUT_LOG}").stdout
        assert "creating ext4" not in log, "the state volume was reformatted"
        assert sl.sh(f"findmnt -n -o UUID {facts.SUPERLINK_STATE_DIR}").stdout.strip() == uuid
        deliveries = deliveries_to(by_host, superlink)
        assert len(deliveries) == 2, [c.name for c in deliveries]  # <host>-base and <host>-superlink
        for delivery in deliveries:
            proc = lab.run_declared(delivery)
            assert proc.returncode == 0, proc.stderr
        sl.wait_for(f"systemctl is-active --quiet {facts.SUPERLINK_UNIT}", 60, "superlink.service after replacement")
        assert json.loads(sl.sh(f"{facts.MEMBERSHIP_BIN} list").stdout) == members
        assert registered_nodes(sl) == nodes, "the registrations did not survive the new SuperLink VM"
    with timer.phase("validation run after the replacement"):
        result = validate_as_an_operator(lab, declared, sl, workdir, "after-replace")
    print(result.table(), flush=True)
    assert result.ok, f"{result.error}\n{result.output[-4000:]}"
