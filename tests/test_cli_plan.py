"""`nina plan`: the offline view of what a stack builds."""

from __future__ import annotations

from pathlib import Path

from nina.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_plan_prints_hosts_rules_and_members_and_writes_user_data(tmp_path, capsys):
    assert main(["plan", "--stack", "test", "--dir", str(REPO), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "superlink-main               10.100.0.40" in out
    assert "org-test-org-a->superlink-main-tcp-9092" in out
    assert "test-org-b                 partition 1 cloud" in out
    # The example operator, with the fingerprint `ssh-keygen -lf` prints for its key.
    assert "  example-operator             SHA256:" in out and " ssh-ed25519\n" in out
    written = sorted(p.name for p in (tmp_path / "user-data").iterdir())
    assert written == ["gateway.yaml", "superlink-main.yaml", "supernode-test-org-a.yaml", "supernode-test-org-b.yaml"]
    assert all(p.read_text().startswith("#cloud-config\n") for p in (tmp_path / "user-data").iterdir())
    assert (tmp_path / "plan.txt").read_text() == out.split("\nwrote ")[0]


def test_plan_of_an_invalid_stack_exits_2_naming_the_key(tmp_path, capsys):
    bad = (REPO / "Pulumi.test.yaml").read_text().replace("10.101.0.0/24", "10.100.0.0/24")
    (tmp_path / "Pulumi.bad.yaml").write_text(bad)
    assert main(["plan", "--stack", "bad", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nina:organisations[0].cidr" in err and "overlaps" in err
