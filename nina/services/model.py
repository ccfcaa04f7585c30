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
    """A locked system user without a login shell, in facts.SYSTEM_GROUP (manual 4.1.2.1)."""

    name: str
    home: str


@dataclass(frozen=True)
class Service:
    name: str
    summary: str
    # May an operator put it on a shared host (`nina:hosts[].roles`)? The others are placed by the plan.
    shared: bool = False
    packages: tuple[str, ...] = ()
    user: User | None = None
    directories: tuple[Directory, ...] = ()
    # Programs the Flower venv (facts.FLOWER_VENV, pinned flwr) must provide; empty: no venv.
    venv_programs: tuple[str, ...] = ()
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
FLOWER_DIRS = (PYTHON_ROOT, Directory(facts.ETC_FLWR, 0o755), Directory(posixpath.dirname(facts.SUPERLINK_OPT), 0o755))
