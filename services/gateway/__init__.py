"""The gateway service: channels in, durable queueing, replies out."""
