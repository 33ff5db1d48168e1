"""compress_first: quantize before anything is lost. Under pressure it takes entries safest
first: dead KV (reasoning, a finished sub-agent's) is evicted; everything else except the
shared system prefix is compressed one tier, running requests included; nothing reusable is
ever evicted. KV quantization costs little quality (int8 0.5%, int4 2%, see
``data/calibration/tiers.json``) while recomputing an evicted context costs its prefill.

It acts early (at 0.80 usage, down to 0.60) so headroom is kept, not restored.
"""

from kv_cache_rl.policies.base import PressurePolicy

DEAD = ("reasoning", "ephemeral")


class CompressFirstPolicy(PressurePolicy):
    name = "compress_first"
    trigger, target, max_actions = 0.80, 0.60, 8

    def score(self, entry, obs):
        if entry.kind == "system" or (entry.tier >= 2 and entry.kind not in DEAD):
            return None
        return entry.eviction_value + 1e-4 * entry.blocks

    def action_for(self, entry, obs):
        if entry.kind in DEAD:
            return "evict", entry.blocks
        return "compress", entry.blocks / 2
