"""The admin's privacy page and API (LGPD art. 18): find one customer by channel and id, export
everything held about them as one JSON document, erase it; the customers' own pending requests with
their age; and what is kept for how long (docs/privacy.md).

Every export and erasure is audited with the customer's pseudonym (`Customer.pseudonym`), never their
id nor anything they wrote: after an erasure the audit log still says who erased whom and when, and
an operator who is given the id again can check it, but the log holds nothing of theirs.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from services.monitor.admin import api, pages
from services.monitor.admin.guard import ACTOR, SESSION
from services.monitor.audit import Actor
from services.monitor.keys import AUDIT, CUSTOMER_DATA, SETTINGS, STORE
from services.monitor.problems import unreachable
from shared import conversations, unanswered
from shared.broker import BROKER_ERRORS
from shared.privacy.customer import Customer
from shared.privacy.erasure import summary
from shared.privacy.lock import LockBusy
from shared.privacy.requests import DEADLINE_DAYS, PrivacyRequests
from shared.receipts import RECEIPT_TTL_S
from shared.store import CONVERSATION_LOG_TTL_SECONDS, IDEMPOTENCY_TTL_SECONDS, REDIS_ERRORS
from shared.web import Problem, json_response

# LockBusy: another pass over the dead-letter queue took too long.
UNAVAILABLE: tuple[type[BaseException], ...] = (*REDIS_ERRORS, *BROKER_ERRORS, LockBusy)
DAY_S = 86_400
NOTICES = ("erased", "answered")

# The page's own words (as the knowledge page keeps its own).
TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "heading": "Customers' data",
        "find": "Find a customer",
        "channel": "Channel",
        "id": "Phone number, Telegram chat id or web user id",
        "look_up": "Look up",
        "nothing": "Nothing is held about this customer.",
        "conversations": "Conversations",
        "messages": "Messages",
        "dead_letters": "Dead letters",
        "export": "Export everything (JSON)",
        "erase": "Erase everything held about this customer",
        "erase_confirm": "I understand this cannot be undone",
        "requests": "Pending requests from customers",
        "requests_note": (
            "The law gives 15 days to answer. Export the customer's data, send it to them, then mark it answered."
        ),
        "no_requests": "No pending request.",
        "kind": "Request",
        "asked": "Asked",
        "age": "Age (days)",
        "due": "Days left",
        "answered": "Mark answered",
        "kept": "What is kept, and for how long",
        "record": "Record",
        "how_long": "Kept",
        "notice_erased": "Erased. The audit log records it, without the customer's id.",
        "notice_answered": "Marked answered.",
        "days": "{n} days",
        "hours": "{n} hours",
        "stats_kept": "kept (counts only, no personal data)",
    },
    "pt-BR": {
        "heading": "Dados de clientes",
        "find": "Encontrar um cliente",
        "channel": "Canal",
        "id": "Telefone, id do chat no Telegram ou id do usuário web",
        "look_up": "Procurar",
        "nothing": "Nada é mantido sobre este cliente.",
        "conversations": "Conversas",
        "messages": "Mensagens",
        "dead_letters": "Mensagens mortas",
        "export": "Exportar tudo (JSON)",
        "erase": "Apagar tudo o que há sobre este cliente",
        "erase_confirm": "Entendo que isto não pode ser desfeito",
        "requests": "Pedidos pendentes de clientes",
        "requests_note": (
            "A lei dá 15 dias para responder. Exporte os dados do cliente, envie a ele e marque como respondido."
        ),
        "no_requests": "Nenhum pedido pendente.",
        "kind": "Pedido",
        "asked": "Pedido em",
        "age": "Idade (dias)",
        "due": "Dias restantes",
        "answered": "Marcar como respondido",
        "kept": "O que é mantido, e por quanto tempo",
        "record": "Registro",
        "how_long": "Mantido",
        "notice_erased": "Apagado. O registro de auditoria anota isso, sem o id do cliente.",
        "notice_answered": "Marcado como respondido.",
        "days": "{n} dias",
        "hours": "{n} horas",
        "stats_kept": "mantidas (só contagens, sem dados pessoais)",
    },
}
# What is kept how long: (record, where, the setting or constant that bounds it), in both languages.
RECORDS: dict[str, tuple[str, ...]] = {
    "en": (
        "Conversation log (what the customer wrote, the replies)",
        "Conversation memory (last turns)",
        "Handoff to a person",
        "Unanswered questions (the customer's words)",
        "Stored replies, message claims",
        "Delivery records of proactive messages (the number they went to)",
        "Satisfaction comments (the customer's words)",
        "Dead letters",
        "Statistics",
    ),
    "pt-BR": (
        "Histórico da conversa (o que o cliente escreveu, as respostas)",
        "Memória da conversa (últimas falas)",
        "Transferência para atendente",
        "Perguntas sem resposta (as palavras do cliente)",
        "Respostas guardadas, reservas de mensagem",
        "Registros de entrega das mensagens ativas (o número de destino)",
        "Comentários de satisfação (as palavras do cliente)",
        "Mensagens mortas",
        "Estatísticas",
    ),
}


def _customer(channel: Any, customer_id: Any) -> Customer:
    try:
        return Customer.parse(channel, customer_id)
    except ValueError as exc:
        raise Problem(400, str(exc)) from None


def retention_table(app: web.Application, language: str) -> list[tuple[str, str]]:
    settings = app[SETTINGS]
    words = TEXTS.get(language, TEXTS["en"])
    retention_s = settings.retention_days * DAY_S

    def days(seconds: float) -> str:
        n = seconds / DAY_S
        return words["days"].format(n=int(n)) if n >= 1 else words["hours"].format(n=int(seconds // 3600))

    limits = (
        min(CONVERSATION_LOG_TTL_SECONDS, retention_s),
        settings.memory_ttl_s,
        settings.handoff_ttl_s,
        min(unanswered.TTL_S, retention_s),
        IDEMPOTENCY_TTL_SECONDS,
        min(RECEIPT_TTL_S, retention_s),
        min(conversations.DAY_TTL_SECONDS, retention_s),
        retention_s,
    )
    kept = [days(limit) for limit in limits] + [words["stats_kept"]]
    return list(zip(RECORDS.get(language, RECORDS["en"]), kept, strict=True))


# Operations, shared by the page and the API -------------------------------------------------------
async def find(app: web.Application, customer: Customer) -> dict[str, Any]:
    try:
        return summary(await app[CUSTOMER_DATA].find(customer))
    except UNAVAILABLE:
        raise unreachable("Redis or RabbitMQ", "the customer cannot be looked up") from None


async def export(app: web.Application, actor: Actor, customer: Customer) -> dict[str, Any]:
    audit, target = app[AUDIT], customer.pseudonym(app[STORE].names.namespace)
    try:
        document = await app[CUSTOMER_DATA].export(customer)
    except UNAVAILABLE as exc:
        await audit.record(actor, "export_customer", target, "failed", type(exc).__name__)
        raise unreachable("Redis or RabbitMQ", "nothing was exported") from None
    await audit.record(actor, "export_customer", target, "ok", f"{len(document['conversation_ids'])} conversations")
    return document


async def erase(app: web.Application, actor: Actor, customer: Customer) -> dict[str, int]:
    audit, target = app[AUDIT], customer.pseudonym(app[STORE].names.namespace)
    try:
        erased = await app[CUSTOMER_DATA].erase(customer)
    except UNAVAILABLE as exc:
        await audit.record(actor, "erase_customer", target, "failed", type(exc).__name__)
        raise unreachable("Redis or RabbitMQ", "the erasure did not finish; run it again") from None
    # How much went, by owner: counts only.
    await audit.record(actor, "erase_customer", target, "ok", " ".join(f"{k}={v}" for k, v in erased.items()))
    return erased


async def pending(app: web.Application) -> list[dict[str, Any]]:
    store = app[STORE]
    try:
        requests = await PrivacyRequests(store.redis, store.names).pending()
    except REDIS_ERRORS:
        raise unreachable("Redis", "the requests cannot be read") from None
    now = time.time()
    return [request.to_dict(now) for request in requests]


async def answer(app: web.Application, actor: Actor, customer: Customer) -> None:
    store, target = app[STORE], customer.pseudonym(app[STORE].names.namespace)
    try:
        answered = await PrivacyRequests(store.redis, store.names).forget(customer)
    except REDIS_ERRORS:
        raise unreachable("Redis", "nothing was marked") from None
    if not answered:
        await app[AUDIT].record(actor, "answer_privacy_request", target, "refused", "no pending request")
        raise Problem(404, "id: this customer has no pending request")
    await app[AUDIT].record(actor, "answer_privacy_request", target)


# API -------------------------------------------------------------------------------------------------
async def api_find(request: web.Request) -> web.Response:
    customer = _customer(request.query.get("channel"), request.query.get("id"))
    return json_response(await find(request.app, customer))


async def api_export(request: web.Request) -> web.Response:
    customer = _customer(request.query.get("channel"), request.query.get("id"))
    return json_response(await export(request.app, request[ACTOR], customer))


async def api_erase(request: web.Request) -> web.Response:
    body = await api.json_body(request)
    customer = _customer(body.get("channel"), body.get("id"))
    return json_response({"erased": await erase(request.app, request[ACTOR], customer)})


async def api_requests(request: web.Request) -> web.Response:
    return json_response({"deadline_days": DEADLINE_DAYS, "pending": await pending(request.app)})


async def api_answer(request: web.Request) -> web.Response:
    body = await api.json_body(request)
    customer = _customer(body.get("channel"), body.get("id"))
    await answer(request.app, request[ACTOR], customer)
    return json_response({"answered": {"channel": customer.channel, "id": customer.id}})


# Page and forms ------------------------------------------------------------------------------------
async def page(request: web.Request) -> web.Response:
    session = request[SESSION]
    locale = pages._locale(request)
    words = TEXTS.get(locale.language, TEXTS["en"])
    channel, customer_id = request.query.get("channel", ""), request.query.get("id", "")
    found = await find(request.app, _customer(channel, customer_id)) if customer_id else None
    notice = request.query.get("notice", "")
    return pages.render(
        request,
        "privacy.html",
        session=session,
        W=words,
        found=found,
        channel=channel or "whatsapp",
        customer_id=customer_id,
        requests=await pending(request.app),
        kept=retention_table(request.app, locale.language),
        notice=words[f"notice_{notice}"] if notice in NOTICES else "",
    )


async def export_download(request: web.Request) -> web.Response:
    customer = _customer(request.query.get("channel"), request.query.get("id"))
    document = await export(request.app, request[SESSION].actor, customer)
    response = web.Response(body=orjson.dumps(document, option=orjson.OPT_INDENT_2), content_type="application/json")
    response.headers["Content-Disposition"] = 'attachment; filename="customer-data.json"'
    return response


async def erase_form(request: web.Request) -> web.Response:
    session = request[SESSION]
    form = await pages._checked_form(request, session)
    customer = _customer(form.get("channel"), form.get("id"))
    if form.get("confirm") != "on":  # the page's box: an erasure cannot be undone
        raise Problem(400, "confirm: tick the box to erase")
    await erase(request.app, session.actor, customer)
    raise web.HTTPSeeOther("/admin/privacy?notice=erased")


async def answer_form(request: web.Request) -> web.Response:
    session = request[SESSION]
    form = await pages._checked_form(request, session)
    await answer(request.app, session.actor, _customer(form.get("channel"), form.get("id")))
    raise web.HTTPSeeOther("/admin/privacy?notice=answered#requests")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/admin/privacy", page)
    router.add_get("/admin/privacy/export", export_download)
    router.add_post("/admin/privacy/erase", erase_form)
    router.add_post("/admin/privacy/requests/answer", answer_form)
    router.add_get("/admin/api/customers", api_find)
    router.add_get("/admin/api/customers/export", api_export)
    router.add_post("/admin/api/customers/erase", api_erase)
    router.add_get("/admin/api/privacy/requests", api_requests)
    router.add_post("/admin/api/privacy/requests/answer", api_answer)
