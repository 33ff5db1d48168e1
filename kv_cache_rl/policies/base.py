"""Policies map an observation to the actions of one step.

Subclass :class:`Policy` and implement ``act``; or subclass :class:`PressurePolicy` and
implement only ``score`` (which entries to relieve first) and optionally ``action_for``
(what to do with each). Only the planners, ``lookahead`` and ``oracle``, see the simulator and
the future (``sees_future = True``); every other policy acts on the observation alone, as an
LLM agent must.
"""

from __future__ import annotations

from typing import ClassVar

from kv_cache_rl.task.episode import Action
from kv_cache_rl.task.observation import Entry, Observation


class Policy:
    name: ClassVar[str] = ""
    sees_future: ClassVar[bool] = False

    def reset(self, seed: int) -> None:
        """Start a new episode (policies with randomness seed their own generator here)."""

    def act(self, obs: Observation, episode=None) -> list[Action]:
        raise NotImplementedError


class PressurePolicy(Policy):
    """Relieve pressure when usage crosses ``trigger``: act on the highest-``score`` entries
    until the projected usage is below ``target`` or ``max_actions`` were taken."""

    trigger: ClassVar[float] = 0.90
    target: ClassVar[float] = 0.80
    max_actions: ClassVar[int] = 6

    def score(self, entry: Entry, obs: Observation) -> float | None:
        """Higher = relieve first; ``None`` = leave alone."""
        raise NotImplementedError

    def action_for(self, entry: Entry, obs: Observation) -> tuple[str, float]:
        """The action for ``entry`` and the blocks it is expected to free (default: evict)."""
        return "evict", entry.blocks

    def under_pressure(self, obs: Observation) -> bool:
        return obs.memory_usage >= self.trigger or (
            obs.pending_queue_growth > 0 and obs.memory_usage >= self.target)

    def act(self, obs: Observation, episode=None) -> list[Action]:
        if not self.under_pressure(obs):
            return []
        to_free = (obs.memory_usage - self.target) * obs.memory_budget
        scored = [(s, e) for e in obs.visible.values()
                  if not e.on_cpu and e.blocks > 0 and (s := self.score(e, obs)) is not None]
        scored.sort(key=lambda se: (-se[0], se[1].seq_id))
        actions = []
        room = obs.cpu_total_blocks - obs.cpu_used_blocks  # host space left this step
        for _, entry in scored:
            if to_free <= 0 or len(actions) >= self.max_actions:
                break
            kind, freed = self.action_for(entry, obs)
            if not feasible(kind, entry, room):
                continue
            if kind == "swap_to_cpu":
                room -= entry.blocks
            actions.append(Action(kind, entry.seq_id))
            to_free -= freed
        return actions


def feasible(kind: str, entry: Entry, room: float) -> bool:
    """Whether the engine accepts ``kind`` on ``entry`` (``room``: free host blocks): the
    observation's promise, so a policy never has a call refused."""
    if kind == "evict":
        return True
    if kind == "compress":
        return not entry.on_cpu and entry.tier < 2
    if kind == "swap_to_cpu":
        return not entry.on_cpu and 0 < entry.blocks <= room
    return False
