"""Reply engines of the worker: the offline knowledge base and OpenAI-compatible LLMs."""
