"""sliding_window: StreamingLLM at the level of cache entries: keep the attention sink (the
system prefix) and what was active in the last ``window_s`` seconds; evict older entries."""

from kv_cache_rl.policies.base import PressurePolicy


class SlidingWindowPolicy(PressurePolicy):
    name = "sliding_window"
    window_s = 10.0

    def score(self, entry, obs):
        if entry.kind in ("system", "generation") or entry.idle_s < self.window_s:
            return None
        return entry.idle_s
