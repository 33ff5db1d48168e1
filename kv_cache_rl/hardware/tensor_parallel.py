"""Tensor parallelism: the communication a per-shard profile leaves out, and its validation.

A tensor-parallel (TP) profile is the per-GPU compute of one shard: the LLMServingSim tp2
profile of Qwen3-32B was measured on one GPU with ``hf_overrides`` that shrink the model to a
shard (``tensor_parallel_size: 1``; 32 of 64 heads, 4 of 8 KV heads, intermediate 12800 of
25600, vocab 75968 of 151936; its ops are only the layer's kernels, no communication), and the
aiconfigurator tables are single-GPU GEMM and attention kernels at the shard's shapes. What TP
adds on top is the collectives vLLM runs (Megatron-style row/column-parallel layers):

* two all-reduces per decoder layer, after attention's ``o_proj`` and after the MLP's
  ``down_proj`` (RowParallelLinear), of ``tokens x hidden x 2`` bytes (bf16);
* one all-reduce per forward pass after the vocab-parallel embedding, same size;
* one all-gather of the logits per step (``LogitsProcessor``; vocab-parallel ``lm_head``),
  ``sequences x vocab x 2`` bytes gathered.

Each collective costs ``latency + bytes x factor / bus_bandwidth`` with NCCL-tests' bus-bandwidth
convention (``busbw = algbw x 2 (n-1)/n`` for all-reduce, ``x (n-1)/n`` for all-gather; so the
factor is ``2 (n-1)/n`` and ``(n-1)/n``). ``LINKS`` holds the published figures per GPU (each
with its source). Both terms are affine in tokens (or sequences), so ``CostModel`` adds them to
its piecewise-linear tables exactly (``communication`` in a ``cost_*_tp<N>.json``).

The validation report (``benchmarks/results/tp_validation.txt``) is
``python -m kv_cache_rl.hardware.tp_validation --data ../shared/data``.
"""

from __future__ import annotations

from pathlib import Path

# Published collective figures per GPU type (the link between the GPUs of one server).
LINKS = {
    "RTXPRO6000": {
        "link": "PCIe Gen5 x16 peer-to-peer (the RTX PRO 6000 Blackwell has no NVLink)",
        "bus_bandwidth_gbps": 40.0, "latency_us": 24.0,
        "source": "nccl-tests all_reduce_perf on RTX PRO 6000 Blackwell servers over PCIe Gen5 "
                  "x16: bus bandwidth 37.6-41.7 GB/s at 8 MB-4 GB, NCCL 24.1-24.6 us at 256 B-64 "
                  "KB; P2P one way 53-56 GB/s (github.com/voipmonitor/rtx6kpro, "
                  "hardware/pcie-bandwidth.md, 'NCCL AllReduce Bus Bandwidth'). Measured on 7-8 "
                  "GPUs: at TP2 the latency is likely an upper bound (fewer ring steps; vLLM's "
                  "custom all-reduce can engage on two P2P PCIe GPUs)"},
    "H100": {
        "link": "NVLink 4 through NVSwitch (H100 SXM, 450 GB/s per direction per GPU)",
        "bus_bandwidth_gbps": 460.0, "latency_us": 10.0,
        "source": "bus bandwidth: nccl-tests reference, 8x H100 SXM5 NVLink 460-480 GB/s at large "
                  "sizes (docs.alayanew.com/en/docs/tech-blog/2026-05-06-nccl-tests); latency: "
                  "vLLM's custom all-reduce on H100 at 512 B-32 KB, 8.5-9.5 us (TP2/TP4) and "
                  "9.3-11.8 us (TP8) (sgl-project/sglang pull request 2904)"},
    "A100": {
        "link": "NVLink 3 through NVSwitch (A100 SXM, 300 GB/s per direction per GPU)",
        "bus_bandwidth_gbps": 230.0, "latency_us": 10.0,
        "source": "bus bandwidth: nccl-tests, 8x A100 SXM4 NVLink 230-250 GB/s "
                  "(docs.alayanew.com/en/docs/tech-blog/2026-05-06-nccl-tests), ~200 GB/s on an "
                  "HPE Apollo 6500 8x A100-SXM4-80GB (NVIDIA/nccl-tests issue 149); latency: "
                  "nccl-tests all_reduce_perf at 32-128 B on A100-SXM4, 10.1-10.3 us "
                  "(NVIDIA/nccl issue 583)"},
}
BF16 = 2  # activation and logits bytes per element
FORMULA = ("t(collective) = latency_us + bytes x f / (bus_bandwidth_gbps x 1e3) us, f = 2(n-1)/n "
           "for all-reduce and (n-1)/n for all-gather (NCCL-tests busbw convention); per layer 2 "
           "all-reduces of tokens x hidden x 2 B (after o_proj and after down_proj), per pass 1 "
           "all-reduce of tokens x hidden x 2 B (vocab-parallel embedding), per step 1 all-gather "
           "of sequences x vocab x 2 B (vocab-parallel lm_head logits)")


