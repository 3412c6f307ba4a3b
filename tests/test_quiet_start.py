"""A fresh `make run` (issue 15): scripts/run-all.sh with the default OTEL settings and no
collector reads its .env file, answers, and stops without one failed span export or a "just
started" alert in its output."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import (
    AMQP_URL,
    REDIS_URL,
    ROOT,
    TEST_SHARDS,
    eventually,
    free_port,
    get_json,
    new_namespace,
    purge_namespace,
)

EXPORT_NOISE = ("Failed to export", "Transient error", "StatusCode.UNAVAILABLE", "localhost:4317", "tracing to OTLP")


def default_sigint() -> None:
    """Run in the child before bash starts. A suite launched in the background (`make test &`,
    nohup, a CI runner's script) starts with SIGINT ignored and its children inherit that; bash can
    neither trap nor reset a signal ignored on entry, so the Ctrl-C below would never reach
    run-all.sh's trap. The default disposition makes the trap possible again."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_run_all(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "run-all.sh")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=default_sigint,
            process_group=0,  # a job of its own, as a terminal runs `make run`
        )


def interrupt(run: subprocess.Popen[bytes]) -> None:
    """Ctrl-C as a terminal sends it: to every process of the job (the services and the prefixers
    of their lines too, not only run-all.sh), then until all of them are gone."""
    os.killpg(run.pid, signal.SIGINT)
    run.wait(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(run.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError("processes of the job outlived Ctrl-C by 30s")


@pytest.mark.integration  # scripts/run-all.sh starts the three services
async def test_a_fresh_run_is_quiet(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    namespace = new_namespace()
    ports = {"GATEWAY_PORT": free_port(), "WORKER_PORT": free_port(), "MONITOR_PORT": free_port()}
    copied = {name: free_port() for name in ports}  # what the copied .env.example said
    env_file = tmp_path / ".env"
    # What a copied .env.example looks like: comments, empty values (the defaults), quotes; then a
    # block appended to it as the README's guides show, with comments after the values. As docker
    # compose reads it, the appended lines win and a value ends before its " #".
    env_file.write_text(
        "# local settings\n"
        f'ATENDIMENTO_NAMESPACE="{namespace}"  # quoted, then a comment\n'
        + "".join(f"{name}={port}\n" for name, port in copied.items())
        + "OTEL_EXPORTER_OTLP_ENDPOINT=\nOTEL_TRACES_EXPORTER=\n"
        + "".join(f"{name}={port}        # appended: this one is used\n" for name, port in ports.items())
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATENDIMENTO_", "OTEL_")) and k not in ports}
    env.update(
        {
            "ENV_FILE": str(env_file),
            "AMQP_URL": AMQP_URL,
            "REDIS_URL": REDIS_URL,
            "ATENDIMENTO_SHARDS": str(TEST_SHARDS),
            "HEARTBEAT_INTERVAL_SECONDS": "0.5",
            "ALERT_INTERVAL_SECONDS": "0.3",
            "DRAIN_SECONDS": "0",
        }
    )
    log = tmp_path / "run-all.log"
    run = start_run_all(env, log)
    gateway = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
    monitor = f"http://127.0.0.1:{ports['MONITOR_PORT']}"
    try:

        async def answered() -> bool:
            try:
                async with http.post(
                    f"{gateway}/v1/messages", params={"wait": "10"}, json={"user_id": "ana", "text": "Qual o prazo?"}
                ) as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        # The ports came from the .env file's last lines: the stack answering on them is the proof
        # it was read as compose reads it.
        await eventually(answered, timeout=60, what="the stack answering on the .env ports")

        async def services_seen() -> dict[str, Any] | None:
            try:
                _, stats = await get_json(http, f"{monitor}/monitoring/stats")
            except aiohttp.ClientError:
                return None
            names = {service["name"] for service in stats.get("services") or []}
            return stats if {"gateway", "worker"} <= names else None

        stats = await eventually(services_seen, timeout=30, what="the monitor seeing gateway and worker")
        assert not [a for a in stats["alerts"] if "Started" in str(a["name"])], stats["alerts"]
    finally:
        # Ctrl-C: every service shuts its tracer provider down, which flushes the spans it holds
        # (an exporter would try to send them now, and fail without a collector).
        interrupt(run)
        await purge_namespace(namespace)
    output = log.read_text(errors="replace")
    assert "settings: " in output and "message processed" in output, output[-3000:]
    # What the services log while they stop reaches the terminal (the prefixers outlive Ctrl-C).
    stopping = {line.split(" ", 1)[0] for line in output.splitlines() if "closing the listener" in line}
    assert stopping == {"[gateway]", "[worker]", "[monitor]"}, output[-3000:]
    noise = [line for line in output.splitlines() if any(marker in line for marker in EXPORT_NOISE)]
    assert not noise, "\n".join(noise[:10])


def test_make_run_installs_only_what_running_needs() -> None:
    """`make run` installs the project without its dev extra (no test tools, Playwright, schemas)."""
    plan = subprocess.run(["make", "-n", "-B", "run"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    installs = [line for line in plan.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs and all("[dev]" not in line for line in installs), plan
    assert "scripts/run-all.sh" in plan
    test_plan = subprocess.run(["make", "-n", "-B", "pytest"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "'.[dev]'" in test_plan.stdout
