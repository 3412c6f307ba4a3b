"""`make bench-llm`: N conversations at once against a slow OpenAI-compatible stand-in.

For each number of workers and each model latency: N customers each send one message at the same
moment (`POST /v1/messages?wait=30`, REPLY_ENGINE=openai, the product's defaults otherwise). Prints
messages/s, when the last was answered, p95 latency, the most calls the stand-in had in flight,
the ratio to the ideal (the stand-in's time per completion x rounds of WORKER_CONCURRENCY per
worker), and peak RSS per service. The stand-in streams its answer after the latency, one chunk
every STREAM_PAUSE_S, as a model generating does: that is model time too, so the ideal counts it
("ideal"); "w/o stream" is the ratio to the latency alone, as printed before.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import time
import uuid
from pathlib import Path

import aiohttp

from bench.__main__ import RssSampler, _pid
from bench.workdir import working_dir
from shared.settings import DEFAULT_SHARDS
from tests.support import Stack, eventually, get_json, purge_namespace
from tests.support.fake_llm import LLM_TEXT, STREAM_PAUSE_S, FakeLlm, says

SHARDS = DEFAULT_SHARDS  # the product's default
# How long the stand-in takes to stream an answer once its latency has passed (a chunk per word).
STREAMING_S = STREAM_PAUSE_S * len(says("answer", LLM_TEXT).content.split(" "))


async def ask_all(url: str, conversations: int) -> list[float]:
    """Seconds each customer waited for the reply."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:

        async def ask(i: int) -> float:
            started = time.perf_counter()
            body = {"user_id": f"c{i}", "conversation_id": f"bench-{uuid.uuid4().hex}", "text": "Qual o prazo?"}
            async with http.post(url, params={"wait": "30"}, json=body) as response:
                await response.read()
                assert response.status == 200, response.status
            return time.perf_counter() - started

        return list(await asyncio.gather(*(ask(i) for i in range(conversations))))


async def one_run(workers: int, latency_s: float, conversations: int, concurrency: int, tmp: Path) -> str:
    llm = await FakeLlm(delay_s=latency_s).start()
    env = {
        "ATENDIMENTO_SHARDS": str(SHARDS),
        "REPLY_ENGINE": "openai",
        "OPENAI_BASE_URL": llm.url,
        "OPENAI_API_KEY": "sk-bench",
        "OPENAI_TIMEOUT_SECONDS": "60",
        "WORKER_CONCURRENCY": str(concurrency),
    }
    stack = Stack(f"benchllm{uuid.uuid4().hex[:8]}", tmp, extra_env=env)
    try:
        gateway = await stack.start("gateway")
        for _ in range(workers):
            await stack.start("worker")
        async with aiohttp.ClientSession() as http:

            async def balanced() -> bool:
                health = [(await get_json(http, w.url + "/monitoring/health"))[1] for w in stack.of("worker")]
                shards = [len(h["checks"]["consumer"]["shards"]) for h in health]
                return sum(shards) == SHARDS and all(shards)

            await eventually(balanced, timeout=60, what="the shards spread over the workers")
        sampler = RssSampler({f"{s.name}-{i}": _pid(s) for i, s in enumerate(stack.services)})
        sampling = asyncio.create_task(sampler.run())
        await ask_all(f"{gateway.url}/v1/messages", 2)  # warm: connections and the first calls
        llm.peak_in_flight = 0
        started = time.perf_counter()
        waits = await ask_all(f"{gateway.url}/v1/messages", conversations)
        total = time.perf_counter() - started
        sampling.cancel()
    finally:
        stack.stop_all()
        await purge_namespace(stack.namespace, shards=SHARDS)
        await llm.stop()
    rounds = math.ceil(conversations / (workers * concurrency))
    ideal, latency_only = (latency_s + STREAMING_S) * rounds, latency_s * rounds
    p95 = statistics.quantiles(waits, n=100)[94]
    rss = "  ".join(f"{name} {peak / 2**20:.0f} MB" for name, peak in sampler.peaks.items())
    return (
        f"{workers:>7} {latency_s:>7.1f} s {conversations / total:>8.1f} {total:>10.1f} s {p95:>7.1f} s "
        f"{llm.peak_in_flight:>9} {ideal / total:>7.2f} {latency_only / total:>10.2f}   {rss}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--latencies", default="1,3", help="comma-separated seconds per completion")
    parser.add_argument("--concurrency", type=int, default=64, help="WORKER_CONCURRENCY")
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs (removed after the runs)")
    args = parser.parse_args()
    with working_dir("bench-llm", keep=args.keep_logs) as workdir:
        await run_all(args, workdir.path)


async def run_all(args: argparse.Namespace, tmp: Path) -> None:
    print(f"{args.conversations} conversations at once, WORKER_CONCURRENCY={args.concurrency}, {SHARDS} shards")
    print(f"the stand-in streams each answer for {STREAMING_S:.2f} s after its latency")
    print("workers   model    msg/s  all answered     p95  in flight   ideal w/o stream   peak RSS")
    for workers in (int(w) for w in args.workers.split(",")):
        for latency in (float(s) for s in args.latencies.split(",")):
            print(await one_run(workers, latency, args.conversations, args.concurrency, tmp), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
