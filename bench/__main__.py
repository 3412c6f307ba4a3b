"""`make bench`: the project's throughput and latency against a bare aiohttp+RabbitMQ round trip.

Both systems run as separate processes on this machine and are driven the same way: C concurrent
clients posting `POST /v1/messages?wait=10` for D seconds, in alternating rounds, after a warm-up
of load on each side that is not counted. Prints messages/s, end-to-end
p50/p95/p99 (client side), the ratio of the two throughputs, each service's peak RSS, and where
the time goes: CPU per message of each process on each side (its own processes, RabbitMQ, Redis and
this load generator: on two cores the total bounds the rate), the Redis commands per message (`INFO
commandstats`, scripts' inner calls included) and the AMQP packets per message (`rabbitmqctl
list_connections recv_cnt send_cnt` on each side's own connections). Both sides run on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import aiohttp
import psutil
from aio_pika.abc import AbstractChannel
from redis.asyncio import Redis

from bench.workdir import Workdir, working_dir
from shared.settings import DEFAULT_SHARDS
from tests.support import AMQP_PORT, REDIS_PORT, REDIS_URL, ROOT, Service, Stack, eventually, free_port, purge_namespace
from tests.support.otlp import collector_process, tracing_env

QUESTIONS = ["Qual o prazo de entrega?", "Vocês aceitam Pix?", "Como rastreio meu pedido?", "Posso parcelar?"]


@dataclass
class Result:
    name: str
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0

    def add(self, other: Result) -> None:
        self.seconds += other.seconds
        self.latencies_ms += other.latencies_ms
        self.errors += other.errors

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def percentile(self, q: float) -> float:
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else 0.0
        return statistics.quantiles(self.latencies_ms, n=1000)[int(q * 1000) - 1]

    def line(self) -> str:
        return (
            f"{self.name:<10} {self.throughput:9.1f} msg/s   p50 {self.percentile(0.50):7.1f} ms   "
            f"p95 {self.percentile(0.95):7.1f} ms   p99 {self.percentile(0.99):7.1f} ms   "
            f"ok {len(self.latencies_ms)}  errors {self.errors}"
        )


class RssSampler:
    """Peak resident memory of some processes, sampled while the load runs."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.peaks = dict.fromkeys(processes, 0)

    async def run(self) -> None:
        while True:
            for name, process in self.processes.items():
                with contextlib.suppress(psutil.Error):
                    self.peaks[name] = max(self.peaks[name], process.memory_info().rss)
            await asyncio.sleep(0.2)


class CpuCounter:
    """CPU each process spends while one side is under load (`counting(side)`): that side's own
    processes, the shared servers this bench uses (the RabbitMQ and Redis listening on their ports;
    other brokers on this machine, such as tests' private ones, are not counted) and this load
    generator. On two cores the sum is what bounds the messages per second."""

    LOAD = "load generator"

    def __init__(self, sides: dict[str, dict[str, int]]) -> None:
        shared = _listeners({"RabbitMQ": AMQP_PORT, "Redis": REDIS_PORT}) | {self.LOAD: psutil.Process()}
        self.sides = {
            side: {name: psutil.Process(pid) for name, pid in pids.items()} | shared for side, pids in sides.items()
        }
        self.seconds: dict[str, dict[str, float]] = {side: {} for side in sides}
        self.syscalls: dict[str, dict[str, int]] = {side: {} for side in sides}

    @staticmethod
    def _now(processes: dict[str, psutil.Process]) -> dict[str, tuple[float, int]]:
        """CPU seconds and system calls so far of each process still running. The calls are the
        kernel's per-process I/O count (`/proc/PID/io` syscr and syscw): the read and write family,
        which uvloop's sockets use; the send and recv family is not counted (nor, for processes of
        another user, anything)."""
        totals = {}
        for name, process in processes.items():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                try:
                    io = process.io_counters()
                    calls = io.read_count + io.write_count
                except psutil.Error:
                    calls = 0
                totals[name] = (times.user + times.system, calls)
        return totals

    @contextlib.contextmanager
    def counting(self, side: str) -> Iterator[None]:
        before = self._now(self.sides[side])
        yield
        seconds, syscalls = self.seconds[side], self.syscalls[side]
        for name, (cpu, calls) in self._now(self.sides[side]).items():
            if name in before:
                seconds[name] = seconds.get(name, 0.0) + cpu - before[name][0]
                syscalls[name] = syscalls.get(name, 0) + calls - before[name][1]

    def per_message(self, side: str, messages: int) -> str:
        per = {name: 1000 * seconds / max(messages, 1) for name, seconds in self.seconds[side].items()}
        return "   ".join(f"{name} {ms:.2f}" for name, ms in per.items()) + f"   total {sum(per.values()):.2f}"

    def syscalls_per_message(self, side: str, messages: int) -> str:
        """Without the load generator: its loop (asyncio's own) uses send and recv, not counted."""
        per = {name: calls / max(messages, 1) for name, calls in self.syscalls[side].items() if name != self.LOAD}
        return "   ".join(f"{name} {count:.1f}" for name, count in per.items())


