"""Play a policy through an episode."""

from __future__ import annotations

from kv_cache_rl.task.episode import Episode
from kv_cache_rl.task.scenario import Scenario


def apply_actions(episode: Episode, actions) -> None:
    """Send ``actions`` as tool calls, stopping at the per-step cap."""
    for action in actions:
        if episode.calls_this_step >= episode.max_calls_per_step:
            break
        episode.call(action.kind, {} if action.seq_id is None else {"seq_id": action.seq_id})


def play_out(episode: Episode, policy) -> Episode:
    """Let ``policy`` decide every remaining step of ``episode``."""
    while not episode.done:
        apply_actions(episode, policy.act(episode.observation,
                                          episode if policy.sees_future else None))
        episode.advance()
    return episode


def play(scenario: Scenario, policy, *, max_calls_per_step: int | None = None) -> Episode:
    """Run ``policy`` on a fresh episode of ``scenario``; return the finished episode."""
    kwargs = {} if max_calls_per_step is None else {"max_calls_per_step": max_calls_per_step}
    policy.reset(scenario.seed)
    return play_out(Episode(scenario, **kwargs), policy)
