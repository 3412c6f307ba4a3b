"""The worker service: generates replies to queued messages."""
