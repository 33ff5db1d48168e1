"""keep: never act. The engine's own behaviour (vLLM with Dynamo-style retention)."""

from kv_cache_rl.policies.base import Policy


class KeepPolicy(Policy):
    name = "keep"

    def act(self, obs, episode=None):
        return []
