"""`python -m services.monitor`"""

from services.monitor.app import create_app
from shared.service import run_service

run_service("monitor", create_app, lambda settings: settings.monitor_port)
