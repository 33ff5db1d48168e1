"""t_lru: Tail-Optimized LRU (Zhang et al., "Tail-Optimized Caching for LLM Inference",
arXiv 2510.15152; merged in vLLM): among idle cached conversations, first drop those whose
next turn would still meet the TTFT target if its context were recomputed (short contexts:
recompute time = tokens x prefill time per token, below ``ttft_slo_s``), least recently used
first; only then the rest, by LRU. Long contexts, whose recompute lands the next turn in the
latency tail, are kept longest."""

from kv_cache_rl.policies.base import PressurePolicy
from kv_cache_rl.policies.costs import costs


class TLRUPolicy(PressurePolicy):
    name = "t_lru"
    ttft_slo_s = 2.0  # a TTFT target of the P90 kind the paper optimises
    trigger, target = 0.88, 0.75

    def score(self, entry, obs):
        if entry.kind in ("generation", "system"):
            return None
        recompute_s = entry.tokens * costs()["prefill_s_per_token"]
        safe = entry.kind != "context" or recompute_s < self.ttft_slo_s
        return (1000.0 if safe else 0.0) + entry.idle_s