def allreduce_us(nbytes: float, tp: int, link: dict) -> float:
    """One all-reduce of ``nbytes`` (per GPU) over ``tp`` GPUs, microseconds."""
    if tp <= 1:
        return 0.0
    return link["latency_us"] + nbytes * 2 * (tp - 1) / tp / (link["bus_bandwidth_gbps"] * 1e3)


def allgather_us(nbytes: float, tp: int, link: dict) -> float:
    """One all-gather whose gathered result is ``nbytes``, microseconds."""
    if tp <= 1:
        return 0.0
    return link["latency_us"] + nbytes * (tp - 1) / tp / (link["bus_bandwidth_gbps"] * 1e3)


def communication(model: dict, gpu: str, tp: int, link: dict | None = None) -> dict:
    """The ``communication`` block of a TP cost file: what ``CostModel`` adds, as affine
    coefficients (fixed us + us per token or sequence) per table, and their provenance.
    ``link`` overrides ``LINKS[gpu]`` (sensitivity checks)."""
    if link is None and gpu not in LINKS:
        raise ValueError(f"no published collective figures for {gpu}; known: {', '.join(LINKS)}")
    link = LINKS[gpu] if link is None else link
    h, vocab = model["hidden_size"], model["vocab_size"]
    ar_fixed, ar_tok = allreduce_us(0, tp, link), allreduce_us(h * BF16, tp, link) \
        - allreduce_us(0, tp, link)
    ag_fixed, ag_seq = allgather_us(0, tp, link), allgather_us(vocab * BF16, tp, link) \
        - allgather_us(0, tp, link)
    return {
        "tp": tp, "link": link["link"], "bus_bandwidth_gbps": link["bus_bandwidth_gbps"],
        "latency_us": link["latency_us"], "source": link["source"], "formula": FORMULA,
        "allreduces_per_layer": 2, "allreduces_per_pass": 1,
        "allreduce_bytes_per_token": h * BF16, "allgather_bytes_per_sequence": vocab * BF16,
        # what CostModel adds (us): per layer, once per pass (x tokens), per step (x sequences)
        "dense_layer": {"fixed_us": round(2 * ar_fixed, 6), "per_token_us": round(2 * ar_tok, 9)},
        "dense_once": {"fixed_us": round(ar_fixed, 6), "per_token_us": round(ar_tok, 9)},
        "per_sequence": {"fixed_us": round(ag_fixed, 6), "per_sequence_us": round(ag_seq, 9)},
        "included_in_tables": False,
    }


# ---------------------------------------------------------------- validation (derivation-time)
def _median(values) -> float:
    import numpy as np
    return round(float(np.median(values)), 4)


def _p90(values) -> float:
    import numpy as np
    return round(float(np.quantile(values, 0.9)), 4)


