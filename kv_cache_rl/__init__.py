"""kv-cache-rl: a calibrated, vLLM-faithful KV-cache serving simulator for agents."""

__version__ = "0.1.0"
