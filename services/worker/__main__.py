"""`python -m services.worker`"""

from services.worker.app import create_app
from shared.service import run_service

run_service("worker", create_app, lambda settings: settings.worker_port)
