"""Derive workload statistics (lengths, arrivals, prefix reuse, sessions) from public traces.

``python -m kv_cache_rl.workload.statistics [--data-dir ../shared/data] [--out-dir ...]`` reads
the read-only traces in ``<data-dir>/traces`` and writes one JSON per workload to
``kv_cache_rl/data/workloads/``. Only these derived statistics are shipped, never the traces.

Per workload: source and licence, request count, duration, mean rate, 101 percentiles (p0..p100,
integers) of input and output tokens, inter-arrival statistics and a fitted arrival model
(``arrivals.fit_arrival_model``). Mooncake statistics add ``prefix_reuse`` and ``sessions``,
inferred from ``hash_ids`` (one id per 512-token block; equal id = equal prefix up to it):

* reusable fraction: prompt tokens covered by leading ids already seen in an earlier request
  (an infinite prefix cache), over all prompt tokens;
* system prefix: the leading positions where every request has the same id;
* sessions: request B continues A if B's ids start with all of A's *full*-block ids (A's last
  id covers a partial block, ``len(hash_ids) == ceil(input / 512)``, which the next turn cannot
  match: requiring it links only 12 of 12,031 conversation requests) and that match goes beyond
  the system prefix. Among several candidates the longest match (latest on ties) is the parent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from kv_cache_rl import DATA_DIR
from kv_cache_rl.workload.arrivals import fit_arrival_model, interarrival_stats
from kv_cache_rl.workload.requests import Trace
from kv_cache_rl.workload.sessions import find_parents, system_prefix_blocks
from kv_cache_rl.workload.traces import load_trace

DEFAULT_DATA_DIR = DATA_DIR.parents[2] / "shared" / "data"  # a checkout beside ../shared
DEFAULT_OUT_DIR = DATA_DIR / "workloads"

_AZURE = ("Azure LLM inference trace 2023 (Azure/AzurePublicDataset, AzureLLMInferenceTrace_{}); "
          "cite Patel et al., Splitwise, ISCA'24", "CC-BY-4.0")
_MOONCAKE = ("Mooncake {} trace (kvcache-ai/Mooncake, FAST'25 traces); cite Qin et al., "
             "Mooncake, FAST'25", "Apache-2.0")
SOURCES = {  # name -> (file in traces/, source, licence)
    "azure_conv": ("azure_llm_2023_conv.csv", _AZURE[0].format("conv"), _AZURE[1]),
    "azure_code": ("azure_llm_2023_code.csv", _AZURE[0].format("code"), _AZURE[1]),
    "mooncake_conversation": ("mooncake_conversation.jsonl", _MOONCAKE[0].format("conversation"),
                              _MOONCAKE[1]),
    "mooncake_synthetic": ("mooncake_synthetic.jsonl", _MOONCAKE[0].format("synthetic"),
                           _MOONCAKE[1]),
    "sharegpt": ("sharegpt_llama-3.1-8b_300req_10rps.jsonl",
                 "ShareGPT requests at 10 req/s tokenized for Llama-3.1-8B "
                 "(casys-kaist/LLMServingSim)", "MIT"),
}


def percentiles(x, q=None) -> list[int]:
    """Integer percentiles of ``x``: p0..p100 unless ``q`` lists others."""
    q = np.arange(101) if q is None else q
    return [int(round(v)) for v in np.percentile(np.asarray(x, dtype=float), q)]


def timestamp_bucket_s(t: np.ndarray) -> float | None:
    """The bucket width if timestamps are quantised coarsely (Mooncake conversation: 3 s)."""
    u = np.unique(t)
    if len(u) < 3 or len(u) > 0.5 * len(t):
        return None
    step = float(np.median(np.diff(u)))
    on_grid = np.abs(np.diff(u) / step - np.round(np.diff(u) / step)) < 0.01
    return round(step, 3) if step >= 0.5 and on_grid.mean() > 0.95 else None


def prefix_reuse(trace: Trace) -> dict:
    """Reuse with an infinite cache, and the universally shared leading blocks."""
    block, reqs = trace.hash_block_tokens, trace.requests
    sys_blocks = system_prefix_blocks(trace)
    seen: set[int] = set()
    hit_toks = beyond_sys = 0
    pos: dict[int, tuple] = {}
    consistent = True
    for r in reqs:
        n = 0
        for x in r.hash_ids:
            if x not in seen:
                break
            n += 1
        hit_toks += min(n * block, r.input_toks)
        beyond_sys += max(0, min(n * block, r.input_toks) - sys_blocks * block)
        for i, x in enumerate(r.hash_ids):  # id -> (position, previous id) must be a function
            if pos.setdefault(x, (i, r.hash_ids[i - 1] if i else -1)) != \
                    (i, r.hash_ids[i - 1] if i else -1):
                consistent = False
        seen.update(r.hash_ids)
    total = sum(r.input_toks for r in reqs)
    return {"hash_block_tokens": block,
            "reusable_token_fraction": round(hit_toks / total, 4),
            "reusable_token_fraction_beyond_system": round(beyond_sys / total, 4),
            "system_prefix_blocks": sys_blocks,
            "system_prefix_toks": sys_blocks * block,
            "system_prefix_note": (f"every request shares its first {sys_blocks} block(s): "
                                   f"{sys_blocks * block} to {(sys_blocks + 1) * block - 1} "
                                   "shared tokens") if sys_blocks else
                                  "no leading block is shared by every request",
            "hash_ids_prefix_consistent": consistent,
            "distinct_hash_ids": len(seen)}


def session_stats(trace: Trace, sys_blocks: int) -> dict:
    reqs = trace.requests
    parent = np.asarray(find_parents(trace, sys_blocks))
    root = np.arange(len(reqs))
    for i, p in enumerate(parent):
        if p >= 0:
            root[i] = root[p]
    turns = np.bincount(np.unique(root, return_inverse=True)[1])
    at_least = [(turns >= k).sum() for k in range(1, 12)]
    child = np.flatnonzero(parent >= 0)
    par = parent[child]
    arr = np.array([r.arrival_s for r in reqs])
    inp = np.array([r.input_toks for r in reqs])
    out = np.array([r.output_toks for r in reqs])
    new = inp[child] - inp[par] - out[par]
    kids = np.bincount(par, minlength=len(reqs))
    return {
        "continuing_request_share": round(len(child) / len(reqs), 4),
        "sessions": int(len(turns)),
        "turns_per_session": {"mean": round(float(turns.mean()), 4),
                              "mean_multi_turn": round(float(turns[turns > 1].mean()), 4),
                              "p50_p90_p99_max": percentiles(turns, [50, 90, 99, 100]),
                              "histogram_1_to_10": [int((turns == k).sum()) for k in range(1, 11)],
                              "continue_prob_after_turn_1_to_10":
                                  [round(at_least[k] / at_least[k - 1], 4) for k in range(1, 11)]},
        "branching_parent_share": round(float((kids > 1).sum() / max(1, (kids > 0).sum())), 4),
        "turn_gap_s_percentiles_0_5_100": [
            round(float(v), 3) for v in np.percentile(arr[child] - arr[par], np.arange(0, 101, 5))],
        "input_growth_toks_quantiles": percentiles(inp[child] - inp[par]),
        "new_toks_quantiles": percentiles(new),
        "new_toks_note": "next prompt - previous prompt - previous output; negative when the "
                         "next prompt drops part of the history",
        "new_toks_negative_share": round(float((new < 0).mean()), 4),
    }


def derive_statistics(name: str, traces_dir: Path) -> dict:
    file, source, licence = SOURCES[name]
    trace = load_trace(traces_dir / file)
    t = np.array([r.arrival_s for r in trace.requests])
    inp = [r.input_toks for r in trace.requests]
    out = [r.output_toks for r in trace.requests]
    bucket = timestamp_bucket_s(t)
    raw_cv = interarrival_stats(t)["cv"]
    if bucket:  # spread each bucket's requests uniformly over it (fixed seed: reproducible)
        t = np.sort(t + np.random.default_rng(0).random(len(t)) * bucket)
    duration = float(t[-1] - t[0])
    prof = {
        "name": name, "source": source, "licence": licence, "file": file,
        "file_sha256": hashlib.sha256((traces_dir / file).read_bytes()).hexdigest(),
        "derived_by": "kv_cache_rl.workload.statistics",
        "num_requests": len(trace.requests),
        "duration_s": round(duration, 3),
        "mean_rate_rps": round((len(t) - 1) / duration, 6),
        "input_toks": {"mean": round(float(np.mean(inp)), 2), "quantiles": percentiles(inp)},
        "output_toks": {"mean": round(float(np.mean(out)), 2), "quantiles": percentiles(out)},
        "interarrival": {**interarrival_stats(t), "timestamp_bucket_s": bucket},
        "arrival_model": fit_arrival_model(t),
        "prefix_reuse": None, "sessions": None,
    }
    if bucket:
        prof["interarrival"].update(cv_raw=raw_cv, note=(
            f"timestamps come in {bucket} s buckets; statistics after spreading each bucket's "
            "requests uniformly over it (numpy seed 0)"))
    if any(r.hash_ids for r in trace.requests):
        prof["prefix_reuse"] = prefix_reuse(trace)
        prof["sessions"] = session_stats(trace, prof["prefix_reuse"]["system_prefix_blocks"])
    return prof


def derive_all_statistics(data_dir: str | Path = DEFAULT_DATA_DIR) -> dict[str, dict]:
    """All workloads' statistics from ``data_dir`` (the shared data dir or its ``traces/`` subdir)."""
    data_dir = Path(data_dir)
    traces_dir = data_dir / "traces" if (data_dir / "traces").is_dir() else data_dir
    return {name: derive_statistics(name, traces_dir) for name in SOURCES}


def dumps(obj, indent: int = 0) -> str:
    """JSON with one key per line but lists of numbers kept on one line."""
    pad = "  " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(pad + dumps(v, indent + 1) for v in obj) + "\n" + \
            "  " * indent + "]"
    return json.dumps(obj)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, prof in derive_all_statistics(args.data_dir).items():
        (args.out_dir / f"{name}.json").write_text(dumps(prof) + "\n")
        print(f"{name}: {prof['num_requests']} requests, {prof['mean_rate_rps']:.3f} req/s, "
              f"CV {prof['interarrival']['cv']}, model {prof['arrival_model']['model']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
