"""The task: the oracle's bound and replay, the normalised score, truthful observations, the
state-blind battery, and the names users' scripts rely on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kv_cache_rl.bench import normalize
from kv_cache_rl.engine import Engine
from kv_cache_rl.episode import Action, Episode
from kv_cache_rl.policies import POLICIES, make_policy
from kv_cache_rl.policies.oracle import OraclePolicy, follow, played
from kv_cache_rl.runner import play
from kv_cache_rl.scenario import DIFFICULTIES, TASK_VERSION, make_scenario
from tests.support.blind import battery

TABLE = Path(__file__).parent / "data" / "task_table.json"
HEURISTICS = [n for n, cls in POLICIES.items()
              if not cls.sees_future and n not in ("keep", "random", "learned")]


@pytest.fixture(scope="module")
def table() -> dict:
    data = json.loads(TABLE.read_text())
    assert data["task_version"] == TASK_VERSION, "regenerate: benchmarks/task_table.py"
    return data


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
    """Mean per-episode normalised score over the table's seeds of ``tier``."""
    keys = [k for k in table["rewards"] if k.startswith(tier + "/")]
    return float(np.mean([normalize(rewards_of(k), table["rewards"][k]["keep"],
                                    table["rewards"][k]["oracle"]) for k in keys]))


def best_heuristic(table, tier: str) -> tuple[str, float]:
    scores = {n: tier_scores(table, tier, lambda k, n=n: table["rewards"][k][n])
              for n in HEURISTICS}
    name = max(scores, key=scores.get)
    return name, scores[name]


@pytest.mark.parametrize("tier", ["medium", "hard"])
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


@pytest.mark.xfail(strict=True, reason="easy: a state-blind 'compress the largest entry at 0.9 "
                   "usage' rule scores within 0.15 of the best heuristic (measured 0.99 vs 0.99)")
def test_state_blind_rules_stay_below_the_best_heuristic_on_easy(table):
    test_state_blind_rules_stay_below_the_best_heuristic(table, "easy")


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
    import kv_cache_rl.episode as ep
    import kv_cache_rl.policies as pol
    import kv_cache_rl.runner as runner
    import kv_cache_rl.scenario as scenario
    from kv_cache_rl.observation import Entry, Observation

    assert callable(scenario.make_scenario) and callable(runner.play)
    assert ep.Episode and ep.Action and pol.POLICIES and pol.Policy and pol.make_policy
    assert {"seq_id", "kind", "blocks", "tier", "on_cpu"} <= set(Entry._fields)
    assert {"visible", "memory_usage"} <= set(dir(Observation))
    episode = play(make_scenario("easy", 0), make_policy("keep"))
    assert isinstance(episode.score()["reward"], float)
    assert episode.record.invalid_actions == 0
    assert "KVCacheEviction-v0" in __import__("kv_cache_rl").GYM_ENV_IDS