def _listeners(ports: dict[str, int]) -> dict[str, psutil.Process]:
    """The process listening on each port (those this machine's user may see)."""
    found = {}
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status != psutil.CONN_LISTEN or not connection.laddr or not connection.pid:
            continue
        for name, port in ports.items():
            if connection.laddr.port == port:
                found[name] = psutil.Process(connection.pid)
    return found


class RedisCommands:
    """Commands Redis executes, from `INFO commandstats`: a script's inner calls count as commands
    of their own, which is the work Redis does. The bare round trip uses no Redis, so what runs
    meanwhile is the project's (and whatever else shares this Redis)."""

    TOP = 8

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    @staticmethod
    async def _now() -> dict[str, int]:
        redis = Redis.from_url(REDIS_URL)
        try:
            info = await redis.info("commandstats")
        finally:
            await redis.aclose()
        return {name.removeprefix("cmdstat_").upper(): int(stats["calls"]) for name, stats in info.items()}

    @contextlib.asynccontextmanager
    async def counting(self) -> AsyncIterator[None]:
        before = await self._now()
        yield
        after = await self._now()
        self.calls = {name: calls - before.get(name, 0) for name, calls in after.items() if calls > before.get(name, 0)}
        self.calls.pop("INFO", None)  # our own reading

    def per_message(self, messages: int) -> str:
        per = {name: calls / max(messages, 1) for name, calls in self.calls.items()}
        top = sorted(per.items(), key=lambda item: -item[1])[: self.TOP]
        return f"{sum(per.values()):.1f} commands/msg (" + ", ".join(f"{name} {n:.1f}" for name, n in top) + ")"


class AmqpPackets:
    """What the broker read from and wrote to each side's own connections (`rabbitmqctl
    list_connections recv_cnt send_cnt`: socket packets, without the management plugin). A packet
    carries one AMQP frame or more (the broker reads what has arrived and coalesces its writes),
    so this counts the wire operations a message costs, a lower bound on its frames."""

    def __init__(self, sides: dict[str, list[int]]) -> None:
        self.sides = sides  # side: its processes' pids
        self.packets: dict[str, tuple[int, int]] = {}

    @staticmethod
    def _client_ports(pids: list[int]) -> set[int]:
        ports = set()
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                for connection in psutil.Process(pid).net_connections(kind="tcp"):
                    if connection.raddr and connection.raddr.port == AMQP_PORT:
                        ports.add(connection.laddr.port)
        return ports

    @staticmethod
    def _by_port() -> dict[int, tuple[int, int]] | None:
        """recv_cnt and send_cnt of every connection, by its client port; None without rabbitmqctl."""
        command = ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "name", "recv_cnt", "send_cnt"]
        try:
            lines = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        counts = {}
        for line in lines.splitlines():
            name, recv, sent = line.rsplit("\t", 2)
            counts[int(name.split(" -> ")[0].rsplit(":", 1)[1])] = (int(recv), int(sent))
        return counts

    def _now(self) -> dict[str, tuple[int, int]] | None:
        counts = self._by_port()
        if counts is None:
            return None
        totals = {}
        for side, pids in self.sides.items():
            mine = [counts[port] for port in self._client_ports(pids) if port in counts]
            totals[side] = (sum(recv for recv, _ in mine), sum(sent for _, sent in mine))
        return totals

    @contextlib.asynccontextmanager
    async def counting(self) -> AsyncIterator[None]:
        before = await asyncio.to_thread(self._now)
        yield
        after = await asyncio.to_thread(self._now)
        if before is not None and after is not None:
            self.packets = {
                side: (after[side][0] - before[side][0], after[side][1] - before[side][1]) for side in after
            }

    def per_message(self, side: str, messages: int) -> str:
        if side not in self.packets:
            return "n/a (rabbitmqctl unavailable)"
        recv, sent = (count / max(messages, 1) for count in self.packets[side])
        return f"{recv + sent:.1f} packets/msg (broker read {recv:.1f}, wrote {sent:.1f})"


