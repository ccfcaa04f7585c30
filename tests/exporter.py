"""The node exporter's arguments as a host's shell would split them (tests of nina.render's file)."""

from __future__ import annotations

import subprocess

from nina import render


def rendered_args(listen_ip: str | None = None) -> list[str]:
    """ARGS of facts.NODE_EXPORTER_DEFAULTS (`render.node_exporter_defaults(listen_ip)`), word-split
    by bash as the package's unit splits `$ARGS`."""
    return subprocess.run(
        ["bash", "-c", 'source /dev/stdin; printf "%s\\n" $ARGS'],
        input=render.node_exporter_defaults(listen_ip),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
