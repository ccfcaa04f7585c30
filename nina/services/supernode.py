"""An organisation's Flower SuperNode (manual 4.1.3) on a cloud VM. Its delivery is
`nina.render.supernode_delivery` (`<host>-supernode`); on-premise sites get the same files in
their kit (`nina.kit`)."""

from nina import facts
from nina.services.model import FLOWER_DIRS, Directory, Service, User, flower_venv

_USER = facts.SERVICE_USERS["supernode"]
SERVICE = Service(
    name="supernode",
    summary="Flower SuperNode (dials the SuperLink's Fleet API)",
    user=User(_USER, facts.SUPERNODE_OPT),
    directories=(
        *FLOWER_DIRS,
        Directory(facts.SUPERNODE_ETC, 0o750),
        Directory(facts.SUPERNODE_CERTS, 0o750),
        # root's: the service reads its run script here; it writes only to its FLWR_HOME and the data directory.
        Directory(facts.SUPERNODE_OPT, 0o755),
        Directory(facts.SUPERNODE_FLWR_HOME, 0o750, _USER),
        Directory(facts.SUPERNODE_DATA, 0o750, _USER),
    ),
    venv=flower_venv("flower-supernode"),
)
UNITS = (facts.SUPERNODE_UNIT,)
