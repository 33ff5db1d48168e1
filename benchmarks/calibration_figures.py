"""The calibration's headline figures beside the external numbers they were checked against.

    python benchmarks/calibration_figures.py [--data ../shared/data] [--json out.json]

The tests check properties that hold by construction (the shipped JSON agrees with itself and
with the raw data); the literal reference numbers live here instead: vLLM's measured block
count, published parameter counts, the validation run's decode throughput, the workload traces'
burstiness and prefix reuse, and the agentic generator's shares. Each row prints the simulator's
figure, the reference and where the reference comes from; the ones that need the raw data
(``../shared/data``) are left out when it is absent.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kv_cache_rl.hardware.profiles import load_profile, model_spec, precision_tiers  # noqa: E402
from kv_cache_rl.workload.arrivals import interarrival_stats, sample_arrivals  # noqa: E402
from kv_cache_rl.workload.generators import (AGENTIC_DEFAULTS, TURN_STATS_WORKLOAD,  # noqa: E402
                                             generate, load_statistics)

RUN = "validation/vllm-0.19_rtxpro6000_llama-3.1-8b"


def hardware() -> list[tuple]:
    rows = []
    small = load_profile("Llama-3.1-8B", "RTX4090")
    pro = load_profile("Llama-3.1-8B", "RTXPRO6000")
    h100 = load_profile("Llama-3.1-8B", "H100")
    rows.append(("Llama-3.1-8B / RTX 4090 KV blocks (16 tok, util 0.9)",
                 small.num_gpu_blocks(16, 0.9), "2588 +- 2",
                 "vLLM 0.19 startup log: 2,588 blocks = 41,408 tokens"))
    rows.append(("Llama-3.1-8B / H100 KV tokens", h100.num_gpu_blocks() * 16, "400k-500k",
                 "roughly 400k+ tokens on an 80 GB H100 (notes/domain.md)"))
    rows.append(("RTX PRO 6000 / RTX 4090 KV blocks", round(pro.num_gpu_blocks()
                                                           / small.num_gpu_blocks(), 1),
                 "> 10", "96 GB vs 24 GB less 16 GB of weights"))
    for name, published in (("Llama-3.1-8B", "8.03e9"), ("Qwen3-32B", "32.8e9")):
        rows.append((f"{name} parameters", f"{model_spec(name).num_params:.4g}", published,
                     "model card"))
    rows.append(("Llama-3.1-8B KV bytes per token", model_spec("Llama-3.1-8B").kv_bytes_per_token,
                 131072, "2 x 32 layers x 8 KV heads x 128 x 2 B"))
    _, int8, int4 = precision_tiers()
    rows.append(("int8 attention-time factor", int8.attention_factor, "0.6-1.2",
                 "measured fp8/bf16 range on H100 (notes/domain.md)"))
    rows.append(("int8 / int4 quality cost", f"{int8.quality_cost} / {int4.quality_cost}",
                 "< 0.1", "modelling choice (tiers.json sources)"))
    cost = pro.cost
    rows.append(("RTX PRO 6000: 64 decodes x 1k KV, ms",
                 round(1e3 * cost.iteration_time_s([], 64, 64 * 1000.0), 2), "5-100",
                 "a decode step of an 8B model"))
    rows.append(("RTX PRO 6000: 128 decodes x 1,080 KV, tok/s",
                 round(128 / cost.iteration_time_s([], 128, 128 * 1080.0)), "4,300-5,300",
                 "vLLM 0.19 decoded 4,730-4,860 tok/s at t = 13-15 s of the validation run"))
    return rows


def validation(data: Path) -> list[tuple]:
    """Per pure-decode second at a full batch: the model's rate vs the measured one."""
    run = data / RUN
    if not run.is_dir():
        return []
    full = json.loads((run / "meta.json").read_text())["engine_kwargs"]["max_num_seqs"]
    requests = [json.loads(line) for line in (run / "requests.jsonl").open()]
    start = min(r["queued_ts"] for r in requests)
    cost = load_profile("Llama-3.1-8B", "RTXPRO6000").cost
    rows = []
    with (run / "timeseries.csv").open() as f:
        for row in csv.DictReader(f):
            if float(row["prompt_throughput"]) or int(row["running"]) != full:
                continue
            mid = start + float(row["t"]) - 0.5
            kv = [r["input_toks"] + 1 + (mid - r["first_token_ts"])
                  / (r["last_token_ts"] - r["first_token_ts"]) * (r["output_toks"] - 1)
                  for r in requests if r["first_token_ts"] <= mid < r["last_token_ts"]]
            mean_kv = sum(kv) / len(kv)
            rows.append((f"t = {row['t']} s: {full} decodes x {mean_kv:.0f} KV, tok/s",
                         round(full / cost.iteration_time_s([], full, full * mean_kv)),
                         row["gen_throughput"], f"{RUN}/timeseries.csv (test bar: 10%)"))
    return rows


