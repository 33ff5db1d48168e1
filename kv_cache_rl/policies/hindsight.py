"""hindsight: the oracle's own candidate, a Belady-style rule that reads the future.

It relieves KV in order of what each choice really costs, judged from the scenario's trace
(the future no observation shows):

1. KV that will never be read again inside the horizon: reasoning tokens, a finished
   sub-agent's KV, a context whose session does not come back in time; dropped at no cost;
2. quantizing entries whose readers barely suffer (``costs.p_wrong`` below ``safe_wrong``);
3. contexts that come back, soonest first, moved to host memory while it has room (two
   host-link transfers instead of a recompute);
4. contexts that come back, latest first (Belady: drop what is needed farthest in the
   future), evicted;
5. quantizing the rest (reasoning), as a last resort before a preemption.

How much: when usage reaches ``trigger`` (or the queue grows above ``target``) it relieves
down to ``target``, as the heuristics do; the oracle searches over these parameters per
episode, which is itself a use of hindsight. (Probing the next step on a copy of the episode
for the fewest actions that avoid a failure was tried and is myopic: it scored 0.1-0.3 below
these triggers on hard seeds.) It is not registered:
:class:`~kv_cache_rl.policies.oracle.OraclePolicy` plays it.
"""

from __future__ import annotations

from kv_cache_rl.task.episode import Action
from kv_cache_rl.policies.base import Policy, feasible
from kv_cache_rl.policies.costs import p_wrong

INF = float("inf")


class HindsightPolicy(Policy):
    name = "hindsight"
    sees_future = True

    def __init__(self, *, trigger: float = 0.88, target: float = 0.75, safe_wrong: float = 0.03,
                 swap: bool = True, max_actions: int = 8) -> None:
        self.trigger, self.target, self.safe_wrong, self.swap = trigger, target, safe_wrong, swap
        self.max_actions = max_actions

    def __repr__(self) -> str:
        return (f"HindsightPolicy(trigger={self.trigger}, target={self.target}, "
                f"safe_wrong={self.safe_wrong}, swap={self.swap})")

    def next_use_s(self, episode, seq) -> float:
        """Seconds until ``seq`` is read again (inf: not inside the trace's horizon)."""
        sc, now = episode.scenario, episode.engine.now
        if seq.kind in ("reasoning", "ephemeral"):
            return INF
        if seq.kind == "context":
            req = seq.req
            if sc.last_turn.get(seq.session_id, -1) <= req.turn or req.next_turn_s < 0:
                return INF
            return max(seq.last_active_s + req.next_turn_s - now, 0.0)
        return 0.0  # running work and the system prompt are read every step

    def ranked(self, obs, episode) -> list[Action]:
        """Every useful action on the visible entries, cheapest first (one per entry)."""
        engine = episode.engine
        classes = []
        for e in obs.visible.values():
            if e.on_cpu or e.blocks <= 0 or e.kind == "system":
                continue
            wait = self.next_use_s(episode, engine.sequence(e.seq_id))
            compressible = e.tier < 2
            extra = p_wrong(e.request_type, e.tier + 1) if compressible else INF
            if e.kind != "generation" and wait == INF:
                classes.append(((0, -e.blocks), "evict", e))
            elif compressible and extra <= self.safe_wrong:
                classes.append(((1, extra, -e.blocks), "compress", e))
            elif e.kind == "context":
                if self.swap:
                    classes.append(((2, wait), "swap_to_cpu", e))
                classes.append(((3, -wait), "evict", e))
            if compressible and extra > self.safe_wrong:
                classes.append(((4, extra, -e.blocks), "compress", e))
        classes.sort(key=lambda c: (c[0], c[2].seq_id))
        room = obs.cpu_total_blocks - obs.cpu_used_blocks
        out, done = [], set()
        for _, kind, e in classes:
            if e.seq_id in done or not feasible(kind, e, room):
                continue
            if kind == "swap_to_cpu":
                room -= e.blocks
            done.add(e.seq_id)
            out.append(Action(kind, e.seq_id))
        return out[: self.max_actions]

    def act(self, obs, episode=None):
        if episode is None:
            raise ValueError("hindsight reads the future: it needs the episode")
        if not (obs.memory_usage >= self.trigger or (
                obs.pending_queue_growth > 0 and obs.memory_usage >= self.target)):
            return []
        to_free = (obs.memory_usage - self.target) * obs.memory_budget
        out = []
        for action in self.ranked(obs, episode):
            if to_free <= 0:
                break
            entry = obs.visible[action.seq_id]
            to_free -= entry.blocks / 2 if action.kind == "compress" else entry.blocks
            out.append(action)
        return out
