"""hindsight: the oracle's own candidate, a Belady-style rule that reads the future.

Under pressure it frees KV at the lowest cost per block, with costs computed from what will
really happen (the scenario's trace): a context whose session never comes back inside the
horizon, reasoning tokens and a finished sub-agent's KV cost nothing to drop; a context that
comes back costs its recompute, less the further away its return (Belady: drop what is needed
farthest in the future), or two host-link transfers if it fits in host memory; quantizing
costs the expected wrong answers of the requests that will read it. It is not registered:
:class:`~kv_cache_rl.policies.oracle.OraclePolicy` searches over its parameters.
"""

from __future__ import annotations

from kv_cache_rl.episode import Action
from kv_cache_rl.policies.base import Policy, feasible
from kv_cache_rl.policies.costs import costs, p_wrong

FAILURE = 0.15 / 0.25  # a failure weighs 0.15 reward; goodput 0.25 per reference run


class HindsightPolicy(Policy):
    name = "hindsight"
    sees_future = True

    def __init__(self, trigger: float = 0.88, target: float = 0.75, compress: bool = True,
                 swap: bool = True, max_actions: int = 8) -> None:
        self.trigger, self.target = trigger, target
        self.compress, self.swap, self.max_actions = compress, swap, max_actions

    def _next_use_s(self, episode, seq) -> float:
        """Seconds until ``seq`` is read again (inf: never inside the horizon)."""
        sc, now = episode.scenario, episode.engine.now
        if seq.kind in ("reasoning", "ephemeral"):
            return float("inf")
        if seq.kind == "context":
            req = seq.req
            if sc.last_turn.get(seq.session_id, -1) <= req.turn or req.next_turn_s < 0:
                return float("inf")
            return max(seq.last_active_s + req.next_turn_s - now, 0.0)
        return 0.0  # running work and the system prompt are read every step

    def _options(self, episode, entry):
        """(cost per block, action kind, blocks freed) for each way to relieve ``entry``."""
        seq = episode.engine.sequence(entry.seq_id)
        c = costs()
        out = []
        wait = self._next_use_s(episode, seq)
        if entry.kind != "generation" and entry.kind != "system":
            if wait == float("inf"):
                out.append((0.0, "evict", entry.blocks))
            else:
                recompute = entry.tokens * c["prefill_s_per_token"]
                out.append((recompute / (1.0 + wait) / entry.blocks, "evict", entry.blocks))
                if self.swap:
                    link = 2 * c["swap_s_per_block"]
                    out.append((link, "swap_to_cpu", entry.blocks))
        if self.compress and entry.tier < 2 and entry.kind != "system":
            readers = 1.0 if entry.kind == "generation" or wait < float("inf") else 0.0
            extra = p_wrong(entry.request_type, entry.tier + 1) - \
                p_wrong(entry.request_type, entry.tier)
            out.append((FAILURE * readers * extra * 10 / max(entry.blocks / 2, 1e-9),
                        "compress", entry.blocks / 2))
        return out

    def act(self, obs, episode=None):
        if episode is None:
            raise ValueError("hindsight reads the future: it needs the episode")
        pressure = obs.memory_usage >= self.trigger or (
            obs.pending_queue_growth > 0 and obs.memory_usage >= self.target)
        if not pressure:
            return []
        to_free = (obs.memory_usage - self.target) * obs.memory_budget
        options = []
        for e in obs.visible.values():
            if e.on_cpu or e.blocks <= 0:
                continue
            for cost, kind, freed in self._options(episode, e):
                options.append((cost, -freed, e.seq_id, kind, freed, e))
        options.sort(key=lambda o: o[:3])
        room = obs.cpu_total_blocks - obs.cpu_used_blocks
        actions, done = [], set()
        for cost, _, seq_id, kind, freed, entry in options:
            if to_free <= 0 or len(actions) >= self.max_actions:
                break
            if seq_id in done or not feasible(kind, entry, room):
                continue
            if kind == "swap_to_cpu":
                room -= entry.blocks
            done.add(seq_id)
            actions.append(Action(kind, seq_id))
            to_free -= freed
        return actions
