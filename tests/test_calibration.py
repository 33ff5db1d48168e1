"""Shipped calibration: JSON figures, hold-out accuracy against the raw data, capacity, registry.

The raw-data checks run only when ``../shared/data`` (beside the repository) exists. The tests
check properties that hold by construction; the external reference figures (vLLM's block count,
published model sizes, the validation run's throughput) are printed by
``benchmarks/calibration_figures.py`` and the cost model's speed by ``benchmarks/hot_paths.py``.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kv_cache_rl.hardware.profiles import (CALIBRATION_DIR, Profile, UnknownProfileError,
                                           known_profiles, load_profile, model_spec,
                                           precision_tiers)

REPO = Path(__file__).parents[1]
DATA = REPO.parent / "shared" / "data"
REQUIRED = {("Llama-3.1-8B", "RTX4090"), ("Llama-3.1-8B", "RTXPRO6000"), ("Llama-3.1-8B", "H100"),
            ("Llama-3.1-8B", "A100"), ("Qwen3-32B", "RTXPRO6000")}
COST_FILES = sorted(CALIBRATION_DIR.glob("cost_*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- (a) shipped numbers
def test_required_profiles_are_shipped():
    assert REQUIRED <= set(known_profiles())


@pytest.mark.parametrize("path", COST_FILES, ids=lambda p: p.stem)
def test_shipped_holdout_errors_and_provenance(path):
    d = _load(path)
    for key in ("source", "method", "licence"):
        assert isinstance(d[key], str) and len(d[key]) > 20, key
    errs = d["holdout_median_abs_rel_err"]
    assert set(errs) == {"attention", "dense", "per_sequence"}
    for comp, err in errs.items():
        assert 0 <= err <= 0.05, (path.name, comp, err)
        assert d["holdout"][comp]["n"] >= 5


def _models() -> dict:
    return _load(CALIBRATION_DIR / "models.json")["models"]


@pytest.mark.parametrize("name", sorted(_models()))
def test_model_shapes_are_consistent(name):
    """KV bytes follow from the shape; the parameter count lies between the big matrices alone
    and everything a decoder can hold (untied lm_head, every norm, q/k norms)."""
    spec, shipped = model_spec(name), _models()[name]
    L, h, hd = spec.num_layers, spec.hidden_size, spec.head_dim
    heads, kv, inter, vocab = (spec.num_attention_heads, spec.num_kv_heads,
                               spec.intermediate_size, spec.vocab_size)
    assert spec.kv_bytes_per_token == 2 * L * kv * hd * spec.dtype_bytes
    assert shipped["kv_bytes_per_token"] == spec.kv_bytes_per_token
    assert heads % kv == 0  # grouped-query attention: whole groups of query heads per KV head
    matrices = vocab * h + L * (2 * h * heads * hd + 2 * h * kv * hd + 3 * h * inter)
    assert matrices <= spec.num_params <= matrices + vocab * h + L * (2 * h + 2 * hd) + h
    assert spec.weight_bytes == spec.num_params * spec.dtype_bytes


def test_precision_tiers():
    fp16, int8, int4 = precision_tiers()
    assert (fp16.name, int8.name, int4.name) == ("fp16", "int8", "int4")
    for tier in (fp16, int8, int4):  # bytes per element over fp16's two
        bits = int(tier.name.lstrip("fpint"))
        assert tier.bytes_factor == bits / 16
    assert fp16.quality_cost == 0 < int8.quality_cost < int4.quality_cost <= 1
    for a, b in zip(fp16.wrong_answer, int8.wrong_answer):
        assert a == 0 <= b
    assert all(a <= b <= 1 for a, b in zip(int8.wrong_answer, int4.wrong_answer))
    # attention time: fp16 is the baseline; int8 is the measured fp8/bf16 median (tiers.json
    # keeps the measurement), int4 reuses it (no fused int4 kernel to measure)
    measured = _load(CALIBRATION_DIR / "tiers.json")["int8_attention_measurement"]
    assert fp16.attention_factor == 1.0
    assert int8.attention_factor == pytest.approx(measured["median"], abs=5e-5)
    assert measured["p05"] <= int8.attention_factor <= measured["p95"]
    assert int4.attention_factor == int8.attention_factor
    assert all(t.source for t in (fp16, int8, int4))


# ---------------------------------------------------------------- (b) against the raw data
def _need_data() -> None:
    if not DATA.is_dir():
        pytest.skip(f"raw data not found at {DATA}")


@pytest.mark.parametrize("name", sorted(_models()))
def test_model_shapes_match_the_hf_configs(name):
    _need_data()
    cfg = _load(DATA / "models" / f"{name}.json")
    spec = model_spec(name)
    assert (spec.num_layers, spec.hidden_size, spec.num_attention_heads, spec.num_kv_heads,
            spec.intermediate_size, spec.vocab_size) == \
        (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"],
         cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["vocab_size"])
    assert spec.head_dim == (cfg.get("head_dim")
                             or cfg["hidden_size"] // cfg["num_attention_heads"])


def test_derivation_reproduces_shipped_specs_capacity_and_tiers():
    """models.json, capacity.json and tiers.json are what ``calibrate`` derives from the raw
    data today (the cost tables are checked through their hold-out errors below)."""
    _need_data()
    pytest.importorskip("pandas")
    from kv_cache_rl.hardware import calibrate
    from kv_cache_rl.hardware import calibrate_aiconfigurator as aic
    models = {m: calibrate.model_shape(DATA, m) for m in _models()}
    assert _models() == models
    as_json = lambda obj: json.loads(json.dumps(obj))  # noqa: E731  (tuples -> lists)
    assert _load(CALIBRATION_DIR / "capacity.json") == as_json(calibrate.capacity(models))
    assert _load(CALIBRATION_DIR / "tiers.json") == as_json(aic.tiers(DATA))


def _points(model: str, gpu: str, tp: int = 1) -> dict:
    from kv_cache_rl.hardware import calibrate
    from kv_cache_rl.hardware import calibrate_aiconfigurator as aic
    shape = calibrate.model_shape(DATA, model)
    if (model, gpu) in calibrate.LSS_PROFILES:
        return calibrate.lss_points(DATA, model, gpu, shape["num_layers"], tp)
    return aic.aic_points(DATA, shape, gpu, tp)


@pytest.mark.parametrize("path", COST_FILES, ids=lambda p: p.stem)
def test_holdout_error_recomputed_from_raw_data(path):
    _need_data()
    pytest.importorskip("pandas")
    from kv_cache_rl.hardware.fitting import is_holdout, predict
    d = _load(path)
    prof = load_profile(d["profile"]["model"], d["profile"]["gpu"], d["profile"]["tp"])
    points = _points(d["profile"]["model"], d["profile"]["gpu"], d["profile"]["tp"])
    for comp in ("attention", "dense", "per_sequence"):
        held = [(x, y) for key, x, y in points[comp] if is_holdout(key)]
        assert len(held) >= 5
        # the measured points are per-GPU compute: compare without the modelled collectives
        errs = sorted(abs(predict(prof.compute_cost, comp, x) / y - 1) for x, y in held)
        median = (errs[(len(errs) - 1) // 2] + errs[len(errs) // 2]) / 2
        assert median <= 0.05, (path.name, comp, median)
        assert median == pytest.approx(d["holdout_median_abs_rel_err"][comp], abs=1e-3)


# ---------------------------------------------------------------- (c) capacity and registry
def test_capacity_reproduces_its_measured_anchor():
    """The activation reserve is calibrated on one measured vLLM block count (capacity.json's
    anchor): the profile gives exactly that count back at the anchor's settings."""
    from kv_cache_rl.hardware.calibrate import CAPACITY_ANCHOR
    anchor = _load(CALIBRATION_DIR / "capacity.json")["anchor"]
    assert anchor == CAPACITY_ANCHOR
    blocks = load_profile(anchor["model"], anchor["gpu"]).num_gpu_blocks(
        anchor["block_size"], anchor["gpu_memory_utilization"], anchor["max_num_batched_tokens"])
    assert blocks == anchor["num_gpu_blocks"]


