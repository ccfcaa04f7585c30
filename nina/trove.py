"""The script that restricts the managed Postgres allow-list (see the template for why)."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Network

from nina import templating

_ENV = templating.environment("trove")


def restrict_access_script(allowed_cidrs: Sequence[str]) -> str:
    if not allowed_cidrs:
        raise ValueError("an empty allow-list would leave Trove's default 0.0.0.0/0 in place")
    cidrs = [str(IPv4Network(c)) for c in allowed_cidrs]  # validates, normalises
    if any(IPv4Network(c).prefixlen == 0 for c in cidrs):
        raise ValueError("the database allow-list must not contain 0.0.0.0/0")
    return _ENV.get_template("restrict_access.sh.j2").render(allowed_cidrs=cidrs)
