"""Commands a customer may type, known to more than one service: the worker obeys them, the
gateway acts on what concerns it (a `/reset` also ends the conversation's tokens)."""

from __future__ import annotations

RESET_COMMAND = "/reset"
# The `engine` of the worker's replies to commands (services/worker/engines/policy.py).
COMMAND_ENGINE = "command"


def is_reset(text: str) -> bool:
    return text.strip().casefold() == RESET_COMMAND
