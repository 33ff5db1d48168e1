"""``kv-cache-rl train``: fit the ``learned`` policy with the cross-entropy method (CEM).

The search is over :data:`kv_cache_rl.policies.learned.PARAMS` (pressure control plus a linear
entry scorer). Each generation samples ``population`` parameter vectors from a diagonal
Gaussian, plays every one on the same ``batch`` training scenarios (common random numbers:
candidates are ranked on identical episodes), and refits the Gaussian to the ``elite`` best
(mean episode reward, the rubric's ``reward``), with a decaying extra spread against premature
collapse. The current mean is played too, as a progress trace.

Seeds: training draws scenarios from ``--train-seeds`` (default 1000-1999), the final pick
between the last mean and the best candidate ever sampled is made on ``--select-seeds``
(default 2000-2039), and the held-out report uses ``--eval-seeds`` (default 0-49, the seeds
``bench`` plays). The three sets are disjoint, so the reported margin is out of sample.

Budgets: ``--memory-fraction LO:HI`` replaces each training scenario's KV budget by LO..HI x
its peak demand (drawn from the seed; :func:`~kv_cache_rl.task.scenario.memory_fraction_for`),
so the policy also learns other budgets than the tier's own (hard: 0.35-0.50). The held-out report
always plays the tier's own scenarios, exactly as ``bench`` does.

Workers: ``--workers`` single-process pools; scenario ``s`` always goes to pool
``s % workers``, so each process builds (and caches) only its share of scenarios.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from kv_cache_rl import DATA_DIR
from kv_cache_rl.errors import ConfigError
from kv_cache_rl.task.scenario import make_scenario, memory_fraction_for


def _play(key: tuple, policy_spec) -> float:
    """One episode's reward on ``key`` = (difficulty, seed, memory_fraction or None, hardware
    items). ``policy_spec``: a registry name or a learned parameter vector."""
    from kv_cache_rl.policies import make_policy
    from kv_cache_rl.policies.learned import LearnedPolicy
    from kv_cache_rl.task.runner import play

    policy = make_policy(policy_spec) if isinstance(policy_spec, str) \
        else LearnedPolicy(np.asarray(policy_spec))
    difficulty, seed, fraction, hardware = key
    scenario = make_scenario(difficulty, seed, memory_fraction=fraction, **dict(hardware))
    return float(play(scenario, policy).score()["reward"])


def _play_many(key: tuple, specs: list) -> list[float]:
    return [_play(key, spec) for spec in specs]


class Evaluator:
    """Plays (seed, policies) jobs on ``workers`` processes with seed affinity."""

    def __init__(self, workers: int = 2, hardware: dict | None = None) -> None:
        self.workers = max(1, workers)
        self.hardware = tuple(sorted((hardware or {}).items()))  # make_scenario's keywords
        ctx = get_context("fork") if hasattr(__import__("os"), "fork") else get_context()
        self.pools = [ctx.Pool(1) for _ in range(self.workers)] if self.workers > 1 else []

    def rewards(self, difficulty: str, seeds, specs: list, fractions=None) -> np.ndarray:
        """A ``(len(specs), len(seeds))`` array of episode rewards (``fractions``: the range
        of KV budgets to draw from, see :func:`memory_fraction_for`; None: the tier's own)."""
        keys = [(difficulty, int(s), memory_fraction_for(s, fractions), self.hardware)
                for s in seeds]
        if not self.pools:
            cols = [_play_many(k, specs) for k in keys]
        else:
            jobs = [self.pools[k[1] % self.workers].apply_async(_play_many, (k, specs))
                    for k in keys]
            cols = [j.get() for j in jobs]
        return np.array(cols, dtype=float).T.reshape(len(specs), len(keys))

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
            pool.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def summary(rewards) -> dict:
    """Mean and the half-width of the normal-approximation 95% interval (as ``bench``)."""
    r = np.asarray(rewards, dtype=float)
    half = 1.96 * r.std(ddof=1) / math.sqrt(len(r)) if len(r) > 1 else 0.0
    return {"mean": round(float(r.mean()), 4), "ci95": round(float(half), 4), "n": len(r)}


def cem(evaluator: Evaluator, *, difficulty: str = "hard", train_seeds=range(1000, 2000),
        generations: int = 20, population: int = 20, elite: int = 5, batch: int = 10,
        seed: int = 0, extra_std: float = 0.1, fractions=None, log=print,
        progress=None) -> dict:
    """Run the CEM; return the final mean, the best sampled vector and the per-generation log.
    ``progress`` (no arguments) is called after each generation."""
    from kv_cache_rl.policies.learned import initial_vector

    rng = np.random.default_rng(seed)
    pool = np.array(list(train_seeds))
    mean, std = initial_vector()
    base_std = std.copy()
    best, best_fit = mean.copy(), -np.inf
    history = []
    for gen in range(generations):
        seeds = [int(s) for s in rng.choice(pool, size=batch, replace=False)]
        samples = mean + std * rng.standard_normal((population, len(mean)))
        specs = [mean.tolist()] + [s.tolist() for s in samples]
        t0 = time.perf_counter()
        fit = evaluator.rewards(difficulty, seeds, specs, fractions).mean(axis=1)
        mean_fit, fit = fit[0], fit[1:]
        top = np.argsort(-fit, kind="stable")[:elite]
        if fit[top[0]] > best_fit:
            best, best_fit = samples[top[0]].copy(), float(fit[top[0]])
        mean = samples[top].mean(axis=0)
        noise = extra_std * max(0.0, 1.0 - gen / max(generations - 1, 1))
        std = samples[top].std(axis=0) + noise * base_std
        history.append({"generation": gen, "mean_reward": round(float(mean_fit), 4),
                        "elite_reward": round(float(fit[top].mean()), 4),
                        "best_reward": round(float(fit[top[0]]), 4),
                        "seconds": round(time.perf_counter() - t0, 2)})
        log(f"gen {gen:2d}  mean {mean_fit:+.3f}  elite {fit[top].mean():+.3f}  "
            f"best {fit[top[0]]:+.3f}  ({history[-1]['seconds']:.1f}s)")
        if progress is not None:
            progress()
    return {"mean": mean, "best": best, "history": history}


def parse_seeds(text: str) -> range:
    """``"1000:2000"`` -> range(1000, 2000)."""
    lo, _, hi = text.partition(":")
    return range(int(lo), int(hi) if hi else int(lo) + 1)


SHIPPED_WEIGHTS = DATA_DIR / "policies" / "learned.json"  # what `learned` loads
DEFAULT_OUT = Path("runs") / "learned.json"  # the CLI names it learned_seed<SEED>.json


def train(*, out: str | Path, install: bool = False, difficulty: str = "hard", seed: int = 0,
          generations: int = 30, population: int = 32, elite: int = 8, batch: int = 16, workers: int = 2,
          train_seeds: range = range(1000, 2000), select_seeds: range = range(2000, 2040),
          eval_seeds: range | None = range(0, 50), baselines=("keep", "lru", "compress_first"),
          fractions: tuple[float, float] | None = None, command: str = "", log=print,
          hardware: dict | None = None, progress=None) -> dict:
    """Train, pick, evaluate on held-out seeds and write the weights JSON to ``out``; with
    ``install`` also over the shipped weights. Return the written dict. Writing the shipped
    weights through ``out`` without ``install`` is refused before any training runs."""
    if not install and Path(out).resolve() == SHIPPED_WEIGHTS.resolve():
        raise ConfigError(f"{out} is the shipped weights file: pass install=True "
                          "(kv-cache-rl train --install) to replace it")
    from kv_cache_rl.policies.learned import PARAM_NAMES

    for a, b in ((train_seeds, select_seeds), (train_seeds, eval_seeds or ()),
                 (select_seeds, eval_seeds or ())):
        if set(a) & set(b):
            raise ConfigError("train, select and eval seeds must be disjoint")
    start = time.perf_counter()
    with Evaluator(workers, hardware) as ev:
        result = cem(ev, difficulty=difficulty, train_seeds=train_seeds, generations=generations,
                     population=population, elite=elite, batch=batch, seed=seed,
                     fractions=fractions, log=log, progress=progress)
        picks = ev.rewards(difficulty, select_seeds,
                           [result["mean"].tolist(), result["best"].tolist()],
                           fractions).mean(axis=1)
        chosen = result["mean"] if picks[0] >= picks[1] else result["best"]
        train_s = time.perf_counter() - start
        log(f"select: final mean {picks[0]:+.4f}, best sample {picks[1]:+.4f} on "
            f"{len(select_seeds)} selection seeds; trained in {train_s:.0f}s")
        evaluation = {}
        if eval_seeds is not None:
            specs = [chosen.tolist(), *baselines]
            rewards = ev.rewards(difficulty, eval_seeds, specs)
            for name, row in zip(("learned", *baselines), rewards):
                evaluation[name] = summary(row)
                if name != "learned":  # paired: the same scenarios
                    evaluation[name]["learned_minus"] = summary(rewards[0] - row)
                log(f"held-out {name:<16} {evaluation[name]['mean']:+.4f} ± "
                    f"{evaluation[name]['ci95']:.4f} (n={len(row)})"
                    + ("" if name == "learned" else
                       f"   learned - {name}: {evaluation[name]['learned_minus']['mean']:+.4f}"
                       f" ± {evaluation[name]['learned_minus']['ci95']:.4f}"))
    data = {
        "params": {n: round(float(v), 6) for n, v in zip(PARAM_NAMES, chosen)},
        "meta": {
            "command": command, "seed": seed, "date": datetime.date.today().isoformat(),
            "method": "cross-entropy method, diagonal Gaussian",
            "difficulty": difficulty, "generations": generations, "population": population,
            "elite": elite, "batch": batch, "workers": workers,
            "hardware": dict(hardware or {}),
            "train_seeds": f"{train_seeds.start}:{train_seeds.stop}",
            "memory_fraction": None if fractions is None else list(fractions),
            "select_seeds": f"{select_seeds.start}:{select_seeds.stop}",
            "eval_seeds": None if eval_seeds is None else f"{eval_seeds.start}:{eval_seeds.stop}",
            "picked": "mean" if picks[0] >= picks[1] else "best sample",
            "select_rewards": {"mean": round(float(picks[0]), 4),
                               "best_sample": round(float(picks[1]), 4)},
            "train_seconds": round(train_s, 1), "held_out": evaluation,
            "history": result["history"],
        },
    }
    text = json.dumps(data, indent=1) + "\n"
    for path in (Path(out), SHIPPED_WEIGHTS) if install else (Path(out),):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        log(f"wrote {path}")
    return data
