"""Environment steps per second of ``KVCacheEviction-v1``: one env, and vectorized.

    python benchmarks/gym_speed.py [--steps 600] [--envs 4] [--json out.json]

Actions are sampled uniformly from the action space (seeded), so about half the slots act each
step: a busier agent than the heuristics (which act on a few entries when under pressure).
Scenarios come from a pool of 8 seeds that is built once before timing, so the numbers are the
simulator's step cost (a reset that builds a new scenario costs ~0.2 s more; see the env's
docstring). Autoreset resets are included in the timed loop.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import gymnasium as gym
import numpy as np

import kv_cache_rl  # noqa: F401  (registers the env)

POOL = range(1000, 1008)


def _make(difficulty: str):
    return lambda: gym.make("KVCacheEviction-v1", difficulty=difficulty, seeds=POOL)


def single(steps: int, difficulty: str) -> float:
    env = _make(difficulty)()
    env.action_space.seed(0)
    for s in POOL:  # build and cache the pool's scenarios before timing
        env.reset(options={"scenario_seed": s})
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - start)


def vector(steps: int, n: int, difficulty: str, kind: str) -> float:
    cls = gym.vector.SyncVectorEnv if kind == "sync" else gym.vector.AsyncVectorEnv
    if kind == "sync":
        for s in POOL:
            _make(difficulty)().reset(options={"scenario_seed": s})
    envs = cls([_make(difficulty) for _ in range(n)])
    envs.action_space.seed(0)
    envs.reset(seed=0)
    if kind == "async":  # let every worker build the pool once
        for _ in range(len(POOL) * 15):
            envs.step(envs.action_space.sample())
    start = time.perf_counter()
    rounds = max(1, steps // n)
    for _ in range(rounds):
        envs.step(envs.action_space.sample())
    rate = rounds * n / (time.perf_counter() - start)
    envs.close()
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--envs", type=int, default=4)
    p.add_argument("--difficulty", default="hard")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    np.random.seed(0)
    results = {
        "difficulty": args.difficulty, "cpus": os.cpu_count(), "steps": args.steps,
        "single_steps_per_s": round(single(args.steps, args.difficulty), 1),
        f"sync_x{args.envs}_steps_per_s": round(vector(args.steps, args.envs, args.difficulty,
                                                       "sync"), 1),
        f"async_x{args.envs}_steps_per_s": round(vector(args.steps, args.envs, args.difficulty,
                                                        "async"), 1),
    }
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
