"""A corpus of hostile and careless inputs to the `nina` CLI, by class, and a runner that judges
how each one ends: refused cleanly (exit 2, one line per problem on stderr, no traceback),
crashed (an exception escaped, or a traceback was printed), or accepted (exit 0: it slipped
through). `tests/test_hostile.py` holds every case to "refused"; `benchmarks/hostile_inputs.py`
prints the counts per class (also against another checkout, for before/after figures).

Each case starts from a valid input (the repository's Pulumi.uat.yaml, or stack outputs built
by benchmarks/outputs_fixture.py) and breaks one thing, so a case refused for some other reason
would show up as a wrong message in the tests.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIG_INT = "9" * 5000  # beyond Python's default int/str conversion limit (4300 digits)


def ecdsa_key() -> str:
    """A valid OpenSSH ECDSA P-384 public key (the kind flwr accepts), for key-with-options cases."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.derive_private_key(12345, ec.SECP384R1()).public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@dataclass(frozen=True)
class Case:
    cls: str  # the class of bad input, as the closing note counts them
    name: str
    # Writes the case's files into the directory and returns the CLI's argv.
    prepare: Callable[[Path], list[str]]
    # A word the refusal must contain (the key or the thing refused), so that a case refused
    # for an unrelated reason does not pass.
    expect: str


@dataclass(frozen=True)
class Outcome:
    verdict: str  # "refused" | "crashed" | "accepted" | "failed" (exit 1)
    code: int | None
    stderr: str


# ---------------------------------------------------------------------------------------
# Stack files
# ---------------------------------------------------------------------------------------


def uat_text() -> str:
    return (ROOT / "Pulumi.uat.yaml").read_text()


def uat_config() -> dict[str, Any]:
    doc = yaml.safe_load(uat_text())
    assert isinstance(doc, dict)
    return doc


def _stack_text(text: str) -> Callable[[Path], list[str]]:
    def prepare(d: Path) -> list[str]:
        (d / "Pulumi.bad.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        return ["config", "check", "--stack", "bad", "--dir", str(d)]

    return prepare


def _stack_edit(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], list[str]]:
    doc = uat_config()
    edit(doc["config"])
    # allow_unicode=False: control characters and surrogates are written as escapes, and YAML
    # reads them back as the characters themselves.
    return _stack_text(yaml.safe_dump(doc, allow_unicode=False, sort_keys=False))


def _with_value(line_re: str, value: str) -> Callable[[Path], list[str]]:
    """uat's text with the value on the first line matching `line_re` replaced verbatim."""
    text, n = re.subn(line_re, lambda m: str(m.group(1)) + value, uat_text(), count=1, flags=re.M)
    assert n == 1, line_re
    return _stack_text(text)


