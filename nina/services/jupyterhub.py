"""JupyterHub (manual 4.1.2.10): only its user and directories so far (researcher-access issue)."""

import posixpath

from nina import facts
from nina.services.model import Directory, Service, User

_USER = facts.SERVICE_USERS["jupyterhub"]
SERVICE = Service(
    name="jupyterhub",
    summary="notebooks from which researchers start Flower runs",
    shared=True,
    user=User(_USER, facts.JUPYTERHUB_OPT),
    directories=(
        Directory(posixpath.dirname(facts.FLOWER_VENV), 0o2775),  # group fl_system, g+w (manual 4.1.2.11)
        Directory(facts.JUPYTERHUB_ETC, 0o755),
        Directory(facts.JUPYTERHUB_CONFIG, 0o750),
        Directory(facts.JUPYTERHUB_OPT, 0o755, _USER),
    ),
    built=False,
)
