"""value_greedy: evict by the observation's eviction_value (safest first), never below 0.5."""

from kv_cache_rl.policies.base import PressurePolicy


class ValueGreedyPolicy(PressurePolicy):
    name = "value_greedy"
    min_value = 0.5

    def score(self, entry, obs):
        if entry.eviction_value < self.min_value:
            return None
        return entry.eviction_value + 1e-4 * entry.blocks
