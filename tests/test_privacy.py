"""Customers' data (issue 23): find, export and erase one customer from the admin area, the customer's
own erasure (with its confirmation) and request for a copy, on the web and WhatsApp."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from services.worker.engines import privacy
from shared import unanswered
from shared.broker import COPY_HEADER
from shared.messages import InboundMessage
from shared.names import Names
from shared.privacy.customer import Customer, user_scope
from tests.support import TEST_SHARDS, Service, Stack, eventually, get_json, post_message, publish_raw, web_id
from tests.support.channel_fakes import (
    TELEGRAM_ENV,
    WHATSAPP_ENV,
    FakeChannelApi,
    Received,
    post_telegram,
    post_whatsapp,
    telegram_tap,
    telegram_text,
    whatsapp_tap,
    whatsapp_text,
)
from tests.support.pipeline import wait_ready
from tests.support.privacy import queue_bodies, redis_dump

TOKEN = "admin-" + uuid.uuid4().hex
BEARER = {"Authorization": f"Bearer {TOKEN}"}
MARKER = "Zqx7731"  # in every text the customer writes: nothing else in the system says it
FAST = {"KB_EMBEDDINGS": "off", "HANDOFF_AFTER_FALLBACKS": "0"}


async def start(stack: Stack, **env: str) -> None:
    await stack.start("gateway", **env)
    await stack.start("worker", **FAST)
    await stack.start("monitor", ADMIN_TOKEN=TOKEN)
    await wait_ready(stack)
    await monitor_connected(stack)


async def monitor_connected(stack: Stack) -> None:
    """The monitor connects to RabbitMQ after it is live; finding a customer reads the dead letters."""
    async with aiohttp.ClientSession() as http:

        async def broker_up() -> bool:
            _, health = await get_json(http, stack.monitor.url + "/monitoring/health")
            return bool(health["checks"]["rabbitmq"]["status"] == "up")

        await eventually(broker_up, what="the monitor connected to RabbitMQ")


async def say(http: aiohttp.ClientSession, gateway: Service, user: str, message_id: str, text: str) -> dict[str, Any]:
    body = {"user_id": user, "conversation_id": "chat", "message_id": message_id, "text": text}
    status, answer = await post_message(http, gateway, body, wait=10)
    assert status == 200, answer
    return answer


async def dead_letter(namespace: str, redis: Redis, user: str, message_id: str, text: str) -> None:
    """A message of theirs the worker dead-letters: a copy of one that already failed too often."""
    names = Names(namespace, TEST_SHARDS)
    message = InboundMessage(web_id(user, message_id), web_id(user, "chat"), user, text)
    await redis.set(names.attempts_key(message.message_id), 99)
    shard = str(names.shard_of(message.conversation_id))
    await publish_raw(namespace, shard, message.to_bytes(), message_id=message.message_id, headers={COPY_HEADER: True})


async def admin(http: aiohttp.ClientSession, monitor: Service, method: str, path: str, **kwargs: Any) -> Any:
    async with http.request(method, monitor.url + path, headers=BEARER, **kwargs) as response:
        body = await response.json(content_type=None)
        assert response.status == 200, body
        return body


async def test_export_holds_everything_and_erasure_leaves_nothing(
    stack: Stack, http: aiohttp.ClientSession, redis: Redis
) -> None:
    await start(stack)
    ns, gateway, monitor = stack.namespace, stack.gateway, stack.monitor
    user, other = f"ana-{MARKER}", "bruno"
    await say(http, gateway, user, "m1", f"{MARKER} qual o prazo de entrega?")
    await say(http, gateway, user, "m2", f"{MARKER} xyzzy plugh frobnicate")  # not in the base: unanswered
    await say(http, gateway, user, "m3", f"{MARKER} quero falar com um atendente")  # a handoff
    await say(http, gateway, other, "o1", "qual o prazo de entrega?")
    await dead_letter(ns, redis, user, "m4", f"{MARKER} this one died")
    await dead_letter(ns, redis, other, "o2", "bruno's dead letter")
    query = {"channel": "web", "id": user}

    async def both_dead() -> bool:
        return len((await queue_bodies(ns))[Names(ns, TEST_SHARDS).dead_letter_queue]) == 2

    await eventually(both_dead, what="two dead letters")
    # The workers count users seen in their statistics flush (about once a second, shared/recorder.py):
    # an erasure by an operator cannot flush them, so this waits for it before exporting and erasing.
    users_key = Names(ns, TEST_SHARDS).users_key

    async def user_counted() -> bool:
        return await redis.zscore(users_key, f"web:{user}") is not None

    await eventually(user_counted, what="the user counted among the users seen")

    found = await admin(http, monitor, "GET", "/admin/api/customers", params=query)
    assert found["found"] and found["conversations"] == [web_id(user, "chat")] and found["dead_letters"] == 1
    exported = await admin(http, monitor, "GET", "/admin/api/customers/export", params=query)
    [log] = exported["conversations"].values()
    assert [entry["text"] for entry in log] == [
        f"{MARKER} qual o prazo de entrega?",
        f"{MARKER} xyzzy plugh frobnicate",
        f"{MARKER} quero falar com um atendente",
    ]
    [memory] = exported["memory"].values()
    assert any(MARKER in turn["text"] for turn in memory["turns"])
    [handoff] = exported["handoffs"].values()
    assert handoff["user_id"] == user and MARKER in handoff["reason"]
    assert any(row.get("example") == f"{MARKER} xyzzy plugh frobnicate" for row in exported["unanswered_questions"])
    [letter] = exported["dead_letters"]
    assert letter["text"] == f"{MARKER} this one died" and letter["message_id"] == web_id(user, "m4")
    assert exported["users_seen"] == {f"web:{user}": exported["users_seen"][f"web:{user}"]}
    assert {web_id(user, m) for m in ("m1", "m2", "m3", "m4")} <= set(exported["messages"])

    erased = await admin(http, monitor, "POST", "/admin/api/customers/erase", json=query)
    assert erased["erased"]["dead_letters"] == 1 and erased["erased"]["conversations"] == 1

    # Nothing of theirs in Redis nor in any queue: no id, no scope, no word.
    dump = await redis_dump(redis, ns)
    for trace in (MARKER.lower(), user_scope(user)):
        assert trace not in dump.lower(), dump
    queues = await queue_bodies(ns)
    everything = b"".join(body for bodies in queues.values() for body in bodies).lower()
    assert MARKER.lower().encode() not in everything and user_scope(user).encode() not in everything
    [kept] = queues[Names(ns, TEST_SHARDS).dead_letter_queue]  # the other customer's, safe
    assert InboundMessage.from_bytes(kept).text == "bruno's dead letter"
    assert "bruno" in dump  # the other customer is untouched

    # The audit says who erased whom and when, by pseudonym, without their id or words.
    entries = (await admin(http, monitor, "GET", "/admin/api/audit"))["entries"]
    [entry] = [e for e in entries if e["action"] == "erase_customer"]
    assert entry["actor"] == "api" and entry["target"] == Customer("web", user).pseudonym(ns)
    assert entry["ts"] <= time.time() and MARKER.lower() not in orjson.dumps(entry).decode().lower()

    # The admin shows nothing of them; their next message starts a new conversation.
    found = await admin(http, monitor, "GET", "/admin/api/customers", params=query)
    assert not found["found"]
    listed = await admin(http, monitor, "GET", "/admin/api/conversations")
    assert MARKER.lower() not in orjson.dumps(listed).decode().lower()
    again = await say(http, gateway, user, "m5", "qual o prazo de entrega?")
    assert again["reply"]["kind"] != "handoff" and again["reply"]["text"]
    exported = await admin(http, monitor, "GET", "/admin/api/customers/export", params=query)
    [log] = exported["conversations"].values()
    assert [entry["text"] for entry in log] == ["qual o prazo de entrega?"]


async def test_web_customer_erases_their_data_after_confirming(
    stack: Stack, http: aiohttp.ClientSession, redis: Redis
) -> None:
    await start(stack)
    gateway, ns = stack.gateway, stack.namespace
    user = "carla"
    await say(http, gateway, user, "w1", f"{MARKER} qual o prazo de entrega?")
    asked = await say(http, gateway, user, "w2", "quero apagar meus dados")
    options = asked["reply"]["options"]
    assert [o["id"] for o in options] == [privacy.ERASE_OPTION, privacy.KEEP_OPTION]
    assert "apague todos os seus dados" in asked["reply"]["text"]

    # A forged confirmation (not offered in this conversation) erases nothing.
    forged = {"user_id": "someone", "conversation_id": "chat", "message_id": "f1", "text": "x"}
    status, answer = await post_message(http, gateway, {**forged, "option": privacy.ERASE_OPTION}, wait=10)
    assert status == 200 and answer["reply"]["engine"] == "choice"
    assert MARKER.lower() in (await redis_dump(redis, ns)).lower()

    body = {"user_id": user, "conversation_id": "chat", "message_id": "w3", "text": "Sim, apagar"}
    status, done = await post_message(http, gateway, {**body, "option": privacy.ERASE_OPTION}, wait=10)
    assert status == 200 and done["reply"]["text"].startswith("Pronto: apaguei todos os seus dados")

    async def erased() -> bool:
        return MARKER.lower() not in (await redis_dump(redis, ns)).lower()

    await eventually(erased, what="the customer's words gone")
    [audited] = await erasure_audited(redis, Names(ns, TEST_SHARDS))
    assert (audited["actor"], audited["action"]) == ("customer", "erase_customer")
    assert audited["target"] == Customer("web", user).pseudonym(ns) and user not in orjson.dumps(audited).decode()
    # What stays is the confirmation's own records (the reply being sent), which expire in a day.
    dump = await redis_dump(redis, ns)
    leftover = {line.split(" ")[0] for line in dump.splitlines() if user_scope(user) in line}
    assert all(web_id(user, "w3") in key for key in leftover), leftover


async def test_a_typed_yes_or_no_answers_the_confirmation(
    stack: Stack, http: aiohttp.ClientSession, redis: Redis
) -> None:
    """While the confirmation is pending, a plain "sim" or "yes" typed (not the button, its number nor
    its label) erases, and "não" keeps everything. The confirmation is a question back with options
    (`clarify`), yet not one of the questions the knowledge base could not answer."""
    await start(stack)
    gateway, ns = stack.gateway, stack.namespace
    names = Names(ns, TEST_SHARDS)
    for user, marker, yes in (("elis", "Qpv5521", "sim"), ("fred", "Wjk8843", "Yes!")):
        await say(http, gateway, user, f"{user}-1", f"{marker} qual o prazo de entrega?")
        asked = (await say(http, gateway, user, f"{user}-2", "quero apagar meus dados"))["reply"]
        assert (asked["kind"], asked["engine"], asked["sources"]) == ("clarify", privacy.ASKED, [])
        assert [o["id"] for o in asked["options"]] == [privacy.ERASE_OPTION, privacy.KEEP_OPTION]
        done = (await say(http, gateway, user, f"{user}-3", yes))["reply"]
        assert done["engine"] == privacy.ERASED and done["text"].startswith("Pronto: apaguei todos os seus dados")

        async def erased(marker: str = marker) -> bool:
            return marker.lower() not in (await redis_dump(redis, ns)).lower()

        await eventually(erased, what=f"{user}'s words gone")

    keeper, marker = "gil", "Hrt4409"
    await say(http, gateway, keeper, "gil-1", f"{marker} qual o prazo de entrega?")
    asked = (await say(http, gateway, keeper, "gil-2", "delete my data"))["reply"]
    assert asked["kind"] == "clarify" and asked["engine"] == privacy.ASKED
    kept = (await say(http, gateway, keeper, "gil-3", "não"))["reply"]
    assert kept["engine"] == privacy.ASKED and "não apaguei nada" in kept["text"] and kept["options"] == []
    # No longer asked: a "yes" now is an ordinary message, and erases nothing either.
    late = (await say(http, gateway, keeper, "gil-4", "yes"))["reply"]
    assert late["engine"] not in (privacy.ERASED, privacy.ASKED)
    # A question the base cannot answer, recorded after everything before it (a conversation's
    # messages are settled in order): once it is listed, so would the confirmation be.
    await say(http, gateway, keeper, "gil-5", "xyzzy plugh frobnicate")

    async def listed() -> list[unanswered.Row]:
        rows = await unanswered.report(redis, names)
        return rows if any(row.question == "xyzzy plugh frobnicate" for row in rows) else []

    questions = [row.question for row in await eventually(listed, what="the fallback listed as unanswered")]
    assert not any("apagar" in question or "delete" in question for question in questions), questions
    assert marker.lower() in (await redis_dump(redis, ns)).lower()  # kept: nothing of gil's was erased


async def test_a_request_for_a_copy_is_listed_for_the_operators(stack: Stack, http: aiohttp.ClientSession) -> None:
    await start(stack)
    answer = await say(http, stack.gateway, "dora", "r1", "meus dados")
    assert answer["reply"]["engine"] == privacy.EXPORT and "15 dias" in answer["reply"]["text"]

    async def listed() -> list[dict[str, Any]]:  # recorded once the reply is out
        return list((await admin(http, stack.monitor, "GET", "/admin/api/privacy/requests"))["pending"])

    [request] = await eventually(listed, what="the request listed")
    assert request["channel"] == "web" and request["id"] == "dora" and request["kind"] == "export"
    assert 0 <= request["age_days"] < 1 and 14 < request["due_in_days"] <= 15
    async with http.get(stack.monitor.url + "/admin/privacy", headers=BEARER) as response:
        page = await response.text()
        assert response.status == 200 and "dora" in page and "90 days" in page
        assert "Delivery records of proactive messages" in page and "Satisfaction comments" in page
    found = {"channel": "web", "id": "dora"}
    async with http.get(stack.monitor.url + "/admin/privacy", params=found, headers=BEARER) as response:
        page = await response.text()
        assert response.status == 200 and 'id="export"' in page and 'id="erase"' in page
    await admin(
        http, stack.monitor, "POST", "/admin/api/privacy/requests/answer", json={"channel": "web", "id": "dora"}
    )
    assert (await admin(http, stack.monitor, "GET", "/admin/api/privacy/requests"))["pending"] == []


async def test_bad_input_is_refused_naming_the_field(stack: Stack, http: aiohttp.ClientSession) -> None:
    await stack.start("monitor", ADMIN_TOKEN=TOKEN)
    for query, field in (({"channel": "fax", "id": "1"}, "channel"), ({"channel": "whatsapp", "id": "abc"}, "id")):
        async with http.get(stack.monitor.url + "/admin/api/customers", params=query, headers=BEARER) as response:
            assert response.status == 400 and response.content_type == "application/problem+json"
            assert (await response.json())["detail"].startswith(f"{field}:")
    async with http.post(stack.monitor.url + "/admin/api/customers/erase", json={"channel": "web", "id": "x"}) as r:
        assert r.status == 401  # admin only
    await monitor_connected(stack)  # a monitor stopped before it connects takes its whole grace to stop


async def test_whatsapp_customer_erases_their_data_with_the_buttons(
    stack: Stack, http: aiohttp.ClientSession, redis: Redis, api: FakeChannelApi
) -> None:
    await start(stack, **WHATSAPP_ENV, **api.env())
    gateway, ns, sender = stack.gateway, stack.namespace, "5511987657731"

    async def replies(count: int) -> list[Received]:
        async def arrived() -> list[Received] | None:
            sent = api.delivered_to(sender)
            return sent if len(sent) >= count else None

        return await eventually(arrived, what=f"{count} replies on WhatsApp")

    for wamid, payload in (
        ("wamid.p1", whatsapp_text("wamid.p1", sender, f"{MARKER} qual o prazo de entrega?")),
        ("wamid.p2", whatsapp_text("wamid.p2", sender, "Quero apagar meus dados")),
    ):
        status, body = await post_whatsapp(http, gateway, payload)
        assert status == 200 and body["accepted"] == 1, (wamid, body)
        await replies(int(wamid[-1]))
    confirm = (await replies(2))[1]
    assert confirm.interactive == "button"
    assert confirm.options == [(privacy.ERASE_OPTION, "Sim, apagar"), (privacy.KEEP_OPTION, "Não, manter")]
    assert MARKER.lower() in (await redis_dump(redis, ns)).lower()

    status, _ = await post_whatsapp(
        http, gateway, whatsapp_tap("wamid.p3", sender, privacy.ERASE_OPTION, "Sim, apagar")
    )
    assert status == 200
    done = (await replies(3))[2]
    assert done.text.startswith("Pronto: apaguei todos os seus dados")

    async def erased() -> bool:
        return MARKER.lower() not in (await redis_dump(redis, ns)).lower()

    await eventually(erased, what="the customer's words gone")
    await erasure_audited(redis, Names(ns, TEST_SHARDS))
    # Only the confirmation's own records name them (its claim and stored reply, until they expire).
    leftover = [line.split(" ")[0] for line in (await redis_dump(redis, ns)).splitlines() if sender in line]
    names = Names(ns, TEST_SHARDS)
    assert sorted(leftover) == [names.claim_key("wamid.p3"), names.reply_key("wamid.p3")]

    # Their next message starts a new conversation: answered, and the only one logged.
    status, _ = await post_whatsapp(http, gateway, whatsapp_text("wamid.p4", sender, "qual o prazo de entrega?"))
    assert status == 200 and (await replies(4))[3].text
    exported = await admin(
        http, stack.monitor, "GET", "/admin/api/customers/export", params={"channel": "whatsapp", "id": sender}
    )
    [log] = exported["conversations"].values()
    assert [entry["message_id"] for entry in log] == ["wamid.p4"]


async def test_telegram_customer_asks_in_english_and_erases_with_the_keyboard(
    stack: Stack, http: aiohttp.ClientSession, redis: Redis, api: FakeChannelApi
) -> None:
    await start(stack, **TELEGRAM_ENV, **api.env())
    gateway, ns, chat = stack.gateway, stack.namespace, 884407731

    async def replies(count: int) -> list[Received]:
        async def arrived() -> list[Received] | None:
            sent = api.delivered_to(chat)
            return sent if len(sent) >= count else None

        return await eventually(arrived, what=f"{count} replies on Telegram")

    for update_id, text in ((1, f"{MARKER} qual o prazo de entrega?"), (2, "please delete my data")):
        status, _ = await post_telegram(http, gateway, telegram_text(update_id, chat, text))
        assert status == 200
        await replies(update_id)
    confirm = (await replies(2))[1]
    assert confirm.options == [(privacy.ERASE_OPTION, "Sim, apagar"), (privacy.KEEP_OPTION, "Não, manter")]
    status, _ = await post_telegram(http, gateway, telegram_tap(3, chat, privacy.ERASE_OPTION, confirm.options))
    assert status == 200 and (await replies(3))[2].text.startswith("Pronto: apaguei")

    async def erased() -> bool:
        return MARKER.lower() not in (await redis_dump(redis, ns)).lower()

    await eventually(erased, what="the customer's words gone")
    await erasure_audited(redis, Names(ns, TEST_SHARDS))
    leftover = [line.split(" ")[0] for line in (await redis_dump(redis, ns)).splitlines() if str(chat) in line]
    names = Names(ns, TEST_SHARDS)
    assert sorted(leftover) == [names.claim_key("telegram:3"), names.reply_key("telegram:3")]


async def test_erasing_a_customer_with_1000_messages(stack: Stack, http: aiohttp.ClientSession, redis: Redis) -> None:
    """The measurement of issue 23 (printed; no threshold): 1,000 messages of one web customer in five
    conversations (a log keeps 200 entries each) among another customer's, through the whole path."""
    await start(stack)
    gateway, ns, user = stack.gateway, stack.namespace, "heavy"
    names = Names(ns, TEST_SHARDS)
    posts = asyncio.Semaphore(16)

    async def post(user_id: str, n: int) -> None:
        body = {"user_id": user_id, "conversation_id": f"c{n % 5}", "message_id": f"h{n}", "text": f"{MARKER} {n}"}
        async with posts:
            status, answer = await post_message(http, gateway, body)
            assert status in (200, 202), answer

    await asyncio.gather(*(post(user, n) for n in range(1000)), *(post("light", n) for n in range(50)))

    async def all_logged() -> bool:
        lengths = [await redis.llen(names.conversation_log_key(web_id(user, f"c{c}"))) for c in range(5)]
        return sum(lengths) == 1000

    await eventually(all_logged, timeout=300, what="1,000 messages answered and logged")
    customer = {"channel": "web", "id": user}
    started = time.perf_counter()
    exported = await admin(http, stack.monitor, "GET", "/admin/api/customers/export", params=customer)
    export_s = time.perf_counter() - started
    assert len(exported["messages"]) == 1000
    started = time.perf_counter()
    erased = await admin(http, stack.monitor, "POST", "/admin/api/customers/erase", json=customer)
    erase_s = time.perf_counter() - started
    keys = len([k async for k in redis.scan_iter(match=f"{ns}:*", count=1000)])
    print(
        f"\nexport of 1,000 messages: {export_s:.2f} s; erasure: {erase_s:.2f} s ({erased['erased']}); {keys} keys left"
    )
    assert erased["erased"]["conversations"] == 5
    assert user_scope(user) not in await redis_dump(redis, ns)