@pytest.mark.parametrize("model,gpu", known_profiles())
@pytest.mark.parametrize("block_size,util", [(16, 0.9), (32, 0.8)])
def test_capacity_fills_what_weights_and_reserve_leave(model, gpu, block_size, util):
    """Whole blocks fill memory x util less the weights and the activation reserve: the next
    block would not fit."""
    from kv_cache_rl.hardware.profiles import activation_reserve_bytes
    prof = load_profile(model, gpu)
    free = (prof.gpu.memory_bytes * util - prof.model.weight_bytes
            - activation_reserve_bytes(prof.model))
    block_bytes = block_size * prof.model.kv_bytes_per_token
    blocks = prof.num_gpu_blocks(block_size, util)
    assert 0 < blocks * block_bytes <= free < (blocks + 1) * block_bytes


def test_capacity_other_profiles():
    small = load_profile("Llama-3.1-8B", "RTX4090").num_gpu_blocks()
    pro = load_profile("Llama-3.1-8B", "RTXPRO6000").num_gpu_blocks()
    h100 = load_profile("Llama-3.1-8B", "H100").num_gpu_blocks()
    # one model: more device memory, more blocks
    llama = sorted((load_profile(m, g) for m, g in known_profiles() if m == "Llama-3.1-8B"),
                   key=lambda p: p.gpu.memory_bytes)
    counts = [p.num_gpu_blocks() for p in llama]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert small < h100 < pro
    qwen = load_profile("Qwen3-32B", "RTXPRO6000")
    assert 0 < qwen.num_gpu_blocks() < pro  # a bigger model on the same GPU
    # Fewer blocks at lower utilisation; bigger blocks -> proportionally fewer.
    assert small > load_profile("Llama-3.1-8B", "RTX4090").num_gpu_blocks(16, 0.8)
    assert load_profile("Llama-3.1-8B", "H100").num_gpu_blocks(32) == pytest.approx(h100 / 2, abs=1)


