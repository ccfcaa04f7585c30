"""Runs the real `__main__.py` under Pulumi mocks and records what it declared.

The mocks stand in for the engine and providers, and behave like them where the tests depend
on it:
- outputs the SDK lists in `additional_secret_outputs` (tls private keys, random passwords)
  come back as secrets, as the engine would make them (the stock mocks ignore that list);
- provider-computed values are deterministic per resource name (keys are derived from the
  name), as a resource keeps its state across `pulumi up`s; so two runs can be diffed;
- every RegisterResource request is recorded with its options (protect, deleteBeforeReplace,
  dependencies, parent, aliases) for the tests to inspect;
- URNs are made as the engine makes them: the stock mock monitor prefixes only the parent's
  last type (`Parent$Child`), the engine the parent's whole type chain (`Grand$Parent$Child`)
  and not the root stack's type, so a URN here is the one a live stack's state holds.
  `engine_match` resolves aliases against an old stack's URNs as the engine does.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import os
import runpy
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc, settings

from nina import localpki

REPO = Path(__file__).resolve().parent.parent
MAIN = REPO / "__main__.py"


def stack_config(stack: str) -> dict[str, Any]:
    """The `config:` mapping of Pulumi.<stack>.yaml (full keys, e.g. `nina:network`)."""
    return yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())["config"]


# --- deterministic stand-ins for provider-computed values --------------------------------


def _key_outputs(name: str, inputs: dict) -> dict:
    inputs = _unwrap(inputs)
    return dict(_cached_key_outputs(name, inputs.get("algorithm", "RSA"), inputs.get("ecdsaCurve", "P384")))


@functools.cache
def _cached_key_outputs(name: str, algorithm: str, curve: str) -> tuple:
    # Derived from the resource name and cached: the OpenSSH encoding carries a random check
    # value, and a real resource keeps its outputs in state from one run to the next.
    key = localpki.generate_key(algorithm, curve, seed=name.encode())
    return (
        ("privateKeyPem", key.private_key_pem),
        ("privateKeyOpenssh", key.private_key_openssh),
        ("publicKeyPem", key.public_key_pem),
        ("publicKeyOpenssh", key.public_key_openssh),
    )


def _subject(inputs: dict) -> dict[str, str]:
    camel = {
        "commonName": "common_name",
        "organization": "organization",
        "organizationalUnit": "organizational_unit",
        "country": "country",
        "province": "province",
        "locality": "locality",
    }
    return {camel[k]: v for k, v in (inputs.get("subject") or {}).items() if k in camel and v}


@functools.cache
def _certificate(kind: str, name: str, inputs_json: str) -> str:
    """A real certificate or CSR made the way pulumi-tls makes it (nina.localpki), cached per
    resource and inputs as a provider keeps it in state."""
    inputs = json.loads(inputs_json)
    if kind == "self-signed":
        return localpki.self_signed_ca(inputs["privateKeyPem"], _subject(inputs), inputs["validityPeriodHours"], inputs["allowedUses"])
    if kind == "request":
        return localpki.cert_request(
            inputs["privateKeyPem"], _subject(inputs), inputs.get("dnsNames") or (), inputs.get("ipAddresses") or ()
        )
    return localpki.sign_certificate(
        inputs["certRequestPem"], inputs["caPrivateKeyPem"], inputs["caCertPem"], inputs["validityPeriodHours"], inputs["allowedUses"]
    )


class NinaMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.secret_outputs: list[str] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        state = dict(args.inputs)
        typ, name = args.typ, args.name
        if typ == "tls:index/privateKey:PrivateKey":
            state.update(_key_outputs(name, args.inputs))
        elif typ == "tls:index/selfSignedCert:SelfSignedCert":
            state["certPem"] = _certificate("self-signed", name, json.dumps(_unwrap(args.inputs), sort_keys=True))
        elif typ == "tls:index/locallySignedCert:LocallySignedCert":
            state["certPem"] = _certificate("signed", name, json.dumps(_unwrap(args.inputs), sort_keys=True))
        elif typ == "tls:index/certRequest:CertRequest":
            state["certRequestPem"] = _certificate("request", name, json.dumps(_unwrap(args.inputs), sort_keys=True))
        elif typ == "random:index/randomBytes:RandomBytes":
            raw = hashlib.shake_256(("bytes" + name).encode()).digest(int(args.inputs["length"]))
            state["hex"] = raw.hex()
            state["base64"] = base64.b64encode(raw).decode()
        elif typ == "random:index/randomPassword:RandomPassword":
            state["result"] = hashlib.sha256(("pw" + name).encode()).hexdigest()[: int(args.inputs.get("length", 32))]
        elif typ == "openstack:networking/floatingIp:FloatingIp":
            state["address"] = "203.0.113." + str(1 + int(hashlib.sha256(name.encode()).hexdigest(), 16) % 250)
        elif typ.startswith("command:"):
            state.setdefault("stdout", "")
            state.setdefault("stderr", "")
        for key in self.secret_outputs:
            if key in state:
                state[key] = rpc.wrap_rpc_secret(state[key])
        return f"{name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "openstack:networking/getNetwork:getNetwork":
            return {"id": f"net-{args.args.get('name')}-id", "name": args.args.get("name")}
        if args.token == "openstack:compute/getFlavor:getFlavor":
            return {"id": f"flavor-{args.args.get('name')}-id", "name": args.args.get("name")}
        raise NotImplementedError(f"no mock for invoke {args.token}")


STACK_TYPE = "pulumi:pulumi:Stack"


def _qualified_type(urn: str) -> str:
    return urn.split("::")[2]


def _urn_name(urn: str) -> str:
    return urn.split("::", 3)[3]


def new_urn(stack: str, project: str, parent_type: str, typ: str, name: str) -> str:
    """The engine's resource.NewURN: `parent_type` is the parent's qualified type ("" for none)."""
    qualified = f"{parent_type}${typ}" if parent_type else typ
    return f"urn:pulumi:{stack}::{project}::{qualified}::{name}"


def engine_urn(parent: str, typ: str, name: str) -> str:
    """The URN the engine gives a resource (pulumi/pulumi pkg/resource/deploy, Deployment.generateURN):
    the parent's full qualified type, except the root stack's, then the type and the name."""
    parent_type = _qualified_type(parent) if parent and _qualified_type(parent) != STACK_TYPE else ""
    return new_urn(pulumi.get_stack(), pulumi.get_project(), parent_type, typ, name)


@dataclass(frozen=True)
class AliasSpec:
    """One alias as the SDK sends it (RegisterResourceRequest.aliases): a whole URN, or a spec
    whose empty fields mean "as the resource is now"."""

    urn: str = ""
    name: str = ""
    type: str = ""
    parent_urn: str = ""
    no_parent: bool = False
    project: str = ""
    stack: str = ""


def _alias_specs(request) -> tuple[AliasSpec, ...]:
    specs = []
    for alias in request.aliases:
        if alias.HasField("spec"):
            sp = alias.spec
            specs.append(AliasSpec("", sp.name, sp.type, sp.parentUrn, sp.noParent, sp.project, sp.stack))
        else:
            specs.append(AliasSpec(urn=alias.urn))
    # An engine without alias specs gets whole URNs instead (the SDK computes them).
    specs += [AliasSpec(urn=u) for u in request.aliasURNs]
    return tuple(specs)


@dataclass
class Registration:
    type: str
    name: str
    urn: str
    parent: str
    inputs: dict
    secret_inputs: frozenset[str]
    protect: bool
    delete_before_replace: bool
    dependencies: tuple[str, ...]
    custom: bool
    outputs: dict  # what the (mock) provider returned
    aliases: tuple[AliasSpec, ...] = ()


class RecordingMonitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: NinaMocks):
        super().__init__(mocks)
        self.nina_mocks = mocks
        self.registrations: list[Registration] = []

    def make_urn(self, parent: str, type_: str, name: str) -> str:
        return engine_urn(parent, type_, name)

    def RegisterResource(self, request):
        self.nina_mocks.secret_outputs = list(request.additionalSecretOutputs)
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            raw = rpc.deserialize_properties(request.object)
            secret = frozenset(k for k, v in raw.items() if rpc.is_rpc_secret(v))
            self.registrations.append(
                Registration(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    parent=request.parent,
                    inputs=_unwrap(raw),
                    secret_inputs=secret,
                    protect=bool(request.protect),
                    delete_before_replace=bool(request.deleteBeforeReplace),
                    dependencies=tuple(request.dependencies),
                    custom=bool(request.custom),
                    outputs=_unwrap(self.resources[response.urn].state) if response.urn in self.resources else {},
                    aliases=_alias_specs(request),
                )
            )
        self.nina_mocks.secret_outputs = []
        return response


def _unwrap(value: Any) -> Any:
    if rpc.is_rpc_secret(value):
        return _unwrap(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


@dataclass
class Run:
    """What one run of the program declared and exported."""

    registrations: list[Registration]
    outputs: dict[str, Any]
    output_secret: dict[str, bool]
    error: str | None = None
    stack: str = "test"
    project: str = "nina-fl"
    by_urn: dict[str, Registration] = field(default_factory=dict)
    _chain_memo: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_urn = {r.urn: r for r in self.registrations}

    def of_type(self, typ: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == typ]

    def user_data(self) -> dict[str, str]:
        return {r.name: r.inputs["userData"] for r in self.of_type(INSTANCE)}

    def upstream(self, urn: str) -> set[str]:
        """Every resource `urn` depends on, directly or not."""
        seen, todo = set(), list(self.by_urn[urn].dependencies)
        while todo:
            dep = todo.pop()
            if dep not in seen and dep in self.by_urn:
                seen.add(dep)
                todo.extend(self.by_urn[dep].dependencies)
        return seen

    def chain_length(self, urn: str) -> int:
        """Resources on the longest dependency chain ending at `urn` (itself included)."""
        memo = self._chain_memo
        if urn not in memo:
            deps = [d for d in self.by_urn[urn].dependencies if d in self.by_urn]
            memo[urn] = 1 + max((self.chain_length(d) for d in deps), default=0)
        return memo[urn]


INSTANCE = "openstack:compute/instance:Instance"


# --- identity across program changes ------------------------------------------------------


@dataclass
class Match:
    """How the engine would pair a run's resources with an old stack's (`engine_match`)."""

    old_of: dict[str, str]  # declared URN -> the old URN it takes over (itself when unchanged)
    errors: list[str]  # what the engine would refuse (one old resource claimed twice)

    def lost(self, old_urns: set[str]) -> set[str]:
        """Old resources no declared resource takes over: `pulumi up` would delete them."""
        return old_urns - set(self.old_of.values())


def engine_match(run: Run, old_urns: set[str]) -> Match:
    """Pair each declared resource with a resource of an old stack (given by its URNs) as the
    engine's step generator does (pulumi/pulumi pkg/resource/deploy/step_generator.go:
    generateSteps, generateAliases, collapseAliasToUrn, inheritedChildAlias).

    In registration order, a resource is looked up by its URN, then by each of its aliases: its
    own, and, when its parent was found through an alias, the parent's old URN with its name
    (the SDK sends its own aliases only; children inherit in the engine, so an alias on a
    component carries its whole subtree, however deep)."""
    old_of: dict[str, str] = {}
    found_via_alias: dict[str, str] = {}  # the engine's sg.aliases
    claimed_by: dict[str, str] = {}
    errors: list[str] = []
    for r in run.registrations:
        for candidate in [r.urn, *_engine_aliases(r, found_via_alias, run.stack, run.project)]:
            if candidate not in old_urns:
                continue
            if candidate in claimed_by:
                errors.append(f"{r.urn} and {claimed_by[candidate]} both claim {candidate}")
            claimed_by[candidate] = r.urn
            old_of[r.urn] = candidate
            if candidate != r.urn:
                found_via_alias[r.urn] = candidate
            break
    return Match(old_of, errors)


def _engine_aliases(r: Registration, found_via_alias: dict[str, str], stack: str, project: str) -> list[str]:
    def collapse(alias: AliasSpec) -> str:
        if alias.urn:
            return alias.urn
        parent = alias.parent_urn or r.parent
        if alias.parent_urn:
            # A parent that moved itself: this resource was under its old URN.
            parent = found_via_alias.get(alias.parent_urn, parent)
        if alias.no_parent or (parent and _qualified_type(parent) == STACK_TYPE):
            parent = ""
        parent_type = _qualified_type(parent) if parent else ""
        return new_urn(alias.stack or stack, alias.project or project, parent_type, alias.type or r.type, alias.name or r.name)

    def inherited(typ: str, name: str, parent_alias: str) -> str:
        parent_name = _urn_name(r.parent)
        if name.startswith(parent_name):  # `{parent}-suffix` follows a renamed parent
            name = _urn_name(parent_alias) + name[len(parent_name) :]
        return new_urn(stack, project, _qualified_type(parent_alias), typ, name)

    own = [collapse(a) for a in r.aliases]
    result = list(own)
    parent_alias = found_via_alias.get(r.parent)
    if parent_alias is not None:
        result.append(inherited(r.type, r.name, parent_alias))
        for urn in own:
            result.append(inherited(urn.split("::")[2].split("$")[-1], _urn_name(urn), parent_alias))
    return list(dict.fromkeys(result))


def run_program(config: dict[str, Any], stack: str = "test", secret_keys: Iterable[str] = ()) -> Run:
    """Run __main__.py under mocks with `config` (full keys -> plain values); `secret_keys` are
    those the stack file holds as secrets (`pulumi config set --secret`)."""
    asyncio.set_event_loop(asyncio.new_event_loop())
    settings.ROOT.set(None)
    mocks = NinaMocks()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="nina-fl", stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config({k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}, list(secret_keys))
    for key in [k for k in os.environ if k.startswith("PULUMI_CONFIG")]:
        os.environ.pop(key)

    collected: dict[str, Any] = {}
    secret: dict[str, bool] = {}
    error: list[str] = []

    @pulumi.runtime.test
    def program():
        try:
            runpy.run_path(str(MAIN), run_name="__main__")
        except pulumi.RunError as exc:
            error.append(str(exc))
            return None
        root = settings.get_root_resource()
        outs = dict(getattr(root, "outputs", None) or {})

        async def resolve():
            for key, value in outs.items():
                out = pulumi.Output.from_input(value)
                collected[key] = await out.future()
                secret[key] = await out.is_secret()

        return asyncio.ensure_future(resolve())

    program()
    return Run(monitor.registrations, collected, secret, error[0] if error else None, stack=stack, project=pulumi.get_project())


def payload_of(stdin: str) -> str:
    """The installer's payload (JSON text) inside a delivery's stdin (the bundle nina-receive reads)."""
    return json.dumps(json.loads(stdin)["payload"], sort_keys=True) + "\n"


def before_and_after(before: dict[str, Any], after: dict[str, Any], stack: str) -> tuple[Run, Run]:
    """The program run on two configs (a change an operator makes), both without errors."""
    runs = run_program(before, stack), run_program(after, stack)
    for run in runs:
        assert run.error is None, run.error
    return runs


def instances_unchanged(before: Run, after: Run) -> set[str]:
    """Asserts that no VM appears, disappears or has an input changed between two runs; the VMs' URNs."""
    old, new = ({r.urn: r.inputs for r in run.of_type(INSTANCE)} for run in (before, after))
    assert set(new) == set(old), sorted(set(new) ^ set(old))
    for urn in old:
        assert new[urn] == old[urn], urn
    return set(old)


def changed_names(before: Run, after: Run) -> tuple[set[str], set[str], set[str]]:
    """Names of the resources gone, added, and kept with other inputs, from `before` to `after`."""
    old, new = ({r.urn: r for r in run.registrations} for run in (before, after))
    gone = {old[u].name for u in set(old) - set(new)}
    added = {new[u].name for u in set(new) - set(old)}
    changed = {old[u].name for u in set(old) & set(new) if old[u].inputs != new[u].inputs}
    return gone, added, changed
