"""The `nina` command line.

    nina config check --stack NAME [--dir DIR]   validate DIR/Pulumi.NAME.yaml's `nina:` keys
    nina env lock [--stack NAME] [--check] [NAME ...]
                                                 resolve training environments into environments/NAME.lock
    nina kit export (--stack NAME | --outputs FILE|-) (--org SLUG | --all) --out DIR
                                                 write each organisation's site kit (nina.kit)
    nina validate (--stack NAME | --outputs FILE|-) [--identity FILE | --agent] ...
                                                 the validation app against a deployed stack,
                                                 through an SSH tunnel via the bastion (nina.validate)

Exit codes: 0 success, 1 failure while writing (kit export), 2 invalid input (bad arguments,
missing/unreadable stack file, invalid config, unusable stack outputs, unknown slug).
Problems go to stderr, one per line, each naming the key and its fix.

Subcommands register themselves in `build_parser()`: each adds a parser and sets
`func=<handler(args) -> int>` with `set_defaults` (later: `nina rehearse`).
This module must not import pulumi: it runs without a Pulumi engine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from nina import environments, facts
from nina.config import (
    NAMESPACE,
    SECRET_INPUTS,
    SLUG_RE,
    ConfigError,
    StackConfig,
    TrainingEnvironment,
    _describe,
    _error_key,
    load_config,
    operator_keys,
    plain_secret_problem,
    secret_input_problems,
)
from nina.keys import openssh_fingerprint
from nina.plan import Plan, build_plan

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
PREFIX = NAMESPACE + ":"
# `pulumi config set KEY` without a namespace writes `<project>:KEY`; the program never reads it.
PROJECT_NAMESPACE = "nina-fl"
# A stack file is a few hundred lines; this bounds the work on YAML alias bombs.
MAX_NODES = 100_000
# Reads are bounded: a stack file or outputs document bigger than this is refused unread
# (a symlink to /dev/zero, a pipe that never ends). Stack outputs of 100 organisations
# are about 1 MiB.
MAX_STACK_FILE_BYTES = 1024 * 1024
MAX_OUTPUTS_BYTES = 32 * 1024 * 1024


def read_bounded(stream: Any, limit: int) -> bytes | None:
    """At most `limit` bytes of a binary stream, or None when it holds more."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(min(1024 * 1024, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    return None


class StackFileError(Exception):
    """The stack file cannot be used at all (missing, unreadable, not YAML, wrong shape). One line."""


# ---------------------------------------------------------------------------------------
# Reading the stack file
# ---------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML keeps the last one silently; Pulumi refuses)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            # Merge keys (`<<: *base`) may repeat and be overridden; other keys are left to SafeLoader.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            duplicate = key in seen
            seen.add(key)
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}; keep only one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # PyYAML's constructors raise plain ValueError, KeyError, IndexError or AttributeError
        # for values their tag cannot hold (`!!bool maybe`, `2026-02-30`, `!!int ''`, an integer
        # of 5,000 digits):
        # report those like any other YAML error, at the value's line and column.
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, RecursionError, MemoryError):
            raise
        except Exception as exc:  # ValueError, KeyError, IndexError, AttributeError, ...: all seen
            value = node.value if isinstance(node, yaml.ScalarNode) else ""
            reason = str(exc).split(";")[0] if not isinstance(exc, KeyError) else "not a value of that type"
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"cannot read {value[:40]!r} as {node.tag.rsplit(':', 1)[-1]} ({reason}); quote it to make it a string, or fix the value",
                node.start_mark,
            ) from None


def stack_file(stack: str, directory: str | Path = ".") -> Path:
    """`Pulumi.<stack>.yaml` in `directory`; `org/project/stack` names use their last part."""
    name = stack.rsplit("/", 1)[-1]
    return Path(directory) / f"Pulumi.{name}.yaml"


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{path}: not valid YAML ({where}{' '.join(str(problem).split())}); fix the file's syntax"


