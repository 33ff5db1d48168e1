"""The Gymnasium env: registration, the checker, determinism, rewards that add up to the rubric,
agreement with :func:`kv_cache_rl.task.runner.play`, and vectorization."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

import kv_cache_rl  # noqa: E402,F401  (registers the env)
from kv_cache_rl.task.features import NUM_GLOBAL, NUM_SLOTS, OBS_SIZE  # noqa: E402
from kv_cache_rl.task.gym_env import ACTION_NAMES, KVCacheEvictionEnv, actions_to_codes  # noqa: E402
from kv_cache_rl.policies import make_policy  # noqa: E402
from kv_cache_rl.task.rubric import REWARD_RANGE  # noqa: E402
from kv_cache_rl.task.runner import play  # noqa: E402
from kv_cache_rl.task.scenario import make_scenario  # noqa: E402

POOL = (1000, 1001)


def make(**kw):
    kw.setdefault("difficulty", "hard")
    kw.setdefault("seeds", POOL)
    return gym.make("KVCacheEviction-v1", **kw)


def rollout(env, codes_fn, **reset_kw):
    obs, info = env.reset(**reset_kw)
    rewards, observations = [], [obs]
    while True:
        obs, reward, terminated, truncated, info = env.step(codes_fn(env, obs, info))
        rewards.append(reward)
        observations.append(obs)
        assert not truncated
        if terminated:
            return rewards, observations, info


def keep_codes(env, obs, info):
    return np.zeros(NUM_SLOTS, dtype=np.int64)


def test_import_does_not_load_gymnasium():
    code = "import sys, kv_cache_rl; assert 'gymnasium' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registered_in_either_import_order():
    for code in ("import kv_cache_rl, gymnasium as g; g.make('KVCacheEviction-v1', seeds=[1])",
                 "import gymnasium as g, kv_cache_rl; g.make('KVCacheEviction-v1', seeds=[1])"):
        subprocess.run([sys.executable, "-c", code], check=True)
    assert gym.spec("KVCacheEviction-v1").entry_point == "kv_cache_rl.task.gym_env:KVCacheEvictionEnv"


def test_check_env_passes_without_warnings():
    import warnings

    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(make().unwrapped)
    assert not caught, [str(w.message) for w in caught]


def test_spaces_and_bounds():
    env = make()
    assert env.observation_space.shape == (OBS_SIZE,)
    assert list(env.action_space.nvec) == [len(ACTION_NAMES)] * NUM_SLOTS
    env.action_space.seed(3)
    _, observations, _ = rollout(env, lambda e, o, i: e.action_space.sample(), seed=3)
    for obs in observations:
        assert env.observation_space.contains(obs)


def test_reset_seed_is_deterministic():
    a, b = make(), make()
    for seed in (0, 5):
        oa, ia = a.reset(seed=seed)
        ob, ib = b.reset(seed=seed)
        assert ia["scenario_seed"] == ib["scenario_seed"]
        np.testing.assert_array_equal(oa, ob)
    a.action_space.seed(1)
    actions = [a.action_space.sample() for _ in range(20)]
    runs = []
    for env in (a, b):
        it = iter(actions)
        runs.append(rollout(env, lambda e, o, i: next(it), seed=11))
    assert runs[0][0] == runs[1][0]
    for x, y in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(x, y)


def test_unseeded_scenario_draw_and_explicit_scenario():
    env = make(seeds=None)
    _, info = env.reset(seed=0, options={"scenario_seed": 1001})
    assert info["scenario_seed"] == 1001
    env2 = make(seeds=None)
    assert env2.reset(seed=4)[1]["scenario_seed"] == make(seeds=None).reset(seed=4)[1][
        "scenario_seed"]


@pytest.mark.parametrize("name", ["keep", "compress_first", "learned"])
def test_returns_equal_the_rubric_and_runner(name):
    """Shaped rewards telescope to the rubric total; terminal mode pays it at the end; both
    equal :func:`play` with the same policy (its actions translated to slot codes)."""
    seed = 1000
    expected = play(make_scenario("hard", seed), make_policy(name)).score()["reward"]
    for mode in ("shaped", "terminal"):
        env = make(reward_mode=mode)
        policy = make_policy(name)

        def codes(e, o, i):
            observation = e.unwrapped.episode.observation
            return actions_to_codes(observation, policy.act(observation))

        rewards, _, info = rollout(env, codes, options={"scenario_seed": seed})
        assert sum(rewards) == pytest.approx(expected, abs=1e-9)
        assert info["score"]["reward"] == pytest.approx(expected, abs=1e-12)
        if mode == "terminal":
            assert all(r == 0.0 for r in rewards[:-1])


def test_empty_slots_and_mask():
    env = make()
    obs, info = env.reset(seed=0)
    ids, mask = info["seq_ids"], info["action_mask"]
    present = ids >= 0
    assert mask.shape == (NUM_SLOTS, len(ACTION_NAMES)) and mask[:, 0].all()
    assert (mask[:, 1] == present).all()
    per_slot = obs[NUM_GLOBAL:].reshape(NUM_SLOTS, -1)
    assert (per_slot[:, 0] == present).all() and not per_slot[~present].any()
    if (~present).any():
        codes = np.where(present, 0, 1)
        _, _, _, _, info = env.step(codes)
        assert info["ignored"] == int((~present).sum())


def test_render_ansi_is_the_agent_text():
    env = make(render_mode="ansi")
    env.reset(seed=0)
    assert env.render() == env.unwrapped.episode.text()


def test_bad_arguments():
    with pytest.raises(ValueError):
        KVCacheEvictionEnv(difficulty="impossible")
    with pytest.raises(ValueError):
        KVCacheEvictionEnv(reward_mode="dense")
    env = KVCacheEvictionEnv(seeds=POOL)
    with pytest.raises(RuntimeError):
        env.step(np.zeros(NUM_SLOTS, dtype=np.int64))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_vector_env(kind):
    cls = gym.vector.SyncVectorEnv if kind == "sync" else gym.vector.AsyncVectorEnv
    envs = cls([lambda: make(steps=8) for _ in range(2)])
    try:
        obs, info = envs.reset(seed=[0, 1])
        assert obs.shape == (2, OBS_SIZE)
        envs.action_space.seed(0)
        total, ended = np.zeros(2), []
        for step in range(1, 10):  # one full episode (8 steps) and an autoreset
            obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
            total += reward
            assert obs.shape == (2, OBS_SIZE) and reward.shape == (2,) and not truncated.any()
            if terminated.any():
                ended.append(step)
                assert terminated.all()  # every episode has 8 steps
                # shaped rewards add up to the episode's rubric score, within the rubric's range
                np.testing.assert_allclose(total, info["score"]["reward"], atol=1e-9)
                assert np.all((total >= REWARD_RANGE[0]) & (total <= REWARD_RANGE[1]))
        assert ended == [8]
    finally:
        envs.close()


def test_docstring_states_the_real_spaces():
    from kv_cache_rl.task.features import NUM_ENTRY

    doc = KVCacheEvictionEnv.__doc__
    assert f"MultiDiscrete([{len(ACTION_NAMES)}] * {NUM_SLOTS})" in doc
    assert f"Box(-1, 1, ({NUM_GLOBAL} + {NUM_SLOTS} * {NUM_ENTRY},), float32)" in doc
    assert f"{NUM_GLOBAL} + {NUM_ENTRY} s + j" in doc


def test_a_single_allowed_code_is_always_accepted():
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        env = KVCacheEvictionEnv(difficulty="hard", seeds=POOL)
        obs, info = env.reset(seed=seed)
        while True:
            allowed = np.argwhere(info["action_mask"][:, 1:])
            codes = np.zeros(NUM_SLOTS, dtype=np.int64)
            if len(allowed):
                slot, code = allowed[int(rng.integers(len(allowed)))]
                codes[slot] = code + 1
            invalid = env.episode.record.invalid_actions
            obs, _, terminated, _, info = env.step(codes)
            assert info["refused"] == 0 and env.episode.record.invalid_actions == invalid
            if terminated:
                break


@pytest.mark.parametrize("code", [-1, 4, 99])
def test_out_of_range_code_names_slot_and_code(code):
    env = KVCacheEvictionEnv(difficulty="hard", seeds=POOL)
    env.reset(seed=0)
    codes = np.zeros(NUM_SLOTS, dtype=np.int64)
    codes[3] = code
    step = env.episode.step_index
    with pytest.raises(ValueError, match=f"slot 3: code {code}"):
        env.step(codes)
    assert env.episode.step_index == step  # nothing was applied


def test_new_id_and_old_id_make_the_same_env():
    a = gym.make("KVCacheEviction-v1", difficulty="easy", seeds=POOL)
    with pytest.warns(DeprecationWarning, match="out of date"):  # gymnasium's own notice
        b = gym.make("KVCacheEviction-v0", difficulty="easy", seeds=POOL)
    assert (a.reset(seed=3)[0] == b.reset(seed=3)[0]).all()