def _orgs(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    orgs = cfg["nina:organisations"]
    assert isinstance(orgs, list)
    return orgs


def _set_org(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(cfg: dict[str, Any]) -> None:
        _orgs(cfg)[0][key] = value

    return edit


def _set_net(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(cfg: dict[str, Any]) -> None:
        cfg["nina:network"][key] = value

    return edit


def _retired_reused(d: Path) -> list[str]:
    def edit(cfg: dict[str, Any]) -> None:
        cfg["nina:retired_partition_ids"] = [_orgs(cfg)[0]["partition_id"]]

    return _stack_edit(edit)(d)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(cfg: dict[str, Any]) -> None:
        cfg[key] = value

    return edit


def _researcher(
    images: list[str] | None = None, realm: str | None = None, domain: str = "fl.example.edu.au"
) -> Callable[[dict[str, Any]], None]:
    """Researcher access on uat (a proxy host), with these notebook images, Keycloak realm or public domain."""

    def edit(cfg: dict[str, Any]) -> None:
        cfg["nina:hosts"] = [{"name": "gateway", "roles": ["bastion", "proxy"]}]
        access: dict[str, Any] = {"public_domain": domain, "acme_email": "ops@example.edu.au"}
        if images is not None:
            access["notebook_images"] = images
        cfg["nina:researcher_access"] = access
        if realm is not None:
            cfg["nina:keycloak"] = {"realm": realm}

    return edit


def _plan_out(target: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    def prepare(d: Path) -> list[str]:
        (d / "Pulumi.uat.yaml").write_text(uat_text())
        return ["plan", "--stack", "uat", "--dir", str(d), "--out", str(target(d))]

    return prepare


def _a_file(d: Path) -> Path:
    (d / "taken").write_text("a file, not a directory\n")
    return d / "taken"


def _read_only(d: Path) -> Path:
    (d / "ro").mkdir(mode=0o500)
    return d / "ro" / "out"


def _stack_is(target: str) -> Callable[[Path], list[str]]:
    def prepare(d: Path) -> list[str]:
        (d / "Pulumi.bad.yaml").symlink_to(target)
        return ["config", "check", "--stack", "bad", "--dir", str(d)]

    return prepare


def _huge_stack(d: Path) -> list[str]:
    # A valid stack file padded with comments past any sane size.
    (d / "Pulumi.bad.yaml").write_text(uat_text() + ("#" * 1023 + "\n") * (20 * 1024))
    return ["config", "check", "--stack", "bad", "--dir", str(d)]


SHA = "ab" * 32


def _grafana(
    grafana: dict[str, Any] | None = None, mon_roles: tuple[str, ...] = ("monitoring", "grafana"), **top: Any
) -> Callable[[dict[str, Any]], None]:
    """uat with a monitoring host carrying `mon_roles` and nina:grafana = `grafana` (a valid
    digest unless given), plus any other top-level nina:<key> values (e.g. database)."""

    def edit(cfg: dict[str, Any]) -> None:
        cfg["nina:hosts"] = [{"name": "gateway", "roles": ["bastion", "proxy"]}, {"name": "mon", "roles": list(mon_roles)}]
        cfg["nina:grafana"] = {"sha256": SHA} if grafana is None else grafana
        for key, value in top.items():
            cfg[f"nina:{key}"] = value

    return edit


def stack_cases() -> list[Case]:
    cases = [
        # PyYAML turns these into exceptions that are not YAMLError (ValueError, OverflowError).
        Case("yaml values", "!!bool maybe", _with_value(r"^(  nina:environment: ).*$", "!!bool maybe"), "cannot read"),
        Case("yaml values", "!!int x", _with_value(r"^(  nina:environment: ).*$", "!!int x"), "cannot read"),
        Case("yaml values", "!!float x", _with_value(r"^(  nina:environment: ).*$", "!!float x"), "cannot read"),
        Case("yaml values", "impossible date", _with_value(r"^(  nina:environment: ).*$", "2026-02-30"), "cannot read"),
        Case("yaml values", "!!timestamp junk", _with_value(r"^(  nina:environment: ).*$", "!!timestamp 2026-13-45"), "cannot read"),
        # Found by the property test (tests/test_config.py): IndexError and AttributeError.
        Case("yaml values", "!!int ''", _with_value(r"^(  nina:environment: ).*$", "!!int ''"), "cannot read"),
        Case("yaml values", "!!timestamp maybe", _with_value(r"^(  nina:environment: ).*$", "!!timestamp maybe"), "cannot read"),
        Case("yaml values", "!!binary junk", _with_value(r"^(  nina:environment: ).*$", "!!binary '%%%'"), "nina:environment"),
        Case(
            "yaml values",
            "!!python/object tag",
            _with_value(r"^(  nina:environment: ).*$", "!!python/object:os.system x"),
            "could not determine a constructor",
        ),
        Case("yaml values", "5,000-digit integer", _stack_edit(_set("nina:superlink", {"state_volume_gb": "BIG"})), "5000 digits"),
        Case("yaml values", "lone surrogate", _stack_edit(_set_org("name", "Metro \ud800 North")), "name"),
        # Numbers a careless YAML edit gives the wrong type: YAML's true would pass as 1.
        Case("yaml values", "true as a partition id", _stack_edit(_set_org("partition_id", True)), "partition_id"),
        Case("yaml values", "a string as a kit generation", _stack_edit(_set_org("kit_generation", "2")), "kit_generation"),
        Case("yaml values", "a retired partition id reused", _retired_reused, "retired partition id"),
        # Strings that reach files, terminals and READMEs.
        Case("control characters", "newline in a name", _stack_edit(_set_org("name", "Metro\nNorth")), "name"),
        Case("control characters", "escape sequence in a name", _stack_edit(_set_org("name", "Metro \x1b[2J North")), "name"),
        Case("control characters", "bidi override in a name", _stack_edit(_set_org("name", "Metro \u202e North")), "name"),
        Case("control characters", "NUL in a name", _stack_edit(_set_org("name", "Metro\x00North")), "name"),
        Case("control characters", "newline in a flavor", _stack_edit(_set("nina:vpn", {"flavor": "m3.small\nrm -rf /"})), "flavor"),
        Case("control characters", "CR in the image", _stack_edit(_set("nina:cloud", {"image": "Ubuntu\r24.04"})), "image"),
        Case(
            "control characters",
            "tab in the external network",
            _stack_edit(_set("nina:cloud", {"external_network": "a\tb"})),
            "external_network",
        ),
        # SSH keys with options or more than one key.
        Case(
            "ssh keys",
            "public key with options",
            _stack_edit(_set_org("supernode_public_key", 'command="sh" ' + ecdsa_key())),
            "supernode_public_key",
        ),
        Case(
            "ssh keys",
            "two public keys",
            _stack_edit(_set_org("supernode_public_key", ecdsa_key() + "\n" + ecdsa_key())),
            "supernode_public_key",
        ),
        Case(
            "ssh keys",
            "key with a line break in its comment",
            _stack_edit(_set_org("supernode_public_key", ecdsa_key() + " a\nb")),
            "supernode_public_key",
        ),
        # Operators' login keys (nina:operators): the same refusals, and keys too weak to log in with.
        Case(
            "ssh keys",
            "operator key with options",
            _stack_edit(_set("nina:operators", [{"name": "alice", "ssh_public_key": 'restrict,command="sh" ' + ecdsa_key()}])),
            "operators[0].ssh_public_key",
        ),
        Case(
            "ssh keys",
            "two operator keys in one entry",
            _stack_edit(_set("nina:operators", [{"name": "alice", "ssh_public_key": ecdsa_key() + "\n" + ecdsa_key()}])),
            "operators[0].ssh_public_key",
        ),
        Case(
            "ssh keys",
            "one operator key under two names",
            _stack_edit(_set("nina:operators", [{"name": n, "ssh_public_key": ecdsa_key()} for n in ("alice", "bob")])),
            "operators[1].ssh_public_key",
        ),
        Case(
            "ssh keys",
            "operator key of a weak type",
            _stack_edit(_set("nina:operators", [{"name": "alice", "ssh_public_key": "ssh-dss AAAAB3NzaC1kc3M= alice"}])),
            "operators[0].ssh_public_key",
        ),
        # Admin networks that together are the internet.
        Case(
            "broad admin networks",
            "two halves of the internet",
            _stack_edit(_set_net("admin_cidrs", ["0.0.0.0/1", "128.0.0.0/1"])),
            "admin_cidrs",
        ),
        Case("broad admin networks", "a /4", _stack_edit(_set_net("admin_cidrs", ["16.0.0.0/4"])), "admin_cidrs"),
        Case("broad admin networks", "two /8s", _stack_edit(_set_net("admin_cidrs", ["1.0.0.0/8", "2.0.0.0/8"])), "admin_cidrs"),
        # DNS names that certificates and resolvers refuse.
        Case("dns names", "64-character label", _stack_edit(_set("nina:cloud", {"dns_domain": "a" * 64 + ".example.org"})), "dns_domain"),
        Case(
            "dns names",
            "domain over 253 characters",
            _stack_edit(_set("nina:cloud", {"dns_domain": ".".join(["a" * 40] * 7)})),
            "dns_domain",
        ),
        Case(
            "dns names",
            "host names too long in the domain",
            _stack_edit(_set("nina:cloud", {"dns_domain": ".".join(["b" * 40] * 6) + ".ab"})),
            "dns_domain",
        ),
        # Notebook images reach `docker pull` on the hub host and DockerSpawner's image list.
        Case("docker images", "an option as an image", _stack_edit(_researcher(["--config=/tmp/x"])), "notebook_images[0]"),
        Case("docker images", "a space in an image", _stack_edit(_researcher(["quay.io/a b"])), "notebook_images[0]"),
        Case("docker images", "an upper-case image", _stack_edit(_researcher(["quay.io/Jupyter/x"])), "notebook_images[0]"),
        Case("docker images", "an image of 300 characters", _stack_edit(_researcher(["a" * 300])), "notebook_images[0]"),
        Case("docker images", "two images of one name", _stack_edit(_researcher(["a/lab:1", "b/lab:2"])), "notebook_images"),
        Case("keycloak", "the master realm", _stack_edit(_researcher(realm="master")), "nina:keycloak.realm"),
        Case("dns names", "an address as the public domain", _stack_edit(_researcher(domain="10.0.0.1")), "public_domain"),
        Case(
            "dns names",
            "public names over 253 characters",
            _stack_edit(_researcher(domain=".".join(["b" * 40] * 6) + ".abcdefg")),
            "public_domain",
        ),
        # Grafana (role grafana): a careless pin or placement, each one line naming the key.
        Case("grafana", "no sha256", _stack_edit(_grafana({})), "nina:grafana.sha256"),
        Case("grafana", "sha256 with a space", _stack_edit(_grafana({"sha256": " " + SHA})), "nina:grafana.sha256"),
        Case("grafana", "sha256 of 63 digits", _stack_edit(_grafana({"sha256": SHA[:63]})), "nina:grafana.sha256"),
        Case("grafana", "version 10.x", _stack_edit(_grafana({"sha256": SHA, "version": "10.4.3"})), "nina:grafana.version"),
        Case("grafana", "version 'latest'", _stack_edit(_grafana({"sha256": SHA, "version": "latest"})), "nina:grafana.version"),
        Case(
            "grafana",
            "shell in the version",
            _stack_edit(_grafana({"sha256": SHA, "version": "12.0.2; rm -rf /"})),
            "nina:grafana.version",
        ),
        Case("grafana", "a path as the version", _stack_edit(_grafana({"sha256": SHA, "version": "../../12.0.2"})), "nina:grafana.version"),
        Case("grafana", "newline in the version", _stack_edit(_grafana({"sha256": SHA, "version": "12.0.2\n[x]"})), "nina:grafana.version"),
        Case("grafana", "an unknown key", _stack_edit(_grafana({"sha256": SHA, "url": "http://evil.example"})), "nina:grafana.url"),
        Case("grafana", "without monitoring", _stack_edit(_grafana(mon_roles=("grafana",))), "'monitoring' role"),
        Case("grafana", "database disabled", _stack_edit(_grafana(database={"enabled": False})), "nina:database.enabled"),
        Case(
            "grafana",
            "backups alert sooner than daily",
            _stack_edit(_grafana(monitoring={"alerts": {"backup_stale": "1h"}})),
            "backup_stale",
        ),
        # Files that are not stack files.
        Case("unbounded reads", "stack file is /dev/zero", _stack_is("/dev/zero"), "Pulumi.bad.yaml"),
        Case("unbounded reads", "stack file of 20 MiB", _huge_stack, "Pulumi.bad.yaml"),
        # Where `nina plan --out` cannot write.
        Case("write errors", "plan --out is a file", _plan_out(_a_file), "taken"),
        Case("write errors", "plan --out under /proc", _plan_out(lambda d: Path("/proc/nina-plan")), "/proc/nina-plan"),
    ]
    return [_fix_big(c) for c in cases]


def _fix_big(case: Case) -> Case:
    """Cases built through yaml.safe_dump carry the placeholder "BIG": write the digits bare."""

    def prepare(d: Path) -> list[str]:
        argv = case.prepare(d)
        for f in d.glob("Pulumi.*.yaml"):
            if f.is_symlink():
                continue
            text = f.read_text(encoding="utf-8", errors="surrogatepass")
            if "BIG" in text:
                f.write_text(text.replace("BIG", BIG_INT))
        return argv

    return Case(case.cls, case.name, prepare, case.expect)


# ---------------------------------------------------------------------------------------
# Stack outputs
# ---------------------------------------------------------------------------------------

_OUTPUTS: dict[str, Any] = {}


def valid_outputs() -> dict[str, Any]:
    if not _OUTPUTS:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from outputs_fixture import build_outputs, default_tenancies

        _OUTPUTS.update(build_outputs(default_tenancies()).outputs)
    return copy.deepcopy(_OUTPUTS)


def _first_org(doc: dict[str, Any]) -> dict[str, Any]:
    tenancy = next(iter(doc["tenancies"].values()))
    org = next(iter(tenancy["organisations"].values()))
    assert isinstance(org, dict)
    return org


def _export(text: str) -> Callable[[Path], list[str]]:
    def prepare(d: Path) -> list[str]:
        (d / "outputs.json").write_text(text, encoding="utf-8", errors="surrogatepass")
        return ["kit", "export", "--outputs", str(d / "outputs.json"), "--all", "--out", str(d / "kits")]

    return prepare


def _outputs_edit(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], list[str]]:
    doc = valid_outputs()
    edit(doc)
    return _export(json.dumps(doc, indent=1))


def _org_field(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        _first_org(doc)[key] = value

    return edit


def _a_private_key(doc: dict[str, Any]) -> str:
    key = next(iter(doc["vpn_client_private_keys"].values()))
    assert isinstance(key, str)
    return key


def _pem_extra(extra: Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        doc["ca_cert_pem"] = doc["ca_cert_pem"] + extra(doc)

    return edit


def _a_tc_key(doc: dict[str, Any]) -> str:
    key = next(iter(doc["vpn_tls_crypt_v2_keys"].values()))
    assert isinstance(key, str)
    return key


def _tc_replace(value: Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        slug = next(iter(doc["vpn_tls_crypt_v2_keys"]))
        doc["vpn_tls_crypt_v2_keys"][slug] = value(doc)

    return edit


def _tc_extra(extra: Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any]], None]:
    return _tc_replace(lambda d: _a_tc_key(d) + extra(d))


def _outputs_text(edit: Callable[[str], str]) -> Callable[[Path], list[str]]:
    return _export(edit(json.dumps(valid_outputs(), indent=1)))


def _outputs_from(target: str) -> Callable[[Path], list[str]]:
    def prepare(d: Path) -> list[str]:
        return ["kit", "export", "--outputs", target, "--all", "--out", str(d / "kits")]

    return prepare


def _big_outputs(d: Path) -> list[str]:
    doc = valid_outputs()
    doc["padding"] = "x" * (80 * 1024 * 1024)
    (d / "outputs.json").write_text(json.dumps(doc))
    return ["kit", "export", "--outputs", str(d / "outputs.json"), "--all", "--out", str(d / "kits")]


def outputs_cases() -> list[Case]:
    return [
        Case(
            "outputs values",
            "5,000-digit integer",
            _outputs_text(lambda t: re.sub(r'"partition_id": \d+', f'"partition_id": {BIG_INT}', t, count=1)),
            "5000 digits",
        ),
        Case("outputs values", "lone surrogate in a name", _outputs_edit(_org_field("display_name", "Metro \ud800 North")), "display_name"),
        Case(
            "outputs values",
            "NaN for a number",
            _outputs_text(lambda t: re.sub(r'"partition_id": \d+', '"partition_id": NaN', t, count=1)),
            "partition_id",
        ),
        Case(
            "outputs values",
            "duplicate key",
            _outputs_text(lambda t: t.replace('"display_name": ', '"display_name": "x", "display_name": ', 1)),
            "display_name",
        ),
        Case("control characters", "newline in a display name", _outputs_edit(_org_field("display_name", "Metro\nNorth")), "display_name"),
        Case(
            "control characters",
            "escape sequence in a display name",
            _outputs_edit(_org_field("display_name", "\x1b]0;owned\x07Metro")),
            "display_name",
        ),
        # Key material with something more in the field than the one object it names.
        Case("pem material", "private key appended to the CA", _outputs_edit(_pem_extra(lambda d: _a_private_key(d))), "ca_cert_pem"),
        Case("pem material", "second CA certificate", _outputs_edit(_pem_extra(lambda d: d["ca_cert_pem"])), "ca_cert_pem"),
        Case("pem material", "text after the CA certificate", _outputs_edit(_pem_extra(lambda d: "trust me\n")), "ca_cert_pem"),
        # An organisation's tls-crypt-v2 key: one block of its own kind, nothing else.
        Case(
            "pem material", "private key appended to a tls-crypt-v2 key", _outputs_edit(_tc_extra(_a_private_key)), "vpn_tls_crypt_v2_keys"
        ),
        Case(
            "pem material", "two tls-crypt-v2 keys in one field", _outputs_edit(_tc_extra(lambda d: _a_tc_key(d))), "vpn_tls_crypt_v2_keys"
        ),
        Case(
            "pem material",
            "a tls-crypt-v2 server key as an organisation's key",
            _outputs_edit(_tc_replace(lambda d: _a_tc_key(d).replace("client key", "server key"))),
            "vpn_tls_crypt_v2_keys",
        ),
        Case("unbounded reads", "outputs are /dev/zero", _outputs_from("/dev/zero"), "/dev/zero"),
        Case("unbounded reads", "outputs of 80 MiB", _big_outputs, "outputs.json"),
    ]


def cases() -> list[Case]:
    return stack_cases() + outputs_cases()


# ---------------------------------------------------------------------------------------
# Running a case
# ---------------------------------------------------------------------------------------


def judge(code: int | None, stderr: str, crashed: bool) -> Outcome:
    if crashed or "Traceback (most recent call last)" in stderr:
        return Outcome("crashed", code, stderr)
    if code == 0:
        return Outcome("accepted", code, stderr)
    if code == 2 and stderr.strip():
        return Outcome("refused", code, stderr)
    return Outcome("failed", code, stderr)


def run_in_process(case: Case, d: Path) -> Outcome:
    """Run the case through nina.cli.main in this process (the tests' way)."""
    from nina import cli

    argv = case.prepare(d)
    err, out = io.StringIO(), io.StringIO()
    crashed = False
    code: int | None = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = cli.main(argv)
        except BaseException as exc:
            crashed = True
            err.write(f"Traceback (most recent call last):\n  {type(exc).__name__}: {exc!s:.300}\n")
    return judge(code, err.getvalue(), crashed)