def read_stack_file(path: Path) -> dict[Any, Any]:
    """The stack file's `config:` mapping (empty if the file or `config:` is empty)."""
    try:
        with path.open("rb") as stream:
            data = read_bounded(stream, MAX_STACK_FILE_BYTES)
    except FileNotFoundError:
        raise StackFileError(f"{path}: no such stack file; check --stack and --dir ({_stacks_hint(path.parent)})") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        reason = getattr(exc, "strerror", None) or str(exc)
        raise StackFileError(f"{path}: cannot read ({reason}); check the path and its permissions") from None
    if data is None:
        raise StackFileError(f"{path}: larger than {MAX_STACK_FILE_BYTES // 1024} KiB; a stack file is a few hundred lines, check the path")
    try:
        doc = yaml.load(data, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise StackFileError(_yaml_error(path, exc)) from None
    except RecursionError:
        raise StackFileError(f"{path}: not valid YAML (nested too deeply); fix the file's structure") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise StackFileError(f"{path}: the top level is a {_kind(doc)}, not a mapping; a stack file starts with `config:`")
    config = doc.get("config")
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise StackFileError(
            f"{path}: `config` is a {_kind(config)}, not a mapping; write `config:` followed by indented `nina:KEY: value` lines"
        )
    return config


def _stacks_hint(directory: Path) -> str:
    if not directory.is_dir():
        return f"directory {directory} does not exist"
    here = sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in directory.glob("Pulumi.*.yaml"))
    if here:
        return f"stacks here: {', '.join(here)}"
    return "no Pulumi.*.yaml here; create the stack with `pulumi stack init` and `pulumi config set`"


def _kind(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), type(value).__name__)


def _plain(value: Any, path: str, problems: list[tuple[str, str]], budget: list[int], active: set[int]) -> Any:
    """A tree copy of a YAML value (aliases expanded, cycles and bombs refused) noting secure values."""
    budget[0] -= 1
    if budget[0] < 0:
        raise StackFileError(
            f"the stack config is too large (more than {MAX_NODES} values after expanding YAML aliases); write the values out"
        )
    if isinstance(value, (dict, list)):
        if id(value) in active:
            raise StackFileError(f"{path}: refers to itself (a YAML alias cycle); write the value out")
        active.add(id(value))
        try:
            if isinstance(value, dict):
                if len(value) == 1 and "secure" in value:
                    problems.append(
                        (
                            path,
                            "nina config holds no secrets; replace the `secure:` value with plain text "
                            "(`pulumi config set` without --secret): nina generates its secrets itself",
                        )
                    )
                    return value
                return {k: _plain(v, f"{path}.{k}", problems, budget, active) for k, v in value.items()}
            return [_plain(v, f"{path}[{i}]", problems, budget, active) for i, v in enumerate(value)]
        finally:
            active.discard(id(value))
    return value


