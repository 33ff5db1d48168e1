"""The text an LLM agent reads carries everything the shipped policies decide from: a policy
fed only ``Observation.from_text(obs.text())`` takes exactly the actions it takes from the
observation itself, at every step of an episode."""

from __future__ import annotations

import pytest

from kv_cache_rl.episode import Episode
from kv_cache_rl.policies import HEURISTICS, POLICIES, make_policy
from kv_cache_rl.runner import apply_actions
from kv_cache_rl.scenario import make_scenario
from kv_cache_rl.task.observation import Observation

TEXT_POLICIES = tuple(n for n, cls in POLICIES.items() if not cls.sees_future)


def test_every_observation_only_policy_is_checked():
    assert set(HEURISTICS) | {"keep", "random", "learned"} == set(TEXT_POLICIES)


@pytest.mark.parametrize("name", TEXT_POLICIES)
@pytest.mark.parametrize("difficulty,seed", [("hard", 1), ("medium", 2)])
def test_text_alone_gives_the_same_actions(name, difficulty, seed):
    from_obs, from_text = make_policy(name), make_policy(name)
    scenario = make_scenario(difficulty, seed, steps=8)
    from_obs.reset(seed)
    from_text.reset(seed)
    episode = Episode(scenario)
    acted = 0
    while not episode.done:
        obs = episode.observation
        parsed = Observation.from_text(obs.text())
        assert parsed == obs
        actions = from_obs.act(obs)
        assert from_text.act(parsed) == actions, f"step {episode.step_index}"
        acted += len(actions)
        apply_actions(episode, actions)
        episode.advance()
    assert acted or name == "keep" or difficulty != "hard"