def lss_tp_validation(data_dir: Path, model: str, gpu: str, tp: int, split_ops: dict,
                      layer_ops: dict) -> dict:
    """tp1 against tp-N measurements of the same model and GPU (LLMServingSim), per shard.

    * ``gemm_ratio``: measured tp-N / tp1 time of the projection GEMMs (qkv, o, gate_up, down)
      at the same token count: 1/N when the shard's smaller matrices scale the work.
    * ``split_gemm_prediction``: |tp1 / N / tp-N - 1| for the GEMM sum of a layer.
    * ``elementwise_prediction``: the split element-wise ops (``split_ops``: op -> element
      ratio, e.g. act_fn 1/N) predicted from tp1 at the token count with the same number of
      elements, ``op_tp1(T x ratio)``, against tp-N -- the mapping the Llama-3.1-70B
      aiconfigurator profiles use for their element-wise allowance.
    * ``layer_ops``: op -> how often it runs per layer (``calibrate.LAYER_OPS``).
    * ``dense_layer_prediction``: a whole layer predicted that way (GEMMs / N, split ops by
      elements, replicated ops as tp1) against the measured tp-N layer.
    * ``attention_ratio``: measured tp-N / tp1 attention at the same batch, by regime.
    """
    import numpy as np
    import pandas as pd

    from kv_cache_rl.hardware.fitting import extrap, lss_dir

    d1, dn = lss_dir(data_dir, model, gpu, 1), lss_dir(data_dir, model, gpu, tp)
    o1 = pd.read_csv(d1 / "dense.csv").pivot(index="tokens", columns="layer", values="time_us")
    on = pd.read_csv(dn / "dense.csv").pivot(index="tokens", columns="layer", values="time_us")
    tokens = [t for t in on.index if t in o1.index]
    gemms = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    g1 = sum(o1.loc[tokens, g] for g in gemms)
    gn = sum(on.loc[tokens, g] for g in gemms)
    ratio = (gn / g1).to_numpy()
    big = np.array(tokens) >= 512
    pred_g = (g1 / tp).to_numpy()
    split_err, layer_err = {}, []
    for op, r in split_ops.items():
        pred = extrap(np.array(tokens, float) * r, o1.index.to_numpy(float), o1[op].to_numpy())
        split_err[op] = {"median_abs_rel_err": _median(np.abs(pred / on.loc[tokens, op] - 1)),
                         "element_ratio": round(r, 6)}
    for i, t in enumerate(tokens):
        layer = pred_g[i]
        for op, k in layer_ops.items():
            if op in gemms or op not in o1:
                continue
            x = t * split_ops.get(op, 1.0)
            layer += k * float(extrap([x], o1.index.to_numpy(float), o1[op].to_numpy())[0])
        measured = sum(on.loc[t, op] * k for op, k in layer_ops.items() if op in on)
        layer_err.append(layer / measured - 1)
    a1, an = (pd.read_csv(d / "attention.csv") for d in (d1, dn))
    keys = ["prefill_chunk", "kv_prefill", "n_decode", "kv_decode"]
    att = a1.merge(an, on=keys, suffixes=("_1", "_n"))
    att["r"] = att.time_us_n / att.time_us_1
    work = att.prefill_chunk * (att.prefill_chunk + att.kv_prefill) + att.n_decode * att.kv_decode
    regimes = {"all": att.r, "work_ge_2^20": att.r[work >= 1 << 20],
               "work_lt_2^14": att.r[work < 1 << 14]}
    r1, rn = (lss_dir(Path("."), model, gpu, t) for t in (1, tp))
    return {
        "source": f"{r1}/{{dense,attention}}.csv against {rn}/{{dense,attention}}.csv "
                  "(LLMServingSim, vLLM 0.19; MIT)",
        "gemm_ratio": {"median": _median(ratio), "median_tokens_ge_512": _median(ratio[big]),
                       "p05": round(float(np.quantile(ratio, 0.05)), 4), "p95":
                           round(float(np.quantile(ratio, 0.95)), 4), "expected": 1 / tp},
        "split_gemm_prediction": {"median_abs_rel_err": _median(np.abs(pred_g / gn - 1)),
                                  "p90_abs_rel_err": _p90(np.abs(pred_g / gn - 1)),
                                  "what": f"tp1 GEMM time / {tp} vs measured tp{tp}"},
        "elementwise_prediction": split_err,
        "dense_layer_prediction": {"median_abs_rel_err": _median(np.abs(layer_err)),
                                   "p90_abs_rel_err": _p90(np.abs(layer_err)),
                                   "median_signed_rel_err": _median(layer_err),
                                   "n": len(layer_err)},
        "attention_ratio": {k: {"median": _median(v), "n": len(v)}
                            for k, v in regimes.items()},
    }


def splitwise_crosscheck(data_dir: Path, cost, gpu: str, tp: int) -> dict | None:
    """Loose cross-check: Splitwise's measured Llama-2-70B prompt times (the Llama-3.1-70B
    shapes but a 32k vocabulary; 2023 software, whole prompts, batch 1) on the same GPU and TP
    against one prefill iteration of the profile (communication included)."""
    import pandas as pd

    path = Path(data_dir) / "profiles" / "splitwise" / "perf_model.csv"
    hw = {"A100": "a100-80gb", "H100": "h100-80gb"}.get(gpu)
    if hw is None or not path.exists():
        return None
    df = pd.read_csv(path)
    df = df[(df.model == "llama2-70b") & (df.hardware == hw) & (df.tensor_parallel == tp)
            & (df.batch_size == 1) & (df.prompt_size >= 1024)]
    rows = df.groupby("prompt_size").prompt_time.median()
    out = {str(p): {"measured_ms": round(float(v), 2),
                    "model_ms": round(1e3 * cost.iteration_time_s([(int(p), 0)], 0, 0.0), 2)}
           for p, v in rows.items()}
    for v in out.values():
        v["model_over_measured"] = round(v["model_ms"] / v["measured_ms"], 4)
    return {"source": "profiles/splitwise/perf_model.csv (MIT, Mutinifni/splitwise-sim): "
                      f"llama2-70b, {hw}, tensor_parallel {tp}, batch 1, median prompt_time",
            "prompts": out}
