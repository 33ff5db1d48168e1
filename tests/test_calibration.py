"""Shipped calibration: JSON figures, hold-out accuracy against the raw data, capacity, registry.

The raw-data checks run only when ``../shared/data`` (beside the repository) exists.
"""

from __future__ import annotations

import json
import subprocess
import sys
import timeit
from pathlib import Path

import pytest

from kv_cache_rl.profiles import (CALIBRATION_DIR, Profile, UnknownProfileError, known_profiles,
                                  load_profile, model_spec, precision_tiers)

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


def test_model_shapes():
    llama, qwen = model_spec("Llama-3.1-8B"), model_spec("Qwen3-32B")
    assert llama.kv_bytes_per_token == 131072
    assert llama.num_params == pytest.approx(8.03e9, rel=0.005)
    assert (qwen.num_layers, qwen.num_attention_heads, qwen.num_kv_heads, qwen.head_dim) == \
        (64, 64, 8, 128)
    assert qwen.num_params == pytest.approx(32.8e9, rel=0.005)
    assert qwen.kv_bytes_per_token == 2 * 64 * 8 * 128 * 2


def test_precision_tiers():
    fp16, int8, int4 = precision_tiers()
    assert (fp16.name, int8.name, int4.name) == ("fp16", "int8", "int4")
    assert (fp16.bytes_factor, int8.bytes_factor, int4.bytes_factor) == (1.0, 0.5, 0.25)
    assert fp16.quality_cost == 0 < int8.quality_cost < int4.quality_cost < 0.1
    assert fp16.attention_factor == 1.0
    assert 0.6 <= int8.attention_factor <= 1.2  # measured fp8/bf16 range on H100 (domain.md)
    assert all(t.source for t in (fp16, int8, int4))


# ---------------------------------------------------------------- (b) against the raw data
def _points(model: str, gpu: str) -> dict:
    from kv_cache_rl import calibrate, calibrate_aiconfigurator as aic
    shape = calibrate.model_shape(DATA, model)
    if (model, gpu) in calibrate.LSS_PROFILES:
        return calibrate.lss_points(DATA, model, gpu, shape["num_layers"])
    return aic.aic_points(DATA, shape, gpu)


@pytest.mark.parametrize("path", COST_FILES, ids=lambda p: p.stem)
def test_holdout_error_recomputed_from_raw_data(path):
    if not DATA.is_dir():
        pytest.skip(f"raw data not found at {DATA}")
    pytest.importorskip("pandas")
    from kv_cache_rl.calibrate import is_holdout, predict
    d = _load(path)
    prof = load_profile(d["profile"]["model"], d["profile"]["gpu"], d["profile"]["tp"])
    points = _points(d["profile"]["model"], d["profile"]["gpu"])
    for comp in ("attention", "dense", "per_sequence"):
        held = [(x, y) for key, x, y in points[comp] if is_holdout(key)]
        assert len(held) >= 5
        errs = sorted(abs(predict(prof.cost, comp, x) / y - 1) for x, y in held)
        median = (errs[(len(errs) - 1) // 2] + errs[len(errs) // 2]) / 2
        assert median <= 0.05, (path.name, comp, median)
        assert median == pytest.approx(d["holdout_median_abs_rel_err"][comp], abs=1e-3)


# ---------------------------------------------------------------- (c) capacity and registry
def test_capacity_matches_vllm_on_rtx4090():
    blocks = load_profile("Llama-3.1-8B", "RTX4090").num_gpu_blocks(16, 0.9)
    assert abs(blocks - 2588) <= 2  # vLLM 0.19: 2,588 blocks = 41,408 tokens


def test_capacity_other_profiles():
    small = load_profile("Llama-3.1-8B", "RTX4090").num_gpu_blocks()
    pro = load_profile("Llama-3.1-8B", "RTXPRO6000").num_gpu_blocks()
    h100 = load_profile("Llama-3.1-8B", "H100").num_gpu_blocks()
    assert pro > 10 * small
    assert 400_000 <= h100 * 16 <= 500_000  # "roughly 400k+ tokens" on an 80 GB H100
    qwen = load_profile("Qwen3-32B", "RTXPRO6000")
    assert 0 < qwen.num_gpu_blocks() < pro
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
    assert 0.005 < t < 0.1
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
    """vLLM 0.19 on an RTX PRO 6000 decoded ~4,730-4,860 tok/s at t = 13-15 s of the validation
    run with 128 requests running at a mean KV of ~1,050-1,110 tokens (timeseries.csv)."""
    cost = load_profile("Llama-3.1-8B", "RTXPRO6000").cost
    tok_s = 128 / cost.iteration_time_s([], 128, 128 * 1080.0)
    assert 4_300 < tok_s < 5_300


def test_iteration_time_is_fast():
    cost = load_profile("Llama-3.1-8B", "H100").cost
    per_call = min(timeit.repeat(lambda: cost.iteration_time_s([(512, 1024)], 64, 64_000.0),
                                 number=2000, repeat=5)) / 2000
    assert per_call < 50e-6  # ~2-6 us on an idle core


def test_runtime_does_not_import_pandas_or_numpy():
    code = ("import sys, kv_cache_rl.profiles as p; p.load_profile('Llama-3.1-8B', 'H100')"
            ".cost.iteration_time_s([(16, 0)], 1, 10.0); "
            "bad = {'pandas', 'numpy', 'scipy'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
