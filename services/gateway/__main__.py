"""`python -m services.gateway`"""

from services.gateway.app import create_app
from shared.service import run_service

run_service("gateway", create_app, lambda settings: settings.gateway_port)
