"""A tenancy's Flower SuperLink (manual 4.1.2.17). Its delivery is `nina.render.superlink_delivery`
(`<host>-superlink`): certificates, the admin flwr CLI config, run script and unit, nina-membership."""

from nina import facts
from nina.services.model import FLOWER_DIRS, Directory, Service, User, flower_venv

_USER = facts.SERVICE_USERS["superlink"]
SERVICE = Service(
    name="superlink",
    summary="Flower SuperLink (Fleet 9092, Control 9093; ServerAppIo 9091 on loopback)",
    shared=True,
    user=User(_USER, facts.SUPERLINK_OPT),
    directories=(
        *FLOWER_DIRS,
        Directory(facts.SUPERLINK_ETC, 0o750),
        Directory(facts.SUPERLINK_CERTS, 0o750),
        # root's: the service reads its run script here (root: the admin project); it writes only to its state volume.
        Directory(facts.SUPERLINK_OPT, 0o755),
        Directory(facts.SUPERLINK_STATE_DIR, 0o750, _USER),
        Directory(facts.SUPERLINK_ADMIN_FLWR_HOME, 0o700, facts.ROOT_USER, facts.ROOT_USER),
    ),
    venv=flower_venv("flower-superlink", "flwr"),
)
UNITS = (facts.SUPERLINK_UNIT, facts.SUPERLINK_BACKUP_TIMER, facts.FEDERATION_METRICS_TIMER)
# What it runs besides (the timers start the daily backup and the federation metrics): the unit
# alerts watch them too (nina.monitoring).
WATCHED = (facts.SUPERLINK_BACKUP_SERVICE, facts.FEDERATION_METRICS_SERVICE)
