"""Fidelity and speed of ``kv-cache-rl replay`` against the real vLLM 0.19 run.

    python benchmarks/fidelity.py [--data ../shared/data] [--json out.json] [--repeats 5]

1. Fidelity: the ShareGPT 300-request trace on Llama-3.1-8B / RTX PRO 6000 with the run's
   engine settings (max_num_seqs 128, max_num_batched_tokens 2048, block 16, prefix caching,
   chunked prefill), against ``validation/.../requests.jsonl`` (TTFT from queued to first
   token, TPOT over the output, latency from queued to last token, as vLLM's benchmark).
2. Speed: the replay as a whole process (``python -m kv_cache_rl replay ...``), median wall
   time over repeats, as a fraction of the served (simulated) time.
3. KV-bound: the same trace with 10x fewer KV blocks than its peak demand, where the queue must
   grow, KV sit above 95% and vLLM preempt and recompute.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACE = "traces/sharegpt_llama-3.1-8b_300req_10rps.jsonl"
RUN = "validation/vllm-0.19_rtxpro6000_llama-3.1-8b"
SETTINGS = ["--model", "Llama-3.1-8B", "--gpu", "RTXPRO6000", "--max-num-seqs", "128",
            "--max-num-batched-tokens", "2048"]
BARS = {"tpot_ms": 0.05, "latency_ms": 0.10, "ttft_ms": 0.15}  # acceptance bars (aim 3/5/10%)


def real_metrics(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "requests.jsonl").open()]
    ttft = [1000 * (r["first_token_ts"] - r["queued_ts"]) for r in rows]
    lat = [1000 * (r["last_token_ts"] - r["queued_ts"]) for r in rows]
    tpot = [1000 * (r["last_token_ts"] - r["first_token_ts"]) / (r["output_toks"] - 1)
            for r in rows if r["output_toks"] > 1]
    return {"ttft_ms": statistics.mean(ttft), "tpot_ms": statistics.mean(tpot),
            "latency_ms": statistics.mean(lat),
            "makespan_s": max(r["last_token_ts"] for r in rows)
            - min(r["queued_ts"] for r in rows)}


def replay_summary(trace: Path, extra: list[str]) -> dict:
    from kv_cache_rl.apps.cli import _engine_config, build_parser
    from kv_cache_rl.hardware.profiles import load_profile
    from kv_cache_rl.apps.replay import replay
    from kv_cache_rl.workload.traces import load_trace

    args = build_parser().parse_args(["replay", str(trace), *SETTINGS, *extra])
    profile = load_profile(args.model, args.gpu, args.tensor_parallel_size)
    result = replay(load_trace(trace), profile, _engine_config(args, profile))
    return result.summary


def process_wall(trace: Path, repeats: int) -> float:
    cmd = [sys.executable, "-m", "kv_cache_rl", "replay", str(trace), *SETTINGS]
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


def peak_blocks(trace: Path) -> int:
    """Peak KV blocks the trace holds with an unbounded pool (its demand)."""
    from kv_cache_rl.engine.config import EngineConfig
    from kv_cache_rl.engine import UNITS_PER_BLOCK, Engine
    from kv_cache_rl.hardware.profiles import load_profile
    from kv_cache_rl.workload.traces import load_trace

    engine = Engine(EngineConfig(num_gpu_blocks=1 << 22, max_num_seqs=128),
                    load_profile("Llama-3.1-8B", "RTXPRO6000"), load_trace(trace))
    engine.fast_forward = False
    peak = 0
    while not engine.done:
        if engine.step() == 0.0:
            nxt = engine.next_event_s()
            if nxt is None:
                break
            engine._idle_until(nxt)
        peak = max(peak, engine.pool.used_units)
    return peak // UNITS_PER_BLOCK


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--json", help="write all figures as JSON")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    data = Path(args.data)
    trace = data / TRACE
    if not trace.is_file():
        print(f"no data at {data}: pass --data", file=sys.stderr)
        return 2
    real = real_metrics(data / RUN)
    sim = replay_summary(trace, [])
    out = {"fidelity": {}, "speed": {}, "kv_bound": {}}
    print("## Fidelity (mean, simulated vs real vLLM 0.19)")
    print("| metric | simulated | real | error | bar |")
    print("|---|---|---|---|---|")
    for key, bar in BARS.items():
        err = sim[key]["mean"] / real[key] - 1
        out["fidelity"][key] = {"sim": sim[key]["mean"], "real": real[key], "rel_err": err}
        print(f"| {key} | {sim[key]['mean']:.1f} | {real[key]:.1f} | {100 * err:+.1f}% | "
              f"{'PASS' if abs(err) <= bar else 'FAIL'} (<= {100 * bar:.0f}%) |")
    print(f"| makespan_s | {sim['makespan_s']:.1f} | {real['makespan_s']:.1f} | "
          f"{100 * (sim['makespan_s'] / real['makespan_s'] - 1):+.1f}% | |")

    wall = process_wall(trace, args.repeats)
    ratio = sim["makespan_s"] / wall
    out["speed"] = {"process_wall_s": wall, "served_s": sim["makespan_s"], "speedup": ratio}
    print(f"\n## Speed\nwhole process {wall:.3f} s (median of {args.repeats}) for "
          f"{sim['makespan_s']:.1f} s served: 1/{ratio:.0f} of served time "
          f"({'PASS' if ratio >= 200 else 'FAIL'}: bar 1/200)")

    peak = peak_blocks(trace)
    bound = replay_summary(trace, ["--num-gpu-blocks", str(max(peak // 10, 1))])
    generated = sum(r["output_toks"] for r in map(json.loads, trace.open()))
    out["kv_bound"] = {k: bound[k] for k in ("preemptions", "recomputed_tokens", "peak_waiting",
                                             "seconds_kv_ge_95", "kv_usage_mean", "makespan_s")}
    out["kv_bound"] |= {"num_gpu_blocks": peak // 10, "peak_demand_blocks": peak,
                        "ttft_ms_mean": bound["ttft_ms"]["mean"]}
    print(f"\n## KV-bound: {peak // 10} blocks (peak demand {peak})")
    print(f"preemptions {bound['preemptions']}, recomputed tokens {bound['recomputed_tokens']}, "
          f"peak waiting {bound['peak_waiting']} (compute-bound run: {sim['peak_waiting']}), "
          f"KV >= 95% for {bound['seconds_kv_ge_95']:.1f} of {bound['makespan_s']:.1f} s, "
          f"mean KV usage {bound['kv_usage_mean']:.2f}, TTFT mean "
          f"{bound['ttft_ms']['mean']:.0f} ms, makespan {bound['makespan_s']:.1f} s, "
          f"{generated} tokens generated")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