def nina_namespace(config: dict[Any, Any], secrets_present: set[str] | None = None) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The `nina:` keys without prefix, and problems that validation cannot see (secrets, stray keys).
    The secret inputs (config.SECRET_INPUTS) are left out; their keys go into `secrets_present`."""
    secrets_present = set() if secrets_present is None else secrets_present
    raw: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    budget = [MAX_NODES]
    for key, value in config.items():
        if not isinstance(key, str):
            problems.append((f"config key {key!r}", "is not a string; config keys look like 'nina:environment'"))
        elif key.startswith(PREFIX) and key[len(PREFIX) :] in SECRET_INPUTS:
            # One of the few secrets nina cannot make: only as Pulumi secret, never in plain text.
            if not (isinstance(value, dict) and set(value) == {"secure"}):
                problems.append(plain_secret_problem(key[len(PREFIX) :]))
            secrets_present.add(key[len(PREFIX) :])
        elif key.startswith(PREFIX):
            raw[key[len(PREFIX) :]] = _plain(value, key, problems, budget, set())
        elif key.startswith(PROJECT_NAMESPACE + ":"):
            name = key[len(PROJECT_NAMESPACE) + 1 :]
            problems.append(
                (
                    key,
                    f"is in the project namespace, which nina never reads; rename it to {PREFIX}{name} "
                    f"(pulumi config set {PREFIX}{name} ...)",
                )
            )
        elif ":" not in key:
            problems.append((key, f"has no namespace; write it as {PREFIX}{key}"))
    return raw, problems


def check_stack(path: Path) -> StackConfig:
    """Validate a stack file and return its config; raises StackFileError or ConfigError."""
    document = read_stack_file(path)
    try:
        secrets_present: set[str] = set()
        raw, problems = nina_namespace(document, secrets_present)
    except StackFileError as exc:
        raise StackFileError(f"{path}: {exc}") from None
    except RecursionError:
        raise StackFileError(f"{path}: the stack config is nested too deeply; fix the file's structure") from None
    try:
        config = load_config(raw)
    except ConfigError as exc:
        # A secure value also fails its type check; report it once, as a secret.
        flagged = [key for key, _ in problems]
        problems += [(k, m) for k, m in exc.problems if not any(k == f or k.startswith((f + ".", f + "[")) for f in flagged)]
    else:
        flagged = [key for key, _ in problems]
        problems += [(k, m) for k, m in secret_input_problems(config, secrets_present) if k not in flagged]
    if problems:
        raise ConfigError(problems)
    return config


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------


def _load_stack(args: argparse.Namespace, command: str) -> StackConfig | None:
    """The validated config of --stack in --dir, or None after printing why not."""
    path = stack_file(args.stack, args.dir)
    try:
        return check_stack(path)
    except StackFileError as exc:
        print(f"nina {command}: {exc}", file=sys.stderr)
    except ConfigError as exc:
        print(f"{path}: {exc.message()}", file=sys.stderr)
    return None


def _config_check(args: argparse.Namespace) -> int:
    if _load_stack(args, "config check") is None:
        return EXIT_INVALID
    print("ok")
    return EXIT_OK


def _stack_environments(args: argparse.Namespace) -> list[environments.Environment] | None:
    """The built-in environment and, with --stack, the stack's nina:training_environments (their
    definitions only: their locks may not exist yet), or None after printing why not."""
    found = [environments.DEFAULT]
    if args.stack is None:
        return found
    path = stack_file(args.stack, args.dir)
    try:
        raw, problems = nina_namespace(read_stack_file(path))
    except StackFileError as exc:
        print(f"nina env lock: {exc}", file=sys.stderr)
        return None
    defined = raw.get("training_environments") or {}
    try:
        models = TypeAdapter(dict[str, TrainingEnvironment]).validate_python(defined)
    except ValidationError as exc:
        problems += [
            (f"nina:training_environments.{_error_key(e).removeprefix('nina:')}", _describe(e)) for e in exc.errors(include_url=False)
        ]
        models = {}
    for name, env in models.items():
        try:
            if name == facts.ENV_DEFAULT or not SLUG_RE.match(name):
                raise ValueError(f"{name!r} cannot name an environment (reserved or not DNS-safe); nina config check says why")
            found.append(environments.Environment(name, env.variant, tuple(env.packages), env.exclude_newer))
        except ValueError as exc:
            problems.append((f"nina:training_environments.{name}", str(exc)))
    if problems:
        print(f"{path}: {ConfigError(problems).message()}", file=sys.stderr)
        return None
    return found


def _env_lock(args: argparse.Namespace) -> int:
    """`nina env lock`: resolve each environment and write (or, with --check, compare) its lock."""
    found = _stack_environments(args)
    if found is None:
        return EXIT_INVALID
    by_name = {e.name: e for e in found}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        print(f"nina env lock: no training environment {', '.join(unknown)}; known: {', '.join(by_name)}", file=sys.stderr)
        return EXIT_INVALID
    lock_dir = Path(args.lock_dir)
    failed = 0
    for env in [by_name[n] for n in args.names] if args.names else found:
        try:
            text = environments.resolve(env)
        except environments.LockError as exc:
            print(f"nina env lock: {exc}", file=sys.stderr)
            failed += 1
            continue
        path = environments.lock_path(env, lock_dir)
        if args.check:
            try:
                same = path.read_text(encoding="utf-8") == text
            except OSError:
                same = False
            if not same:
                print(
                    f"{path}: stale or missing (resolving {env.name!r} again gives other bytes); {environments.lock_fix(env)}",
                    file=sys.stderr,
                )
                failed += 1
                continue
            print(f"{path}: up to date ({len(environments.parse(text))} packages)")
            continue
        lock_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        print(f"{path}: {len(environments.parse(text))} packages, {hashlib.sha256(text.encode()).hexdigest()}")
    return EXIT_FAILED if failed else EXIT_OK


def format_plan(plan: Plan) -> str:
    """A human-readable summary of what `pulumi up` would build for this plan."""
    cfg = plan.cfg
    lines = [
        f"stack environment {cfg.environment!r} in {cfg.cloud.availability_zone} (external network {cfg.cloud.external_network})",
        "",
        "segments:",
    ]
    lines += [f"  {s.name:<28} {s.cidr}" for s in plan.segments]
    lines += ["", "hosts:"]
    for h in plan.hosts:
        extras = [f"volume {v.name} {v.size_gb} GB at {v.mount_point}" for v in h.volumes]
        extras += ["floating IP"] if h.public else []
        lines.append(
            f"  {h.name:<28} {h.fixed_ip:<15} {h.flavor:<12} roles={','.join(h.roles)} groups={','.join(h.security_groups)}"
            + (f" ({'; '.join(extras)})" if extras else "")
        )
    if plan.database_ip:
        lines.append(
            f"  {'postgres (Trove)':<28} {plan.database_ip:<15} {cfg.database.flavor:<12} allow-list={','.join(plan.database_allowed_cidrs)}"
        )
    lines += ["", "ingress rules (from the port table):"]
    for r in plan.rules:
        lines.append(f"  {r.name:<52} {r.description}")
    operators = operator_keys(cfg)
    lines += ["", f"operators (log in to every host as {facts.DEFAULT_LOGIN_USER}, besides the automation key; <host>-base delivers them):"]
    lines += [f"  {name:<28} {openssh_fingerprint(key)} {key.split()[0]}" for name, key in operators]
    lines += [] if operators else ["  (none: only the automation key logs in)"]
    lines += ["", "tenancies:"]
    for t in plan.tenancies:
        lines.append(f"  {t.name}: SuperLink {t.superlink_host} fleet {t.fleet_address} control {t.control_address}")
        lines.append(f"    certificate SANs: {', '.join(t.certificate.dns_names + t.certificate.ip_addresses)}")
        if t.vpn:
            lines.append(
                f"    OpenVPN {t.vpn.host}: pool {t.vpn.pool} (server {t.vpn.server_ip}), UDP {facts.OPENVPN_UDP_PORT} / TCP {facts.OPENVPN_TCP_PORT}"
            )
        for m in t.members:
            vpn = f" vpn {m.vpn_address}" if m.vpn_address else ""
            lines.append(f"    {m.slug:<26} partition {m.partition_id} {m.placement}{' gpu' if m.gpu else ''}{vpn}  {m.display_name}")
    return "\n".join(lines) + "\n"


def _plan(args: argparse.Namespace) -> int:
    config = _load_stack(args, "plan")
    if config is None:
        return EXIT_INVALID
    plan = build_plan(config)
    summary = format_plan(plan)
    sys.stdout.write(summary)
    if args.out:
        from cloudinit.userdata import user_data  # only needed when writing files

        out = Path(args.out)
        try:
            (out / "user-data").mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, a read-only or missing parent, /proc
            print(f"nina plan: cannot create --out {out}: {exc.strerror or exc}; choose a directory you can write to", file=sys.stderr)
            return EXIT_INVALID
        try:
            (out / "plan.txt").write_text(summary)
            for host in plan.hosts:
                # Volume ids exist only after `pulumi up`; the preview names them instead.
                ids = {v.name: f"volume-id-of-{host.name}-{v.name}" for v in host.volumes}
                (out / "user-data" / f"{host.name}.yaml").write_text(user_data(plan, host, ids))
        except OSError as exc:
            print(f"nina plan: cannot write into {out}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"\nwrote {out / 'plan.txt'} and user-data for {len(plan.hosts)} hosts in {out / 'user-data'}")
    return EXIT_OK


class KitInputError(Exception):
    """The stack outputs cannot be read (no pulumi, pulumi failed, no file, not JSON). One line."""


PULUMI_OUTPUTS = ("pulumi", "stack", "output", "--json", "--show-secrets")
PULUMI_TIMEOUT = 600  # seconds


def _one_line(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def read_stack_outputs(stack: str | None, outputs: str | None) -> tuple[Any, str]:
    """The outputs document and a name for it in messages, from `pulumi` (--stack) or a file/stdin."""
    if stack is not None:
        pulumi = shutil.which("pulumi")
        if pulumi is None:
            raise KitInputError(
                f"the Pulumi CLI (`pulumi`) is not on PATH; where it is, run "
                f"`{' '.join(PULUMI_OUTPUTS)} --stack {stack}` and pipe it in with --outputs -"
            )
        name = f"`pulumi stack output` of stack {stack}"
        try:
            proc = subprocess.run(
                [pulumi, *PULUMI_OUTPUTS[1:], f"--stack={stack}"], capture_output=True, timeout=PULUMI_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KitInputError(f"{name}: could not run pulumi ({exc})") from None
        if proc.returncode != 0:
            raise KitInputError(f"{name} failed (exit {proc.returncode}): {_one_line(proc.stderr.decode(errors='replace'))}")
        data = proc.stdout
    else:
        if outputs is None:
            raise KitInputError("name the stack outputs: --stack NAME or --outputs FILE (or - for stdin)")
        name = "stdin" if outputs == "-" else str(outputs)
        try:
            if outputs == "-":
                read = read_bounded(sys.stdin.buffer, MAX_OUTPUTS_BYTES)
            else:
                with Path(outputs).open("rb") as stream:
                    read = read_bounded(stream, MAX_OUTPUTS_BYTES)
        except FileNotFoundError:
            raise KitInputError(f"{name}: no such file; write it with `{' '.join(PULUMI_OUTPUTS)} > FILE`") from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise KitInputError(f"{name}: cannot read ({reason})") from None
        if read is None:
            raise KitInputError(
                f"{name}: larger than {MAX_OUTPUTS_BYTES // (1024 * 1024)} MiB; that is not the output of `{' '.join(PULUMI_OUTPUTS)}`"
            )
        data = read
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KitInputError(f"{name}: not valid JSON (not UTF-8 text at byte {exc.start})") from None
    if not text.strip():
        raise KitInputError(f"{name}: is empty; expected the JSON of `{' '.join(PULUMI_OUTPUTS)}`")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys), name
    except json.JSONDecodeError as exc:
        raise KitInputError(f"{name}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except _DuplicateKey as exc:
        raise KitInputError(f"{name}: key {exc.args[0]!r} appears twice in one object; the outputs of pulumi never repeat a key") from None
    except ValueError as exc:  # an integer beyond Python's digit limit
        digits = re.search(r"value has (\d+) digits", str(exc))
        what = f"a number of {digits.group(1)} digits" if digits else str(exc).split(";")[0]
        raise KitInputError(f"{name}: holds {what}; no value in the stack outputs is that long, re-export them") from None
    except RecursionError:
        raise KitInputError(f"{name}: not valid JSON (nested too deeply)") from None


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key[:80])
        out[key] = value
    return out


def _kit_export(args: argparse.Namespace) -> int:
    from nina import kit  # imports cryptography and the templates: only for this command

    try:
        raw, name = read_stack_outputs(args.stack, args.outputs)
    except KitInputError as exc:
        print(f"nina kit export: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        out = kit.parse_outputs(raw)
        paths = kit.export_kits(out, None if args.all else args.org, args.out)
    except kit.UnknownOrganisation as exc:
        for line in exc.message().splitlines():
            print(f"nina kit export: {line}", file=sys.stderr)
        return EXIT_INVALID
    except kit.KitError as exc:
        for line in exc.message().splitlines():
            print(f"nina kit export: {name}: {line}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"nina kit export: cannot write into {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    for path in paths:
        print(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path}")
    # stderr, so stdout stays in sha256sum format
    print(
        f"nina kit export: signed with the platform key {out.signing_key_sha256}: the organisation checks its kit "
        "against this fingerprint, which you tell it out of band (by phone; it never changes)",
        file=sys.stderr,
    )
    return EXIT_OK


def _rehearse(args: argparse.Namespace) -> int:
    import signal
    import tempfile

    from nina import rehearse  # starts real Flower processes: only for this command

    config = _load_stack(args, "rehearse")
    if config is None:
        return EXIT_INVALID
    if args.rounds < 1:
        print("nina rehearse: --rounds must be at least 1", file=sys.stderr)
        return EXIT_INVALID
    plan = build_plan(config)

    def _terminate(signum, frame):  # SIGTERM: unwind like Ctrl-C so every process is stopped
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    keep = Path(args.keep) if args.keep else None
    workdir = keep or Path(tempfile.mkdtemp(prefix="nina-rehearse-"))
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o700)
        mode = "INSECURE (no TLS, no SuperNode authentication)" if args.insecure else "TLS and SuperNode authentication"
        print(
            f"nina rehearse: stack {args.stack}, {len(plan.tenancies)} tenancy(ies), {args.rounds} round(s), {mode}; working in {workdir}",
            flush=True,
        )
        reports = rehearse.rehearse(plan, workdir, rounds=args.rounds, insecure=args.insecure, log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("nina rehearse: interrupted; every process it started was stopped", file=sys.stderr)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir} (kits with private keys, logs, state DB)")
    return _verdict("rehearse", reports)


def _verdict(command: str, reports: Sequence[Any]) -> int:
    """The last lines of `nina rehearse` and `nina validate`: each failed tenancy, or ok."""
    failed = [r for r in reports if not r.ok]
    for r in failed:
        print(f"nina {command}: tenancy {r.tenancy}: FAILED: {r.reason}", file=sys.stderr)
    if failed:
        return EXIT_FAILED
    print(f"ok: every organisation took part in every round ({', '.join(r.tenancy for r in reports)})")
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    import signal

    from nina import flwrcli, outputs, validate  # starts ssh and flwr: only for this command

    def fail(message: str, code: int = EXIT_INVALID) -> int:
        for line in message.splitlines():
            print(f"nina validate: {line}", file=sys.stderr)
        return code

    if args.rounds < 1:
        return fail("--rounds must be at least 1")
    if args.round_timeout < 1:
        return fail("--round-timeout must be at least 1 (seconds)")
    try:
        raw, name = read_stack_outputs(args.stack, args.outputs)
    except KitInputError as exc:
        return fail(str(exc))
    try:
        doc = outputs.read(raw)
    except outputs.OutputsError as exc:
        return fail("\n".join(f"{name}: {line}" for line in exc.message().splitlines()))
    identity = None
    if args.identity is not None:
        identity = Path(args.identity).expanduser().absolute()
        try:
            with open(identity, "rb"):
                pass
        except OSError as exc:
            return fail(f"--identity {args.identity}: cannot read ({exc.strerror or exc}); name the private key file to log in with")
    known_hosts = Path(args.known_hosts).expanduser().absolute() if args.known_hosts else None
    ssh = shutil.which("ssh")
    if ssh is None:
        return fail("the OpenSSH client (`ssh`) is not on PATH; install it (Debian/Ubuntu: apt-get install openssh-client)")
    flwr = flwrcli.executable()
    if flwr is None:
        return fail(f"no flwr CLI next to {sys.executable}; run nina from the project's venv (scripts/bootstrap)")
    try:
        access = validate.access(doc, user=args.user, identity=identity, known_hosts=known_hosts, ssh=ssh)
        chosen = validate.targets(doc, args.tenancy)
    except validate.InputError as exc:
        return fail(f"{name}: {exc}" if not str(exc).startswith("--") else str(exc))
    key = doc.ops_ssh_private_key if identity is None and not args.agent else None
    how = f"key {identity}" if identity else "your agent and ssh config" if args.agent else "the automation key from the outputs"
    print(
        f"nina validate: {name}: environment {doc.environment}, {len(chosen)} tenancy(ies), {args.rounds} round(s); "
        f"ssh as {args.user} with {how}, host keys in {known_hosts or '~/.ssh/known_hosts'}",
        flush=True,
    )

    def _terminate(signum, frame):  # SIGTERM/SIGHUP: unwind like Ctrl-C so the tunnel is torn down
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        reports = validate.validate(
            doc,
            access,
            chosen,
            flwr,
            ops_key=key,
            rounds=args.rounds,
            round_timeout=args.round_timeout,
            log=lambda line: print(line, flush=True),
        )
    except KeyboardInterrupt:
        return fail(
            "interrupted; the SSH tunnel and flwr were stopped (a run already submitted ends on the SuperLink by its timeouts)", EXIT_FAILED
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return _verdict("validate", reports)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nina", description="Operate a nina-fl federated-learning platform.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    config = commands.add_parser("config", help="stack configuration")
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    config_commands.required = True
    check = config_commands.add_parser(
        "check",
        help="validate Pulumi.STACK.yaml's nina: keys",
        description="Validate the nina: keys of a Pulumi stack file without contacting any cloud.",
    )
    check.add_argument("--stack", required=True, help="stack name: reads Pulumi.STACK.yaml")
    check.add_argument("--dir", default=".", help="directory holding the stack file (default: current directory)")
    check.set_defaults(func=_config_check)

    plan = commands.add_parser(
        "plan",
        help="show what a stack would build, offline",
        description="Validate a stack file and print the deployment plan: segments, hosts and fixed addresses, "
        "ingress rules, certificates and members. With --out, also render each VM's user-data.",
    )
    plan.add_argument("--stack", required=True, help="stack name: reads Pulumi.STACK.yaml")
    plan.add_argument("--dir", default=".", help="directory holding the stack file (default: current directory)")
    plan.add_argument("--out", help="directory to write plan.txt and user-data/<host>.yaml into")
    plan.set_defaults(func=_plan)

    kit = commands.add_parser("kit", help="site kits for organisations' SuperNodes")
    kit_commands = kit.add_subparsers(dest="kit_command", metavar="SUBCOMMAND")
    kit_commands.required = True
    export = kit_commands.add_parser(
        "export",
        help="write site kits from the stack outputs",
        description="Write <slug>-sitekit.tar.gz (mode 0600) for organisations of a deployed stack: VPN client, "
        "SuperNode configuration and keys, systemd and container files, install.sh and a README for "
        "the organisation's ICT team. Prints one line per kit: its SHA-256 and path (sha256sum format); "
        "give the organisation that SHA-256 out of band, and the platform key's fingerprint (on stderr) with which "
        "its install.sh checks the kit's signature. Kits hold private keys: handle them as secrets.",
    )
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--stack", metavar="NAME", help="read the outputs with `pulumi stack output --json --show-secrets --stack NAME`")
    source.add_argument("--outputs", metavar="FILE", help="read the outputs from FILE (that command's JSON); '-' reads stdin")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--org", metavar="SLUG", action="append", help="the organisation's slug (repeat for several)")
    which.add_argument("--all", action="store_true", help="every organisation in the outputs")
    export.add_argument("--out", required=True, metavar="DIR", help="directory to write the kits into (created 0700)")
    export.set_defaults(func=_kit_export)

    env = commands.add_parser("env", help="training environments (flwr and researchers' packages)")
    env_commands = env.add_subparsers(dest="env_command", metavar="SUBCOMMAND")
    env_commands.required = True
    lock = env_commands.add_parser(
        "lock",
        help="resolve training environments into environments/NAME.lock (needs PyPI)",
        description="Resolve each training environment (the built-in one and, with --stack, the stack's "
        "nina:training_environments) with uv for the hosts' Python "
        f"{facts.ENV_PYTHON_VERSION} on {facts.ENV_PYTHON_PLATFORM}, with every file's sha256, and write its lock. "
        "With --check, write nothing and exit 1 if any committed lock differs from a fresh resolution.",
    )
    lock.add_argument("names", nargs="*", metavar="NAME", help="only these environments (default: all)")
    lock.add_argument("--stack", help="also the environments of Pulumi.STACK.yaml")
    lock.add_argument("--dir", default=".", help="directory holding the stack file (default: current directory)")
    lock.add_argument("--lock-dir", default=str(environments.LOCK_DIR), help=f"where the locks are (default {environments.LOCK_DIR})")
    lock.add_argument("--check", action="store_true", help="compare with the committed locks instead of writing them")
    lock.set_defaults(func=_env_lock)

    rehearse = commands.add_parser(
        "rehearse",
        help="rehearse a stack's federation on this machine, offline",
        description="Build the stack's PKI and site kits locally, start each tenancy's SuperLink (from the rendered "
        "run_superlink.sh, TLS and SuperNode authentication on) and one SuperNode per organisation (from "
        "its kit) on loopback, run validation_app/ and print who answered in each round. No cloud. "
        "Exit 0 only if every organisation took part in every round, 1 if not, 2 on invalid input.",
    )
    rehearse.add_argument("--stack", required=True, help="stack name: reads Pulumi.STACK.yaml")
    rehearse.add_argument("--dir", default=".", help="directory holding the stack file (default: current directory)")
    rehearse.add_argument("--rounds", type=int, default=facts.REHEARSAL_ROUNDS, help=f"FedAvg rounds (default {facts.REHEARSAL_ROUNDS})")
    rehearse.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (kits with private keys, logs, state DB)")
    rehearse.add_argument("--insecure", action="store_true", help="no TLS and no SuperNode authentication (benchmarks only)")
    rehearse.set_defaults(func=_rehearse)

    validate = commands.add_parser(
        "validate",
        help="run the validation app against a deployed stack, through the bastion",
        description="For each tenancy of a deployed stack, open an SSH tunnel via the bastion to its SuperLink's "
        f"Control API ({facts.LOOPBACK}:{facts.SUPERLINK_CONTROL_PORT} on the VM), check its certificate against the stack's CA, run "
        "validation_app/ with flwr run and print who answered in each round. Exit 0 only if every organisation "
        "took part in every round, 1 if not (or ssh failed), 2 on invalid input. Host keys are trusted on first "
        "use and refused if they change (StrictHostKeyChecking=accept-new), recorded as nina-<environment>-<host>.",
    )
    source = validate.add_mutually_exclusive_group(required=True)
    source.add_argument("--stack", metavar="NAME", help="read the outputs with `pulumi stack output --json --show-secrets --stack NAME`")
    source.add_argument("--outputs", metavar="FILE", help="read the outputs from FILE (that command's JSON); '-' reads stdin")
    validate.add_argument("--tenancy", metavar="NAME", action="append", help="validate only this tenancy (repeat for several)")
    key = validate.add_mutually_exclusive_group()
    key.add_argument("--identity", metavar="FILE", help="log in with this private key (default: ops_ssh_private_key from the outputs)")
    key.add_argument("--agent", action="store_true", help="log in with your ssh agent's keys and ssh config instead")
    validate.add_argument(
        "--user", default=facts.DEFAULT_LOGIN_USER, help=f"login on the bastion and the SuperLink (default {facts.DEFAULT_LOGIN_USER})"
    )
    validate.add_argument(
        "--known-hosts", metavar="FILE", help="known_hosts file to check and record host keys in (default ~/.ssh/known_hosts)"
    )
    validate.add_argument("--rounds", type=int, default=facts.VALIDATE_ROUNDS, help=f"FedAvg rounds (default {facts.VALIDATE_ROUNDS})")
    validate.add_argument(
        "--round-timeout",
        type=int,
        default=facts.VALIDATE_ROUND_TIMEOUT,
        help=f"seconds to wait for the SuperNodes and for each round (default {facts.VALIDATE_ROUND_TIMEOUT})",
    )
    validate.set_defaults(func=_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
        return exc.code if isinstance(exc.code, int) else EXIT_INVALID
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
