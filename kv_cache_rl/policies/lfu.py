"""lfu: frequency-based eviction as SGLang's ``--radix-eviction-policy lfu`` / ``slru``: a
context is used once per turn of its session, so its frequency is the session's turn count.
Entries used once (the probationary segment of SLRU) go first, then the least frequently used;
ties by LRU. Dead KV (reasoning, a finished sub-agent's) is used zero times."""

from kv_cache_rl.policies.base import PressurePolicy


class LFUPolicy(PressurePolicy):
    name = "lfu"
    trigger, target = 0.88, 0.75

    def score(self, entry, obs):
        if entry.kind in ("generation", "system"):
            return None
        uses = entry.turns if entry.kind == "context" else 0
        probation = 1000.0 if uses <= 1 else 0.0
        return probation - 10.0 * uses + min(entry.idle_s, 9.99)