async def test_an_operator_erases_from_the_page_after_ticking_the_box(stack: Stack, redis: Redis) -> None:
    monitor = await stack.start("monitor", ADMIN_TOKEN=TOKEN)
    names = Names(stack.namespace, TEST_SHARDS)
    conversation = "telegram:777001"
    logged = orjson.dumps({"text": MARKER, "replied_at": time.time()})
    await redis.rpush(names.conversation_log_key(conversation), logged)
    await redis.zadd(names.conversations_key, {conversation: time.time()})
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        login = {"operator": "Ana", "token": TOKEN}
        async with browser.post(monitor.url + "/admin/login", data=login) as response:
            assert response.status == 200

        async def customer_page() -> str | None:  # 503 until the monitor has connected to RabbitMQ
            async with browser.get(monitor.url + "/admin/privacy", params={"channel": "telegram", "id": "777001"}) as r:
                return await r.text() if r.status == 200 else None

        page = await eventually(customer_page, what="the customer's page")
        assert "telegram:777001" in page and 'name="confirm"' in page
        found = re.search(r'name="csrf" value="([^"]+)"', page)
        assert found is not None
        form = {"csrf": found.group(1), "channel": "telegram", "id": "777001"}
        async with browser.post(monitor.url + "/admin/privacy/erase", data=form) as response:
            assert response.status == 400 and (await response.json())["detail"].startswith("confirm:")
        assert await redis.exists(names.conversation_log_key(conversation))
        async with browser.post(monitor.url + "/admin/privacy/erase", data={**form, "confirm": "on"}) as response:
            assert response.status == 200 and "Erased." in await response.text()
    assert not await redis.exists(names.conversation_log_key(conversation))
    [entry] = [e for e in (await admin_audit(redis, names)) if e["action"] == "erase_customer"]
    assert entry["actor"] == "Ana" and entry["target"] == Customer("telegram", "777001").pseudonym(stack.namespace)


async def admin_audit(redis: Redis, names: Names) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in await redis.lrange(names.audit_key, 0, -1)]


async def erasure_audited(redis: Redis, names: Names) -> list[dict[str, Any]]:
    """The audit entries once an erasure's is there: it is the erasure's last step, a moment after
    the customer's words are gone, so what is left is only then what stays."""

    async def audited() -> list[dict[str, Any]]:
        entries = await admin_audit(redis, names)
        return entries if any(entry["action"] == "erase_customer" for entry in entries) else []

    return await eventually(audited, what="the erasure audited")
