"""compress_first: quantize valuable entries one tier (halving them) before evicting anything;
dead entries (reasoning) and entries already at int4 are evicted."""

from kv_cache_rl.policies.base import PressurePolicy


class CompressFirstPolicy(PressurePolicy):
    name = "compress_first"

    def score(self, entry, obs):
        if entry.kind == "system":
            return None
        return entry.eviction_value + 1e-4 * entry.blocks

    def action_for(self, entry, obs):
        if entry.kind == "reasoning" or entry.tier >= 2:
            return "evict", entry.blocks
        return "compress", entry.blocks / 2
