"""The task's acceptance figures from a recorded bench run, plus the state-blind battery.

    .venv/bin/python benchmarks/task_check.py benchmarks/results/bench.json \
        --json benchmarks/results/task_check.json

Per tier: oracle - keep (mean and the smallest episode's), every policy's normalised score
(ratio of means, as ``bench``), the best hand-written heuristic, and the 24 state-blind rules of
``tests/support/blind.py`` played on the same seeds (the margin below the best heuristic must
be >= 0.15). Prints a markdown summary for the README.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kv_cache_rl.policies import HEURISTICS, POLICIES  # noqa: E402
from kv_cache_rl.task.runner import play  # noqa: E402
from kv_cache_rl.task.scenario import make_scenario  # noqa: E402
from tests.support.blind import battery  # noqa: E402

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bench", nargs="?", default="benchmarks/results/bench.json")
    ap.add_argument("--json")
    args = ap.parse_args()
    data = json.loads(Path(args.bench).read_text())
    rewards = {(r["policy"], r["difficulty"]): r["rewards"] for r in data["results"]}
    out = {"bench": args.bench, "task_version": data["task_version"], "tiers": {}}
    lines = ["| tier | oracle − keep (mean, smallest) | best heuristic | best state-blind rule | "
             "margin |", "|---|---|---|---|---|"]
    for tier in ("easy", "medium", "hard"):
        keep, oracle = np.array(rewards[("keep", tier)]), np.array(rewards[("oracle", tier)])
        scale = oracle.mean() - keep.mean()

        def norm(values) -> float:
            return float((np.mean(values) - keep.mean()) / scale)

        scores = {p: norm(rewards[(p, tier)]) for p in POLICIES if (p, tier) in rewards}
        heuristics = {p: s for p, s in scores.items() if p in HEURISTICS}
        best = max(heuristics, key=heuristics.get)
        scenarios = [make_scenario(tier, data["seed"] + i) for i in range(len(keep))]
        blind = {rule.name: norm([play(sc, rule).score()["reward"] for sc in scenarios])
                 for rule in battery()}
        worst = max(blind, key=blind.get)
        gaps = oracle - keep
        out["tiers"][tier] = {"oracle_minus_keep_mean": float(gaps.mean()),
                              "oracle_minus_keep_min": float(gaps.min()),
                              "normalized": scores, "best_heuristic": best, "blind": blind}
        lines.append(f"| {tier} | {gaps.mean():+.3f}, {gaps.min():+.3f} | `{best}` "
                     f"{heuristics[best]:+.2f} | `{worst}` {blind[worst]:+.2f} | "
                     f"{heuristics[best] - blind[worst]:+.2f} |")
        print(tier, "done", file=sys.stderr, flush=True)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