async def drive(name: str, url: str, clients: int, seconds: float) -> Result:
    result = Result(name, seconds)
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def client(number: int) -> None:
            sent = 0
            while time.monotonic() < deadline:
                body = {"user_id": f"bench-{number}", "text": QUESTIONS[sent % len(QUESTIONS)]}
                sent += 1
                started = time.perf_counter()
                try:
                    async with http.post(url, params={"wait": "10"}, json=body) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    result.latencies_ms.append((time.perf_counter() - started) * 1000)
                else:
                    result.errors += 1

        await asyncio.gather(*(client(i) for i in range(clients)))
    return result


async def warm_up(url: str) -> None:
    async with aiohttp.ClientSession() as http:

        async def answered() -> bool:
            async with http.post(url, params={"wait": "5"}, json={"user_id": "w", "text": "oi"}) as response:
                return response.status == 200

        await eventually(answered, timeout=60, what=f"{url} to answer")


@contextlib.contextmanager
def baseline_processes(port: int, queue: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes = [
        subprocess.Popen([sys.executable, "-m", "bench.baseline", "server", str(port), queue], cwd=ROOT),
        subprocess.Popen([sys.executable, "-m", "bench.baseline", "consumer", queue], cwd=ROOT),
    ]
    try:
        yield processes
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


@contextlib.asynccontextmanager
async def bare_system() -> AsyncIterator[tuple[str, list[int]]]:
    """The bare round trip's URL, and its processes' pids."""
    port, queue = free_port(), f"bench-baseline-{uuid.uuid4().hex[:8]}"
    # Declared here first: the server and consumer declaring a new quorum queue at once can find
    # it still electing its leader, and RabbitMQ then fails the consumer's channel.
    await _declare_queue(queue)
    try:
        with baseline_processes(port, queue) as processes:
            url = f"http://127.0.0.1:{port}/v1/messages"
            await warm_up(url)
            yield url, [process.pid for process in processes]
    finally:
        await _delete_queue(queue)


@contextlib.asynccontextmanager
async def _channel() -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    async with connection:
        yield await connection.channel()


async def _declare_queue(name: str) -> None:
    async with _channel() as channel:
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})


async def _delete_queue(name: str) -> None:
    async with _channel() as channel:
        await channel.queue_delete(name)


@contextlib.asynccontextmanager
async def project_system(env: dict[str, str], tmp: Path) -> AsyncIterator[tuple[str, Stack]]:
    # The product's defaults (its shard count, INFO logs, a flush a second), not the test suite's.
    stack = Stack(
        f"bench{uuid.uuid4().hex[:8]}",
        tmp,
        extra_env={"ATENDIMENTO_SHARDS": str(DEFAULT_SHARDS), "STATS_FLUSH_INTERVAL_SECONDS": "1", **env},
    )
    try:
        gateway = await stack.start("gateway")
        await stack.start("worker")
        await stack.start("monitor")
        url = f"{gateway.url}/v1/messages"
        await warm_up(url)
        yield url, stack
    finally:
        stack.stop_all()
        await purge_namespace(stack.namespace, shards=int(stack.env()["ATENDIMENTO_SHARDS"]))


