"""Wall-clock speed of two hot paths the tests do not time: the cost model's iteration time and
loading the largest raw trace.

    python benchmarks/hot_paths.py [--data ../shared/data] [--repeat 5]

* ``CostModel.iteration_time_s`` -- called once per simulated engine iteration; pure Python on
  purpose (no numpy). Best of ``--repeat`` runs of 2,000 calls on the H100 profile with a
  mixed batch (one 512-token chunk over 1,024 cached tokens, 64 decodes). It used to be a test
  bar of < 50 us a call (about 2-6 us on an idle core).
* ``load_trace`` of ``traces/mooncake_conversation.jsonl`` (12,031 requests with hash ids).
  Best of ``--repeat``; it used to be a test bar of < 1.5 s (about 0.3 s on a 2-core box).
  Skipped when the raw data is absent.
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kv_cache_rl.hardware.profiles import load_profile  # noqa: E402
from kv_cache_rl.workload.traces import load_trace  # noqa: E402


def iteration_time_us(repeat: int) -> float:
    cost = load_profile("Llama-3.1-8B", "H100").cost
    call = lambda: cost.iteration_time_s([(512, 1024)], 64, 64_000.0)  # noqa: E731
    return min(timeit.repeat(call, number=2000, repeat=repeat)) / 2000 * 1e6


def trace_load_s(path: Path, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        load_trace(path)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    print(f"iteration_time_s: {iteration_time_us(args.repeat):.2f} us per call "
          "(H100, 512-token chunk + 64 decodes; was a test bar of < 50 us)")
    path = args.data / "traces" / "mooncake_conversation.jsonl"
    if path.is_file():
        print(f"load_trace({path.name}): {trace_load_s(path, args.repeat):.3f} s "
              "(was a test bar of < 1.5 s)")
    else:
        print(f"load_trace: skipped ({path} not present)")


if __name__ == "__main__":
    main()
