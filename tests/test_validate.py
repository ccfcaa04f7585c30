"""`nina validate`: the validation app against a deployed stack, through an SSH tunnel via the bastion.

The slow tests run the README's command (`nina validate --outputs FILE`, plus `--user` for the
lab's login and `--known-hosts` so root's own file is left alone) in an operator network
namespace against a rehearsal federation whose SuperLink lives in another namespace behind a
real sshd, reachable only through a second sshd acting as the bastion (tests/sshlab.py).
The fast ones check the ssh command line, ssh's failures as messages, and bad input.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sshlab

from nina import cli, facts, outputs, rehearse, validate
from nina.host import env_sync
from nina.plan import Plan

NINA = Path(sys.executable).parent / "nina"
RUN_TIMEOUT = 600


# ---------------------------------------------------------------------------------------
# Fast: the command line and the messages
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uat_doc(reh_uat_plan: Plan) -> dict[str, Any]:
    return rehearse.stack_outputs(reh_uat_plan, rehearse.build_pki(reh_uat_plan))


def _access(doc: dict[str, Any], **kw: Any) -> tuple[validate.Access, validate.Target]:
    parsed = outputs.read(doc)
    return validate.access(parsed, **kw), validate.targets(parsed)[0]


def test_the_tunnel_jumps_through_the_bastion_with_every_option_on_both_hops(uat_doc, tmp_path):
    a, t = _access(uat_doc, identity=tmp_path / "k%ey", known_hosts=tmp_path / "known hosts")
    cmd = validate.tunnel_command(a, t, 40123)
    assert cmd[0] == "ssh" and cmd[-1] == f"{facts.DEFAULT_LOGIN_USER}@10.110.0.40"
    assert cmd[cmd.index("-L") + 1] == "127.0.0.1:40123:127.0.0.1:9093"
    assert {"-N", "ExitOnForwardFailure=yes", "BatchMode=yes", "StrictHostKeyChecking=accept-new"} <= set(cmd)
    assert "HostKeyAlias=nina-uat-superlink-main" in cmd and "-J" not in cmd
    proxy = next(o for o in cmd if o.startswith("ProxyCommand="))
    # The hop is an explicit ssh (so -i and the known-hosts options apply to it, unlike -J's),
    # quoted for /bin/sh and with % doubled for ssh's token expansion.
    assert proxy.startswith("ProxyCommand=ssh ") and "-W 10.110.0.40:22 ubuntu@192.0.2.1" in proxy
    assert "HostKeyAlias=nina-uat-gateway" in proxy and "BatchMode=yes" in proxy and "IdentitiesOnly=yes" in proxy
    assert f"-i {tmp_path}/k%%ey" in proxy and f"'UserKnownHostsFile={tmp_path}/known hosts'" in proxy


def test_with_the_agent_no_identity_is_forced_and_a_superlink_on_the_bastion_needs_no_hop(uat_doc):
    a, t = _access(uat_doc)
    cmd = validate.tunnel_command(a, t, 1)
    assert "-i" not in cmd and "IdentitiesOnly=yes" not in cmd and not any(o.startswith("UserKnownHostsFile") for o in cmd)
    on_bastion = validate.Target("main", "gateway", "10.110.0.10", 9093, {"a": 0}, on_bastion=True)
    cmd = validate.tunnel_command(a, on_bastion, 1)
    assert cmd[-1] == "ubuntu@192.0.2.1" and not any(o.startswith("ProxyCommand") for o in cmd)
    assert "HostKeyAlias=nina-uat-gateway" in cmd


@pytest.mark.parametrize(
    ("said", "wanted"),
    [
        (
            "ubuntu@192.0.2.1: Permission denied (publickey).\nConnection closed by UNKNOWN port 65535",
            "the bastion gateway refused the keys of your agent",
        ),
        ("ubuntu@10.110.0.40: Permission denied (publickey).", "the SuperLink host superlink-main refused"),
        ("ssh: connect to host 192.0.2.1 port 22: Connection timed out", "cannot reach the bastion at 192.0.2.1:22"),
        ("channel 0: open failed: connect failed: No route to host\nstdio forwarding failed", "could not connect to the SuperLink host"),
        (
            "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\n"
            "Host key for nina-uat-superlink-main has changed and you have requested strict checking.\nHost key verification failed.",
            "ssh-keygen -R nina-uat-superlink-main -f ~/.ssh/known_hosts",
        ),
    ],
)
def test_ssh_failures_become_one_line_naming_the_fix(uat_doc, said, wanted):
    a, t = _access(uat_doc)
    message = validate.ssh_failure("Warning: Permanently added 'x' (ED25519) to the list of known hosts.\n" + said, a, t)
    assert wanted in message and "\n" not in message and "Permanently added" not in message


def test_the_key_from_the_outputs_is_written_0600(tmp_path):
    path = validate.write_key(tmp_path, "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----")
    assert path.stat().st_mode & 0o777 == 0o600 and path.read_text().endswith("-----\n")


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["validate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bad_input_is_one_clear_line_and_exit_2(uat_doc, tmp_path, capsys):
    code, _, err = _cli(capsys, "--outputs", str(tmp_path / "missing.json"))
    assert code == 2 and "no such file" in err and len(err.splitlines()) == 1
    no_bastion = dict(uat_doc, bastion_ip=None)
    (tmp_path / "o.json").write_text(json.dumps(no_bastion))
    code, _, err = _cli(capsys, "--outputs", str(tmp_path / "o.json"))
    assert code == 2 and "bastion_ip: is null" in err and "pulumi up" in err
    (tmp_path / "o.json").write_text(json.dumps(uat_doc))
    code, _, err = _cli(capsys, "--outputs", str(tmp_path / "o.json"), "--tenancy", "nope")
    assert code == 2 and "--tenancy nope: no such tenancy" in err and "main" in err
    code, _, err = _cli(capsys, "--outputs", str(tmp_path / "o.json"), "--identity", str(tmp_path / "nokey"))
    assert code == 2 and "--identity" in err and "cannot read" in err
    hidden = dict(uat_doc, ops_ssh_private_key=outputs.SECRET_PLACEHOLDER)
    (tmp_path / "o.json").write_text(json.dumps(hidden))
    code, _, err = _cli(capsys, "--outputs", str(tmp_path / "o.json"))
    assert code == 2 and "ops_ssh_private_key: is hidden" in err and "--show-secrets" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------
# Slow: a real tunnel through two real sshds to a rehearsal federation
# ---------------------------------------------------------------------------------------


@dataclass
class Federation:
    lab: sshlab.SshLab
    rehearsal: rehearse.Rehearsal
    outputs: Path
    known_hosts: Path
    tmpdir: Path  # TMPDIR of every `nina validate`: its private directory must be gone afterwards
    key: Path

    def command(self, *extra: str) -> list[str]:
        """The README's `nina validate` plus the lab's login and known_hosts file."""
        return [
            str(NINA),
            "validate",
            "--outputs",
            str(self.outputs),
            "--user",
            self.lab.user,
            "--known-hosts",
            str(self.known_hosts),
            *extra,
        ]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}  # never the test runner's agent
        return {**env, "TMPDIR": str(self.tmpdir)}

    def run(self, *extra: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
        """`nina validate` from the operator namespace."""
        return subprocess.run(
            [sshlab.IP, "netns", "exec", self.lab.op, *self.command(*extra)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            stdin=subprocess.DEVNULL,
        )


def lab_lock(committed: str, **changed: str) -> str:
    """The committed lock's header over this venv's whole installed set (`changed`: name -> another
    version, as if the tenancy's lock held it)."""
    header = "".join(line + "\n" for line in committed.splitlines() if line.startswith("#"))
    have = {**env_sync.installed(sys.executable), **changed}
    return header + "".join(f"{name}=={version}\n" for name, version in sorted(have.items()))


@pytest.fixture(scope="module")
def federation(reh_uat_plan: Plan, tmp_path_factory) -> Iterator[Federation]:
    reason = sshlab.unavailable_reason()
    if reason:
        pytest.skip(reason)
    plan = reh_uat_plan
    tmp = tmp_path_factory.mktemp("validate")
    tenancy = plan.tenancies[0]
    bastion = next(h for h in plan.hosts if "bastion" in h.roles)
    prefix = ipaddress.IPv4Network(plan.cfg.network.server_cidr).prefixlen
    lab = sshlab.SshLab(tmp / "lab", facts.REHEARSAL_PUBLIC_IP, bastion.fixed_ip, tenancy.superlink_ip, prefix)
    r = None
    try:
        key = sshlab.keygen(tmp / "ops_key")
        lab.authorise(tmp / "ops_key.pub")
        lab.start_sshd("sshd-bastion", lab.bastion, facts.REHEARSAL_PUBLIC_IP)
        lab.start_sshd("sshd-superlink", lab.sl, tenancy.superlink_ip)
        pki = rehearse.build_pki(plan)
        with lab.inside(lab.sl):  # the SuperLink, its SuperNodes and their checks live in the SuperLink's namespace
            r = rehearse.Rehearsal(plan, tmp / "reh", tenancy.name, pki=pki, log=lambda line: None)
            r.prepare()
            r.start_superlink()
            r.register_all()
            r.start_supernodes()
            r.wait_online(len(r.members))
        assert r.control_port == facts.SUPERLINK_CONTROL_PORT  # what the outputs' control_address says
        doc = rehearse.stack_outputs(plan, pki)
        doc["ops_ssh_private_key"] = key.read_text()
        # The lab's SuperNodes run this project's venv (Python 3.11, the test tools beside flwr),
        # not a venv of the committed lock for the hosts' Python 3.12: the lab's lock is the
        # committed lock's header (the definition's pins, which this venv holds) over this venv's
        # own whole installed set, as nina-env-sync lists a venv (its pip freeze, in effect).
        doc["tenancies"][tenancy.name]["environment"]["lock"] = lab_lock(doc["tenancies"][tenancy.name]["environment"]["lock"])
        outputs_file = tmp / "outputs.json"
        outputs_file.write_text(json.dumps(doc))
        outputs_file.chmod(0o600)
        tmpdir = tmp / "operator-tmp"
        tmpdir.mkdir()
        yield Federation(lab, r, outputs_file, tmp / "known_hosts", tmpdir, key)
    finally:
        if r is not None:
            r.close()
        lab.close()


@pytest.mark.slow
def test_the_control_api_cannot_be_reached_directly_from_the_operator(federation):
    lab = federation.lab
    sl_ip = federation.rehearsal.tenancy.superlink_ip
    # The check can succeed: on the SuperLink's own loopback the Control API answers.
    assert lab.connect(lab.sl, facts.LOOPBACK, facts.SUPERLINK_CONTROL_PORT) == "OK"
    assert lab.connect(lab.op, sl_ip, facts.SUPERLINK_CONTROL_PORT).startswith("FAIL")  # dropped at the bastion
    assert lab.connect(lab.op, sl_ip, facts.SSH_PORT).startswith("FAIL")
    assert lab.connect(lab.op, facts.LOOPBACK, facts.SUPERLINK_CONTROL_PORT) == "FAIL ConnectionRefusedError"
    assert lab.connect(lab.op, facts.REHEARSAL_PUBLIC_IP, facts.SSH_PORT) == "OK"  # only the bastion's SSH


@pytest.fixture(scope="module")
def first_validation(federation) -> subprocess.CompletedProcess:
    """The federation's first `nina validate` (it records the host keys and leaves finished runs
    at the SuperLink), shared by the tests that build on it, whichever of them runs first."""
    return federation.run()


@pytest.mark.slow
def test_nina_validate_runs_the_app_through_the_bastion_and_leaves_nothing_behind(federation, first_validation):
    proc = first_validation
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    print(out)
    assert "tunnel: 127.0.0.1:" in out and f"-> {federation.lab.user}@10.110.0.40 (superlink-main) 127.0.0.1:9093" in out
    assert "Control API answers TLS for 127.0.0.1 with the stack's CA" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and "@" in line]
    assert [row[:2] for row in rows] == [[str(n), "0,1"] for n in range(1, facts.VALIDATE_ROUNDS + 1)], out
    assert "ok: every organisation took part in every round (main)" in out
    # Both hops were real logins with the operators' key, and both host keys were recorded
    # (trusted on first use) under the nina-<environment>-<host> aliases.
    for name in ("sshd-bastion", "sshd-superlink"):
        assert f"Accepted publickey for {federation.lab.user}" in (federation.lab.workdir / f"{name}.log").read_text()
    for alias, sshd in (("nina-uat-gateway", "sshd-bastion"), ("nina-uat-superlink-main", "sshd-superlink")):
        found = subprocess.run([sshlab.SSH_KEYGEN, "-F", alias, "-f", str(federation.known_hosts)], capture_output=True, text=True)
        assert [line.split()[2] for line in found.stdout.splitlines() if not line.startswith("#")] == [federation.lab.host_key(sshd)]
    assert federation.lab.pids(federation.lab.op) == []  # no ssh, no flwr left
    assert list(federation.tmpdir.iterdir()) == []  # the private directory with the key is gone
    # Again (one round), now checked against the recorded host keys.
    recorded = federation.known_hosts.read_bytes()
    again = federation.run("--rounds", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert federation.known_hosts.read_bytes() == recorded


def _readme_block(starts: str) -> str:
    """The README's fenced block whose first line starts with `starts`."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = [b.split("\n", 1)[1] for b in text.split("```")[1::2]]
    [block] = [b for b in blocks if b.startswith(starts)]
    return block


@pytest.mark.slow
def test_the_readme_tunnel_by_hand_serves_flwr_ls(federation, first_validation, tmp_path):
    """The README's ~/.ssh/config blocks, ssh command and federation, with the lab's values
    (after the first `nina validate`: its host keys and its runs are what this tunnel sees)."""
    assert first_validation.returncode == 0, first_validation.stderr
    lab = federation.lab
    config = _readme_block("Host nina-uat-gateway")
    for old, new in (
        ("203.0.113.10", facts.REHEARSAL_PUBLIC_IP),
        ("User ubuntu", f"User {lab.user}"),
        ("~/.ssh/nina-uat", str(federation.key)),
    ):
        assert old in config
        config = config.replace(old, new)
    config += f"Host *\n  UserKnownHostsFile {federation.known_hosts}\n  BatchMode yes\n"  # not root's own file
    (tmp_path / "ssh_config").write_text(config)
    ssh = "ssh -N -o ExitOnForwardFailure=yes -L 127.0.0.1:9093:127.0.0.1:9093 nina-uat-superlink-main"
    assert ssh in _readme_block("ssh -N")
    tunnel = lab.spawn("manual-tunnel", [sshlab.SSH, "-F", str(tmp_path / "ssh_config"), *ssh.split()[1:]], lab.op)
    try:
        deadline = time.monotonic() + 30
        while lab.connect(lab.op, facts.LOOPBACK, facts.SUPERLINK_CONTROL_PORT) != "OK":
            assert tunnel.running() and time.monotonic() < deadline, tunnel.output()
            time.sleep(0.3)
        app = tmp_path / "validation_app"
        shutil.copytree(validate.VALIDATION_APP, app, ignore=shutil.ignore_patterns("__pycache__", ".*"))
        connection_toml = _readme_block("[superlink.uat-main]").replace("/home/you/nina-uat-ca.crt", str(federation.rehearsal.ca_path))
        home = tmp_path / "flwr-home"
        home.mkdir()
        (home / facts.FLWR_CONFIG_FILE).write_text(connection_toml)
        commands = _readme_block("export FLWR_TELEMETRY_ENABLED=0").splitlines()
        assert commands[0].startswith("export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 "), commands
        assert "flwr ls uat-main" in commands and "flwr log <run-id> uat-main --show" in commands, commands
        env = {**federation.env(), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_HOME": str(home)}
        flwr = str(Path(sys.executable).parent / "flwr")
        ls = subprocess.run(
            [sshlab.IP, "netns", "exec", lab.op, flwr, "ls", "uat-main", "--format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        runs = json.loads(ls.stdout)["runs"]
        # The runs `nina validate` submitted through its own tunnel, seen through this one.
        assert runs and all(r["fab-id"] == "nina/nina-validation" for r in runs), ls.stdout + ls.stderr
        done = next(r["run-id"] for r in runs if r["status"].startswith("finished:completed"))
        log = subprocess.run(
            [sshlab.IP, "netns", "exec", lab.op, flwr, "log", done, "uat-main", "--show"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert '"ok": true' in log.stdout and "NINA-SUMMARY" in log.stdout, log.stdout + log.stderr
    finally:
        lab.stop(tunnel)
    assert lab.settled_pids(lab.op) == []


@pytest.mark.slow
def test_a_wrong_key_is_one_clear_error_and_no_ssh_stays(federation):
    wrong = sshlab.keygen(federation.tmpdir.parent / "wrong_key")
    proc = federation.run("--identity", str(wrong), timeout=120)
    print(proc.stderr)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("nina validate: tenancy main: FAILED: the SSH tunnel") and "the bastion gateway refused the key" in line
    assert "Permission denied (publickey)" in line and "--identity" in line
    assert federation.lab.pids(federation.lab.op) == []
    assert list(federation.tmpdir.iterdir()) == []


@pytest.mark.slow
def test_a_changed_host_key_is_refused(federation, tmp_path):
    known = tmp_path / "known_hosts"
    other = sshlab.keygen(tmp_path / "other_host_key")
    known.write_text(f"nina-uat-superlink-main ssh-ed25519 {other.with_suffix('.pub').read_text().split()[1]}\n")
    proc = subprocess.run(
        [sshlab.IP, "netns", "exec", federation.lab.op, *federation.command()[:-1], str(known)],
        capture_output=True,
        text=True,
        timeout=120,
        env=federation.env(),
    )
    print(proc.stderr)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"the host key of nina-uat-superlink-main is not the one {known} recorded" in proc.stderr
    assert f"ssh-keygen -R nina-uat-superlink-main -f {known}" in proc.stderr
    assert federation.lab.pids(federation.lab.op) == []


@pytest.mark.slow
def test_a_missing_organisation_fails_the_validation(federation):
    r, lab = federation.rehearsal, federation.lab
    r.stop_supernode("gold-coast")
    try:
        proc = federation.run("--rounds", "1", "--round-timeout", "10", timeout=300)
    finally:
        with lab.inside(lab.sl):
            r.start_supernode("gold-coast")
            r.wait_online(len(r.members))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("nina validate: tenancy main: FAILED: ") and "Traceback" not in proc.stderr
    assert "partitions [1] did not answer" in line or "only 1 of 2 expected SuperNodes" in line, line
    assert line.endswith("(partitions: 0 metro-north, 1 gold-coast)")
    assert "ok: every organisation" not in proc.stdout
    assert lab.pids(lab.op) == []


@pytest.mark.slow
def test_a_node_with_another_version_of_any_locked_package_fails_the_validation(federation, tmp_path):
    """The whole lock, not only the definition's pins: a lock holding another grpcio (a
    dependency of flwr the definition does not name) than the nodes' fails, naming it."""
    doc = json.loads(federation.outputs.read_text())
    env = doc["tenancies"]["main"]["environment"]
    installed = env_sync.parse_lock(env["lock"])["grpcio"]
    assert "grpcio" not in outputs.read(doc).tenancies["main"].environment.requirements
    env["lock"] = lab_lock(env["lock"], grpcio="1.0.0")
    other = tmp_path / "outputs-other-grpcio.json"
    other.write_text(json.dumps(doc))
    other.chmod(0o600)
    proc = dataclasses.replace(federation, outputs=other).run("--rounds", "1", "--round-timeout", "30", timeout=300)
    print(proc.stdout + proc.stderr)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("nina validate: tenancy main: FAILED: round 1: a node's installed packages are not its tenancy's lock: "), line
    assert "partition 0 (" in line and "partition 1 (" in line and line.endswith("(partitions: 0 metro-north, 1 gold-coast)"), line
    assert line.count(f"grpcio {installed} is installed, the lock has 1.0.0") == 2, line
    assert "environments compared with the tenancy's whole lock" in proc.stdout
    assert "LOCK DIFFERS     partition 1 (" in proc.stdout and f"grpcio {installed} is installed, the lock has 1.0.0" in proc.stdout
    assert federation.lab.pids(federation.lab.op) == []


@pytest.mark.slow
def test_sigterm_tears_the_tunnel_down(federation):
    """Last: the run it interrupts goes on on the SuperLink until its rounds are done."""
    proc = subprocess.Popen(
        [sshlab.IP, "netns", "exec", federation.lab.op, *federation.command()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=federation.env(),
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        seen = ""
        while "tunnel: " not in seen and time.monotonic() < deadline:
            seen += proc.stdout.readline()
        assert "tunnel: " in seen, seen
        assert federation.lab.pids(federation.lab.op)  # nina and its ssh are there now
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(err)
    assert proc.returncode == 1 and "interrupted; the SSH tunnel and flwr were stopped" in err and "Traceback" not in err
    assert federation.lab.pids(federation.lab.op) == []
    assert list(federation.tmpdir.iterdir()) == []
