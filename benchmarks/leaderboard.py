"""The leaderboard table, generated from a bench JSON (``kv-cache-rl bench --json``).

    .venv/bin/python benchmarks/leaderboard.py benchmarks/results/bench.json

Prints a markdown table: per policy and tier the mean reward and the normalised score
(keep 0, oracle 1, ratio of means), sorted by the hard tier's normalised score.
``benchmarks/tables.py`` uses :func:`table` for the leaderboards in README.md, docs/ and the
environment's README.
"""

from __future__ import annotations

import json
import sys


def table(data: dict) -> str:
    rows: dict[str, dict] = {}
    for r in data["results"]:
        rows.setdefault(r["policy"], {})[r["difficulty"]] = r
    tiers = [t for t in ("easy", "medium", "hard") if any(t in v for v in rows.values())]
    head = "| policy | " + " | ".join(f"{t} reward | {t} normalised" for t in tiers) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(tiers))]

    def key(item):
        cell = item[1].get(tiers[-1])
        return -(cell["normalized_score"] or 0.0) if cell else 0.0

    for policy, cells in sorted(rows.items(), key=key):
        parts = []
        for t in tiers:
            c = cells.get(t)
            norm = "-" if c is None or c["normalized_score"] is None \
                else f"{c['normalized_score']:+.2f}"
            parts.append("-" if c is None else f"{c['reward_mean']:+.3f}")
            parts.append(norm)
        lines.append(f"| `{policy}` | " + " | ".join(parts) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/bench.json") as f:
        print(table(json.load(f)))
