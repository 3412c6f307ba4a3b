"""Start-up common to the three services: settings from the environment, logging, and a clear
one-line exit when a setting is wrong."""

from __future__ import annotations

import sys
from collections.abc import Callable

import uvloop
from aiohttp import web

from shared.logs import setup_logging
from shared.settings import ConfigError, Settings


def run_service(
    service: str, create_app: Callable[[Settings], web.Application], port_of: Callable[[Settings], int]
) -> None:
    try:
        settings = Settings.from_env()
        setup_logging(service, settings.log_level)
        app = create_app(settings)
    except ConfigError as exc:
        print(f"atendimento-{service}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # The drain of in-flight work happens in the apps' cleanup contexts; give them the grace period.
    web.run_app(
        app,
        port=port_of(settings),
        access_log=None,
        print=None,
        shutdown_timeout=settings.shutdown_grace_s,
        handle_signals=True,
        # uvloop: the services are I/O-bound event loops; it cuts their per-message CPU markedly.
        loop=uvloop.new_event_loop(),
    )
