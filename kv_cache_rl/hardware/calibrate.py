"""Derive the shipped calibration (``kv_cache_rl/data/calibration/*.json``) from raw public data.

Run: ``python -c "from kv_cache_rl.hardware.calibrate import main; main(['--data', '../shared/data'])"``.
Inputs (read-only, never copied): ``models/*.json`` (HF configs), the vLLM 0.19 per-layer profiles
in ``profiles/llmservingsim`` (MIT) and the vLLM 0.14 aiconfigurator tables in
``profiles/aiconfigurator`` (Apache-2.0; see ``calibrate_aiconfigurator``). Outputs are small
JSON files of derived numbers, each naming its source files and licence.

Quality is measured, not assumed: every measured point gets a deterministic split key and
``crc32(key) % 5 == 0`` puts ~20% of them aside. The shipped tables are built from the other 80%
only, and ``holdout_median_abs_rel_err`` is the runtime ``CostModel``'s error on the held-back
points, per component (attention, dense, per_sequence). ``tests/test_calibration.py``
recomputes it from the raw data.

pandas/numpy are imported inside functions: they are derivation-only dependencies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kv_cache_rl import DATA_DIR
from kv_cache_rl.hardware import calibrate_aiconfigurator as aic
from kv_cache_rl.hardware.costmodel import CostModel, _grid
from kv_cache_rl.hardware.fitting import (LSS_LICENCE, fill_grid, holdout_errors, is_holdout,
                                         lss_dir)

OUT_DIR = DATA_DIR / "calibration"
MIB = 1 << 20
MODELS_LICENCE = "MIT (models/LICENSE.LLMServingSim.MIT, casys-kaist/LLMServingSim)"
LSS_PROFILES = (("Llama-3.1-8B", "RTX4090"), ("Llama-3.1-8B", "RTXPRO6000"),
                ("Qwen3-32B", "RTXPRO6000"))
# Tensor-parallel profiles measured per shard (meta.yaml: tp_degrees [1, 2]; hf_overrides
# shrink the model to one GPU's shard): (model, GPU, TP). The collectives come from
# ``tensor_parallel.LINKS``.
LSS_TP_PROFILES = (("Qwen3-32B", "RTXPRO6000", 2),)
MODELS = ("Llama-3.1-8B", "Qwen3-32B", "Llama-3.1-70B")  # models.json
# Ops per decoder layer and how often each runs (LLMServingSim profiler/models/{llama,qwen3}.yaml:
# input + post-attention RMSNorm are both "layernorm"; qk_norm is one merged entry).
LAYER_OPS = {"layernorm": 2, "qkv_proj": 1, "qk_norm": 1, "rotary_emb": 1, "o_proj": 1,
             "gate_up_proj": 1, "act_fn": 1, "down_proj": 1}
ONCE_OPS = ("embedding", "final_layernorm")
# Host link, one direction, large (MiB) blocks -- notes/domain.md. Memory as CUDA reports it.
GPUS = {
    "RTX4090": (24564, 25.0, "24564 MiB (CUDA); PCIe Gen4 x16 -> A100 PCIe Gen4 measured ~25 GB/s"),
    "RTXPRO6000": (97887, 50.0, "RTX PRO 6000 Blackwell 97887 MiB (CUDA); PCIe Gen5 x16 -> H100 "
                                "figure ~50 GB/s (vLLM KV offloading blog, Jan 2026)"),
    "H100": (81559, 50.0, "H100 SXM 80 GB, 81559 MiB (CUDA); ~50 GB/s one way with 2 MiB blocks "
                          "(vLLM KV offloading blog, Jan 2026)"),
    "A100": (81920, 25.0, "A100 SXM 80 GB, 81920 MiB; PCIe Gen4 ~25 GB/s measured "
                          "(notes/domain.md)"),
}
# The one measured capacity: vLLM 0.19, Llama-3.1-8B, RTX 4090, util 0.9 -> 2,588 blocks of 16.
CAPACITY_ANCHOR = {"model": "Llama-3.1-8B", "gpu": "RTX4090", "gpu_memory_utilization": 0.9,
                   "num_gpu_blocks": 2588, "block_size": 16, "max_num_batched_tokens": 2048,
                   "source": "vLLM 0.19 startup log figure quoted in notes/domain.md"}


# ---------------------------------------------------------------- model shapes and capacity
def model_shape(data_dir: Path, name: str) -> dict:
    """ModelSpec fields from ``models/<name>.json``; num_params counted from the shapes."""
    cfg = json.loads((Path(data_dir) / "models" / f"{name}.json").read_text())
    h, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // heads
    inter, vocab, layers = cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    per_layer = (h * heads * hd + 2 * h * kv * hd + heads * hd * h  # q, k, v, o
                 + 3 * h * inter + 2 * h)  # gate, up, down; two RMSNorms
    if cfg.get("model_type") == "qwen3":
        per_layer += 2 * hd  # q_norm, k_norm weights
    tied = cfg.get("tie_word_embeddings", False)
    params = vocab * h * (1 if tied else 2) + layers * per_layer + h  # + final norm
    return {"name": name, "num_layers": layers, "hidden_size": h, "num_attention_heads": heads,
            "num_kv_heads": kv, "head_dim": hd, "intermediate_size": inter,
            "vocab_size": vocab, "num_params": params, "dtype_bytes": 2,
            "kv_bytes_per_token": 2 * layers * kv * hd * 2,
            "source": f"models/{name}.json (HF config; {MODELS_LICENCE});"
                      " num_params counted from shapes: embeddings + layers x (q,k,v,o, gate/up/"
                      "down, norms) + final norm + untied lm_head"}


def capacity(models: dict) -> dict:
    """Activation/runtime reserve, calibrated on the single measured vLLM figure.

    vLLM: KV bytes = total x util - weights - (peak activations + non-torch + graphs). The reserve
    that reproduces 2,588 blocks is the middle of the feasible interval (block counts are floors).
    Other models/GPUs scale it with hidden_size x max_num_batched_tokens (the activation tensors
    of the profiling forward pass grow with both); the GPU does not enter.
    """
    a = CAPACITY_ANCHOR
    m = models[a["model"]]
    block_bytes = a["block_size"] * m["kv_bytes_per_token"]
    usable = GPUS[a["gpu"]][0] * MIB * a["gpu_memory_utilization"] - 2 * m["num_params"]
    reserve = usable - a["num_gpu_blocks"] * block_bytes - block_bytes / 2
    return {"anchor": a, "reserve_bytes_at_anchor": round(reserve),
            "reserve_bytes_per_hidden_token": reserve / (m["hidden_size"]
                                                          * a["max_num_batched_tokens"]),
            "method": "num_gpu_blocks = floor((memory x util - weights/tp - reserve) / (block_size"
                      " x kv_bytes_per_token/tp)); reserve = reserve_bytes_per_hidden_token x "
                      "hidden_size x max_num_batched_tokens, calibrated so the anchor gives its "
                      "measured block count (mid-point of the feasible interval)."}


# ---------------------------------------------------------------- LLMServingSim (vLLM 0.19)
def lss_points(data_dir: Path, model: str, gpu: str, num_layers: int, tp: int = 1) -> dict:
    """Measured points per component as (split_key, x, time_us). Dense x = tokens and the value is
    the whole pass (num_layers x per-layer ops + embedding + final norm); ``parts`` keeps the
    per-layer and once-per-pass sums per token count for fitting."""
    import pandas as pd
    d = lss_dir(data_dir, model, gpu, tp)
    at = pd.read_csv(d / "attention.csv")
    attn = [(f"attn|{c}|{kp}|{n}|{kd}", (int(c), int(kp), int(n), int(kd)), float(t))
            for c, kp, n, kd, t in at[["prefill_chunk", "kv_prefill", "n_decode", "kv_decode",
                                       "time_us"]].itertuples(index=False)]
    ops = pd.read_csv(d / "dense.csv").pivot(index="tokens", columns="layer", values="time_us")
    layer = sum(ops[o] * k for o, k in LAYER_OPS.items() if o in ops)
    once = sum(ops[o] for o in ONCE_OPS)
    parts = {int(t): (float(a), float(b)) for t, a, b in zip(ops.index, layer, once)}
    dense = [(f"dense|{t}", t, num_layers * a + b) for t, (a, b) in parts.items()]
    ps = pd.read_csv(d / "per_sequence.csv").groupby("sequences").time_us.sum()
    seq = [(f"seq|{s}", int(s), float(v)) for s, v in ps.items()]
    return {"attention": attn, "dense": dense, "per_sequence": seq, "parts": parts}


def lss_fit_attention(train: list) -> dict:
    """Prefill/decode tables from the pure points; mixed decode table + coupling from the rest."""
    import numpy as np

    def grid(rows):
        xs, ys = sorted({r[0] for r in rows}), sorted({r[1] for r in rows})
        return {"xs": xs, "ys": ys, "z": fill_grid(xs, ys, {(a, b): v for a, b, v in rows})}
    pre = grid([(c, kp, t) for (c, kp, n, _), t in train if n == 0 and c > 0])
    dec = grid([(n, kd, t) for (c, _, n, kd), t in train if c == 0 and n > 0])
    p_grid = _grid(pre["xs"], pre["ys"], pre["z"])
    mixed = [(x, t, p_grid(x[0], x[1])) for x, t in train if x[0] > 0 and x[2] > 0]
    feat = np.array([x[2] * x[0] for x, _, _ in mixed], float)  # n_decode x chunk
    y = np.array([t for _, t, _ in mixed])
    p = np.array([pv for _, _, pv in mixed])
    gamma = 0.0
    for _ in range(8):  # alternate: cell medians given gamma, then gamma by relative LS
        resid = y - p - gamma * feat
        cells: dict = {}
        for (c, kp, n, kd), r in zip((x for x, _, _ in mixed), resid):
            cells.setdefault((n, kd), []).append(r)
        mix = grid([(n, kd, float(np.median(v))) for (n, kd), v in cells.items()])
        m_grid = _grid(mix["xs"], mix["ys"], mix["z"])
        dm = np.array([m_grid(x[2], x[3]) for x, _, _ in mixed])
        w2 = 1.0 / y ** 2
        gamma = float(np.sum(w2 * feat * (y - p - dm)) / np.sum(w2 * feat * feat))
    floor = min(t for (c, _, n, _), t in train if n == 0 and c > 0)
    return {"prefill": {"chunk": pre["xs"], "kv_prefill": pre["ys"], "time_us": pre["z"]},
            "decode": {"n_decode": dec["xs"], "kv_decode": dec["ys"], "time_us": dec["z"]},
            "mixed_decode": {"n_decode": mix["xs"], "kv_decode": mix["ys"], "time_us": mix["z"]},
            "mixed_coupling_us": gamma, "launch_floor_us": round(floor, 4)}


def lss_profile(data_dir: Path, model: dict, gpu: str, tp: int = 1) -> dict:
    """One LLMServingSim profile; at ``tp`` > 1 the per-shard tables plus the collectives
    (``communication``) and the tp1-vs-tp-N checks (``validation``). The hold-out errors are
    those of the per-shard compute against the per-shard measurements."""
    pts = lss_points(data_dir, model["name"], gpu, model["num_layers"], tp)
    ts = sorted(t for key, t, _ in pts["dense"] if not is_holdout(key))
    seq = [(s, v) for key, s, v in pts["per_sequence"] if not is_holdout(key)]
    src = lss_dir(Path("."), model["name"], gpu, tp)
    out = {
        "profile": {"model": model["name"], "gpu": gpu, "tp": tp},
        "source": f"{src}/{{attention,dense,per_sequence}}.csv and {src.parent}/meta.yaml: "
                  "LLMServingSim per-layer profiles, vLLM 0.19.0, 1-layer model, enforce_eager, "
                  "CUDA device-active kernel time",
        "licence": LSS_LICENCE,
        "method": "dense_layer = per-token-count sum of one layer's ops (2 x layernorm, qkv_proj, "
                  "[qk_norm], rotary_emb, o_proj, gate_up_proj, act_fn, down_proj); dense_once = "
                  "embedding + final_layernorm; per_sequence = lm_head + sampler; all piecewise-"
                  "linear in tokens/sequences on the measured knots. Attention (one layer): "
                  "bilinear tables over the measured grid -- prefill(chunk, kv_prefill) and "
                  "decode(n, kv) from the pure rows, mixed_decode(n, kv) = cell median of "
                  "(mixed time - prefill - coupling x n x chunk) with the coupling fitted by "
                  "relative least squares. Holes in a table are filled by linear interpolation "
                  "(see fitting.fill_grid). Fitted on the 80% split only.",
        "units": "microseconds", "num_layers": model["num_layers"],
        "dense_layer": {"tokens": ts, "time_us": [round(pts["parts"][t][0], 4) for t in ts]},
        "dense_once": {"tokens": ts, "time_us": [round(pts["parts"][t][1], 4) for t in ts]},
        "per_sequence": {"sequences": [s for s, _ in seq], "time_us": [round(v, 4)
                                                                       for _, v in seq]},
        "attention": lss_fit_attention([(x, t) for key, x, t in pts["attention"]
                                        if not is_holdout(key)]),
    }
    out["holdout"] = holdout_errors(CostModel(out), pts)
    out["holdout_median_abs_rel_err"] = {k: v["median"] for k, v in out["holdout"].items()}
    if tp > 1:
        from kv_cache_rl.hardware import tensor_parallel
        out["method"] += (f" Tensor parallel {tp}: the profile is one GPU's shard, measured with "
                          "hf_overrides that divide the heads, KV heads, intermediate size and "
                          "vocabulary by the TP size (meta.yaml), so it holds no communication; "
                          "CostModel adds the collectives of the 'communication' block.")
        out["communication"] = tensor_parallel.communication(model, gpu, tp)
        out["validation"] = {
            "holdout_scope": "per-shard compute against the per-shard measurements "
                             "(communication excluded: it is not measured)",
            "tp1_vs_tp": tensor_parallel.lss_tp_validation(
                data_dir, model["name"], gpu, tp,
                {"act_fn": 1 / tp, "rotary_emb": 1 / tp}, LAYER_OPS)}
    return out


# ---------------------------------------------------------------- driver
def profile_filename(model: str, gpu: str, tp: int) -> str:
    return f"cost_{model.lower()}_{gpu.lower()}_tp{tp}.json"


def _write(out_dir: Path, name: str, obj: dict) -> Path:
    path = out_dir / name
    path.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    return path


def run(data_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Read the raw profiles under ``data_dir`` and write the calibration JSON into ``out_dir``
    (default: the package's ``data/calibration``). Returns the files written."""
    data_dir, out_dir = Path(data_dir), Path(out_dir) if out_dir is not None else OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("cost_*.json"):  # a dropped profile must not stay registered
        stale.unlink()
    models = {m: model_shape(data_dir, m) for m in MODELS}
    cap = capacity(models)
    written = [
        _write(out_dir, "models.json", {"source": "models/*.json", "licence": MODELS_LICENCE,
                                        "models": models}),
        _write(out_dir, "gpus.json", {"gpus": {g: {"memory_mib": mib, "memory_bytes": mib * MIB,
                                                   "pcie_gbps": bw, "source": s}
                                               for g, (mib, bw, s) in GPUS.items()}}),
        _write(out_dir, "capacity.json", cap),
        _write(out_dir, "tiers.json", aic.tiers(data_dir)),
    ]
    profiles = [(m, g, 1, lss_profile(data_dir, models[m], g)) for m, g in LSS_PROFILES]
    profiles += [(m, g, 1, aic.profile(data_dir, models[m], g)) for m, g in aic.AIC_PROFILES]
    profiles += [(m, g, t, lss_profile(data_dir, models[m], g, t))
                 for m, g, t in LSS_TP_PROFILES]
    profiles += [(m, g, t, aic.profile(data_dir, models[m], g, t))
                 for m, g, t in aic.AIC_TP_PROFILES]
    aic.tp_consistency([(m, g, t, p) for m, g, t, p in profiles
                        if (m, g, t) in aic.AIC_TP_PROFILES])
    for m, g, t, prof in profiles:
        if (m, g, t) in aic.AIC_TP_NOT_SHIPPED:
            errs = ", ".join(f"{k} {v:.2%}" for k, v in prof["holdout_median_abs_rel_err"].items())
            print(f"{m:13s} {g} tp{t}: not shipped ({aic.AIC_TP_NOT_SHIPPED[(m, g, t)]}: {errs})")
            continue
        prof["activation_reserve_bytes"] = round(cap["reserve_bytes_per_hidden_token"]
                                                 * models[m]["hidden_size"] * 2048)
        written.append(_write(out_dir, profile_filename(m, g, t), prof))
        errs = "  ".join(f"{k} {v['median']:.2%} (p90 {v['p90']:.1%}, n={v['n']})"
                         for k, v in prof["holdout"].items())
        name = f"{g} tp{t}" if t > 1 else g
        print(f"{m:13s} {name:15s} holdout median |rel err|: {errs}")
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the shared data directory")
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="where to write the JSON")
    args = ap.parse_args(argv)
    for path in run(args.data, args.out):
        print("wrote", path)


if __name__ == "__main__":
    main()
