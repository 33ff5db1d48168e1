"""lru: evict the least recently used cached entries first (SGLang / Dynamo KVBM default)."""

from kv_cache_rl.policies.base import PressurePolicy


class LRUPolicy(PressurePolicy):
    name = "lru"

    def score(self, entry, obs):
        if entry.kind == "generation":
            return None  # LRU orders idle cache entries; running requests are in use
        return entry.idle_s
