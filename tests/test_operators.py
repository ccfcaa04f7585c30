"""Operators are people (issue 10, item 5).

Each operator of `nina:operators` logs in with their own SSH key. sshd reads login keys only
from root's files under facts.AUTHORIZED_KEYS_DIR (user-data's drop-in), and every host's base
delivery writes the login user's file whole: the automation key (pulumi-command's, also the
Nova key pair's) and one line per operator. So adding or removing an operator changes the
base deliveries only, never a VM, and a removed operator's line is gone from every host at
the next `pulumi up`. Checked here at each step: the config's refusals, the rendered file, the
real program under the mock harness (before/after removing an operator), the real installer
writing the file under a temporary root, and a real sshd reading that file.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa as dsa_
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from harness import INSTANCE, Run, payload_of, run_program, stack_config

from nina import config, facts, keys, render
from nina.config import ConfigError, load_config

REMOTE_COMMAND = "command:remote:Command"
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else "")
BASE_INSTALL = "-base-install"


def _openssh(key: Any, comment: str) -> str:
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}"


@functools.cache
def private_key(name: str, kind: str = "ed25519") -> Any:
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP384R1())
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    raise ValueError(kind)


def public_key(name: str, kind: str = "ed25519") -> str:
    return _openssh(private_key(name, kind), f"{name}@laptop")


def bare(line: str) -> str:
    return " ".join(line.split()[:2])


def with_operators(stack: str, operators: list[dict[str, str]]) -> dict[str, Any]:
    cfg = copy.deepcopy(stack_config(stack))
    cfg["nina:operators"] = operators
    return cfg


def namespace(full: dict[str, Any]) -> dict[str, Any]:
    return {k.removeprefix("nina:"): v for k, v in full.items()}


def problems(operators: list[Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as err:
        load_config(namespace(with_operators("test", operators)))
    return err.value.problems


# --- the config ------------------------------------------------------------------------------


def test_operators_are_optional_and_take_ed25519_rsa3072_and_ecdsa_keys():
    assert load_config(namespace(with_operators("test", []))).operators == []
    ops = [
        {"name": "alice", "ssh_public_key": public_key("alice")},
        {"name": "bob", "ssh_public_key": public_key("bob", "rsa3072") + "\n"},  # as `cat bob.pub` gives it
        {"name": "carol-ops", "ssh_public_key": public_key("carol", "ecdsa")},
    ]
    cfg = load_config(namespace(with_operators("test", ops)))
    assert config.operator_keys(cfg) == [(op["name"], bare(op["ssh_public_key"])) for op in ops]


ALICE = {"name": "alice", "ssh_public_key": public_key("alice")}


@pytest.mark.parametrize(
    ("entry", "key", "says"),
    [
        ({"name": "bob", "ssh_public_key": public_key("bob", "rsa2048")}, "ssh_public_key", "RSA key of 2048 bits"),
        ({"name": "bob", "ssh_public_key": "restrict " + public_key("bob")}, "ssh_public_key", "options are not accepted"),
        ({"name": "bob", "ssh_public_key": 'from="10.0.0.1" ' + public_key("bob")}, "ssh_public_key", "options are not accepted"),
        ({"name": "bob", "ssh_public_key": public_key("bob") + "\n" + public_key("eve")}, "ssh_public_key", "more than one line"),
        ({"name": "bob", "ssh_public_key": "ssh-ed25519 AAAAnotakey bob@laptop"}, "ssh_public_key", "not an OpenSSH public key"),
        ({"name": "bob", "ssh_public_key": "-----BEGIN PUBLIC KEY-----"}, "ssh_public_key", "not a key type"),
        ({"name": "bob", "ssh_public_key": ""}, "ssh_public_key", "must not be empty"),
        ({"name": "bob", "ssh_public_key": public_key("bob") + "\x1b[2J"}, "ssh_public_key", ""),
        ({"name": "Bob Smith", "ssh_public_key": public_key("bob")}, "name", "not DNS-safe"),
        ({"name": "bob"}, "ssh_public_key", "is required"),
        ({"name": "bob", "ssh_public_key": public_key("bob"), "options": "restrict"}, "options", "unknown key"),
    ],
)
def test_a_bad_operator_entry_is_one_key_named_problem(entry, key, says):
    found = problems([ALICE, entry])
    assert len(found) == 1, found
    assert found[0][0] == f"nina:operators[1].{key}", found
    assert says in found[0][1], found


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")  # making the key
def test_a_dsa_key_is_refused():
    dsa = _openssh(dsa_.generate_private_key(key_size=1024), "bob@old-laptop")
    found = problems([ALICE, {"name": "bob", "ssh_public_key": dsa}])
    assert [k for k, _ in found] == ["nina:operators[1].ssh_public_key"], found
    assert "is a ssh-dss key" in found[0][1]


def test_duplicate_names_and_keys_are_each_one_problem():
    again = {"name": "alice", "ssh_public_key": public_key("alice-2")}
    assert [k for k, _ in problems([ALICE, again])] == ["nina:operators[1].name"]
    # The same key under another name and comment: removing one entry would not cut its holder off.
    shared = {"name": "bob", "ssh_public_key": bare(ALICE["ssh_public_key"]) + " bob@desk"}
    found = problems([ALICE, shared])
    assert [k for k, _ in found] == ["nina:operators[1].ssh_public_key"], found
    assert "same key as operators[0] ('alice')" in found[0][1]


@pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="needs ssh-keygen")
def test_fingerprints_are_those_ssh_keygen_prints(tmp_path):
    for name, kind in (("alice", "ed25519"), ("bob", "rsa3072"), ("carol", "ecdsa")):
        line = public_key(name, kind)
        (tmp_path / "k.pub").write_text(line + "\n")
        printed = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True, text=True, check=True).stdout
        assert printed.split()[1] == keys.openssh_fingerprint(line), name


# --- the rendered file -----------------------------------------------------------------------

AUTOMATION = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPDEImfmeTlW3dqFjuqMjGoELhWvK0J/gdOCFqWrdsHY\n"  # as pulumi-tls writes it


def test_authorized_keys_is_the_automation_key_then_one_bare_line_per_operator():
    alice, bob = bare(public_key("alice")), bare(public_key("bob", "rsa3072"))
    text = render.authorized_keys(AUTOMATION, [("alice", alice), ("bob", bob)])
    assert text.splitlines() == [
        f"{AUTOMATION.strip()} nina-automation",
        f"{alice} nina-operator:alice",
        f"{bob} nina-operator:bob",
    ]
    assert render.authorized_keys(AUTOMATION, []) == f"{AUTOMATION.strip()} nina-automation\n"
    with pytest.raises(ValueError):
        render.authorized_keys(AUTOMATION, [("alice", "restrict " + alice)])
    files = {f["path"]: f for f in json.loads(render.base_delivery(AUTOMATION, [("alice", alice)]))["files"]}
    entry = files[facts.LOGIN_AUTHORIZED_KEYS]
    assert (entry["mode"], entry["owner"], entry["group"]) == (0o644, "root", "root")  # sshd: root's, writable by root only
    assert json.loads(render.base_delivery(AUTOMATION))["prune"] == [facts.AUTHORIZED_KEYS_DIR]


# --- the program, before and after an operator leaves ----------------------------------------

BOB = {"name": "bob", "ssh_public_key": public_key("bob", "rsa3072")}


@pytest.fixture(scope="module")
def runs() -> tuple[Run, Run]:
    before = run_program(with_operators("uat", [ALICE, BOB]), "uat")
    assert before.error is None, before.error
    after = run_program(with_operators("uat", [ALICE]), "uat")
    assert after.error is None, after.error
    return before, after


def base_payloads(run: Run) -> dict[str, dict]:
    return {r.name: json.loads(payload_of(r.inputs["stdin"])) for r in run.of_type(REMOTE_COMMAND) if r.name.endswith(BASE_INSTALL)}


def authorized(payload: dict) -> str:
    return next(f["content"] for f in payload["files"] if f["path"] == facts.LOGIN_AUTHORIZED_KEYS)


@pytest.mark.skipif(not SSHD, reason="needs sshd")
def test_the_sshd_dropin_is_valid_and_reads_only_nina_s_files(tmp_path):
    hostkey = tmp_path / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)], check=True)
    conf = tmp_path / "sshd_config"
    conf.write_text(f"HostKey {hostkey}\n" + render.sshd_dropin())
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    effective = subprocess.run([SSHD, "-T", "-f", str(conf)], capture_output=True, text=True, timeout=30)
    assert effective.returncode == 0, effective.stderr
    assert f"authorizedkeysfile {facts.AUTHORIZED_KEYS_DIR}/%u\n" in effective.stdout


def test_user_data_holds_the_dropin_and_the_automation_key_alone(runs):
    import yaml

    keypair = runs[0].of_type("openstack:compute/keypair:Keypair")[0]
    for run in runs:
        for name, text in run.user_data().items():
            files = {f["path"]: f for f in yaml.safe_load(text)["write_files"]}
            assert files[facts.SSHD_DROPIN]["content"] == render.sshd_dropin(), name
            keys = files[facts.LOGIN_AUTHORIZED_KEYS]
            assert keys["content"] == f"{bare(keypair.inputs['publicKey'])} nina-automation\n", name
            assert (keys["owner"], keys["permissions"]) == ("root:root", "0644"), name


def test_removing_an_operator_replaces_no_vm(runs):
    before, after = ({r.urn: r.inputs for r in run.of_type(INSTANCE)} for run in runs)
    assert set(after) == set(before) and before
    for urn in before:
        assert after[urn] == before[urn], urn
    # No operator key is in user-data at all (it is fixed for the VM's life).
    for run in runs:
        for name, text in run.user_data().items():
            assert bare(ALICE["ssh_public_key"]).split()[1] not in text, name


def test_removing_an_operator_changes_only_the_base_deliveries(runs):
    before, after = ({r.urn: r for r in run.registrations} for run in runs)
    assert set(before) == set(after)
    changed = {before[u].name for u in before if before[u].inputs != after[u].inputs}
    bases = set(base_payloads(runs[0]))
    assert changed == bases, changed ^ bases
    assert len(bases) == len(runs[0].of_type(INSTANCE))  # every host has one


def test_the_removed_operator_is_gone_from_every_host(runs):
    before, after = (base_payloads(r) for r in runs)
    automation = runs[0].outputs["ops_ssh_private_key"]
    assert automation  # the automation key stays, and stays the same
    alice, bob = bare(ALICE["ssh_public_key"]), bare(BOB["ssh_public_key"])
    for host, payload in before.items():
        lines = authorized(payload).splitlines()
        assert [line.split()[-1] for line in lines] == ["nina-automation", "nina-operator:alice", "nina-operator:bob"], host
    for host, payload in after.items():
        text = authorized(payload)
        assert [line.split()[-1] for line in text.splitlines()] == ["nina-automation", "nina-operator:alice"], host
        assert f"{alice} nina-operator:alice\n" in text and bob.split()[1] not in text, host
        assert authorized(before[host]).splitlines()[0] == text.splitlines()[0], host
    # Nothing else that the program declares carries bob's key either.
    for r in runs[1].registrations:
        assert bob.split()[1] not in json.dumps(r.inputs), r.name
    assert bob.split()[1] not in json.dumps(runs[1].outputs)


def test_no_delivery_writes_into_a_home_directory(runs):
    """Every file of every delivery lies in root's directories (nothing through a path the login
    user, or any other, owns): the login keys are in facts.AUTHORIZED_KEYS_DIR, not ~/.ssh."""
    for r in runs[1].of_type(REMOTE_COMMAND):
        if r.name.endswith("-install"):
            for f in json.loads(payload_of(r.inputs["stdin"]))["files"]:
                assert not f["path"].startswith(("/home/", "/root/")), (r.name, f["path"])


def test_the_automation_key_line_is_the_nova_key_pairs(runs):
    run = runs[1]
    keypair = run.of_type("openstack:compute/keypair:Keypair")[0]
    for host, payload in base_payloads(run).items():
        assert authorized(payload).splitlines()[0] == f"{bare(keypair.inputs['publicKey'])} nina-automation", host


# --- the real installer, and a real sshd reading what it wrote --------------------------------


def install(payload: dict, root: Path) -> subprocess.CompletedProcess:
    script = root.parent / "nina-install-files"
    if not script.exists():
        script.write_text(render.install_files_script(render.SOURCE_ROOT))
    return subprocess.run(
        [sys.executable, str(script), "--root", str(root)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_installer_rewrites_authorized_keys_without_the_removed_operator(runs, tmp_path):
    root = tmp_path / "root"
    before, after = (base_payloads(r)["gateway-base-install"] for r in runs)
    target = root / facts.LOGIN_AUTHORIZED_KEYS.lstrip("/")
    first = install(before, root)
    assert first.returncode == 0, first.stderr
    assert "nina-operator:bob" in target.read_text()
    # Whatever was added by hand (say, by the operator before leaving) goes too: a line in the
    # file, and a file for another user in the directory.
    target.write_text(target.read_text() + public_key("mallory") + "\n")
    (target.parent / "root").write_text(public_key("mallory") + "\n")
    second = install(after, root)
    assert second.returncode == 0, second.stderr
    assert f"wrote {facts.LOGIN_AUTHORIZED_KEYS}" in second.stdout
    # Only the keys changed: nothing restarts (sshd reads them at each login).
    assert "only per-connection entries changed: no restart" in second.stdout and "restart" not in second.stdout.replace("no restart", "")
    assert target.read_text() == authorized(after)
    assert "bob" not in target.read_text() and "mallory" not in target.read_text()
    assert sorted(p.name for p in target.parent.iterdir()) == [facts.DEFAULT_LOGIN_USER]
    assert target.stat().st_mode & 0o777 == 0o644


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _login(port: int, key_file: Path, known_hosts: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "ssh",
            *("-p", str(port), "-i", str(key_file)),
            *("-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"),
            *("-o", f"UserKnownHostsFile={known_hosts}", "-o", "ConnectTimeout=5"),
            f"{os.environ.get('USER') or 'root'}@127.0.0.1",
            "echo in",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.skipif(os.geteuid() != 0 or not SSHD or not shutil.which("ssh"), reason="needs root, sshd and ssh")
def test_a_real_sshd_lets_alice_in_and_refuses_bob_after_his_removal(runs, tmp_path):
    root = tmp_path / "root"
    before, after = (base_payloads(r)["gateway-base-install"] for r in runs)
    assert install(before, root).returncode == 0
    keys = {}
    for name, op in (("alice", ALICE), ("bob", BOB)):
        path = tmp_path / name
        path.write_bytes(
            private_key(name, "ed25519" if name == "alice" else "rsa3072").private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
        )
        path.chmod(0o600)
        assert bare(op["ssh_public_key"]) in (root / facts.LOGIN_AUTHORIZED_KEYS.lstrip("/")).read_text()
        keys[name] = path
    hostkey = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)], check=True)
    port = _free_port()
    conf = tmp_path / "sshd_config"
    conf.write_text(
        "\n".join(
            [
                f"ListenAddress 127.0.0.1:{port}",
                f"HostKey {hostkey}",
                "PidFile none",
                # The hosts' drop-in, pointed at the temporary root, and at the login user's file
                # (the test logs in as root). StrictModes off: the temporary root is under /tmp.
                *render.sshd_dropin()
                .replace(facts.AUTHORIZED_KEYS_DIR, f"{root}{facts.AUTHORIZED_KEYS_DIR}")
                .replace("%u", facts.DEFAULT_LOGIN_USER)
                .splitlines(),
                "StrictModes no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "PermitRootLogin prohibit-password",
                "LogLevel VERBOSE",
            ]
        )
        + "\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert sshd.poll() is None and time.monotonic() < deadline, "sshd did not start"
                time.sleep(0.1)
        known = tmp_path / "known_hosts"
        for name in ("alice", "bob"):
            got = _login(port, keys[name], known)
            assert (got.returncode, got.stdout) == (0, "in\n"), (name, got.stderr)
        assert install(after, root).returncode == 0  # the next `pulumi up`: bob removed
        assert _login(port, keys["alice"], known).stdout == "in\n"
        refused = _login(port, keys["bob"], known)
        assert refused.returncode == 255 and "Permission denied" in refused.stderr, refused.stderr
    finally:
        sshd.terminate()
        sshd.wait(10)