def test_names_are_case_insensitive():
    a = load_profile("llama-3.1-8b", "rtx4090")
    b = load_profile("LLAMA-3.1-8B", "RTX4090")
    assert a is b and isinstance(a, Profile)
    assert a.model.name == "Llama-3.1-8B" and a.gpu.name == "RTX4090" and a.tp == 1
    assert len(a.tiers) == 3


def test_unknown_profile_lists_known_ones():
    with pytest.raises(UnknownProfileError) as exc:
        load_profile("Llama-3.1-70B", "H200")
    assert isinstance(exc.value, ValueError)
    msg = str(exc.value)
    for name in ("Llama-3.1-8B", "Qwen3-32B", "RTX4090", "RTXPRO6000", "H100", "A100"):
        assert name in msg
    with pytest.raises(UnknownProfileError):
        load_profile("Qwen3-32B", "H100")  # a real model and GPU, but no shipped pair
    with pytest.raises(UnknownProfileError):
        load_profile("Llama-3.1-8B", "RTX4090", tp=2)


# ---------------------------------------------------------------- cost model behaviour
def test_iteration_time_behaviour():
    cost = load_profile("Llama-3.1-8B", "RTXPRO6000").cost
    assert cost.iteration_time_s([], 0, 0.0) == 0.0
    t = cost.iteration_time_s([], 64, 64 * 1000.0)
    # one forward pass: dense(T) + L x attention + per_sequence(S), microseconds
    parts = (cost.dense_us(64) + cost.per_sequence_us(64)
             + cost.num_layers * cost.attention_layer_us([], 64, 64 * 1000.0))
    assert t == pytest.approx(parts * 1e-6, rel=1e-12) and t > 0
    assert cost.iteration_time_s([], 64, 64 * 4000.0) > t  # more KV read
    assert cost.iteration_time_s([], 128, 128 * 1000.0) > t  # more sequences
    assert cost.iteration_time_s([(512, 0)], 64, 64 * 1000.0) > t  # a prefill rides along
    one = cost.iteration_time_s([(256, 0)], 0, 0.0)
    assert cost.iteration_time_s([(256, 0), (256, 0)], 0, 0.0) > one
    # Past the measured grid the model extends linearly instead of failing.
    assert cost.iteration_time_s([(4096, 100_000)], 300, 300 * 60_000.0) > 0
    # The float path (non-integer token counts) agrees with the tabulated one.
    assert cost.dense_us(100) == pytest.approx(cost._dense_tab[100])


def test_validation_run_decode_throughput():
    """The real vLLM 0.19 run on an RTX PRO 6000 (``validation/``): in every second of pure
    decoding at a full batch (timeseries.csv: no prompt tokens, max_num_seqs running), the
    model's decode rate at the batch's mean KV length (from the requests' timestamps in
    requests.jsonl) is within 10% of the measured generation throughput."""
    _need_data()
    run = DATA / "validation" / "vllm-0.19_rtxpro6000_llama-3.1-8b"
    full = _load(run / "meta.json")["engine_kwargs"]["max_num_seqs"]
    requests = [json.loads(line) for line in (run / "requests.jsonl").open()]
    start = min(r["queued_ts"] for r in requests)
    with (run / "timeseries.csv").open() as f:
        seconds = [row for row in csv.DictReader(f) if float(row["prompt_throughput"]) == 0
                   and int(row["running"]) == full]
    assert seconds, "no pure-decode second at a full batch"
    cost = load_profile("Llama-3.1-8B", "RTXPRO6000").cost
    for row in seconds:
        mid = start + float(row["t"]) - 0.5  # the middle of the second the row reports
        kv = []
        for r in requests:  # decoding requests: prompt + the tokens generated by then
            first, last = r["first_token_ts"], r["last_token_ts"]
            if first <= mid < last:
                kv.append(r["input_toks"] + 1 + (mid - first) / (last - first)
                          * (r["output_toks"] - 1))
        modelled = full / cost.iteration_time_s([], full, full * sum(kv) / len(kv))
        assert modelled == pytest.approx(float(row["gen_throughput"]), rel=0.1), row["t"]


def test_runtime_does_not_import_pandas_or_numpy():
    code = ("import sys, kv_cache_rl.hardware.profiles as p; p.load_profile('Llama-3.1-8B', 'H100')"
            ".cost.iteration_time_s([(16, 0)], 1, 10.0); "
            "bad = {'pandas', 'numpy', 'scipy'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
