"""Edge protection (SPEC 2 and 4): API keys, rate limits shared by gateway replicas, security
headers, CORS, request size limits, and logs without secrets or full phone numbers."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from shared.web import client_address
from tests.support import Service, Stack, eventually, free_port
from tests.support.channel_fakes import (
    TELEGRAM_ENV,
    WHATSAPP_ENV,
    Answer,
    FakeChannelApi,
    post_telegram,
    post_whatsapp,
    telegram_text,
    whatsapp_text,
)
from tests.support.pipeline import wait_ready

KEYS = ("key-one-0123456789abcdef", "key-two-fedcba9876543210")
ORIGIN = "https://loja.example.com"
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=",
    "Content-Security-Policy": "default-src 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
PHONE = "5511987654321"


def all_logs(stack: Stack) -> str:
    return "\n".join(service.logs() for service in stack.services)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def gateway(stack: Stack, api: FakeChannelApi) -> Service:
    """One gateway with every edge setting and both channels, plus a worker (for the logs)."""
    env = {
        **WHATSAPP_ENV,
        **TELEGRAM_ENV,
        **api.env(),
        "GATEWAY_API_KEYS": ",".join(KEYS),
        "CORS_ALLOWED_ORIGINS": ORIGIN,
    }
    gateway = await stack.start("gateway", **env)
    await stack.start("worker")
    await wait_ready(stack)
    return gateway


async def test_api_keys(gateway: Service, http: aiohttp.ClientSession) -> None:
    url = f"{gateway.url}/v1/messages"
    body = {"user_id": "edge-keys", "text": "Qual o prazo de entrega?"}
    for headers, detail in (({}, "required"), (bearer("wrong-key"), "not valid"), ({"Authorization": KEYS[0]}, "")):
        async with http.post(url, json=body, headers=headers) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            problem = await response.json(content_type="application/problem+json")
            assert problem["detail"].startswith("Authorization") and detail in problem["detail"]
    for key in KEYS:
        async with http.post(url, json=body, headers=bearer(key)) as response:
            assert response.status == 202, await response.text()
            accepted = await response.json()
    message_id, token = accepted["message_id"], {"X-Conversation-Token": accepted["conversation_token"]}
    for path in (f"/v1/messages/{message_id}", "/v1/conversations/user:edge-keys/events"):
        async with http.get(gateway.url + path, headers=token) as response:
            assert response.status == 401
    async with http.get(f"{gateway.url}/v1/messages/{message_id}", headers={**bearer(KEYS[1]), **token}) as response:
        assert response.status == 200
    for public in ("/", "/openapi.json", "/monitoring/live"):  # no key needed outside /v1
        async with http.get(gateway.url + public) as response:
            assert response.status == 200, public


async def test_an_id_with_braces_and_a_slash_can_be_looked_up(gateway: Service, http: aiohttp.ClientSession) -> None:
    """Any accepted id can be looked up again: braces and a slash (encoded) included."""
    ids = {"user_id": "edge-ids", "conversation_id": "loja {1}/caixa", "message_id": "pedido-{42}/b"}
    body = {**ids, "text": "Qual o prazo de entrega?"}
    async with http.post(f"{gateway.url}/v1/messages", json=body, headers=bearer(KEYS[0])) as response:
        assert response.status == 202, await response.text()
        token = {"X-Conversation-Token": (await response.json())["conversation_token"], **bearer(KEYS[0])}
    message = quote(ids["message_id"], safe="")
    async with http.get(f"{gateway.url}/v1/messages/{message}", headers=token) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["message_id"] == ids["message_id"]
    events = f"{gateway.url}/v1/conversations/{quote(ids['conversation_id'], safe='')}/events"
    async with http.get(events, headers=token) as response:
        assert response.status == 200 and response.content_type == "text/event-stream"


async def test_security_headers_everywhere(gateway: Service, http: aiohttp.ClientSession) -> None:
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/", {}),
        ("GET", "/static/chat.js", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/monitoring/live", {}),
        ("GET", "/no/such/page", {}),
        ("POST", "/v1/messages", {}),
        ("POST", "/v1/messages", {"headers": {**bearer(KEYS[0]), "Content-Type": "application/json"}, "data": b"{"}),
        ("POST", "/v1/messages", {"headers": bearer(KEYS[0]), "json": {"user_id": "edge-h", "text": "oi"}}),
        ("POST", "/webhooks/whatsapp", {"json": {}}),
        ("GET", "/webhooks/whatsapp", {}),
    ]
    seen = set()
    token = ""
    for method, path, options in requests:
        async with http.request(method, gateway.url + path, **options) as response:
            seen.add(response.status)
            _assert_security_headers(response, f"{method} {path}")
            if response.status == 202:
                token = (await response.json())["conversation_token"]
    assert {200, 202, 400, 401, 403, 404} <= seen
    # An event stream sends its headers before any event: they must be there all the same.
    url = f"{gateway.url}/v1/conversations/user:edge-h/events"
    async with http.get(url, headers={**bearer(KEYS[0]), "X-Conversation-Token": token}) as response:
        assert response.status == 200
        _assert_security_headers(response, "SSE")


def _assert_security_headers(response: aiohttp.ClientResponse, what: str) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert value in response.headers.get(name, ""), f"{what}: {name} missing"


async def test_cors(gateway: Service, http: aiohttp.ClientSession) -> None:
    url = f"{gateway.url}/v1/messages"
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    async with http.options(url, headers={"Origin": ORIGIN, **preflight}) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        allowed = response.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed
    async with http.options(url, headers={"Origin": "https://evil.example", **preflight}) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers
    body = {"user_id": "edge-cors", "text": "oi"}
    async with http.post(url, json=body, headers={"Origin": ORIGIN, **bearer(KEYS[0])}) as response:
        assert response.status == 202
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]
    async with http.post(url, json=body, headers={"Origin": "https://evil.example", **bearer(KEYS[0])}) as response:
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_request_size_limits(gateway: Service, http: aiohttp.ClientSession) -> None:
    huge_api = b'{"user_id": "x", "text": "' + b"a" * (65 * 1024) + b'"}'
    async with http.post(
        f"{gateway.url}/v1/messages", data=huge_api, headers={"Content-Type": "application/json", **bearer(KEYS[0])}
    ) as response:
        assert response.status == 413
        assert response.content_type == "application/problem+json"
    huge_webhook = b'{"entry": [], "pad": "' + b"a" * (1024 * 1024) + b'"}'
    headers = {
        "Content-Type": "application/json",
        "X-Telegram-Bot-Api-Secret-Token": TELEGRAM_ENV["TELEGRAM_SECRET_TOKEN"],
    }
    async with http.post(f"{gateway.url}/webhooks/telegram", data=huge_webhook, headers=headers) as response:
        assert response.status == 413
        assert response.content_type == "application/problem+json"


@pytest.mark.usefixtures("gateway")
async def test_logs_mask_phones_and_secrets(stack: Stack, http: aiohttp.ClientSession, api: FakeChannelApi) -> None:
    """A customer's number (in the sender and in the text) and every secret the services hold
    must never be written whole; the number may appear as its last 4 digits."""
    text = f"Meu número é {PHONE}, qual o prazo de entrega?"
    # WhatsApp first, refused for good (the error names the number), then Telegram, delivered.
    api.script[:] = [Answer(400, body={"error": {"message": f"(#100) Invalid 'to': {PHONE}", "code": 100}})]
    status, _ = await post_whatsapp(http, stack.gateway, whatsapp_text("wamid.edge-logs", PHONE, text))
    assert status == 200

    async def dead_lettered() -> bool:
        return "dead-lettered" in all_logs(stack)

    await eventually(dead_lettered, what="the WhatsApp reply dead-lettered and logged")
    status, _ = await post_telegram(http, stack.gateway, telegram_text(910_000_001, 700_200_001, text))
    assert status == 200

    async def delivered() -> bool:
        return bool(api.delivered_to(700_200_001))

    await eventually(delivered, what="the Telegram reply delivered")
    logs = all_logs(stack)
    assert "4321" in logs  # the number was logged, masked
    secrets = [PHONE, PHONE[2:], *KEYS, *WHATSAPP_ENV.values(), *TELEGRAM_ENV.values()]
    leaked = [secret for secret in secrets if secret in logs]
    assert leaked == []


async def test_rate_limits_are_shared_by_two_gateways(stack: Stack, http: aiohttp.ClientSession) -> None:
    """SPEC defaults (10 messages/s per user with bursts of 20) on two replicas behind a trusted
    proxy; a per-address limit of 2/s (bursts of 4) on the same pair. No worker: nothing is
    answered, so nothing is sent to the (unreachable) WhatsApp API either."""
    env = {
        "TRUSTED_PROXIES": "127.0.0.1",
        "RATE_LIMIT_PER_USER": "10",
        "RATE_LIMIT_PER_IP": "2",
        **WHATSAPP_ENV,
        "WHATSAPP_API_BASE": f"http://127.0.0.1:{free_port()}/v19.0",
    }
    gateways = [await stack.start("gateway", **env), await stack.start("gateway", **env)]
    await wait_ready(stack)

    async def post(gateway: Service, user: str, address: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        # A hop the client may have forged, then the client's address as our proxy saw it.
        headers = {"X-Forwarded-For": f"192.0.2.1, {address}"}
        body = {"user_id": user, "text": "Qual o prazo de entrega?"}
        async with http.post(f"{gateway.url}/v1/messages", json=body, headers=headers) as response:
            return response.status, dict(response.headers), await response.json(content_type=None)

    # A burst of 100 from one user, spread over both gateways and over many addresses.
    started = time.monotonic()
    burst = await asyncio.gather(*(post(gateways[i % 2], "flood", f"198.51.100.{i}") for i in range(100)))
    elapsed = time.monotonic() - started
    accepted = [r for r in burst if r[0] == 202]
    limited = [r for r in burst if r[0] == 429]
    assert len(accepted) + len(limited) == 100, {r[0] for r in burst}
    # One shared bucket: at most the burst plus what refilled meanwhile (two separate buckets
    # would have let through twice the burst).
    assert 20 <= len(accepted) <= 20 + 10 * elapsed + 1, (len(accepted), elapsed)
    for _, headers, problem in limited:
        assert int(headers["Retry-After"]) >= 1
        assert headers["Content-Type"] == "application/problem+json"
        assert problem["detail"].startswith("user_id")
    # Another user, through either gateway, is not affected.
    for i, gateway in enumerate(gateways):
        status, _, _ = await post(gateway, "calm", f"198.51.100.{200 + i}")
        assert status == 202

    # Ten different users from one address: the address's limit, again shared by both gateways.
    started = time.monotonic()
    same_address = await asyncio.gather(*(post(gateways[i % 2], f"u{i}", "203.0.113.9") for i in range(10)))
    elapsed = time.monotonic() - started
    accepted = [r for r in same_address if r[0] == 202]
    assert 4 <= len(accepted) <= 4 + 2 * elapsed + 1, (len(accepted), elapsed)
    assert all(r[2]["detail"].startswith("client address") for r in same_address if r[0] == 429)
    status, _, _ = await post(gateways[0], "u-other", "203.0.113.10")
    assert status == 202

    # Webhooks: Meta posts every customer's messages from its few addresses, so they are limited
    # per sender, never per address: thirty customers in a row all get through...
    for i in range(30):
        status, body = await post_whatsapp(
            http, gateways[i % 2], whatsapp_text(f"wamid.rl-{i}", f"55119000{i:05d}", "oi")
        )
        assert (status, body) == (200, {"accepted": 1, "duplicates": 0})
    # ...while one sender flooding gets 429 (Meta retries those later) and is limited on both replicas.
    started = time.monotonic()
    flood = await asyncio.gather(
        *(
            post_whatsapp(http, gateways[i % 2], whatsapp_text(f"wamid.fl-{i}", "5511977770000", "oi"))
            for i in range(40)
        )
    )
    refused = [body for status, body in flood if status == 429]
    assert refused and all(body["detail"].startswith("user_id") for body in refused)
    assert sum(status == 200 for status, _ in flood) <= 20 + 10 * (time.monotonic() - started) + 1


def test_client_address_trusts_only_configured_proxies() -> None:
    proxies = [ipaddress.ip_network("10.0.0.0/8")]

    def request(peer: str, forwarded: str | None) -> Any:
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        return make_mocked_request("POST", "/v1/messages", headers=headers, transport=_Transport(peer))

    assert client_address(request("10.0.0.5", "203.0.113.7"), proxies) == "203.0.113.7"
    # A forged hop left of the real client is not believed.
    assert client_address(request("10.0.0.5", "1.2.3.4, 203.0.113.7"), proxies) == "203.0.113.7"
    assert client_address(request("10.0.0.5", "203.0.113.7, 10.1.1.1"), proxies) == "203.0.113.7"
    # A client talking to us directly cannot choose its address.
    assert client_address(request("203.0.113.8", "1.2.3.4"), proxies) == "203.0.113.8"
    assert client_address(request("203.0.113.8", "1.2.3.4"), []) == "203.0.113.8"


class _Transport:
    def __init__(self, peer: str) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40000) if name == "peername" else default
