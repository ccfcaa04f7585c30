"""What nina's metrics programs share: the Prometheus text format (exposition format 0.0.4) that
node exporter's textfile collector reads, and the atomic write of a `.prom` file into its directory.

A module of nina (nina.host): standard library and nina.facts only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from nina.host import install_files


def escape_label(value: str) -> str:
    """A label value as the text format quotes it: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text: backslash and line feed escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def number(value: float) -> str:
    """A sample value: integers without a fraction, +Inf/-Inf/NaN as the format spells them."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


@dataclass
class Family:
    """One metric family: HELP, TYPE and its samples (labels, value), written in the order added."""

    name: str
    kind: str  # gauge, counter or untyped
    help: str
    samples: list[tuple[Mapping[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> Family:
        self.samples.append((labels, value))
        return self

    def text(self) -> str:
        lines = [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in self.samples:
            inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            lines.append(f"{self.name}{{{inner}}} {number(value)}" if inner else f"{self.name} {number(value)}")
        return "\n".join(lines) + "\n"


def exposition(families: Iterable[Family]) -> str:
    """The text of a `.prom` file: families without samples are left out (a TYPE line alone says nothing)."""
    return "".join(f.text() for f in families if f.samples)


def write(directory: str, name: str, text: str) -> None:
    """Write `directory`/`name` atomically (a temporary file there, fsynced, renamed: node exporter never
    reads half a file; the temporary name does not end in .prom, so it is never read), mode 0644, owned
    by the caller. The directory is reached without following links and must be the caller's or
    root's, writable by nobody else (nina.host.trust; its parents may be the package's prometheus
    user's, as /var/lib/prometheus is). Raises trust.Untrusted or OSError."""
    install_files.write_atomic(os.path.join(directory, name), text.encode("utf-8"), 0o644, os.getuid(), os.getgid(), strict=False)
