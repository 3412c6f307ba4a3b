"""Highly available servers of a test's own: a 3-node RabbitMQ cluster and a Redis primary with
2 replicas behind 3 sentinels, each on free ports and in the test's folder (the shared servers on
5672 and 6379 are never touched).

The RabbitMQ nodes share an Erlang cookie and join the first with `rabbitmqctl join_cluster`; the
sentinels watch the primary under the service name `mymaster` and fail it over once it has not
answered for 3 seconds.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.support import eventually, free_port
from tests.support.servers import PrivateRabbit

RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
SERVICE = "mymaster"
# As the runbook recommends: a primary takes writes only while a replica follows it closely, so a
# primary cut off (or promoted and at once demoted again) cannot take writes that are then lost.
SAFE_WRITES = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "5")
# Quick, but not so quick that a busy two-core machine's slow PING starts a second failover.
DOWN_AFTER_MS = 3000


@dataclass
class RabbitCluster:
    workdir: Path
    size: int = 3
    nodes: list[PrivateRabbit] = field(default_factory=list)

    @property
    def amqp_url(self) -> str:
        """AMQP_URL as a deployment on this cluster sets it: every node, comma-separated."""
        return ",".join(node.url for node in self.nodes)

    async def start(self) -> RabbitCluster:
        cookie = secrets.token_hex(16).upper()
        self.nodes = [PrivateRabbit(self.workdir / f"rabbit-{i}", cookie=cookie) for i in range(self.size)]
        # One at a time: three Erlang VMs booting at once take minutes on a two-core machine.
        for node in self.nodes:
            await node.start(timeout=120)
        for node in self.nodes[1:]:
            await self.ctl(node, "stop_app")
            await self.ctl(node, "join_cluster", self.nodes[0].node)
            await self.ctl(node, "start_app")
        await eventually(self._all_running, timeout=60, interval=0.5, what="the three nodes clustered")
        return self

    async def ctl(self, node: PrivateRabbit, *args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            RABBITMQCTL,
            "-n",
            node.node,
            *args,
            env=node.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, f"rabbitmqctl {' '.join(args)}: {output.decode(errors='replace')}"
        return output.decode()

    async def _all_running(self) -> bool:
        status = await self.ctl(self.nodes[0], "cluster_status", "--formatter", "json")
        return all(node.node in status.split('"running_nodes"', 1)[-1] for node in self.nodes)

    async def leaders(self, alive: PrivateRabbit, queues: list[str]) -> dict[str, str]:
        """queue -> the node name of its leader, asked of a live node."""
        table = await self.ctl(alive, "list_queues", "name", "leader", "--quiet", "--no-table-headers")
        found = dict(line.split("\t")[:2] for line in table.splitlines() if "\t" in line)
        return {queue: found[queue] for queue in queues if queue in found}

    async def members(self, alive: PrivateRabbit, queues: list[str]) -> dict[str, int]:
        """queue -> how many nodes hold a replica of it."""
        table = await self.ctl(alive, "list_queues", "name", "members", "--quiet", "--no-table-headers")
        found = {line.split("\t")[0]: line.split("\t")[1].count("@") for line in table.splitlines() if "\t" in line}
        return {queue: found[queue] for queue in queues if queue in found}

    async def connections(self, alive: PrivateRabbit) -> list[str]:
        """The node of every client connection in the cluster (asked of a live node)."""
        # A connection's process id names its node: <rabbit@host.1700000000.1234.0>.
        table = await self.ctl(alive, "list_connections", "pid", "--quiet", "--no-table-headers")
        return [line.strip()[1:].rsplit(".", 3)[0] for line in table.splitlines() if line.strip().startswith("<")]

    def of(self, node_name: str) -> PrivateRabbit:
        return next(node for node in self.nodes if node.node == node_name)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@dataclass
class RedisNode:
    workdir: Path
    arguments: list[str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self, *, sentinel: bool = False) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "redis.log").open("ab")
        if sentinel:
            config = self.workdir / "sentinel.conf"  # Sentinel rewrites its configuration file
            config.write_text("\n".join([f"port {self.port}", "bind 127.0.0.1", *self.arguments]) + "\n")
            command = ["redis-server", str(config), "--sentinel"]
        else:
            command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            command += ["--appendonly", "no", "--dir", str(self.workdir), *self.arguments]
        with log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    async def answers(self) -> bool:
        client = Redis(port=self.port, socket_timeout=1)
        try:
            return bool(await client.ping())
        except RedisError:
            return False
        finally:
            await client.aclose()


@dataclass
class SentinelRedis:
    """Primary + 2 replicas + 3 sentinels (quorum 2)."""

    workdir: Path
    servers: list[RedisNode] = field(default_factory=list)
    sentinels: list[RedisNode] = field(default_factory=list)

    @property
    def sentinel_setting(self) -> str:
        """REDIS_SENTINELS for this set."""
        return ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)

    async def start(self) -> SentinelRedis:
        primary = RedisNode(self.workdir / "redis-0", list(SAFE_WRITES))
        follow = ["--replicaof", "127.0.0.1", str(primary.port), *SAFE_WRITES]
        # Listed before any starts, so that `stop` finds every one that did.
        self.servers = [primary, *(RedisNode(self.workdir / f"redis-{i}", follow) for i in (1, 2))]
        for server in self.servers:
            server.start()
        for server in self.servers:
            await eventually(server.answers, timeout=20, what=f"redis-server on {server.port}")
        watch = [
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} 10000",
            f"sentinel parallel-syncs {SERVICE} 1",
        ]
        self.sentinels = [RedisNode(self.workdir / f"sentinel-{i}", watch) for i in range(3)]
        for sentinel in self.sentinels:
            sentinel.start(sentinel=True)
        await eventually(self._watched, timeout=30, interval=0.2, what="the sentinels see both replicas")
        return self

    async def primary_port(self) -> int:
        client = Redis(port=self.sentinels[0].port, decode_responses=True, socket_timeout=1)
        try:
            _, port = await client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", SERVICE)  # type: ignore[no-untyped-call]
            return int(port)
        finally:
            await client.aclose()

    async def _watched(self) -> bool:
        for sentinel in self.sentinels:
            client = Redis(port=sentinel.port, decode_responses=True, socket_timeout=1)
            try:
                state = await client.execute_command("SENTINEL MASTER", SERVICE)  # type: ignore[no-untyped-call]
                if int(state["num-slaves"]) < 2 or int(state["num-other-sentinels"]) < 2:
                    return False
            except RedisError:
                return False
            finally:
                await client.aclose()
        return True

    def server_on(self, port: int) -> RedisNode:
        return next(server for server in self.servers if server.port == port)

    def stop(self) -> None:
        for node in [*self.sentinels, *self.servers]:
            node.kill()
