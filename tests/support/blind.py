"""State-blind rules: "do X to everything, at any trigger", ignoring what an entry is.

Each rule acts only when memory usage reaches ``trigger`` and then applies one action kind to
visible entries in an order that ignores their kind, type, session and history (largest
first, smallest first or id order), up to ``per_step`` a step. Infeasible calls are skipped,
so a rule is never punished for refused calls, only for its choices.
"""

from __future__ import annotations

import itertools

from kv_cache_rl.task.episode import Action
from kv_cache_rl.policies.base import Policy, feasible

ORDERS = {"largest": lambda e: (-e.blocks, e.seq_id), "smallest": lambda e: (e.blocks, e.seq_id),
          "id": lambda e: e.seq_id}


class BlindRule(Policy):
    def __init__(self, kind: str, trigger: float, order: str, per_step: int,
                 skip_system: bool = True) -> None:
        self.kind, self.trigger, self.order, self.per_step = kind, trigger, order, per_step
        self.skip_system = skip_system
        self.name = f"blind_{kind}_{trigger}_{order}_{per_step}"

    def act(self, obs, episode=None):
        if obs.memory_usage < self.trigger:
            return []
        room = obs.cpu_total_blocks - obs.cpu_used_blocks
        out = []
        for e in sorted(obs.visible.values(), key=ORDERS[self.order]):
            if len(out) >= self.per_step:
                break
            if (self.skip_system and e.kind == "system") or e.on_cpu or e.blocks <= 0 \
                    or not feasible(self.kind, e, room):
                continue
            if self.kind == "swap_to_cpu":
                room -= e.blocks
            out.append(Action(self.kind, e.seq_id))
        return out


def battery() -> list[BlindRule]:
    """24 rules: every action kind x two triggers x two orders x one or eight a step."""
    return [BlindRule(kind, trigger, order, n) for kind, trigger, order, n in itertools.product(
        ("evict", "compress", "swap_to_cpu"), (0.7, 0.9), ("largest", "id"), (1, 8))]
