"""nina-fl: the Pulumi program. `pulumi up --stack test|uat`.

Reads the `nina:` config namespace, validates it (an invalid config stops here with one
message naming each key and its fix), plans the deployment as plain data, then declares it.
"""

import contextlib
import gc
import json

import pulumi
from pulumi.runtime.config import CONFIG, get_config_env, get_config_secret_keys_env, is_config_secret

from components.platform import Platform, PlatformArgs
from nina.config import NAMESPACE, SECRET_INPUTS, ConfigError, load_config, plain_secret_problem, secret_input_problems
from nina.plan import build_plan

# (gen-0 allocations, gen-1 and gen-2 collection ratios)
GC_THRESHOLDS = (50_000, 20, 100)


def nina_config() -> dict:
    """Every `nina:*` key of the stack, structured values decoded (Pulumi passes them as JSON)."""
    raw = {**get_config_env(), **CONFIG.get()}
    out = {}
    for full_key, value in sorted(raw.items()):
        namespace, _, key = full_key.partition(":")
        if namespace != NAMESPACE or key in SECRET_INPUTS:  # secrets: read as Pulumi secrets below
            continue
        # Structured values arrive as JSON text, booleans as "true"/"false"; anything else is
        # the plain string it was in the YAML (so "2024" stays a string, as `nina config check` reads it).
        if isinstance(value, str) and (value[:1] in ("{", "[") or value in ("true", "false")):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        out[key] = value
    return out


# The program allocates ~10^5 short-lived cyclic objects per 100 organisations (Outputs,
# asyncio tasks); CPython's default gen-0 threshold of 700 then rescans the growing heap
# dozens of times, which made declaration time grow faster than the organisation count
# (benchmarks/program.py). Collect less often; the process is short-lived either way.
gc.set_threshold(*GC_THRESHOLDS)

try:
    config = load_config(nina_config())
    # The few secrets nina cannot make (config.SECRET_INPUTS), as Pulumi secrets end to end.
    secret_inputs = {key: pulumi.Config(NAMESPACE).get_secret(key) for key in SECRET_INPUTS}
    present = [key for key, value in secret_inputs.items() if value is not None]
    # `pulumi config set` without --secret leaves it in the stack file in plain text: refused.
    # (The secret keys as the config itself: set by the language host, or in its environment.)
    secret_keys = set(get_config_secret_keys_env())
    problems = [plain_secret_problem(k) for k in present if not (is_config_secret(f"{NAMESPACE}:{k}") or f"{NAMESPACE}:{k}" in secret_keys)]
    problems += secret_input_problems(config, present)
    if problems:
        raise ConfigError(problems)
except ConfigError as err:
    # RunError stops the program with the message alone, no traceback.
    raise pulumi.RunError(err.message()) from None

platform = Platform("nina", PlatformArgs(build_plan(config), smtp_password=secret_inputs["monitoring_smtp_password"]))
for output_name, value in platform.outputs.items():
    pulumi.export(output_name, value)
