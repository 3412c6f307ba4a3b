"""Private Redis and RabbitMQ servers, for faults that harm a whole server (maxmemory, SIGSTOP,
restart): each on its own free port and data folder, started by a test and stopped after it. The
shared servers on 5672 and 6379 are never touched."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import aio_pika
import psutil
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.support import eventually, free_port

# The server itself, not Debian's wrapper in /usr/sbin, which switches to the rabbitmq user (who
# cannot write in a test's temporary folder).
RABBITMQ_SERVER = next(
    (path for path in ("/usr/lib/rabbitmq/bin/rabbitmq-server",) if os.access(path, os.X_OK)),
    shutil.which("rabbitmq-server") or "rabbitmq-server",
)


def have(*programs: str) -> bool:
    return all(shutil.which(program) for program in programs)


@dataclass
class PrivateRedis:
    """A redis-server on a free port; `restart` keeps the port. Without persistence a restart loses
    the data; `persistent` keeps every acknowledged write (append-only file, fsync always)."""

    workdir: Path
    persistent: bool = False
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def spawn(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        with (self.workdir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen([*command, "--save", "", *durability], stdout=log, stderr=log)

    async def start(self) -> PrivateRedis:
        self.spawn()
        await eventually(self.ping, timeout=10, what="the private redis-server")
        return self

    async def ping(self) -> bool:
        client = Redis.from_url(self.url)
        try:
            return bool(await client.ping())
        except Exception:
            return False
        finally:
            await client.aclose()

    async def config_set(self, **settings: str) -> None:
        client = Redis.from_url(self.url)
        try:
            for name, value in settings.items():
                await client.config_set(name.replace("_", "-"), value)
        finally:
            await client.aclose()

    async def restart(self) -> None:
        self.stop()
        await self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


@dataclass
class PrivateRabbit:
    """A rabbitmq-server node of its own (name, ports, data and logs in `workdir`, no plugins)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    node: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}@localhost")
    # More rabbitmq.conf lines (a TLS listener), and the Erlang cookie nodes of one cluster share.
    extra_config: str = ""
    cookie: str | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "rabbitmq.conf"
        config.write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n{self.extra_config}")
        if self.cookie is not None:
            cookie = self.workdir / ".erlang.cookie"
            if not cookie.exists():
                cookie.write_text(self.cookie)
                cookie.chmod(0o400)
        plugins = self.workdir / "enabled_plugins"
        plugins.write_text("[].\n")
        env_file = self.workdir / "rabbitmq-env.conf"
        env_file.write_text("")
        return {
            **{key: value for key, value in os.environ.items() if not key.startswith("RABBITMQ_")},
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_CONF_ENV_FILE": str(env_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_PID_FILE": str(self.workdir / "pid"),
            # Its own Erlang cookie, written here (not in the user's home).
            "HOME": str(self.workdir),
        }

    def spawn(self) -> None:
        env = self.env()
        with (self.workdir / "server.out").open("ab") as log:
            self.process = subprocess.Popen(
                [RABBITMQ_SERVER], env=env, cwd=self.workdir, stdout=log, stderr=log, start_new_session=True
            )

    async def start(self, timeout: float = 60.0) -> PrivateRabbit:
        self.spawn()
        await eventually(self._accepts, timeout=timeout, interval=0.2, what="the private rabbitmq-server")
        return self

    async def _accepts(self) -> bool:
        assert self.process is not None and self.process.poll() is None, (self.workdir / "server.out").read_text()
        try:
            connection = await aio_pika.connect(self.url, timeout=2)
        except Exception:
            return False
        await connection.close()
        return True

    def _beam(self) -> psutil.Process:
        assert self.process is not None
        for child in psutil.Process(self.process.pid).children(recursive=True):
            if child.name().startswith("beam"):
                return child
        raise AssertionError("no beam process under the private rabbitmq-server")

    def pause(self) -> None:
        """SIGSTOP the node: its sockets stay open, nothing answers (epmd, shared, is untouched)."""
        self._beam().send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._beam().send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            beam = self._beam()
            beam.send_signal(signal.SIGCONT)
            beam.kill()
        except (AssertionError, psutil.Error):
            pass
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process = None


async def wait_closed(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The exit code once `process` ends within `timeout` seconds, else None."""
    try:
        return await asyncio.to_thread(process.wait, timeout)
    except subprocess.TimeoutExpired:
        return None


class LocalRedis:
    """A redis-server of the test's own on a spare port, to stop and start at will: the shared
    Redis is never touched."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._spawn()
        await self._answers()

    def _spawn(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def _answers(self) -> None:
        client = Redis.from_url(self.url)

        async def answers() -> bool:
            try:
                return bool(await client.ping())
            except RedisError:
                return False

        try:
            await eventually(answers, timeout=10, what=f"redis-server on port {self.port}")
        finally:
            await client.aclose()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    async def __aenter__(self) -> LocalRedis:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
