"""Wall time of one episode per policy: the bars are <= 50 ms for a hard episode with a
heuristic and <= 8 s for the ``oracle`` (on one core).

    python benchmarks/episode_speed.py [--difficulty hard] [--episodes 20] [--repeats 5]
                                       [--policies a,b] [--json out.json]

An episode is what ``kv-cache-rl bench`` times: ``runner.play`` from the cached warm start to
the end of the last step (the copy of the warm engine, every observation, every action and the
60 s of serving). Building a scenario (generating its trace, the unlimited-memory reference
run and the 30 s warm-up) happens once per seed, before timing, as it does in ``bench`` where
all policies share it.

Shared 2-core machines run the same code 20-50% slower for seconds at a time. So the runs are
interleaved (each round plays every episode with every policy, ``--repeats`` rounds), and each
episode is summarised by the fastest of its runs (what the code costs, as ``timeit`` advises)
and by their median (what a run typically took on this machine); the report gives the mean
over episodes of both, and the slowest episode. The planners (seconds per episode) run once;
the oracle is timed whole, playing every other policy itself (nothing memoised).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from kv_cache_rl.policies import HEURISTICS, POLICIES, make_policy
from kv_cache_rl.task.runner import play
from kv_cache_rl.task.scenario import make_scenario


# the planners search over whole episodes (seconds each); ``keep``, no agent at all, makes the
# server preempt and recompute more, so its episodes serve more iterations
PLANNERS = tuple(name for name, cls in POLICIES.items() if cls.sees_future)
BAR_MS = 50.0


def reference_loop() -> float:
    """Seconds for a fixed pure-Python loop (a million additions): the machine's speed at
    the time, to compare runs of this benchmark across machines and moments."""
    start = time.perf_counter()
    total = 0
    for i in range(1_000_000):
        total += i
    return time.perf_counter() - start


def time_policies(names: list[str], scenarios, repeats: int) -> dict[str, list[list[float]]]:
    """Seconds per run, ``[policy][episode] -> runs``, in interleaved rounds (the reference
    loop once per round and episode, under ``"reference"``)."""
    runs = {name: [[] for _ in scenarios] for name in names}
    runs["reference"] = [[] for _ in scenarios]
    for round_ in range(repeats):
        for i, scenario in enumerate(scenarios):
            runs["reference"][i].append(reference_loop())
            for name in names:
                if name in PLANNERS and round_:
                    continue
                scenario.plays.clear()  # the oracle plays every other policy itself
                start = time.perf_counter()
                play(scenario, make_policy(name))
                runs[name][i].append(time.perf_counter() - start)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--difficulty", default="hard")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--json")
    args = parser.parse_args()
    names = args.policies.split(",")
    scenarios = [make_scenario(args.difficulty, args.seed + i) for i in range(args.episodes)]
    for scenario in scenarios:
        scenario.start()  # build and cache the warm start before timing
    runs = time_policies(names, scenarios, args.repeats)
    print(f"{args.difficulty}, {args.episodes} episodes, {args.repeats} interleaved runs each "
          f"(planners: 1)")
    print(f"{'policy':16s} {'fastest':>8s} {'median':>8s} {'p90':>8s} {'slowest':>8s} "
          f"{'<=50ms':>7s}   (ms per episode: mean over episodes of each episode's fastest / "
          f"median run; p90 and slowest episode and share of episodes <= 50 ms, median runs)")
    results = []
    for name in names:
        fastest = [min(r) * 1000 for r in runs[name]]
        typical = [statistics.median(r) * 1000 for r in runs[name]]
        row = {"policy": name, "difficulty": args.difficulty, "episodes": len(fastest),
               "runs_per_episode": len(runs[name][0]),
               "mean_fastest_ms": statistics.fmean(fastest),
               "mean_median_ms": statistics.fmean(typical),
               "p90_median_ms": statistics.quantiles(typical, n=10, method="inclusive")[8]
               if len(typical) > 1 else typical[0], "max_median_ms": max(typical),
               "share_median_le_50ms": sum(t <= BAR_MS for t in typical) / len(typical)}
        results.append(row)
        print(f"{name:16s} {row['mean_fastest_ms']:8.1f} {row['mean_median_ms']:8.1f} "
              f"{row['p90_median_ms']:8.1f} {row['max_median_ms']:8.1f} "
              f"{row['share_median_le_50ms']:7.0%}")
    groups = {"all but the planners": [r for r in results if r["policy"] not in PLANNERS],
              "heuristics (not keep, random, learned, the planners)":
                  [r for r in results if r["policy"] in HEURISTICS]}
    for label, rows in groups.items():
        if rows:
            fastest = statistics.fmean(r["mean_fastest_ms"] for r in rows)
            typical = statistics.fmean(r["mean_median_ms"] for r in rows)
            over = [r["policy"] for r in rows if r["mean_fastest_ms"] > BAR_MS]
            print(f"{label}, mean over policies: fastest {fastest:.1f} ms, median "
                  f"{typical:.1f} ms; fastest above {BAR_MS:.0f} ms: {', '.join(over) or 'none'}")
    reference = [t * 1000 for r in runs["reference"] for t in r]
    ref = {"fastest_ms": min(reference), "median_ms": statistics.median(reference)}
    print(f"reference loop (1e6 Python additions): fastest {ref['fastest_ms']:.0f} ms, "
          f"median {ref['median_ms']:.0f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"repeats": args.repeats, "reference_loop": ref, "results": results}, f,
                      indent=1)


if __name__ == "__main__":
    main()
