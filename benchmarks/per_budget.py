"""Per-budget view (after KVP's accuracy-vs-KV-budget curves): each policy's mean episode
reward on the hard tier's scenarios as the GPU KV budget varies.

    python benchmarks/per_budget.py OUT.png [--episodes 30] [--json OUT.json]
        [--fractions 0.3,0.4,...] [--policies keep,lru,...] [--lookahead-episodes 10]

Scenario ``(hard, seed)`` keeps its workload and arrival rate; only its budget is replaced
by ``fraction x`` the window's peak KV demand with unlimited memory (the hard tier itself
draws 0.35-0.50; :func:`kv_cache_rl.task.scenario.make_scenario`). Seeds 0..episodes-1 are bench's
held-out seeds (``learned`` trains on 1000+). Every policy plays the same scenarios at every
budget, so the curves compare how each policy's ranking of candidates (and its choice of
action) holds up as memory gets scarcer. ``lookahead`` (sees the future, ~seconds per
episode) is played on the first ``--lookahead-episodes`` seeds only.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

DEFAULT_POLICIES = "keep,lru,hybrid,swap_first,compress_first,learned"
DEFAULT_FRACTIONS = "0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0"


def measure(policies, fractions, seeds, workers: int = 2) -> dict:
    """``{policy: {fraction: [rewards]}}`` on ``seeds`` of the hard tier."""
    from kv_cache_rl.apps.train import Evaluator

    out = {p: {} for p in policies}
    with Evaluator(workers) as ev:
        for f in fractions:
            rows = ev.rewards("hard", seeds, list(policies), f)
            for p, row in zip(policies, rows):
                out[p][f] = row.tolist()
    return out


def plot(results: dict, path: str, episodes: dict) -> None:
    import matplotlib

    from kv_cache_rl.task.rubric import REWARD_RANGE
    from kv_cache_rl.task.scenario import TIERS

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for policy, by_fraction in results.items():
        xs = sorted(by_fraction)
        means = np.array([np.mean(by_fraction[f]) for f in xs])
        half = np.array([1.96 * np.std(by_fraction[f], ddof=1) / np.sqrt(len(by_fraction[f]))
                         for f in xs])
        style = "--" if policy == "lookahead" else "-"
        label = f"{policy} (n={episodes[policy]}" + (", sees future)" if policy == "lookahead"
                                                     else ")")
        ax.plot(xs, means, style, marker="o", markersize=3, label=label,
                linewidth=2.2 if policy == "learned" else 1.2)
        ax.fill_between(xs, means - half, means + half, alpha=0.12)
    lo, hi = TIERS["hard"].memory  # the hard tier's own budgets
    ax.axvspan(lo, hi, color="grey", alpha=0.12, label="hard tier's budgets")
    ax.axhline(REWARD_RANGE[1], color="black", linestyle=":", linewidth=0.8,
               label="rubric maximum")
    ax.set_xlabel("GPU KV budget (fraction of the window's peak demand)")
    ax.set_ylabel("episode reward (mean, 95% CI)")
    ax.set_title("Hard-tier scenarios under a varying KV budget")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="PNG path")
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--fractions", default=DEFAULT_FRACTIONS)
    p.add_argument("--policies", default=DEFAULT_POLICIES)
    p.add_argument("--lookahead-episodes", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", help="write the per-episode rewards here")
    args = p.parse_args()
    fractions = [float(x) for x in args.fractions.split(",")]
    policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    start = time.perf_counter()
    results = measure(policies, fractions, range(args.episodes), args.workers)
    episodes = dict.fromkeys(policies, args.episodes)
    if args.lookahead_episodes:
        results.update(measure(["lookahead"], fractions, range(args.lookahead_episodes),
                               args.workers))
        episodes["lookahead"] = args.lookahead_episodes
    plot(results, args.out, episodes)
    summary = {pol: {str(f): {"mean": round(float(np.mean(r)), 4),
                              "ci95": round(float(1.96 * np.std(r, ddof=1) / np.sqrt(len(r))), 4)}
                     for f, r in by.items()} for pol, by in results.items()}
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"episodes": episodes, "summary": summary,
                       "rewards": {p: {str(f): r for f, r in by.items()}
                                   for p, by in results.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
