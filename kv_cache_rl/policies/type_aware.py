"""type_aware: three rules an operator writes once request types are known: drop dead KV
(reasoning tokens, finished sub-agents); quantize where it costs little (chat and code,
``costs.p_wrong`` below 3%); move reasoning contexts to host memory while there is room and
drop those nobody is likely to read again (a user who is unlikely to come back)."""

from kv_cache_rl.policies.base import PressurePolicy
from kv_cache_rl.policies.costs import p_return, p_wrong

DEAD = ("reasoning", "ephemeral")
SAFE_WRONG = 0.03  # answers at most this likely to go wrong are worth quantizing


class TypeAwarePolicy(PressurePolicy):
    name = "type_aware"
    trigger, target, max_actions = 0.85, 0.70, 8

    def score(self, entry, obs):
        if entry.kind == "system":
            return None
        if entry.kind in DEAD:
            return 3.0 + 1e-4 * entry.blocks
        if entry.tier < 2 and p_wrong(entry.request_type, entry.tier + 1) <= SAFE_WRONG:
            return 2.0 + 1e-4 * entry.blocks
        if entry.kind == "context":
            return 1.0 + (1.0 - p_return(entry)) + 1e-4 * entry.blocks
        return None

    def action_for(self, entry, obs):
        if entry.kind in DEAD:
            return "evict", entry.blocks
        if entry.tier < 2 and p_wrong(entry.request_type, entry.tier + 1) <= SAFE_WRONG:
            return "compress", entry.blocks / 2
        room = obs.cpu_total_blocks - obs.cpu_used_blocks
        if p_return(entry) >= 0.5 and entry.blocks <= room:
            return "swap_to_cpu", entry.blocks
        return "evict", entry.blocks
