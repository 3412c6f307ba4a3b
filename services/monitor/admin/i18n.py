"""The admin area in Brazilian Portuguese and English, chosen by the browser's Accept-Language.

Texts, numbers, durations and sizes are written the way each language writes them ("1.234,5" in
pt-BR, "1,234.5" in English). Times are shown in BUSINESS_TIMEZONE, with the zone named, and as
"3 min ago" where an agent reads them at a glance.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from services.monitor.alerts import Alert

LANGUAGES = ("pt-BR", "en")
_SPACE_BEFORE_COMMA = re.compile(r"\s+,")
DEFAULT = "en"

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Atendimento admin",
        "knowledge_base": "Knowledge base",
        "customers_data": "Customers' data",
        "sign_in_title": "Sign in to the admin area",
        "operator": "Your name",
        "operator_hint": "Written in the audit log, and shown to the other agents on conversations you take",
        "token": "Admin token",
        "sign_in": "Sign in",
        "sign_out": "Sign out",
        "wrong_token": "Wrong token.",
        "missing_operator": "Say who you are: your name is written in the audit log.",
        "locked": "Too many failed attempts from your address. Try again in {seconds} s.",
        "disabled": "The admin area is disabled: ADMIN_TOKEN is not set on the monitor.",
        "session_expired": "Your session ended. Sign in again.",
        "healthy": "Healthy",
        "degraded": "Degraded",
        "unhealthy": "Unhealthy",
        "up": "Up",
        "down": "Down",
        "unknown": "Unknown",
        "status": "Status",
        "uptime": "Uptime",
        "monitor_up": "monitor",
        "youngest": "youngest service",
        "redis": "Redis",
        "ping": "ping",
        "rabbitmq": "RabbitMQ",
        "waiting": "waiting",
        "consumers": "consumers",
        "memory": "Memory",
        "highest": "highest",
        "resident_total": "resident, all services",
        "messages": "Messages",
        "total": "total",
        "today": "today",
        "last_24h": "24 h",
        "last_5m": "5 min",
        "users": "Users",
        "active_24h": "active in 24 h",
        "errors": "Errors",
        "latency": "Latency, 5 min",
        "dead_letters": "Dead letters",
        "chart_messages": "Messages and errors per hour, last 24 h (UTC)",
        "chart_latency": "End-to-end latency per hour, last 24 h (ms)",
        "no_data": "No data in this period.",
        "services": "Services",
        "service": "Service",
        "instance": "Instance",
        "version": "Version",
        "resident": "Resident memory",
        "memory_pct": "Memory %",
        "alerts": "Active alerts",
        "no_alerts": "No active alerts.",
        "critical": "Critical",
        "warning": "Warning",
        "alert": "Alert",
        "value": "Value",
        "threshold": "Threshold",
        "dead_letter_queue": "Dead-letter queue",
        "no_dead_letters": "The dead-letter queue is empty.",
        "more_dead_letters": "Showing the first {shown} of {total}.",
        "queue_origin": "From queue",
        "reason": "Reason",
        "message": "Message",
        "replay": "Replay",
        "discard": "Discard",
        "not_our_message": "not a message of this system",
        "handoffs": "Conversations with a human",
        "no_handoffs": "No conversation is waiting for a human.",
        "newer": "← Newer",
        "older": "Older →",
        "page_of": "Page {page} of {pages} ({total} conversations)",
        "since": "Since",
        "asked": "Customer said",
        "reply_as_agent": "Reply as agent",
        "send": "Send",
        "release": "Release to bot",
        "conversations": "Recent conversations",
        "no_conversations": "No conversation yet.",
        "conversation": "Conversation",
        "last_activity": "Last activity",
        "open": "Open",
        "audit": "Audit log",
        "no_audit": "Nothing done in the admin area yet.",
        "when": "When",
        "who": "Who",
        "action": "Action",
        "target": "Target",
        "outcome": "Outcome",
        "updated": "Updated",
        "refresh_note": "Refreshes every {seconds} s while this tab is visible.",
        "unavailable": "unavailable",
        "channel": "Channel",
        "user": "User",
        "customer": "Customer",
        "reply": "Reply",
        "engine": "Engine",
        "confidence": "Confidence",
        "csat_given": "Customer's rating",
        "latency_ms": "Latency",
        "queue_wait": "in queue",
        "processing": "in worker",
        "sources": "Sources",
        "back": "Back to the dashboard",
        "handoff_active": "Handed to a human",
        "bot_active": "Answered by the bot",
        "agent": "agent",
        "no_messages": "No message is logged for this conversation.",
        "notice_replayed": "The message was sent back for processing.",
        "notice_discarded": "The dead letter was discarded.",
        "notice_replied": "Your reply was sent.",
        "notice_released": "The conversation is back with the bot.",
        "notice_signed_out": "Signed out.",
        "legend_messages": "messages",
        "legend_errors": "errors",
        "tokens": "LLM tokens, 24 h",
        "figure_total": "total",
        "figure_active": "active, 24 h",
        "all_conversations": "All conversations, search",
        "conversations_title": "Conversations",
        "search": "Search",
        "search_hint": "Conversation or user id",
        "preview": "Last message",
        "state": "Status",
        "with_human": "with a person",
        "with_bot": "with the bot",
        "previous": "Newer",
        "next": "Older",
        "page_n": "Page {page}",
        "no_match": "No conversation matches.",
        "alert_AtendimentoSystemNotHealthy": "system status is {value}",
        "alert_AtendimentoRedisDisconnected": "Redis is unreachable",
        "alert_AtendimentoNoWorkers": "no live worker: messages are queued but nobody answers them",
        "alert_AtendimentoDeadLetters": "{value} message(s) in the dead-letter queue",
        "alert_AtendimentoErrorsCritical": "{value} errors in the last 5 minutes (over {threshold})",
        "alert_AtendimentoErrorsWarning": "{value} errors in the last 5 minutes (over {threshold})",
        "alert_AtendimentoLatencyHigh": "p95 end-to-end latency {value} s is over {threshold} s",
        "alert_AtendimentoServiceJustStarted": "{subject} restarted {value} s ago",
        "alert_AtendimentoServiceRecentlyStarted": "{subject} restarted {value} s ago",
        "alert_AtendimentoMemoryCritical": "{subject} uses {value}% of its memory",
        "alert_AtendimentoMemoryWarning": "{subject} uses {value}% of its memory",
        "inbox": "Inbox",
        "dashboard": "Dashboard",
        "dead_letter_one": "Dead letter",
        "inbox_title": "Waiting for a person",
        "inbox_empty": "Nobody is waiting for a person.",
        "waiting_for": "waiting {duration}",
        "assigned_to": "with {name}",
        "unassigned": "not taken",
        "assign_to_me": "Assign to me",
        "notify": "Notify me",
        "notify_on": "Notifications on",
        "new_handoff": "A customer is waiting for a person",
        "answer": "Answer",
        "kind": "Kind",
        "why": "Why",
        "silenced_note": "The bot stayed silent: a person has this conversation.",
        "ago_now": "just now",
        "ago": "{duration} ago",
        "sentence": "{actor} {action} {target}",
        "sentence_refused": "{actor} tried to {action} {target}, refused: {detail}",
        "sentence_failed": "{actor} tried to {action} {target}, failed: {detail}",
        "do_login": "sign in",
        "do_logout": "sign out",
        "do_api_auth": "use the API",
        "do_view_conversation": "view",
        "do_replay_dead_letter": "replay dead letter",
        "do_reply_as_agent": "reply in",
        "do_release_to_bot": "give back to the bot",
        "do_assign": "take",
        "action_assign": "took",
        "did_login": "signed in",
        "did_logout": "signed out",
        "did_api_auth": "authenticated on the API",
        "did_view_conversation": "viewed",
        "did_replay_dead_letter": "replayed dead letter",
        "did_reply_as_agent": "replied in",
        "did_release_to_bot": "gave back to the bot",
        "did_assign": "took",
        "notice_assigned": "The conversation is yours.",
        "action_login": "signed in",
        "action_logout": "signed out",
        "action_api_auth": "API authentication",
        "action_view_conversation": "viewed a conversation",
        "action_replay_dead_letter": "replayed a dead letter",
        "action_discard_dead_letter": "discarded a dead letter",
        "action_reply_as_agent": "replied as agent",
        "action_release_to_bot": "released to the bot",
        "action_reload_knowledge_base": "asked every worker to reload the knowledge base",
        "action_teach_phrasing": "taught a phrasing (this meant an entry)",
        "action_dismiss_question": "marked a question out of scope",
        "action_accept_phrasing": "accepted a suggested phrasing",
        "action_dismiss_suggestion": "dismissed a suggested phrasing",
        "action_remove_phrasing": "removed a taught phrasing",
        "action_send_outbound": "sent a proactive message",
        "outbound_title": "Send a proactive message",
        "outbound_link": "Send a proactive message",
        "outbound_hint": "WhatsApp takes free text only within 24 hours of the customer's last message; after"
        " that, an approved template. Customers who opted out get nothing until they write again.",
        "outbound_to": "To (phone number with country code, or Telegram chat id)",
        "outbound_text": "Text",
        "outbound_or_template": "Or an approved WhatsApp template",
        "outbound_template_name": "Template name",
        "outbound_template_language": "Language (e.g. pt_BR)",
        "outbound_template_components": "Components (the Graph API's JSON, optional)",
        "outbound_not_sent": "Not sent",
        "notice_outbound_sent": "The message was queued for delivery.",
        "proactive": "Proactive message",
        "delivery": "Delivery",
        "delivery_accepted": "accepted by the channel",
        "delivery_sent": "sent",
        "delivery_delivered": "delivered",
        "delivery_read": "read",
        "delivery_failed": "failed",
        "outcome_ok": "ok",
        "outcome_refused": "refused",
        "outcome_failed": "failed",
        "outcome_locked_out": "locked out",
        "outcome_wrong_token": "wrong token",
        "business_hours": "Business hours",
        "open_now": "Open now",
        "closed_now": "Closed now",
        "always_open": "No hours set: always open",
        "opens_at": "opens",
        "conversations_24h": "Conversations, 24 h",
        "figure_started": "started",
        "figure_conversations": "conversations",
        "contained": "contained by the bot",
        "handed_off": "handed off",
        "abandoned": "abandoned",
        "after_question": "after a question back",
        "ratings_7d": "ratings in 7 days",
        "outcomes_title": "Outcomes and satisfaction",
        "last_7_days": "Last 7 days",
        "last_30_days": "Last 30 days",
        "per_day": "Per day",
        "day": "Day",
        "fallback_rate": "fallback rate",
        "first_response": "agents' first response",
        "promised_for": "out of hours: a person promised for",
        "latest_comments": "Latest comments with a rating",
        "no_comments": "No comments yet.",
        "bot": "bot",
    },
    "pt-BR": {
        "title": "Atendimento: administração",
        "knowledge_base": "Base de conhecimento",
        "customers_data": "Dados de clientes",
        "sign_in_title": "Entrar na área administrativa",
        "operator": "Seu nome",
        "operator_hint": "Registrado na auditoria e mostrado aos outros atendentes nas conversas que você assumir",
        "token": "Token de administração",
        "sign_in": "Entrar",
        "sign_out": "Sair",
        "wrong_token": "Token incorreto.",
        "missing_operator": "Diga quem você é: seu nome vai para o registro de auditoria.",
        "locked": "Muitas tentativas falhas a partir do seu endereço. Tente de novo em {seconds} s.",
        "disabled": "A área administrativa está desativada: ADMIN_TOKEN não está definido no monitor.",
        "session_expired": "Sua sessão terminou. Entre de novo.",
        "healthy": "Saudável",
        "degraded": "Degradado",
        "unhealthy": "Com falha",
        "up": "No ar",
        "down": "Fora do ar",
        "unknown": "Desconhecido",
        "status": "Situação",
        "uptime": "Tempo no ar",
        "monitor_up": "monitor",
        "youngest": "serviço mais recente",
        "redis": "Redis",
        "ping": "ping",
        "rabbitmq": "RabbitMQ",
        "waiting": "aguardando",
        "consumers": "consumidores",
        "memory": "Memória",
        "highest": "maior",
        "resident": "Memória residente",
        "resident_total": "residente, todos os serviços",
        "messages": "Mensagens",
        "total": "total",
        "today": "hoje",
        "last_24h": "24 h",
        "last_5m": "5 min",
        "users": "Usuários",
        "active_24h": "ativos em 24 h",
        "errors": "Erros",
        "latency": "Latência, 5 min",
        "dead_letters": "Mensagens mortas",
        "chart_messages": "Mensagens e erros por hora, últimas 24 h (UTC)",
        "chart_latency": "Latência de ponta a ponta por hora, últimas 24 h (ms)",
        "no_data": "Sem dados neste período.",
        "services": "Serviços",
        "service": "Serviço",
        "instance": "Instância",
        "version": "Versão",
        "memory_pct": "Memória %",
        "alerts": "Alertas ativos",
        "no_alerts": "Nenhum alerta ativo.",
        "critical": "Crítico",
        "warning": "Aviso",
        "alert": "Alerta",
        "value": "Valor",
        "threshold": "Limite",
        "dead_letter_queue": "Fila de mensagens mortas",
        "no_dead_letters": "A fila de mensagens mortas está vazia.",
        "more_dead_letters": "Mostrando as primeiras {shown} de {total}.",
        "queue_origin": "Fila de origem",
        "reason": "Motivo",
        "message": "Mensagem",
        "replay": "Reprocessar",
        "discard": "Descartar",
        "not_our_message": "não é uma mensagem deste sistema",
        "handoffs": "Conversas com um atendente",
        "no_handoffs": "Nenhuma conversa aguardando atendente.",
        "newer": "← Mais recentes",
        "older": "Mais antigas →",
        "page_of": "Página {page} de {pages} ({total} conversas)",
        "since": "Desde",
        "asked": "O cliente disse",
        "reply_as_agent": "Responder como atendente",
        "send": "Enviar",
        "release": "Devolver ao bot",
        "conversations": "Conversas recentes",
        "no_conversations": "Nenhuma conversa ainda.",
        "conversation": "Conversa",
        "last_activity": "Última atividade",
        "open": "Abrir",
        "audit": "Registro de auditoria",
        "no_audit": "Nada foi feito na área administrativa ainda.",
        "when": "Quando",
        "who": "Quem",
        "action": "Ação",
        "target": "Alvo",
        "outcome": "Resultado",
        "updated": "Atualizado",
        "refresh_note": "Atualiza a cada {seconds} s enquanto esta aba está visível.",
        "unavailable": "indisponível",
        "channel": "Canal",
        "user": "Usuário",
        "customer": "Cliente",
        "reply": "Resposta",
        "engine": "Motor",
        "confidence": "Confiança",
        "csat_given": "Avaliação do cliente",
        "latency_ms": "Latência",
        "queue_wait": "na fila",
        "processing": "no worker",
        "sources": "Fontes",
        "back": "Voltar ao painel",
        "handoff_active": "Com um atendente humano",
        "bot_active": "Atendida pelo bot",
        "agent": "atendente",
        "no_messages": "Nenhuma mensagem registrada para esta conversa.",
        "notice_replayed": "A mensagem foi reenviada para processamento.",
        "notice_discarded": "A mensagem morta foi descartada.",
        "notice_replied": "Sua resposta foi enviada.",
        "notice_released": "A conversa voltou para o bot.",
        "notice_signed_out": "Você saiu.",
        "legend_messages": "mensagens",
        "legend_errors": "erros",
        "tokens": "Tokens do LLM, 24 h",
        "figure_total": "total",
        "figure_active": "ativos, 24 h",
        "all_conversations": "Todas as conversas, busca",
        "conversations_title": "Conversas",
        "search": "Buscar",
        "search_hint": "Id da conversa ou do usuário",
        "preview": "Última mensagem",
        "state": "Situação",
        "with_human": "com uma pessoa",
        "with_bot": "com o bot",
        "previous": "Mais recentes",
        "next": "Mais antigas",
        "page_n": "Página {page}",
        "no_match": "Nenhuma conversa encontrada.",
        "alert_AtendimentoSystemNotHealthy": "o status do sistema é {value}",
        "alert_AtendimentoRedisDisconnected": "o Redis não responde",
        "alert_AtendimentoNoWorkers": "nenhum worker ativo: as mensagens esperam na fila sem resposta",
        "alert_AtendimentoDeadLetters": "{value} mensagem(ns) na fila de dead letters",
        "alert_AtendimentoErrorsCritical": "{value} erros nos últimos 5 minutos (acima de {threshold})",
        "alert_AtendimentoErrorsWarning": "{value} erros nos últimos 5 minutos (acima de {threshold})",
        "alert_AtendimentoLatencyHigh": "latência p95 de ponta a ponta de {value} s, acima de {threshold} s",
        "alert_AtendimentoServiceJustStarted": "{subject} reiniciou há {value} s",
        "alert_AtendimentoServiceRecentlyStarted": "{subject} reiniciou há {value} s",
        "alert_AtendimentoMemoryCritical": "{subject} usa {value}% da memória",
        "alert_AtendimentoMemoryWarning": "{subject} usa {value}% da memória",
        "inbox": "Caixa de entrada",
        "dashboard": "Painel",
        "dead_letter_one": "Mensagem morta",
        "inbox_title": "Aguardando uma pessoa",
        "inbox_empty": "Ninguém está aguardando uma pessoa.",
        "waiting_for": "esperando há {duration}",
        "assigned_to": "com {name}",
        "unassigned": "ninguém pegou",
        "assign_to_me": "Atribuir a mim",
        "notify": "Avisar-me",
        "notify_on": "Avisos ligados",
        "new_handoff": "Um cliente está aguardando uma pessoa",
        "answer": "Resposta",
        "kind": "Tipo",
        "why": "Por quê",
        "silenced_note": "O bot ficou em silêncio: uma pessoa está com esta conversa.",
        "ago_now": "agora",
        "ago": "há {duration}",
        "sentence": "{actor} {action} {target}",
        "sentence_refused": "{actor} tentou {action} {target}, recusado: {detail}",
        "sentence_failed": "{actor} tentou {action} {target}, falhou: {detail}",
        "do_login": "entrar",
        "do_logout": "sair",
        "do_api_auth": "usar a API",
        "do_view_conversation": "abrir",
        "do_replay_dead_letter": "reenviar a dead letter",
        "do_reply_as_agent": "responder em",
        "do_release_to_bot": "devolver ao bot",
        "do_assign": "pegar",
        "action_assign": "pegou",
        "did_login": "entrou",
        "did_logout": "saiu",
        "did_api_auth": "autenticou-se na API",
        "did_view_conversation": "abriu",
        "did_replay_dead_letter": "reenviou a dead letter",
        "did_reply_as_agent": "respondeu em",
        "did_release_to_bot": "devolveu ao bot",
        "did_assign": "pegou",
        "notice_assigned": "A conversa é sua.",
        "action_login": "entrou",
        "action_logout": "saiu",
        "action_api_auth": "autenticação na API",
        "action_view_conversation": "abriu uma conversa",
        "action_replay_dead_letter": "reenviou uma dead letter",
        "action_discard_dead_letter": "descartou uma dead letter",
        "action_reply_as_agent": "respondeu como atendente",
        "action_send_outbound": "enviou uma mensagem ativa",
        "outbound_title": "Enviar uma mensagem ativa",
        "outbound_link": "Enviar uma mensagem ativa",
        "outbound_hint": "No WhatsApp, texto livre só até 24 horas depois da última mensagem do cliente; depois"
        " disso, um modelo (template) aprovado. Quem pediu para sair não recebe nada até escrever de novo.",
        "outbound_to": "Para (telefone com DDI, ou id do chat no Telegram)",
        "outbound_text": "Texto",
        "outbound_or_template": "Ou um modelo (template) aprovado do WhatsApp",
        "outbound_template_name": "Nome do modelo",
        "outbound_template_language": "Idioma (ex.: pt_BR)",
        "outbound_template_components": "Componentes (o JSON da Graph API, opcional)",
        "outbound_not_sent": "Não enviada",
        "notice_outbound_sent": "A mensagem entrou na fila de envio.",
        "proactive": "Mensagem ativa",
        "delivery": "Entrega",
        "delivery_accepted": "aceita pelo canal",
        "delivery_sent": "enviada",
        "delivery_delivered": "entregue",
        "delivery_read": "lida",
        "delivery_failed": "falhou",
        "action_release_to_bot": "devolveu ao bot",
        "action_reload_knowledge_base": "pediu a todos os workers que recarregassem a base",
        "action_teach_phrasing": "ensinou uma formulação (era uma entrada)",
        "action_dismiss_question": "marcou uma pergunta como fora do escopo",
        "action_accept_phrasing": "aceitou uma formulação sugerida",
        "action_dismiss_suggestion": "descartou uma formulação sugerida",
        "action_remove_phrasing": "removeu uma formulação ensinada",
        "outcome_ok": "ok",
        "outcome_refused": "recusado",
        "outcome_failed": "falhou",
        "outcome_locked_out": "bloqueado",
        "outcome_wrong_token": "token errado",
        "business_hours": "Horário de atendimento",
        "open_now": "Aberto agora",
        "closed_now": "Fechado agora",
        "always_open": "Sem horário definido: sempre aberto",
        "opens_at": "abre",
        "conversations_24h": "Conversas, 24 h",
        "figure_started": "iniciadas",
        "figure_conversations": "conversas",
        "contained": "resolvidas pelo bot",
        "handed_off": "passadas a atendentes",
        "abandoned": "abandonadas",
        "after_question": "após pergunta de volta",
        "ratings_7d": "avaliações em 7 dias",
        "outcomes_title": "Resultados e satisfação",
        "last_7_days": "Últimos 7 dias",
        "last_30_days": "Últimos 30 dias",
        "per_day": "Por dia",
        "day": "Dia",
        "fallback_rate": "taxa de não encontrado",
        "first_response": "primeira resposta dos atendentes",
        "promised_for": "fora do horário: atendente prometido para",
        "latest_comments": "Últimos comentários das avaliações",
        "no_comments": "Nenhum comentário ainda.",
        "bot": "bot",
    },
}


def negotiate(accept_language: str | None) -> str:
    """The best of our languages for an Accept-Language header (any Portuguese gets pt-BR)."""
    best, best_q = DEFAULT, 0.0
    for item in (accept_language or "").split(","):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                continue
        primary = tag.strip().lower().split("-")[0]
        language = {"pt": "pt-BR", "en": "en"}.get(primary)
        if language is not None and q > best_q:
            best, best_q = language, q
    return best


@dataclass(frozen=True, slots=True)
class Locale:
    """What the templates use to write in one language."""

    language: str
    zone: str = "UTC"
    # "now" for relative times, fixed once per page so that one page reads consistently.
    now: float = 0.0

    @property
    def _separators(self) -> tuple[str, str]:
        return (".", ",") if self.language == "pt-BR" else (",", ".")

    def t(self, key: str, **values: object) -> str:
        text = TEXTS[self.language].get(key) or TEXTS[DEFAULT][key]
        return text.format(**values) if values else text

    def code(self, prefix: str, value: str) -> str:
        """A code (an audit action or outcome) in words; one we have no words for, as it is."""
        return TEXTS[self.language].get(f"{prefix}_{value}") or TEXTS[DEFAULT].get(f"{prefix}_{value}") or value

    def alert(self, alert: Alert) -> str:
        """An alert's message in this language, from its rule, value, threshold and subject."""
        key = f"alert_{alert.name}"
        if key not in TEXTS[DEFAULT]:
            return alert.message
        value, threshold = alert.value, alert.threshold
        if alert.name == "AtendimentoLatencyHigh":  # milliseconds, said in seconds
            value, threshold = float(value) / 1000, float(threshold) / 1000
        return self.t(
            key,
            value=self.t(value).lower()
            if isinstance(value, str)
            else self.number(value, 0 if "Started" in alert.name or not value % 1 else 1),
            threshold=threshold if isinstance(threshold, str) else self.number(threshold, 1 if threshold % 1 else 0),
            subject=alert.subject,
        )

    def number(self, value: float | int | None, decimals: int = 0) -> str:
        if value is None:
            return "—"
        thousands, point = self._separators
        text = f"{value:,.{decimals}f}"
        return text.replace(",", "\0").replace(".", point).replace("\0", thousands)

    def duration(self, seconds: float | None) -> str:
        if seconds is None:
            return "—"
        days, rest = divmod(int(seconds), 86_400)
        hours, rest = divmod(rest, 3600)
        minutes, secs = divmod(rest, 60)
        parts = [
            f"{count} {unit}" for count, unit in ((days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")) if count
        ]
        return " ".join(parts[:2]) or "0 s"

    def size(self, size: float | None) -> str:
        if size is None:
            return "—"
        for unit in ("B", "KiB", "MiB", "GiB"):
            if size < 1024 or unit == "GiB":
                return f"{self.number(size, 0 if unit == 'B' else 1)} {unit}"
            size /= 1024
        raise AssertionError("unreachable")

    def when(self, timestamp: float | None) -> str:
        if not timestamp:
            return "—"
        moment = datetime.fromtimestamp(timestamp, ZoneInfo(self.zone))
        shown = moment.strftime("%d/%m/%Y %H:%M:%S" if self.language == "pt-BR" else "%Y-%m-%d %H:%M:%S")
        return f"{shown} {moment.tzname()}"

    def ago(self, timestamp: float | None) -> str:
        """How long before this page's `now`: "3 min ago", "há 2 h 5 min"."""
        if not timestamp:
            return "—"
        elapsed = max(0.0, (self.now or time.time()) - timestamp)
        if elapsed < 60:
            return self.t("ago_now")
        return self.t("ago", duration=self.duration(elapsed - elapsed % 60))

    def waiting(self, timestamp: float) -> str:
        return self.t("waiting_for", duration=self.duration(max(60.0, (self.now or time.time()) - timestamp)))

    def sentence(self, entry: dict[str, Any]) -> str:
        """An audit entry as a sentence: "Ana replied in web:…", "Ana tried to take …, refused: …"."""
        action, outcome = str(entry.get("action", "")), str(entry.get("outcome", "ok"))
        values = {"actor": entry.get("actor") or "?", "target": entry.get("target") or ""}
        if outcome == "ok":
            text = self.t("sentence", action=self.code("did", action), **values)
        else:
            detail = self.code("outcome", outcome) + (f" ({entry['detail']})" if entry.get("detail") else "")
            key = "sentence_failed" if outcome == "failed" else "sentence_refused"
            text = self.t(key, action=self.code("do", action), detail=detail, **values)
        return _SPACE_BEFORE_COMMA.sub(",", " ".join(text.split())) + "."

    @staticmethod
    def hour(timestamp: float) -> str:
        return time.strftime("%H:00", time.gmtime(timestamp))

    def filters(self) -> dict[str, Callable[..., str]]:
        return {"number": self.number, "duration": self.duration, "size": self.size, "when": self.when}
