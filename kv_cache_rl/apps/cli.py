"""The ``kv-cache-rl`` command line. Subcommands import what they need lazily, so a replay
process starts fast."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kv_cache_rl.errors import ConfigError, KVCacheRLError, MissingFileError


def _add_tp_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, metavar="N",
                   help="GPUs the model is sharded over (vLLM's flag): per-GPU compute from the "
                        "TP-N profile plus its all-reduces, KV memory per GPU with the KV heads "
                        "and the weights split N ways (an unshipped N lists the shipped ones)")


def _add_hardware_args(p: argparse.ArgumentParser) -> None:
    """--model / --gpu / --tensor-parallel-size for the scenario commands (bench, train)."""
    p.add_argument("--model", default=None,
                   help="model of the scenarios' server (default Llama-3.1-8B)")
    p.add_argument("--gpu", default=None, help="its GPU (default RTXPRO6000)")
    _add_tp_arg(p)


def _scenario_hardware(args) -> dict:
    """The scenarios' server for a bench / train run, checked now (make_scenario's keywords)."""
    from kv_cache_rl.task.scenario import resolve_hardware

    chosen = resolve_hardware(args.model, args.gpu, args.tensor_parallel_size)
    return dict(zip(("model", "gpu", "tensor_parallel_size"), chosen))


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="Llama-3.1-8B", help="model name (case-insensitive)")
    p.add_argument("--gpu", default="RTXPRO6000", help="GPU name (case-insensitive)")
    _add_tp_arg(p)
    p.add_argument("--num-gpu-blocks", type=int, help="override the KV pool size (16-token blocks)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--no-prefix-caching", action="store_true")


def _engine_config(args, profile):
    from kv_cache_rl.engine.config import EngineConfig

    blocks = args.num_gpu_blocks or profile.num_gpu_blocks(
        block_size=args.block_size, gpu_memory_utilization=args.gpu_memory_utilization)
    return EngineConfig(num_gpu_blocks=blocks, block_size=args.block_size,
                        max_num_seqs=args.max_num_seqs,
                        max_num_batched_tokens=args.max_num_batched_tokens,
                        enable_prefix_caching=not args.no_prefix_caching)


def _cmd_replay(args) -> int:
    from kv_cache_rl.hardware.profiles import load_profile
    from kv_cache_rl.apps.replay import replay, write_timeseries
    from kv_cache_rl.workload.traces import load_trace, scale_rate, window

    profile = load_profile(args.model, args.gpu, args.tensor_parallel_size)
    trace = load_trace(args.trace)
    if args.start is not None or args.end is not None:
        trace = window(trace, args.start or 0.0, args.end if args.end is not None else float("inf"))
    if args.rate_scale != 1.0:
        trace = scale_rate(trace, args.rate_scale)
    config = _engine_config(args, profile)
    result = replay(trace, profile, config, timeseries=args.timeseries is not None)
    if args.json:
        Path(args.json).write_text(json.dumps(result.summary, indent=2) + "\n")
    if args.timeseries:
        write_timeseries(result.timeseries, Path(args.timeseries))
    _print_summary(result.summary, profile, config, args.trace)
    return 0


def _print_summary(summary: dict, profile, config, trace_name) -> None:
    tp = getattr(profile, "tp", 1)
    where = (f"{profile.gpu.name}" if tp == 1 else
             f"{tp}x {profile.gpu.name} (tensor parallel {tp}, all-reduces included)")
    lines = [f"replay {trace_name}: {profile.model.name} on {where}, "
             f"{config.num_gpu_blocks} KV blocks x {config.block_size} tokens"
             + ("" if tp == 1 else " per GPU")]
    for key in ("ttft_ms", "tpot_ms", "latency_ms"):
        d = summary[key]
        lines.append(f"  {key:<18} mean {d['mean']:>10.1f}  p50 {d['p50']:>10.1f}  "
                     f"p90 {d['p90']:>10.1f}  p99 {d['p99']:>10.1f}")
    for key in ("num_requests", "makespan_s", "preemptions", "recomputed_tokens", "peak_running",
                "peak_waiting", "seconds_kv_ge_95", "kv_usage_mean", "wall_s"):
        value = summary[key]
        lines.append(f"  {key:<18} {value:.3f}" if isinstance(value, float)
                     else f"  {key:<18} {value}")
    print("\n".join(lines))


def _cmd_calibrate(args) -> int:
    from kv_cache_rl.hardware.calibrate import run

    if not Path(args.data, "models").is_dir():
        raise MissingFileError(f"{args.data}: not the raw data directory (it has no models/)")
    for path in run(Path(args.data), Path(args.out) if args.out else None):
        print(f"wrote {path}")
    return 0


def _cmd_bench(args) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from kv_cache_rl.apps import bench
    from kv_cache_rl.task.scenario import DIFFICULTIES, parse_fractions

    difficulties = DIFFICULTIES if args.difficulty == "all" else (args.difficulty,)
    policies = tuple(p.strip() for p in args.policies.split(",")) if args.policies \
        else bench.DEFAULT_POLICIES
    if args.episodes < 1:
        raise ConfigError("--episodes must be >= 1")
    fractions = parse_fractions(args.memory_fraction)
    console = Console(width=max(100, Console().width))
    total = len(difficulties) * len(policies) * args.episodes
    chosen = _scenario_hardware(args)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("episodes", total=total)
        cells = bench.run(difficulties, args.episodes, args.seed, policies, steps=args.steps,
                          memory_fraction=fractions, trace_path=args.trace,
                          progress=lambda: progress.advance(task), jobs=args.jobs,
                          hardware=chosen)
    console.print(f"server: {chosen['model']} on {chosen['tensor_parallel_size']}x "
                  f"{chosen['gpu']}")
    if args.trace:
        console.print(f"episodes cut from windows of {args.trace} (the trace's own arrivals)")
    if fractions is not None:
        console.print(f"KV budget: {fractions[0]:g}-{fractions[1]:g} x each window's peak "
                      "demand (replacing the tiers' own)")
    bench.print_leaderboard(cells, console)
    if args.json:
        Path(args.json).write_text(json.dumps(
            bench.to_json(cells, seed=args.seed, episodes=args.episodes,
                          memory_fraction=None if fractions is None else list(fractions),
                          trace_path=args.trace),
            indent=2) + "\n")
        console.print(f"wrote {args.json}")
    if args.plot:
        for path in bench.plot(cells, args.plot):
            console.print(f"wrote {path}")
    return 0


def _cmd_serve(args) -> int:
    from kv_cache_rl.task.episode import MAX_CALLS_PER_STEP
    from kv_cache_rl.apps.serve import DEFAULT_POLICY, serve

    serve(args.policy or DEFAULT_POLICY, host=args.host, port=args.port,
          max_calls=args.max_calls or MAX_CALLS_PER_STEP)
    return 0


def _cmd_train(args) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from kv_cache_rl.task.scenario import parse_fractions
    from kv_cache_rl.apps.train import DEFAULT_OUT, parse_seeds, train

    command = (f"kv-cache-rl train --seed {args.seed} --difficulty {args.difficulty} "
               f"--generations {args.generations} --population {args.population} "
               f"--elite {args.elite} --batch {args.batch} --workers {args.workers} "
               f"--train-seeds {args.train_seeds} --select-seeds {args.select_seeds} "
               f"--eval-seeds {args.eval_seeds}"
               + (f" --memory-fraction {args.memory_fraction}" if args.memory_fraction else "")
               + (f" --model {args.model}" if args.model else "")
               + (f" --gpu {args.gpu}" if args.gpu else "")
               + (f" --tensor-parallel-size {args.tensor_parallel_size}"
                  if args.tensor_parallel_size != 1 else "")
               + (" --install" if args.install else ""))
    out = Path(args.out) if args.out else DEFAULT_OUT.with_name(f"learned_seed{args.seed}.json")
    hardware = _scenario_hardware(args)
    with Progress(console=Console(stderr=True), transient=True) as progress:
        bar = progress.add_task("CEM generations", total=args.generations)
        train(out=out, install=args.install, difficulty=args.difficulty, seed=args.seed,
              generations=args.generations, population=args.population, elite=args.elite,
              batch=args.batch, workers=args.workers,
              train_seeds=parse_seeds(args.train_seeds),
              select_seeds=parse_seeds(args.select_seeds),
              eval_seeds=None if args.eval_seeds == "none" else parse_seeds(args.eval_seeds),
              fractions=parse_fractions(args.memory_fraction), command=command,
              hardware=hardware, log=progress.console.print,
              progress=lambda: progress.advance(bar))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kv-cache-rl", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("replay", help="replay a request trace with no agent (vLLM's behaviour)")
    p.add_argument("trace", help="JSONL (arrival_s,input_toks,output_toks[,hash_ids]), "
                                 "Azure 2023 CSV or Mooncake JSONL")
    _add_engine_args(p)
    p.add_argument("--start", type=float, help="window start, seconds into the trace")
    p.add_argument("--end", type=float, help="window end, seconds into the trace")
    p.add_argument("--rate-scale", type=float, default=1.0, help="multiply the arrival rate")
    p.add_argument("--json", metavar="PATH", help="write the summary as JSON")
    p.add_argument("--timeseries", metavar="PATH", help="write per-second CSV like vLLM's log")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("bench", help="run baseline policies on the same episodes: leaderboard")
    p.add_argument("--difficulty", default="all", choices=("easy", "medium", "hard", "all"))
    p.add_argument("--episodes", type=int, default=3, help="episodes per policy and difficulty")
    p.add_argument("--seed", type=int, default=0, help="episode i uses scenario seed S + i")
    p.add_argument("--policies", help="comma-separated registry names (default: all)")
    p.add_argument("--steps", type=int, default=20, help="decision steps per episode")
    p.add_argument("--json", metavar="PATH", help="write results as JSON")
    p.add_argument("--plot", metavar="DIR", help="write leaderboard and memory-usage PNGs")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="processes (default: all cores); the scores are identical to --jobs 1")
    p.add_argument("--memory-fraction", metavar="F|LO:HI",
                   help="KV budget as a fraction of each window's peak demand, fixed or drawn "
                        "per seed from LO..HI, instead of the tiers' own")
    p.add_argument("--trace", metavar="PATH",
                   help="cut each episode from a window of this raw trace (JSONL, Azure CSV, "
                        "Mooncake JSONL) instead of generating it from the workload profiles")
    _add_hardware_args(p)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("serve", help="OpenAI-compatible chat server that plays a built-in policy "
                                     "(evaluate the verifiers environment with no API key)")
    p.add_argument("--policy", default=None,
                   help="registry name of a policy that acts from the observation text "
                        "(default: the best heuristic, kv_cache_rl.apps.serve.DEFAULT_POLICY)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-calls", type=int, default=None,
                   help="at most this many tool calls per assistant message (default: "
                        "the episode's cap, kv_cache_rl.task.episode.MAX_CALLS_PER_STEP)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("train", help="train the `learned` policy (cross-entropy method) and "
                                     "write its weights")
    p.add_argument("--out", help="weights JSON (default: runs/learned_seed<SEED>.json)")
    p.add_argument("--install", action="store_true",
                   help="also replace the shipped weights (the package's "
                        "data/policies/learned.json, what `learned` loads)")
    p.add_argument("--seed", type=int, default=0, help="the CEM's random seed")
    p.add_argument("--difficulty", default="hard", choices=("easy", "medium", "hard"))
    p.add_argument("--generations", type=int, default=30)
    p.add_argument("--population", type=int, default=32, help="samples per generation")
    p.add_argument("--elite", type=int, default=8, help="samples the Gaussian is refitted to")
    p.add_argument("--batch", type=int, default=16, help="training scenarios per generation")
    p.add_argument("--workers", type=int, default=2, help="processes")
    p.add_argument("--train-seeds", default="1000:2000", help="scenario seeds LO:HI to train on")
    p.add_argument("--select-seeds", default="2000:2040",
                   help="seeds that pick between the final mean and the best sample")
    p.add_argument("--eval-seeds", default="0:50",
                   help="held-out seeds for the report (bench's), or 'none'")
    p.add_argument("--memory-fraction", metavar="LO:HI",
                   help="train on KV budgets drawn from LO..HI x peak demand instead of the "
                        "tier's own (the held-out report uses the tier's own)")
    _add_hardware_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("calibrate", help="derive the shipped calibration from raw measurements")
    p.add_argument("--data", required=True, help="the raw data directory (../shared/data)")
    p.add_argument("--out", help="output directory (default: the package's data/calibration)")
    p.set_defaults(func=_cmd_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(["bench"] if argv == [] else argv)
    try:
        return args.func(args)
    except KVCacheRLError as exc:  # a bad name, file or argument: one line; a bug keeps its traceback
        print(f"kv-cache-rl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
