"""The shape of a service definition (see nina.services)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from nina import facts


@dataclass(frozen=True)
class Directory:
    """A directory made at first boot with `install -d` (parents are listed before children)."""

    path: str
    mode: int
    owner: str = facts.ROOT_USER
    group: str = facts.SYSTEM_GROUP


@dataclass(frozen=True)
class User:
    """A locked system user without a login shell, in facts.SYSTEM_GROUP (manual 4.1.2.1), and in
    `groups` too: groups that the service's packages create (added after they are installed)."""

    name: str
    home: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Venv:
    """A Python venv made at first boot: `python3 -m venv <path>`, then pip installs `requirements`
    (exact pins, `name==version`); `programs` must then be in its bin/."""

    path: str
    requirements: tuple[str, ...]
    programs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for pin in self.requirements:
            name, sep, version = pin.partition("==")
            if not sep or not name or not version or any(c in pin for c in " ;<>!~,"):
                raise ValueError(f"venv {self.path}: requirement {pin!r} is not an exact pin name==version")

    def pins(self) -> list[tuple[str, str]]:
        return [(name, version) for name, _, version in (p.partition("==") for p in self.requirements)]


@dataclass(frozen=True)
class FixedFile:
    """A root-owned file written by user-data (fixed for the life of the VM, no secret)."""

    path: str
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class Service:
    name: str
    summary: str
    # May an operator put it on a shared host (`nina:hosts[].roles`)? The others are placed by the plan.
    shared: bool = False
    packages: tuple[str, ...] = ()
    user: User | None = None
    directories: tuple[Directory, ...] = ()
    # Its Python venv (None: none). Services that share one (the Flower venv) give the same path
    # and pins; the programs of all of them must be there.
    venv: Venv | None = None
    files: tuple[FixedFile, ...] = ()
    # Units restarted at first boot once the host's volumes are mounted (their data lives there).
    restart_after_mount: tuple[str, ...] = ()
    # False while only its first-boot layout exists (its programs arrive with a later issue).
    built: bool = True


# The venvs' root (manual 4.1.2.11): the Flower venv and JupyterHub's. root's alone, unlike the
# manual's 2775 root:fl_system: the service users run researchers' code, and root runs the venv's
# python (install.sh, nina-membership), so nobody but root may rename or plant anything in it.
PYTHON_ROOT = Directory(posixpath.dirname(facts.FLOWER_VENV), 0o755, facts.ROOT_USER, facts.ROOT_USER)
# What exists only for the Flower venv: a site kit installed with `--containers` runs the SuperNode
# from an image instead, so it leaves these out (nina.kit).
VENV_PACKAGES = ("python3-venv",)
VENV_DIRECTORIES = (PYTHON_ROOT,)
# What every Flower service (SuperLink, SuperNode) lays out before its own directories.


def flower_venv(*programs: str) -> Venv:
    """The Flower venv (manual 4.1.2.11) with the pinned flwr, providing `programs`."""
    return Venv(facts.FLOWER_VENV, (f"flwr=={facts.FLWR_VERSION}",), programs)


FLOWER_DIRS = (PYTHON_ROOT, Directory(facts.ETC_FLWR, 0o755), Directory(posixpath.dirname(facts.SUPERLINK_OPT), 0o755))
