"""Messages and the commits of their replies, to drive the worker's commit step directly."""

from __future__ import annotations

import uuid

from services.worker.commit import Commit, Timings
from shared.messages import InboundMessage, ReplyContent, ReplyMessage
from tests.support import PRAZO


def message(conversation: str, text: str = PRAZO) -> InboundMessage:
    return InboundMessage(f"m-{uuid.uuid4().hex}", conversation, "ana", text)


def commit_of(item: InboundMessage, content: ReplyContent) -> Commit:
    reply = ReplyMessage(item.message_id, item.conversation_id, item.user_id, item.channel, content, 12.0)
    return Commit(item, reply, Timings(1.0, 2.0, 12.0), user_text=item.text)
