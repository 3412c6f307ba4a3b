"""A robust RabbitMQ connection over the nodes of one cluster (AMQP_URL with several URLs).

aio-pika's `connect_robust` reconnects to the one URL it was given and restores channels, exchanges,
queues, bindings and consumers on the new connection. `ClusterConnection` keeps all of that and
changes one thing: every (re)connection attempt goes to the next node of the list, so a process
whose node goes away carries on on another one (its quorum queues live on the surviving nodes).

aio-pika has no public hook per attempt (mosquito/aio-pika#141); the robust connection's private
`__connect_transport` is the one place every attempt passes through, so it is overridden by its
mangled name, and tests/test_ha.py proves the failover against a real 3-node cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from typing import Any

from aio_pika import RobustConnection
from aio_pika.abc import AbstractRobustConnection, TimeoutType
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL

RECONNECT_INTERVAL_S = 1.0
# Closing waits for the broker's answer, which one that does not answer never sends.
ABANDON_TIMEOUT_S = 2.0
# Every connection attempt of aio-pika's robust connection (10.2 and later) passes through this.
ATTEMPT_HOOK = "_RobustConnection__connect_transport"


class ClusterConnection(RobustConnection):
    """A `RobustConnection` whose every connection attempt moves on to the next node."""

    def __init__(self, nodes: Sequence[URL], first: int, **kwargs: Any) -> None:
        if not hasattr(RobustConnection, ATTEMPT_HOOK):
            # Without it every reconnection would go to the first node only: refuse rather than pretend.
            raise RuntimeError("AMQP_URL lists several nodes: that needs aio-pika 10.2 or later")
        self._nodes = tuple(nodes)
        self._next = first % len(self._nodes)
        super().__init__(self._nodes[self._next], **kwargs)

    @property
    def node(self) -> URL:
        """The node of the current (or the last tried) connection."""
        return self.url

    async def _RobustConnection__connect_transport(self) -> None:
        self.url = self._nodes[self._next]
        self._next = (self._next + 1) % len(self._nodes)
        await super()._RobustConnection__connect_transport()  # type: ignore[misc]


async def connect_cluster(
    urls: Sequence[str],
    *,
    first: int,
    ssl_context: ssl.SSLContext | None,
    client_properties: dict[str, Any],
    timeout: TimeoutType = None,
) -> AbstractRobustConnection:
    """What `aio_pika.connect_robust` does, over several nodes when AMQP_URL lists several; with one
    URL it is exactly `connect_robust` (a single-node set-up runs the code it always ran)."""
    kwargs: dict[str, Any] = {
        "reconnect_interval": RECONNECT_INTERVAL_S,
        "client_properties": client_properties,
        "ssl_context": ssl_context,
    }
    connection: RobustConnection
    if len(urls) == 1:
        connection = RobustConnection(URL(urls[0]), **kwargs)
    else:
        connection = ClusterConnection([URL(url) for url in urls], first, **kwargs)
    try:
        await connection.connect(timeout=timeout)
    except BaseException:
        # aio-pika attempts in a task of its own, which a cancelled first attempt (a process stopped
        # while the broker has not answered yet) leaves running, and which takes any later
        # cancellation for a failed attempt and tries again: only closing the connection ends it.
        with contextlib.suppress(asyncio.TimeoutError, *CONNECTION_EXCEPTIONS):
            await asyncio.wait_for(connection.close(), ABANDON_TIMEOUT_S)
        raise
    return connection
