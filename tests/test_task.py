"""The task: the oracle's bound and replay, the normalised score, truthful observations, the
state-blind battery, and the names users' scripts rely on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from kv_cache_rl.engine import Engine
from kv_cache_rl.task.episode import Action, Episode
from kv_cache_rl.policies import HEURISTICS, POLICIES, make_policy
from kv_cache_rl.policies.oracle import OraclePolicy, follow, played
from kv_cache_rl.task.runner import play
from kv_cache_rl.task.scenario import DIFFICULTIES, TASK_VERSION, make_scenario
from tests.support.blind import battery

# the bench's recorded run (seeds 0-19 of every tier, every registered policy): the README's
# leaderboard and this file's reference table; a test recomputes a sample of it
TABLE = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "bench.json"


@pytest.fixture(scope="module")
def table() -> dict:
    """{"rewards": {"tier/seed": {policy: reward}}} from the recorded bench run."""
    data = json.loads(TABLE.read_text())
    assert data["task_version"] == TASK_VERSION, "re-run the bench (README, Benchmarks)"
    rewards: dict = {}
    for r in data["results"]:
        for i, reward in enumerate(r["rewards"]):
            rewards.setdefault(f"{r['difficulty']}/{data['seed'] + i}", {})[r["policy"]] = reward
    return {"rewards": rewards}


@pytest.mark.parametrize("tier,seed", [("hard", 1), ("easy", 4)])
def test_oracle_bounds_every_policy_and_its_plan_replays(tier, seed):
    sc = make_scenario(tier, seed)
    oracle_episode = play(sc, OraclePolicy())
    reward = oracle_episode.score()["reward"]
    for name in POLICIES:
        assert reward >= played(sc, name, 8)[0] - 1e-9, name
    # replayed blind on a fresh episode, its actions give its reward
    plan = [list(step) for step in oracle_episode.history]
    assert follow(Episode(sc), plan).score()["reward"] == reward
    assert oracle_episode.record.invalid_actions == 0


def test_table_matches_a_fresh_sample(table):
    for key in ("medium/3", "hard/11"):
        tier, seed = key.split("/")
        sc = make_scenario(tier, int(seed))
        for name in ("keep", "type_aware", "oracle"):
            assert played(sc, name, 8)[0] == pytest.approx(table["rewards"][key][name], abs=1e-6)


def test_keep_is_a_plain_replay_of_the_window():
    sc = make_scenario("medium", 2)
    episode = play(sc, make_policy("keep"))
    engine = Engine(sc.config, sc.profile, sc.trace)
    engine.run_until(sc.warmup_s)
    before = engine.stats.generated_tokens
    engine.run_until(sc.end_s)
    assert episode.engine.stats.generated_tokens == engine.stats.generated_tokens
    assert episode.record.tokens_served == pytest.approx(
        engine.stats.generated_tokens - before - episode.engine.stats.quality_loss
        + sc._warm.stats.quality_loss)
    assert episode.record.preemptions == engine.stats.preemptions - sc._warm.stats.preemptions


def test_every_episode_has_something_to_decide(table):
    for key, rewards in table["rewards"].items():
        assert rewards["oracle"] - rewards["keep"] >= 0.02, key


def test_table_oracle_bounds_every_policy(table):
    for key, rewards in table["rewards"].items():
        assert all(rewards["oracle"] >= r - 1e-9 for r in rewards.values()), key


def tier_scores(table, tier: str, rewards_of) -> float:
    """The tier's normalised score over the table's seeds, as the bench reports it: the ratio
    of means (mean R - mean R_keep) / (mean R_oracle - mean R_keep)."""
    keys = [k for k in table["rewards"] if k.startswith(tier + "/")]
    mean = lambda f: float(np.mean([f(k) for k in keys]))  # noqa: E731
    keep = mean(lambda k: table["rewards"][k]["keep"])
    oracle = mean(lambda k: table["rewards"][k]["oracle"])
    return (mean(rewards_of) - keep) / (oracle - keep)


def best_heuristic(table, tier: str) -> tuple[str, float]:
    scores = {n: tier_scores(table, tier, lambda k, n=n: table["rewards"][k][n])
              for n in HEURISTICS}
    name = max(scores, key=scores.get)
    return name, scores[name]


@pytest.mark.parametrize("tier", DIFFICULTIES)
def test_state_blind_rules_stay_below_the_best_heuristic(table, tier):
    _, best = best_heuristic(table, tier)
    keys = [k for k in table["rewards"] if k.startswith(tier + "/")]
    assert len(keys) >= 20
    scenarios = {k: make_scenario(tier, int(k.split("/")[1])) for k in keys}
    for rule in battery():
        rewards = {k: play(sc, rule).score()["reward"] for k, sc in scenarios.items()}
        assert tier_scores(table, tier, rewards.get) <= best - 0.15, rule.name
    for name in ("keep", "random"):
        assert tier_scores(table, tier, lambda k: table["rewards"][k][name]) <= best - 0.15


def test_keep_gets_worse_with_difficulty(table):
    means = [np.mean([r["keep"] for k, r in table["rewards"].items() if k.startswith(t + "/")])
             for t in DIFFICULTIES]
    assert means[0] > means[1] > means[2]


def test_best_heuristic_ordered_by_tier(table):
    scores = [best_heuristic(table, t)[1] for t in DIFFICULTIES]
    assert scores[0] >= 0.6
    assert scores[0] > scores[1] > scores[2]


def test_evict_frees_exactly_the_blocks_listed():
    for tier, seed in (("hard", 0), ("medium", 1), ("easy", 2)):
        episode = Episode(make_scenario(tier, seed))
        for _ in range(3):
            for entry in episode.observation.visible.values():
                trial = episode.clone()
                before = trial.engine.pool.allocatable_units
                trial.apply(Action("evict", entry.seq_id))
                assert (trial.engine.pool.allocatable_units - before) / 4 == entry.blocks
            episode.advance()


def test_no_shipped_policy_has_a_call_refused():
    for tier in DIFFICULTIES:
        for seed in range(10):
            sc = make_scenario(tier, seed)
            for name, cls in POLICIES.items():
                if name == "random" or (cls.sees_future and seed >= 2):
                    continue  # the planners are slow: two seeds a tier
                assert play(sc, make_policy(name)).record.invalid_actions == 0, (tier, seed, name)


def test_observation_shows_history_never_the_future():
    episode = Episode(make_scenario("hard", 0))
    contexts = [e for e in episode.observation.visible.values() if e.kind == "context"]
    assert contexts and all(e.tool != "-" and e.session >= 0 for e in contexts)
    assert "next_turn" not in episode.text()


def test_pinned_names_stay_importable():
    import kv_cache_rl.task.episode as ep
    import kv_cache_rl.policies as pol
    import kv_cache_rl.task.runner as runner
    import kv_cache_rl.task.scenario as scenario
    from kv_cache_rl.task.observation import Entry, Observation

    assert callable(scenario.make_scenario) and callable(runner.play)
    assert ep.Episode and ep.Action and pol.POLICIES and pol.Policy and pol.make_policy
    assert {"seq_id", "kind", "blocks", "tier", "on_cpu"} <= set(Entry._fields)
    assert "visible" in dir(Observation)
    assert "memory_usage" in {f.name for f in dataclasses.fields(Observation)}
    episode = play(make_scenario("easy", 0), make_policy("keep"))
    assert isinstance(episode.score()["reward"], float)
    assert episode.record.invalid_actions == 0
    assert "KVCacheEviction-v0" in __import__("kv_cache_rl").GYM_ENV_IDS


def test_oracle_beats_keep_by_030_on_hard(table):
    keys = [k for k in table["rewards"] if k.startswith("hard/")]
    gap = np.mean([table["rewards"][k]["oracle"] - table["rewards"][k]["keep"] for k in keys])
    assert gap >= 0.30


@pytest.mark.xfail(strict=True, reason="type_aware scores 0.83 normalised on hard (bench, seeds "
                   "0-19; 0.90 on seeds 100-109): the oracle's search finds too little above a "
                   "type-aware rule")
def test_no_hand_written_heuristic_above_075_on_hard(table):
    for name in HEURISTICS:
        assert tier_scores(table, "hard", lambda k, n=name: table["rewards"][k][n]) <= 0.75, name
