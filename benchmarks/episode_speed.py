"""Wall time of one episode per policy: the issue's bars are <= 20 ms for a hard episode with a
heuristic and <= 5 s for ``lookahead``.

    python benchmarks/episode_speed.py [--difficulty hard] [--episodes 20] [--repeats 3]
                                       [--policies a,b] [--json out.json]

An episode is what ``kv-cache-rl bench`` times: ``runner.play`` from the cached warm start to
the end of the last step (the copy of the warm engine, every observation, every action and the
15 s of serving). Building a scenario (generating its trace, the unlimited-memory reference
run and the 20 s warm-up) happens once per seed, before timing, as it does in ``bench`` where
all policies share it. Each episode is played ``--repeats`` times and its median is kept, to
damp a shared machine's noise; the report gives the mean, median and max over episodes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from kv_cache_rl.policies import POLICIES, make_policy
from kv_cache_rl.runner import play
from kv_cache_rl.scenario import make_scenario


def time_policy(name: str, scenarios, repeats: int) -> list[float]:
    """Median seconds per episode, one per scenario."""
    per_episode = []
    for scenario in scenarios:
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            play(scenario, make_policy(name))
            runs.append(time.perf_counter() - start)
        per_episode.append(statistics.median(runs))
    return per_episode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--difficulty", default="hard")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--json")
    args = parser.parse_args()
    scenarios = [make_scenario(args.difficulty, args.seed + i) for i in range(args.episodes)]
    for scenario in scenarios:
        scenario.start()  # build and cache the warm start before timing
    results = []
    print(f"{args.difficulty}, {args.episodes} episodes, median of {args.repeats} runs each")
    print(f"{'policy':16s} {'mean ms':>8s} {'median':>8s} {'max':>8s}")
    for name in args.policies.split(","):
        repeats = 1 if name == "lookahead" else args.repeats  # seconds per run: once is enough
        seconds = time_policy(name, scenarios, repeats)
        ms = [s * 1000 for s in seconds]
        row = {"policy": name, "difficulty": args.difficulty, "episodes": len(ms),
               "mean_ms": statistics.fmean(ms), "median_ms": statistics.median(ms),
               "max_ms": max(ms)}
        results.append(row)
        print(f"{name:16s} {row['mean_ms']:8.1f} {row['median_ms']:8.1f} {row['max_ms']:8.1f}",
              flush=True)
    heuristics = [r for r in results if r["policy"] != "lookahead"]
    if heuristics:
        mean = statistics.fmean(r["mean_ms"] for r in heuristics)
        print(f"heuristics (all but lookahead): mean of means {mean:.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results}, f, indent=1)


if __name__ == "__main__":
    main()
