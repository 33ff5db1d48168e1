"""Play a policy through an episode."""

from __future__ import annotations

from kv_cache_rl.episode import Episode
from kv_cache_rl.scenario import Scenario


def play(scenario: Scenario, policy, *, max_calls_per_step: int | None = None) -> Episode:
    """Run ``policy`` on a fresh episode of ``scenario``; return the finished episode."""
    kwargs = {} if max_calls_per_step is None else {"max_calls_per_step": max_calls_per_step}
    episode = Episode(scenario, **kwargs)
    policy.reset(scenario.seed)
    while not episode.done:
        for action in policy.act(episode.observation,
                                 episode if policy.sees_future else None):
            if episode.calls_this_step >= episode.max_calls_per_step:
                break
            episode.call(action.kind, {} if action.seq_id is None else {"seq_id": action.seq_id})
        episode.advance()
    return episode
