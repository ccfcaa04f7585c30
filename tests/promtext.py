"""Prometheus text format in tests: read back with prometheus_client's parser, checked with
`promtool check metrics` (scripts/bootstrap --test-tools installs promtool)."""

from __future__ import annotations

import shutil
import subprocess

from prometheus_client.parser import text_string_to_metric_families

PROMTOOL = shutil.which("promtool") or ""
Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


def samples(text: str) -> Samples:
    """sample name -> {its labels: its value}."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return found


def one(found: Samples, name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly `labels`."""
    return found[name][frozenset(labels.items())]


def promtool_ok(text: str) -> None:
    """`promtool check metrics` accepts `text` without a word (nothing checked where promtool is missing)."""
    if not PROMTOOL:
        return
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), (proc.stdout, proc.stderr)
