"""The monitor's clock: observe the system every ALERT_INTERVAL_SECONDS, keep the latest
observation for /metrics, and announce the alerts that started or resolved since the last look."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.monitor.alerts import AlertTracker, Transition, WebhookNotifier
from services.monitor.observation import Observation, observe
from services.monitor.system import SystemView

log = logging.getLogger(__name__)

STARTUP_GRACE_S = 10.0


class Evaluator:
    def __init__(self, view: SystemView, interval_s: float, notifier: WebhookNotifier | None, pending_s: float) -> None:
        self._view = view
        self._interval_s = interval_s
        self._notifier = notifier
        self.tracker = AlertTracker(pending_s)
        self.latest: Observation | None = None

    async def run(self) -> None:
        # A monitor that just started has not reached RabbitMQ yet: give it a moment, rather than
        # announce "RabbitMQ down" at every start.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._view.broker.wait_ready(), STARTUP_GRACE_S)
        while True:
            try:
                await self.evaluate()
            except Exception:
                # A bug in one evaluation must not end the alerting for good.
                log.exception("alert evaluation failed")
            await asyncio.sleep(self._interval_s)

    async def evaluate(self) -> list[Transition]:
        observation = await observe(self._view)
        self.latest = observation
        transitions = self.tracker.update(observation.alerts, observation.timestamp)
        for transition in transitions:
            alert = transition.alert
            level = logging.WARNING if transition.status == "firing" else logging.INFO
            log.log(
                level,
                "alert %s: %s %s",
                transition.status,
                alert.name,
                alert.message,
                extra={"alert": alert.name, "severity": alert.severity, "alert_status": transition.status},
            )
        if self._notifier is not None:
            self._notifier.notify(transitions)
        return transitions
