"""hybrid: the seed's hybrid strategy, a weighted score of block type and recency; compresses
contexts it is unsure about, evicts the clearly dead."""

from kv_cache_rl.task.observation import CONTEXT_PAUSE_S, KIND_VALUE
from kv_cache_rl.policies.base import PressurePolicy


class HybridPolicy(PressurePolicy):
    name = "hybrid"
    type_weight, recency_weight = 0.6, 0.4

    def score(self, entry, obs):
        if entry.kind in ("system", "generation"):
            return None
        recency = min(entry.idle_s / CONTEXT_PAUSE_S, 1.0)
        return self.type_weight * KIND_VALUE[entry.kind] + self.recency_weight * recency \
            - (0.3 if entry.priority else 0.0)

    def action_for(self, entry, obs):
        if entry.kind == "context" and entry.idle_s < CONTEXT_PAUSE_S and entry.tier < 2:
            return "compress", entry.blocks / 2  # may come back soon: keep it, smaller
        return "evict", entry.blocks
