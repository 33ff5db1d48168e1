"""Policies: registry, contract, and the bars the leaderboard must show."""

import json
import math

import pytest

from kv_cache_rl.apps import bench
from kv_cache_rl.task.episode import Action
from kv_cache_rl.policies import POLICIES, Policy, make_policy
from kv_cache_rl.task.rubric import REWARD_RANGE
from kv_cache_rl.task.runner import play
from kv_cache_rl.task.scenario import make_scenario

SEEDS = range(3)


def mean_reward(policy, difficulty, seeds=SEEDS):
    return sum(play(make_scenario(difficulty, s), policy).score()["reward"]
               for s in seeds) / len(seeds)


class Degenerate(Policy):
    """Apply one action to every visible entry, every step."""

    def __init__(self, kind):
        self.kind = kind

    def act(self, obs, episode=None):
        return [Action(self.kind, i) for i in sorted(obs.visible)]


def test_registry_and_unknown_name():
    for name, cls in POLICIES.items():
        assert cls.name == name
    with pytest.raises(ValueError, match="known: keep"):
        make_policy("nope")
    assert [n for n, c in POLICIES.items() if c.sees_future] == ["lookahead", "oracle"]


@pytest.mark.parametrize("name", [n for n in POLICIES if n != "lookahead"])
def test_every_heuristic_plays_hard_episodes_without_invalid_actions(name):
    episode = play(make_scenario("hard", 0), make_policy(name))
    assert episode.done
    if name != "random":
        assert episode.record.invalid_actions == 0


@pytest.mark.parametrize("tier,seed", [("hard", 2), ("easy", 4)])
@pytest.mark.parametrize("name", list(POLICIES))
def test_every_registered_policy_plays_a_short_episode(name, tier, seed):
    """Every registered policy, the planners included, plays a 4-step window to the end: the
    episode is done, its reward finite and in the rubric's range, and no call was refused
    (``random``'s may be). The windows put every policy under pressure (each one acts)."""
    episode = play(make_scenario(tier, seed, steps=4), make_policy(name))
    reward = episode.score()["reward"]
    assert episode.done and math.isfinite(reward)
    assert REWARD_RANGE[0] - 1e-9 <= reward <= REWARD_RANGE[1] + 1e-9
    acted = sum(len(step) for step in episode.history)
    assert acted == 0 if name == "keep" else acted > 0, f"{name} acted {acted} times"
    if name != "random":
        assert episode.record.invalid_actions == 0


def test_degenerate_policies_stay_below_the_best_heuristic():
    best = max(mean_reward(make_policy(n), "hard") for n in
               ("compress_first", "hybrid", "lru", "value_greedy", "swap_first"))
    for kind in ("evict", "compress", "swap_to_cpu"):
        assert mean_reward(Degenerate(kind), "hard") < best, kind


def test_bench_json_is_identical_for_the_same_seed():
    def run():
        cells = bench.run(("hard",), episodes=2, seed=5, policies=("keep", "hybrid", "random"))
        data = bench.to_json(cells, seed=5, episodes=2)
        data.pop("timing")
        return json.dumps(data, sort_keys=True)
    first = run()
    assert first == run()
    results = json.loads(first)["results"]
    assert {r["policy"] for r in results} == {"keep", "hybrid", "random"}
    assert all(set(r) >= {"policy", "difficulty", "episodes", "reward_mean", "reward_std",
                          "components"} for r in results)


def test_lookahead_needs_the_episode():
    with pytest.raises(ValueError, match="needs the episode"):
        make_policy("lookahead").act(play(make_scenario("easy", 0), make_policy("keep"))
                                     .observation)
