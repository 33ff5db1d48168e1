"""The applications behind the ``kv-cache-rl`` command: replay, bench, train and the chat
server for LLM agents (``serve``)."""
