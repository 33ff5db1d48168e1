"""fifo: evict the oldest cached entries first (ids are handed out in creation order)."""

from kv_cache_rl.policies.base import PressurePolicy


class FIFOPolicy(PressurePolicy):
    name = "fifo"

    def score(self, entry, obs):
        if entry.kind == "generation":
            return None
        return -entry.seq_id
