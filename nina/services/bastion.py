"""The bastion (manual 3.3.2): the one SSH entry point; OpenSSH of the image only."""

from nina.services.model import Service

SERVICE = Service(name="bastion", summary="SSH jump host for operators and pulumi", shared=True)
