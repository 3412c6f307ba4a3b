"""The start scripts of the Redis Sentinel deployments (deploy/redis/start-*.sh, used by the
Kubernetes StatefulSets and the compose profile `ha`), run for real: a primary, a replica and three
Sentinels, private to this test (their own loopback addresses and data folders). The primary is
SIGKILLed, the Sentinels promote the replica, and the old primary, started again by its script,
asks them and rejoins as a replica of the new one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.support import ROOT, eventually

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

SCRIPTS = ROOT / "deploy" / "redis"
# Addresses of their own, so the scripts' fixed ports (6379, 26379) are free whatever else runs.
PRIMARY, REPLICA = "127.28.0.2", "127.28.0.3"
SENTINELS = ("127.28.0.5", "127.28.0.6", "127.28.0.7")


@dataclass
class HaSet:
    tmp: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self, host: str) -> dict[str, str]:
        return {
            "PATH": os.environ["PATH"],
            "SELF_HOST": host,
            "PRIMARY_HOST": PRIMARY,
            "SENTINEL_HOSTS": " ".join(SENTINELS),
            "RUN_DIR": str(self.tmp / host / "run"),
            "REDIS_CONF": str(self.tmp / "redis.conf"),
            "DOWN_AFTER_MS": "1000",
            "FAILOVER_TIMEOUT_MS": "5000",
        }

    def start(self, script: str, host: str, *args: str) -> None:
        (self.tmp / host).mkdir(exist_ok=True)
        with (self.tmp / f"{host}.log").open("ab") as log:
            self.processes[host] = subprocess.Popen(
                ["sh", str(SCRIPTS / script), "--bind", host, *args],
                env=self.env(host),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start_redis(self, host: str) -> None:
        self.start("start-redis.sh", host, "--dir", str(self.tmp / host), "--save", "", "--appendonly", "no")

    def kill(self, host: str) -> None:
        process = self.processes.pop(host)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for host in list(self.processes):
            self.kill(host)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.tmp.glob("*.log")))


@pytest.fixture
def ha_set(tmp_path: Path) -> Iterator[HaSet]:
    # The deployments' configuration, its data folder aside (set per node on the command line).
    conf = (SCRIPTS / "redis.conf").read_text().replace("\ndir /data\n", "\n")
    (tmp_path / "redis.conf").write_text(conf)
    servers = HaSet(tmp_path)
    try:
        yield servers
    finally:
        servers.stop_all()


def answering(probe: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[bool]]:
    """A probe that counts a server not answering yet (refused, restarting) as not there yet."""

    async def probed() -> bool:
        try:
            return await probe()
        except RedisError:
            return False

    return probed


async def primary_per_sentinel() -> list[str | None]:
    named: list[str | None] = []
    for host in SENTINELS:
        async with Redis(host=host, port=26379, decode_responses=True, socket_timeout=2) as sentinel:
            answer = await sentinel.sentinel_get_master_addr_by_name("mymaster")
        named.append(str(answer[0]) if isinstance(answer, tuple) else None)
    return named


async def replica_known_per_sentinel() -> list[bool]:
    """Whether each sentinel lists REPLICA: it learns of replicas from the primary's INFO (every 10
    s), and one that does not know the replica cannot promote it once the primary is gone."""
    known: list[bool] = []
    for host in SENTINELS:
        async with Redis(host=host, port=26379, decode_responses=True, socket_timeout=2) as sentinel:
            replicas = await sentinel.sentinel_slaves("mymaster")
        known.append(any(replica.get("ip") == REPLICA for replica in replicas))
    return known


async def replication(host: str) -> dict[str, str]:
    async with Redis(host=host, port=6379, decode_responses=True, socket_timeout=2) as node:
        return {key: str(value) for key, value in (await node.info("replication")).items()}


async def test_sentinels_promote_the_replica_and_the_old_primary_rejoins_as_its_replica(ha_set: HaSet) -> None:
    ha_set.start_redis(PRIMARY)  # no sentinel answers yet: PRIMARY_HOST is the primary
    ha_set.start_redis(REPLICA)
    for host in SENTINELS:
        ha_set.start("start-sentinel.sh", host)

    async def watching() -> bool:
        synced = (await replication(REPLICA)).get("master_link_status") == "up"
        return synced and await primary_per_sentinel() == [PRIMARY] * 3 and all(await replica_known_per_sentinel())

    await eventually(
        answering(watching), timeout=30, what="the sentinels watching the primary and knowing the replica, in sync"
    )
    async with Redis(host=PRIMARY, port=6379) as primary:
        await primary.set("kept", "yes")
        # Replication is asynchronous: the key is on the replica only once it has acknowledged it
        # (a loaded run killed the primary first once).
        assert await primary.wait(1, 10_000) == 1

    ha_set.kill(PRIMARY)

    async def promoted() -> bool:
        return await primary_per_sentinel() == [REPLICA] * 3 and (await replication(REPLICA))["role"] == "master"

    await eventually(answering(promoted), timeout=60, what=f"the sentinels promoting {REPLICA}\n{ha_set.logs()}")
    ha_set.start_redis(PRIMARY)  # its script asks the sentinels: it comes back as a replica

    async def rejoined() -> bool:
        info = await replication(PRIMARY)
        return info["role"] == "slave" and info["master_host"] == REPLICA and info["master_link_status"] == "up"

    # As long as the promotion may take: a full sync follows (a diskless one waits 5 s for company),
    # and a CI run under load took over 30 s.
    await eventually(answering(rejoined), timeout=60, what=f"{PRIMARY} rejoining as a replica\n{ha_set.logs()}")
    async with Redis(host=PRIMARY, port=6379, decode_responses=True) as old:
        assert await old.get("kept") == "yes"
    assert "starting as a replica of 127.28.0.3" in ha_set.logs()
