"""continuum: Continuum's tool-aware time-to-live (Li et al., "Continuum: Efficient and Robust
Multi-Turn LLM Agent Scheduling with KV Cache Time-to-Live", 2025). A context whose session is
in a tool call is pinned for the tool's expected duration (the session's own past pauses
refine it) when reloading it would cost more than holding it; pinned contexts go to host
memory before anything is lost, unpinned ones (a user's answer pending, a TTL run out) are
dropped first, the least likely to come back first."""

from kv_cache_rl.policies.base import PressurePolicy
from kv_cache_rl.policies.costs import costs, expected_return_s, p_return

DEAD = ("reasoning", "ephemeral")


class ContinuumPolicy(PressurePolicy):
    name = "continuum"
    trigger, target, max_actions = 0.85, 0.72, 8
    margin = 1.5  # a TTL of 1.5 x the expected pause absorbs its spread

    def pinned(self, entry) -> bool:
        if entry.kind != "context" or entry.tool in ("user", "-"):
            return False
        waited_out = expected_return_s(entry) <= 0 and \
            entry.idle_s > self.margin * costs()["expected_pause_s"][entry.tool]
        return not waited_out

    def score(self, entry, obs):
        if entry.kind in ("generation", "system"):
            return None
        if entry.kind in DEAD:
            return 3.0
        if not self.pinned(entry):
            return 2.0 + (1.0 - p_return(entry))
        return 0.5 + min(expected_return_s(entry), 49.0) / 100.0  # the latest back first

    def action_for(self, entry, obs):
        if self.pinned(entry):
            return "swap_to_cpu", entry.blocks
        return "evict", entry.blocks
