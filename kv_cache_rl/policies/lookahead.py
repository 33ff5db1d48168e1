"""lookahead: the upper reference. It sees the future: at every step it clones the episode,
tries candidate action sets (keep, what each heuristic would do, single actions on the top
entries) and plays each ``horizon`` steps ahead with the true simulator, then takes the set
whose partial rubric score is best. No agent that sees only the observation can do this."""

from __future__ import annotations

from kv_cache_rl.episode import Action
from kv_cache_rl.policies.base import Policy
from kv_cache_rl.policies.compress_first import CompressFirstPolicy
from kv_cache_rl.policies.hybrid import HybridPolicy
from kv_cache_rl.policies.swap_first import SwapFirstPolicy
from kv_cache_rl.policies.value_greedy import ValueGreedyPolicy


class LookaheadPolicy(Policy):
    name = "lookahead"
    sees_future = True
    horizon = 3
    proposers = (ValueGreedyPolicy(), CompressFirstPolicy(), SwapFirstPolicy(), HybridPolicy())

    def candidates(self, obs) -> list[tuple[Action, ...]]:
        sets: list[tuple[Action, ...]] = [()]
        for proposer in self.proposers:
            sets.append(tuple(proposer.act(obs)))
        ranked = sorted((e for e in obs.visible.values() if not e.on_cpu and e.blocks > 0),
                        key=lambda e: (-e.eviction_value, -e.blocks, e.seq_id))
        for entry in ranked[:3]:
            sets.append((Action("evict", entry.seq_id),))
            if entry.tier < 2:
                sets.append((Action("compress", entry.seq_id),))
        unique = []
        for s in sets:
            if s not in unique:
                unique.append(s)
        return unique

    def act(self, obs, episode=None):
        if episode is None:
            raise ValueError("lookahead needs the episode (it plans with the simulator)")
        best, best_value = (), float("-inf")
        for actions in self.candidates(obs):
            trial = episode.clone()
            for action in actions[: trial.max_calls_per_step]:
                trial.call(action.kind, None if action.seq_id is None
                           else {"seq_id": action.seq_id})
            for _ in range(self.horizon):
                if trial.done:
                    break
                trial.advance()
            value = trial.score()["reward"]
            if value > best_value + 1e-9:
                best, best_value = actions, value
        return list(best)
