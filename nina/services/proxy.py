"""The reverse proxy (manual 4.1.2.5-4.1.2.7): nginx with Let's Encrypt certificates from certbot.
Its delivery is `nina.proxy.proxy_delivery` (`<host>-proxy`, when nina:researcher_access is set):
nginx's configuration, the local CA for the upstreams, and nina-proxy-certs with its unit."""

from nina import facts
from nina.services.model import Directory, Service

SERVICE = Service(
    name="proxy",
    summary="nginx reverse proxy for Keycloak, JupyterHub and Grafana (HTTPS 443; 80 for ACME only)",
    shared=True,
    # openssl: nina-proxy-certs makes the placeholder certificates with it.
    packages=("certbot", "nginx", "openssl"),
    directories=(
        Directory(facts.PROXY_ETC, 0o755, facts.ROOT_USER, facts.ROOT_USER),
        # certbot (root) writes the HTTP-01 challenges here, nginx (www-data) serves them.
        Directory(facts.ACME_WEBROOT, 0o755, facts.ROOT_USER, facts.ROOT_USER),
    ),
)
# The delivery restarts only nina-proxy-certs, which checks the configuration and reloads nginx.
UNITS = (facts.PROXY_CERTS_UNIT,)
# What it runs besides (nina-proxy-certs reloads it): the unit alerts watch these too (nina.monitoring).
WATCHED = (facts.NGINX_UNIT,)
