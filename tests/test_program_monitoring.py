"""The monitoring host's delivery in the program (components/platform.py) under mocks: declared
where a host has the monitoring role, its targets follow the membership in place, and the SMTP
password is the one secret input nina takes from the stack (nina:monitoring_smtp_password)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from harness import Run, before_and_after, changed_names, instances_unchanged, payload_of, run_program, stack_config

from nina import facts

SMTP = {"smarthost": "smtp.example.edu.au:587", "from": "fl-ops@example.edu.au", "to": ["fl-oncall@example.edu.au"]}
PASSWORD = "relay-password-0123456789"


def _config(**changes: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(stack_config("test"))
    cfg["nina:hosts"] = [{"name": "gateway", "roles": ["bastion"]}, {"name": "monitor", "roles": ["monitoring"]}]
    cfg.update({f"nina:{k}": v for k, v in changes.items()})
    return cfg


def _delivery(run: Run):
    [found] = [r for r in run.registrations if r.name == "monitor-monitoring-install"]
    return found


def _files(run: Run) -> dict[str, str]:
    return {f["path"]: f["content"] for f in json.loads(payload_of(_delivery(run).inputs["stdin"]))["files"]}


@pytest.fixture(scope="module")
def run() -> Run:
    result = run_program(_config())
    assert result.error is None, result.error
    return result


def test_the_monitoring_host_gets_its_delivery_with_every_host_as_a_target(run):
    files = _files(run)
    assert "stdin" in _delivery(run).secret_inputs
    targets = [
        t
        for path, text in files.items()
        if path.startswith(facts.PROMETHEUS_FILE_SD_DIR + "/") and path.endswith(".json")
        for t in json.loads(text)
    ]
    scraped = {addr for t in targets for addr in t["targets"]}
    for name, host in run.outputs["hosts"].items():
        assert f"{host['fixed_ip']}:{facts.NODE_EXPORTER_PORT}" in scraped, name
    prometheus = yaml.safe_load(files[facts.PROMETHEUS_CONFIG])
    assert prometheus["rule_files"], "no alert rules delivered"


def test_a_new_organisation_changes_only_the_targets_in_place(run):
    grown = _config()
    grown["nina:organisations"] = [
        *grown["nina:organisations"],
        {"slug": "test-org-c", "name": "C", "placement": "cloud", "partition_id": 2, "cidr": "10.103.0.0/24"},
    ]
    before, after = before_and_after(_config(), grown, "test")
    gone, _added, changed = changed_names(before, after)
    assert not gone and "monitor-monitoring-install" in changed
    old, new = _files(before), _files(after)
    assert {p for p in set(old) | set(new) if old.get(p) != new.get(p)} == {f"{facts.PROMETHEUS_FILE_SD_DIR}/tenancy-main.json"}
    old_vms = {r.urn: r.inputs for r in before.of_type("openstack:compute/instance:Instance")}
    new_vms = {r.urn: r.inputs for r in after.of_type("openstack:compute/instance:Instance")}
    assert all(new_vms[urn] == inputs for urn, inputs in old_vms.items())


def test_the_smtp_password_is_a_secret_input_that_reaches_only_alertmanager():
    smtp = {**SMTP, "auth_username": "fl-ops"}
    missing = run_program(_config(monitoring={"smtp": smtp}))
    assert missing.error is not None and "nina:monitoring_smtp_password" in missing.error
    assert "pulumi config set --secret" in missing.error
    stray = run_program({**_config(monitoring={"smtp": SMTP}), "nina:monitoring_smtp_password": PASSWORD})
    assert stray.error is not None and "nothing uses it" in stray.error
    # Set without --secret, it is in the stack file in plain text: refused, as `nina config check` does.
    plain = run_program({**_config(monitoring={"smtp": smtp}), "nina:monitoring_smtp_password": PASSWORD})
    assert plain.error is not None and "must be a secret" in plain.error and "pulumi config set --secret" in plain.error
    good = run_program(
        {**_config(monitoring={"smtp": smtp}), "nina:monitoring_smtp_password": PASSWORD}, secret_keys=["nina:monitoring_smtp_password"]
    )
    assert good.error is None, good.error
    delivery = _delivery(good)
    assert "stdin" in delivery.secret_inputs and PASSWORD not in delivery.inputs["create"]
    holders = [path for path, text in _files(good).items() if PASSWORD in text]
    assert holders == [facts.ALERTMANAGER_CONFIG]
    for name, data in good.user_data().items():
        assert PASSWORD not in data, name


def test_without_smtp_changes_nothing_but_the_monitoring_delivery(run):
    before, after = before_and_after(_config(), _config(monitoring={"smtp": SMTP}), "test")
    instances_unchanged(before, after)
    gone, added, changed = changed_names(before, after)
    assert (gone, added, changed) == (set(), set(), {"monitor-monitoring-install"})
