"""Issue 12, items 5 and 6: the admin lock-out attacked through the bundled proxy's set-up (the test client
stands for nginx: a trusted proxy naming the real client in X-Forwarded-For).

- 100 concurrent wrong guesses from one client: at most ADMIN_MAX_FAILURES (40) reach the compare
  (counted by `atendimento_admin_token_checks_total`), the rest are refused unseen.
- The operator behind the same proxy still signs in, and `Authorization: Bearer` opens /admin;
  an attacker's forged X-Forwarded-For hops are not believed.
- Failed sign-ins flood the audit log no more than its guard allows.
- A flood of requests for a human does not push the real handoffs off the dashboard: paging.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import aiohttp
from redis.asyncio import Redis

from shared.handoff import HandoffInfo, Handoffs
from shared.names import Names
from tests.support import REDIS_URL, TEST_SHARDS, Service, Stack, eventually, post_message
from tests.support.pipeline import wait_ready

TOKEN = "admin-" + uuid.uuid4().hex
LIMIT = 40
ATTACKER, OPERATOR = "203.0.113.66", "198.51.100.7"
FAILED_AUDIT_PER_MINUTE = 60  # services/monitor/admin/auth.py


def via_proxy(client: str, forged: str = "") -> dict[str, str]:
    """What nginx sends: whatever the client claimed, then the address it really came from."""
    return {"X-Forwarded-For": f"{forged}, {client}" if forged else client}


async def login(http: aiohttp.ClientSession, monitor: Service, token: str, headers: dict[str, str]) -> int:
    data = {"operator": "Ana", "token": token}
    async with http.post(monitor.url + "/admin/login", data=data, headers=headers, allow_redirects=False) as response:
        return response.status


async def token_checks(http: aiohttp.ClientSession, monitor: Service) -> dict[str, float]:
    async with http.get(monitor.url + "/metrics") as response:
        text = await response.text()
    pattern = r'^atendimento_admin_token_checks_total\{outcome="(\w+)"\} (\S+)$'
    return {outcome: float(value) for outcome, value in re.findall(pattern, text, re.MULTILINE)}


async def test_lockout_is_atomic_per_real_client_and_never_locks_the_operator_out(stack: Stack) -> None:
    monitor = await stack.start(
        "monitor",
        ADMIN_TOKEN=TOKEN,
        ADMIN_MAX_FAILURES=str(LIMIT),
        ADMIN_LOCKOUT_SECONDS="600",
        TRUSTED_PROXIES="127.0.0.1",
    )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        # The attacker claims to be the operator; the proxy adds where it really came from.
        guesses = [login(http, monitor, f"guess-{i}", via_proxy(ATTACKER, forged=OPERATOR)) for i in range(100)]
        statuses = await asyncio.gather(*guesses)
        assert statuses.count(401) == LIMIT and statuses.count(429) == 100 - LIMIT, statuses
        checks = await token_checks(http, monitor)
        assert checks.get("wrong") == LIMIT and checks.get("locked_out") == 100 - LIMIT, checks
        # Locked out: even the right token, from the attacker's address, is not compared.
        assert await login(http, monitor, TOKEN, via_proxy(ATTACKER)) == 429

        # The operator, through the same proxy, is not locked out by any of it.
        assert await login(http, monitor, TOKEN, via_proxy(OPERATOR)) == 303
        bearer = {"Authorization": f"Bearer {TOKEN}", **via_proxy(OPERATOR)}
        async with http.get(monitor.url + "/admin", headers=bearer, allow_redirects=False) as response:
            assert response.status == 200 and 'data-metric="messages.total"' in await response.text()
        async with http.get(monitor.url + "/admin/api/audit", headers=bearer) as response:
            entries = (await response.json())["entries"]
        failed = [e for e in entries if e["outcome"] in ("wrong_token", "locked_out")]
        # Per client: its wrong tokens and the first refusal, never the 59 refusals after it.
        assert len(failed) == LIMIT + 1 and {e["client"] for e in failed} == {ATTACKER}
        assert any(e["action"] == "login" and e["outcome"] == "ok" and e["client"] == OPERATOR for e in entries)

        # Many addresses, one wrong guess each: the audit log takes a bounded number per minute.
        spread = [login(http, monitor, "nope", via_proxy(f"192.0.2.{i}")) for i in range(1, 101)]
        assert set(await asyncio.gather(*spread)) == {401}
        async with http.get(monitor.url + "/admin/api/audit", headers=bearer) as response:
            entries = (await response.json())["entries"]
        failed = [e for e in entries if e["outcome"] in ("wrong_token", "locked_out")]
        assert len(failed) <= 2 * FAILED_AUDIT_PER_MINUTE  # two minutes at most while the test runs


async def test_a_flood_of_handoffs_leaves_the_real_ones_reachable(stack: Stack) -> None:
    gateway = await stack.start("gateway")
    await stack.start("worker")
    monitor = await stack.start("monitor", ADMIN_TOKEN=TOKEN)
    await wait_ready(stack)
    redis = Redis.from_url(REDIS_URL)
    try:
        # A customer waiting for an agent since a minute ago...
        real = "telegram:555"
        await Handoffs(redis, Names(stack.namespace, TEST_SHARDS)).start(
            real, HandoffInfo(channel="telegram", user_id="555", metadata={"chat_id": 555}, started_at=time.time() - 60)
        )
        async with aiohttp.ClientSession() as http:
            # ... then 120 web posts asking for a human.
            for i in range(120):
                body = {"user_id": f"flood-{i}", "text": "quero falar com um atendente"}
                assert (await post_message(http, gateway, body))[0] == 202
            bearer = {"Authorization": f"Bearer {TOKEN}"}

            async def paging() -> dict[str, int] | None:
                async with http.get(monitor.url + "/admin/api/overview", headers=bearer) as response:
                    body = await response.json()
                found: dict[str, int] = body["handoffs_paging"]
                return found if found["total"] == 121 else None

            first = await eventually(paging, what="121 handoffs")
            assert first["page"] == 1 and first["pages"] == 5
            async with http.get(
                monitor.url + "/admin/api/overview", params={"handoffs_page": "5"}, headers=bearer
            ) as response:
                last = await response.json()
            assert [h["conversation_id"] for h in last["handoffs"]][-1] == real
            async with http.get(monitor.url + "/admin", params={"handoffs_page": "5"}, headers=bearer) as response:
                page = await response.text()
                assert f'data-conversation="{real}"' in page and 'rel="prev"' in page and 'rel="next"' not in page
            for bad in ("0", "x", "-1"):
                async with http.get(
                    monitor.url + "/admin/api/overview", params={"handoffs_page": bad}, headers=bearer
                ) as response:
                    assert response.status == 400
    finally:
        await redis.aclose()