def _pid(service: Service) -> int:
    assert service.process is not None
    return service.process.pid


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0, help="load time for each side")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds the load time is split in")
    parser.add_argument("--warm-up", type=float, default=5.0, help="seconds of load on each side first, not counted")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the project's services")
    parser.add_argument(
        "--trace-ratio",
        type=float,
        help="trace the project's services to a local OTLP collector, sampling this fraction of messages "
        "(OTEL_TRACES_SAMPLER=parentbased_traceidratio); without it tracing is off",
    )
    parser.add_argument("--trace-protocol", choices=("grpc", "http/protobuf"), default="grpc")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the services' logs (removed after a run without errors)"
    )
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    with contextlib.ExitStack() as tracing:
        if args.trace_ratio is not None:
            endpoint = tracing.enter_context(collector_process(args.trace_protocol))
            env |= tracing_env(
                endpoint,
                args.trace_protocol,
                OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                OTEL_TRACES_SAMPLER_ARG=str(args.trace_ratio),
                OTEL_BSP_SCHEDULE_DELAY="5000",  # the SDK's default, not the tests' quick flush
            )
        await run(args, env)


async def run(args: argparse.Namespace, env: dict[str, str]) -> None:
    with working_dir("bench", keep=args.keep_logs) as workdir:
        await measure(args, env, workdir)


async def measure(args: argparse.Namespace, env: dict[str, str], workdir: Workdir) -> None:
    print(
        f"{args.clients} clients, {args.seconds:.0f} s each in {args.rounds} alternating rounds, "
        "POST /v1/messages?wait=10, both sides on uvloop" + (f", env {env}" if env else "")
    )
    bare, project = Result("bare", 0.0), Result("project", 0.0)
    async with bare_system() as (bare_url, bare_pids), project_system(env, workdir.path) as (project_url, stack):
        services = {service.name: _pid(service) for service in stack.services}
        sampler = RssSampler(services)
        sampling = asyncio.create_task(sampler.run())
        cpu = CpuCounter({"bare": dict(zip(("server", "consumer"), bare_pids, strict=True)), "project": services})
        redis = RedisCommands()
        amqp = AmqpPackets({"bare": bare_pids, "project": list(services.values())})
        # Steady state is what a deployment lives in: the first seconds under load (both sides'
        # processes growing their heaps, the queues' first segments, new conversations' keys)
        # are run, not counted.
        for url in (bare_url, project_url):
            await drive("warm-up", url, args.clients, args.warm_up)
        async with amqp.counting(), redis.counting():
            await alternate(args, {"bare": (bare_url, bare), "project": (project_url, project)}, cpu)
        sampling.cancel()
    if bare.errors or project.errors:
        workdir.keep()
    print(bare.line())
    print(project.line())
    print(f"ratio      {project.throughput / bare.throughput:.2f} of the bare round trip (floor 0.5; the aim is 1.0)")
    print(f"load       {_load_average()} (1, 5, 15 min)")
    for side, result in (("bare", bare), ("project", project)):
        messages = len(result.latencies_ms)
        print(f"CPU ms/msg {side}: " + cpu.per_message(side, messages))
        print(f"syscalls   {side} (reads, writes a message): " + cpu.syscalls_per_message(side, messages))
    # Every client of this Redis is counted: on a shared machine, other users' commands too.
    print("Redis      project: " + redis.per_message(len(project.latencies_ms)))
    for side, result in (("bare", bare), ("project", project)):
        print(f"AMQP       {side}: " + amqp.per_message(side, len(result.latencies_ms)))
    print("peak RSS   " + "   ".join(f"{name} {rss / 2**20:.0f} MB" for name, rss in sampler.peaks.items()))


def _load_average() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


async def alternate(args: argparse.Namespace, sides: dict[str, tuple[str, Result]], cpu: CpuCounter) -> None:
    """Alternating rounds: a change in the machine's background load hits both sides alike."""
    round_s = args.seconds / args.rounds
    for number in range(1, args.rounds + 1):
        this_round = {}
        for side, (url, result) in sides.items():
            with cpu.counting(side):
                this_round[side] = await drive(side, url, args.clients, round_s)
            result.add(this_round[side])
        # Each round's own ratio: how far apart the rounds are is how much one figure can be trusted.
        bare, project = this_round["bare"].throughput, this_round["project"].throughput
        ratio = f"{project / bare:.2f}" if bare else "n/a"
        print(f"round {number}    bare {bare:7.1f} msg/s   project {project:7.1f} msg/s   ratio {ratio}")


if __name__ == "__main__":
    asyncio.run(main())
