"""lookahead: a rollout planner that sees the future (the ceiling is ``oracle``).

At every step it clones the episode and tries a few candidate action sets (keep, what the base
and the hybrid heuristic would do, single actions on the top entry); each candidate is played to the end
of the episode by a base policy (``compress_first``) on the true simulator, and the set with
the best final reward is taken. This is Bertsekas' rollout algorithm: the simulator is
deterministic and the base policy's own choice is always a candidate, so lookahead never
scores below its base policy. It reads the future, which no observation-only agent can.
"""

from __future__ import annotations

from kv_cache_rl.task.episode import Action
from kv_cache_rl.policies.base import Policy
from kv_cache_rl.policies.compress_first import CompressFirstPolicy
from kv_cache_rl.policies.hybrid import HybridPolicy
from kv_cache_rl.task.runner import apply_actions, play_out


class LookaheadPolicy(Policy):
    name = "lookahead"
    sees_future = True
    base = CompressFirstPolicy()
    proposers = (HybridPolicy(),)
    singles = 1  # extra candidates: compress / evict the top entries alone

    def candidates(self, obs) -> list[tuple[Action, ...]]:
        sets = [tuple(self.base.act(obs)), ()]
        sets += [tuple(p.act(obs)) for p in self.proposers]
        ranked = sorted((e for e in obs.visible.values() if not e.on_cpu and e.blocks > 0
                         and e.kind != "system"),
                        key=lambda e: (-e.eviction_value, -e.blocks, e.seq_id))
        for entry in ranked[: self.singles]:
            sets.append((Action("evict", entry.seq_id),))
            if entry.tier < 2:
                sets.append((Action("compress", entry.seq_id),))
        return list(dict.fromkeys(sets))

    def _rollout(self, episode, actions) -> float:
        trial = episode.clone()
        apply_actions(trial, actions)
        trial.advance()
        return play_out(trial, self.base).score()["reward"]

    def act(self, obs, episode=None):
        if episode is None:
            raise ValueError("lookahead needs the episode (it plans with the simulator)")
        if not self.base.act(obs):
            # nothing to decide: following the base policy here keeps the guarantee (by
            # induction the rest of the episode is still at least the base policy's value)
            return []
        best, best_value = (), float("-inf")
        for actions in self.candidates(obs):
            value = self._rollout(episode, actions)
            if value > best_value + 1e-12:
                best, best_value = actions, value
        return list(best)
