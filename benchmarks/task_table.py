"""The task's reference table: keep's, the oracle's and every registered policy's reward on
seeds 0..N-1 of each tier (the bench's default episodes), for the state-blind battery test.

    .venv/bin/python benchmarks/task_table.py --seeds 20 --out tests/data/task_table.json

The test recomputes a sample of the table, so a stale table fails instead of passing quietly.
"""

from __future__ import annotations

import argparse
import json
import time

from kv_cache_rl.policies import POLICIES
from kv_cache_rl.policies.oracle import played
from kv_cache_rl.scenario import DIFFICULTIES, TASK_VERSION, make_scenario


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--out", default="tests/data/task_table.json")
    args = ap.parse_args()
    start = time.perf_counter()
    table = {"task_version": TASK_VERSION, "seeds": args.seeds,
             "command": f"python benchmarks/task_table.py --seeds {args.seeds}", "rewards": {}}
    for tier in DIFFICULTIES:
        for seed in range(args.seeds):
            sc = make_scenario(tier, seed)
            table["rewards"][f"{tier}/{seed}"] = {name: round(played(sc, name, 8)[0], 6)
                                                   for name in POLICIES}
            print(tier, seed, f"{time.perf_counter() - start:.0f}s", flush=True)
    with open(args.out, "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