def workloads() -> list[tuple]:
    code, conv = load_statistics("azure_code"), load_statistics("azure_conv")
    mc, ms = load_statistics("mooncake_conversation"), load_statistics("mooncake_synthetic")
    rows = [
        ("azure_code inter-arrival CV", code["interarrival"]["cv"], "12-14.5 (about 13)",
         "shared/data/README.md"),
        ("azure_code arrival model's CV", code["arrival_model"]["implied"]["cv"], "12-14.5",
         "the MMPP2 keeps the burstiness"),
        ("azure_conv inter-arrival CV", conv["interarrival"]["cv"], "0.9-1.3",
         "Poisson-like (README)"),
        ("azure_conv mean rate, req/s", conv["mean_rate_rps"], "5.3-5.8", "about 5.5 (README)"),
        ("mooncake_conversation reusable prefix", mc["prefix_reuse"]["reusable_token_fraction"],
         "0.37 +- 0.02", "about 37% (README)"),
        ("mooncake_synthetic reusable prefix", ms["prefix_reuse"]["reusable_token_fraction"],
         "0.65 +- 0.02", "about 65% (README)"),
        ("mooncake system prefix blocks (conv / synth)",
         f"{mc['prefix_reuse']['system_prefix_blocks']} / "
         f"{ms['prefix_reuse']['system_prefix_blocks']}", "1 / 0",
         "every conversation request starts with hash 0 (README)"),
        ("mooncake_conversation timestamp bucket, s", mc["interarrival"]["timestamp_bucket_s"],
         3.0, "3 s buckets (README)"),
    ]
    model = code["arrival_model"]
    t = sample_arrivals(model, 40 * 3600.0, np.random.default_rng(1))
    rows.append(("azure_code MMPP2 sampled over 40 h, req/s", round(len(t) / (40 * 3600), 3),
                 "2.566 +- 10%", "the profile's mean rate"))
    rows.append(("  its inter-arrival CV", round(interarrival_stats(t)["cv"], 2),
                 model["implied"]["cv"], "closed form (test bar: 15%)"))
    trace = generate("azure_conv", duration_s=1800.0, rate_scale=0.5,
                     rng=np.random.default_rng(11))
    reqs = trace.requests
    thinking = [r for r in reqs if r.reasoning_toks > 0]
    rows += [
        ("agentic azure_conv: ephemeral share of requests",
         round(float(np.mean([r.ephemeral for r in reqs])), 3), "0.05-0.25",
         f"subagent_prob {AGENTIC_DEFAULTS['subagent_prob']} after a tool call"),
        ("agentic azure_conv: priority share of requests",
         round(float(np.mean([r.priority for r in reqs])), 3), "0.05-0.17",
         f"priority_share {AGENTIC_DEFAULTS['priority_share']} of sessions"),
        ("agentic azure_conv: reasoning share of thinking turns' output",
         round(sum(r.reasoning_toks for r in thinking) / sum(r.output_toks for r in thinking), 3),
         "0.4 +- 0.05", "Dynamo's 'about 40% of output'"),
    ]
    gaps = load_statistics(TURN_STATS_WORKLOAD)["sessions"]["turn_gap_s_percentiles_0_5_100"]
    rows.append(("Mooncake user turn gap p0-p100, s", f"{gaps[0]}-{gaps[-1]}", "5.9-3030",
                 "mooncake_conversation sessions"))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    sections = {"hardware": hardware(), "validation run (decode seconds)": validation(args.data),
                "workloads": workloads()}
    for title, rows in sections.items():
        if not rows:
            print(f"\n## {title}: skipped (no {args.data / RUN})")
            continue
        print(f"\n## {title}\n\n| figure | simulator | reference | source |\n|---|---|---|---|")
        for name, value, ref, source in rows:
            print(f"| {name} | {value} | {ref} | {source} |")
    if args.json:
        args.json.write_text(json.dumps(
            {k: [dict(zip(("figure", "simulator", "reference", "source"), map(str, r)))
                 for r in rows] for k, rows in sections.items()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
