"""JupyterHub (manual 4.1.2.10-4.1.2.15): only its user and directories so far; its configuration is
rendered by `nina.jupyterhub` (tested with the real JupyterHub), its delivery is still to come."""

from nina import facts
from nina.services.model import PYTHON_ROOT, Directory, Service, User

_USER = facts.SERVICE_USERS["jupyterhub"]
SERVICE = Service(
    name="jupyterhub",
    summary="notebooks from which researchers start Flower runs",
    shared=True,
    user=User(_USER, facts.JUPYTERHUB_OPT),
    directories=(
        PYTHON_ROOT,
        Directory(facts.JUPYTERHUB_ETC, 0o755),
        Directory(facts.JUPYTERHUB_CONFIG, 0o750),
        Directory(facts.JUPYTERHUB_OPT, 0o755, _USER),
    ),
    built=False,
)
