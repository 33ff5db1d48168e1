"""oracle: the hindsight ceiling (the 1.0 of the normalised score).

It knows the scenario's future (when each session comes back, which requests are reasoning,
how long every generation will run) and acts through the same tools, under the same per-step
cap, through the same calls as every policy. Its plan is the best of:

1. every registered policy's episode (so it scores at least as much as each of them, on every
   episode, by construction), and
2. its own Belady-style search: :class:`~kv_cache_rl.policies.hindsight.HindsightPolicy` over
   a grid of triggers, targets and allowed actions (LRB's relaxed Belady and Parrot's
   normalisation use the same idea: a hindsight reference searched over), then
3. a rollout pass (Bertsekas): at each step in turn, the best plan's action set is compared
   with doing nothing and with what every hindsight variant and several heuristics would do
   there, each played to the end by the best fast candidate policy, and an alternative is
   kept only if it is better, so the pass never loses reward.

The plan is a list of action sets, one per step: played on a fresh episode of the scenario it
reproduces the oracle's reward exactly (the simulator is deterministic); the tests check this.
Episodes played here are memoised on the scenario (``Scenario.plays``), so a bench that plays
every policy does not play them again for the oracle.
"""

from __future__ import annotations

import itertools

from kv_cache_rl.task.episode import Action, Episode
from kv_cache_rl.policies.base import Policy
from kv_cache_rl.policies.hindsight import HindsightPolicy
from kv_cache_rl.policies.registry import POLICIES, make_policy
from kv_cache_rl.task.runner import apply_actions, play, play_out

GRID = [HindsightPolicy(trigger=trigger, target=target, safe_wrong=safe, swap=swap)
        for (trigger, target), safe, swap in itertools.product(
            ((0.75, 0.55), (0.80, 0.60), (0.80, 0.70), (0.85, 0.65), (0.85, 0.75), (0.90, 0.70),
             (0.90, 0.80), (0.95, 0.85)), (0.03, 0.2), (True, False))]


def parse_action(text: str) -> Action:
    kind, _, rest = text.partition("(")
    arg = rest.rstrip(")")
    return Action(kind, int(arg) if arg else None)


def played(scenario, name: str, max_calls: int, policy=None) -> tuple[float, list[list[str]]]:
    """(reward, actions per step) of registry policy ``name`` on a fresh episode, memoised."""
    key = (name, max_calls)
    hit = scenario.plays.get(key)
    if hit is None:
        episode = play(scenario, policy or make_policy(name), max_calls_per_step=max_calls)
        hit = scenario.plays[key] = remember(episode)
    return hit


def remember(episode: Episode) -> tuple[float, list[list[str]]]:
    return episode.score()["reward"], [list(step) for step in episode.history]


def follow(episode: Episode, plan: list[list[str]]) -> Episode:
    """Play ``plan`` (action sets per step, from the episode's current step) to the end."""
    for actions in plan[: episode.scenario.steps - episode.step_index]:
        apply_actions(episode, [parse_action(a) for a in actions])
        episode.advance()
    return episode


class OraclePolicy(Policy):
    name = "oracle"
    sees_future = True
    # heuristics whose action sets the rollout pass tries at each step (besides doing nothing
    # and every hindsight variant's set)
    proposer_names = ("type_aware", "t_lru", "lfu", "marconi", "continuum", "compress_first",
                      "swap_first", "lru")

    def __init__(self) -> None:
        self._plan: list[list[str]] | None = None
        self._first_step = 0
        self._episode = None

    def reset(self, seed: int) -> None:
        self._plan, self._episode = None, None

    def act(self, obs, episode=None):
        if episode is None:
            raise ValueError("the oracle reads the future: it needs the episode")
        if self._plan is None or self._episode is not episode:
            self._episode, self._first_step = episode, episode.step_index
            self._plan = self.plan(episode)
        step = episode.step_index - self._first_step
        return [parse_action(a) for a in self._plan[step]] if step < len(self._plan) else []

    # ---- search -------------------------------------------------------------------------
    def plan(self, episode: Episode) -> list[list[str]]:
        """The best plan from ``episode``'s current state to its end."""
        fresh = episode.step_index == 0 and episode.calls_this_step == 0
        sc, cap = episode.scenario, episode.max_calls_per_step
        candidates = []  # (reward, plan, the policy that made it)
        for name, cls in POLICIES.items():
            if name == self.name:
                continue
            if fresh:
                reward, plan = played(sc, name, cap)
            else:
                policy = make_policy(name)
                policy.reset(sc.seed)
                reward, plan = remember(play_out(episode.clone(), policy))
                plan = plan[episode.step_index:]
            candidates.append((reward, plan, make_policy(name)))
        for policy in GRID:
            trial = play_out(episode.clone(), policy)
            candidates.append((trial.score()["reward"], [list(h) for h in
                                                         trial.history[episode.step_index:]],
                               policy))
        best_reward, best_plan, _ = max(candidates, key=lambda c: c[0])
        # the rollouts' base: the best policy that is fast and deterministic to replay from
        # any state (the planners search themselves; random draws)
        _, _, base = max((c for c in candidates if c[2].name not in ("lookahead", "random")),
                         key=lambda c: c[0])
        proposers = [*GRID, *(make_policy(n) for n in self.proposer_names)]
        return self._improve(episode, best_reward, best_plan, base, proposers)

    def _improve(self, episode: Episode, reward: float, plan: list[list[str]], base,
                 proposers) -> list[list[str]]:
        """One rollout pass over the steps: at each step try doing nothing and each
        proposer's action set, each followed by ``base`` to the end; keep an alternative only
        if it scores higher than the plan so far (so the reward never falls)."""
        current = episode.clone()
        plan = [list(p) for p in plan]
        for step in range(len(plan)):
            obs = current.observation
            options = [[]] + [[str(a) for a in p.act(obs, current if p.sees_future else None)]
                              for p in (*proposers, base)]
            seen = {tuple(plan[step])}
            for option in options:
                if tuple(option) in seen:
                    continue
                seen.add(tuple(option))
                trial = current.clone()
                apply_actions(trial, [parse_action(a) for a in option])
                trial.advance()
                base.reset(episode.scenario.seed)
                play_out(trial, base)
                value = trial.score()["reward"]
                if value > reward + 1e-9:
                    reward = value
                    plan = plan[:step] + [option] + [list(h) for h in trial.history[
                        current.step_index + 1:]]
            apply_actions(current, [parse_action(a) for a in plan[step]])
            current.advance()
        return plan
