"""The ``learned`` policy: the shipped weights load, it acts only on what it sees, it is
registered for bench and serve, and the trainer writes weights the policy can load."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kv_cache_rl.task.episode import MAX_CALLS_PER_STEP, Episode
from kv_cache_rl.policies import POLICIES, make_policy
from kv_cache_rl.policies.learned import (PARAM_NAMES, LearnedPolicy, initial_vector,
                                          load_weights)
from kv_cache_rl.task.runner import play
from kv_cache_rl.task.scenario import make_scenario


def test_shipped_weights_load_with_provenance():
    data = load_weights()
    assert set(data["params"]) == set(PARAM_NAMES)
    assert all(math.isfinite(v) for v in data["params"].values())
    meta = data["meta"]
    assert meta["command"].startswith("kv-cache-rl train")
    assert isinstance(meta["seed"], int) and meta["date"]
    # never trained or selected on the seeds it is evaluated on (bench's 0..)
    lo, hi = (int(x) for x in meta["train_seeds"].split(":"))
    assert lo >= 50
    policy = LearnedPolicy()
    assert policy.params == pytest.approx(data["params"])


def test_registered_and_observation_only():
    assert POLICIES["learned"] is LearnedPolicy
    assert not LearnedPolicy.sees_future
    assert isinstance(make_policy("learned"), LearnedPolicy)


def test_acts_on_visible_ids_within_the_cap():
    episode = Episode(make_scenario("hard", 1000))
    policy = make_policy("learned")
    acted = 0
    while not episode.done:
        obs = episode.observation
        actions = policy.act(obs)
        assert len(actions) <= MAX_CALLS_PER_STEP
        for a in actions:
            assert a.kind in ("evict", "compress", "swap_to_cpu")
            assert a.seq_id in obs.visible
            assert not episode.call(a.kind, {"seq_id": a.seq_id}).startswith("error")
            acted += 1
        episode.advance()
    assert acted > 0
    assert episode.record.invalid_actions == 0


def test_deterministic_and_better_than_keep():
    scenario = make_scenario("hard", 1001)
    a = play(scenario, make_policy("learned")).score()["reward"]
    b = play(scenario, make_policy("learned")).score()["reward"]
    assert a == b
    assert a > play(scenario, make_policy("keep")).score()["reward"]


def test_served_from_text_gives_the_same_actions():
    """``serve`` rebuilds observations from text; the policy must act identically on them."""
    from kv_cache_rl.task.observation import Observation

    episode = Episode(make_scenario("hard", 1000))
    policy = make_policy("learned")
    while not episode.done:
        obs = episode.observation
        assert policy.act(Observation.from_text(obs.text())) == policy.act(obs)
        for a in policy.act(obs):
            episode.call(a.kind, {"seq_id": a.seq_id})
        episode.advance()


def test_parameter_vector_round_trip_and_errors(tmp_path):
    mean, std = initial_vector()
    assert mean.shape == std.shape == (len(PARAM_NAMES),) and (std > 0).all()
    policy = LearnedPolicy(mean)
    assert LearnedPolicy(policy.params).vector == pytest.approx(mean)
    with pytest.raises(ValueError):
        LearnedPolicy(np.zeros(3))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"params": {"trigger": 0.9}, "meta": {}}))
    with pytest.raises(ValueError):
        load_weights(bad)


def test_train_smoke(tmp_path):
    """One tiny generation in-process writes weights the policy loads (the real run is
    ``kv-cache-rl train``, a few minutes on two cores)."""
    from kv_cache_rl.apps.train import train

    out = tmp_path / "w.json"
    data = train(out=out, generations=1, population=2, elite=1, batch=1, workers=1,
                 train_seeds=range(1000, 1002), select_seeds=range(2000, 2001),
                 eval_seeds=range(0, 1), baselines=("keep",), command="kv-cache-rl train test",
                 log=lambda *_: None)
    loaded = load_weights(out)
    assert loaded == json.loads(out.read_text()) == data
    assert set(data["meta"]["held_out"]) == {"learned", "keep"}
    LearnedPolicy(loaded["params"])
    ticks = []
    again = train(out=tmp_path / "again.json", generations=1, population=2, elite=1, batch=1,
                  workers=2, train_seeds=range(1000, 1002), select_seeds=range(2000, 2001),
                  eval_seeds=range(0, 1), baselines=("keep",), command="kv-cache-rl train test",
                  log=lambda *_: None, progress=lambda: ticks.append(1))
    # same seed, same weights, whatever the number of processes
    assert again["params"] == data["params"] and ticks == [1]
    assert again["meta"]["held_out"] == data["meta"]["held_out"]
    with pytest.raises(ValueError):
        train(out=out, train_seeds=range(0, 10), eval_seeds=range(0, 5), generations=1,
              log=lambda *_: None)
