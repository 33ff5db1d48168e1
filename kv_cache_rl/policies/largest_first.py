"""largest_first: evict whatever frees the most blocks, running requests included."""

from kv_cache_rl.policies.base import PressurePolicy


class LargestFirstPolicy(PressurePolicy):
    name = "largest_first"

    def score(self, entry, obs):
        return entry.blocks
