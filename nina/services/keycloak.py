"""Keycloak (manual 4.1.2.9): only its user and directory so far (researcher-access issue)."""

from nina import facts
from nina.services.model import Directory, Service, User

_USER = facts.SERVICE_USERS["keycloak"]
SERVICE = Service(
    name="keycloak",
    summary="identity provider for researchers",
    shared=True,
    user=User(_USER, facts.KEYCLOAK_OPT),
    directories=(Directory(facts.KEYCLOAK_OPT, 0o750, _USER),),
    built=False,
)
# What nina.keycloak.keycloak_delivery restarts (the database step, then Keycloak).
UNITS = (facts.KEYCLOAK_DB_UNIT, facts.KEYCLOAK_UNIT)
