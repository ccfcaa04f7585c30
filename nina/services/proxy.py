"""The reverse proxy (manual 4.1.2.8, nginx with Let's Encrypt): not built yet (researcher-access issue)."""

from nina.services.model import Service

SERVICE = Service(name="proxy", summary="nginx reverse proxy for Keycloak, JupyterHub and Grafana", shared=True, built=False)
