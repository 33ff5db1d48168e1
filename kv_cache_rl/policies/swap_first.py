"""swap_first: offload idle, reusable entries to host memory while there is room (vLLM's
CPU offloading); dead entries are evicted, running requests are left alone."""

from kv_cache_rl.policies.base import PressurePolicy


class SwapFirstPolicy(PressurePolicy):
    name = "swap_first"

    def score(self, entry, obs):
        if entry.kind in ("system", "generation"):
            return None
        return entry.eviction_value + 1e-4 * entry.blocks

    def action_for(self, entry, obs):
        room = obs.cpu_total_blocks - obs.cpu_used_blocks
        if entry.kind in ("reasoning", "ephemeral") or entry.blocks > room:
            return "evict", entry.blocks
        return "swap_to_cpu", entry.blocks
