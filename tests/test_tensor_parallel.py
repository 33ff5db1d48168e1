"""Tensor parallelism: the TP profiles (per-GPU KV and weights, the collectives added to the
per-shard compute), their hold-out errors and provenance, the errors for an unshipped TP, and
TP through replay, scenarios, the CLI and the environment arguments.

The checks against the raw data run only when ``../shared/data`` (beside the repository)
exists.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kv_cache_rl.errors import ConfigError
from kv_cache_rl.hardware import tensor_parallel as tpmod
from kv_cache_rl.hardware.costmodel import CostModel
from kv_cache_rl.hardware.profiles import (
    CALIBRATION_DIR,
    UnknownProfileError,
    activation_reserve_bytes,
    known_profiles,
    known_tp_profiles,
    load_profile,
    tensor_parallel_sizes,
)

REPO = Path(__file__).parents[1]
DATA = REPO.parent / "shared" / "data"
TP_FILES = sorted(p for p in CALIBRATION_DIR.glob("cost_*.json")
                  if json.loads(p.read_text())["profile"]["tp"] > 1)
LLAMA_70B = [("Llama-3.1-70B", "H100", 4), ("Llama-3.1-70B", "H100", 8),
             ("Llama-3.1-70B", "A100", 4)]


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _need_data() -> None:
    if not DATA.is_dir():
        pytest.skip(f"raw data not found at {DATA}")


# ---------------------------------------------------------------- profiles and capacity
def test_shipped_tp_profiles():
    shipped = set(known_tp_profiles())
    assert {("Qwen3-32B", "RTXPRO6000", 2), *LLAMA_70B} <= shipped
    assert tensor_parallel_sizes("qwen3-32b", "rtx pro 6000") == [1, 2]
    # known_profiles() stays the single-GPU pairs (what load_profile(model, gpu) loads)
    assert set(known_profiles()) == {(m, g) for m, g, t in shipped if t == 1}
    assert ("Llama-3.1-70B", "H100") not in known_profiles()


def test_tp2_has_fewer_kv_bytes_per_gpu_and_more_blocks():
    one = load_profile("Qwen3-32B", "RTXPRO6000")
    two = load_profile("Qwen3-32B", "RTXPRO6000", tp=2)
    assert (one.tp, two.tp) == (1, 2)
    assert two.kv_heads_per_gpu == one.model.num_kv_heads // 2 == 4
    assert two.kv_bytes_per_token_per_gpu == one.kv_bytes_per_token_per_gpu // 2 < \
        one.kv_bytes_per_token_per_gpu == one.model.kv_bytes_per_token
    assert two.num_gpu_blocks() > one.num_gpu_blocks()
    for util, block in ((0.9, 16), (0.8, 32)):  # whole per-GPU blocks fill what is left
        free = (two.gpu.memory_bytes * util - two.model.weight_bytes / 2
                - activation_reserve_bytes(two.model))
        blocks = two.num_gpu_blocks(block, util)
        per_block = block * two.kv_bytes_per_token_per_gpu
        assert blocks * per_block <= free < (blocks + 1) * per_block
    # each GPU moves its shard over its own host link
    assert two.gpu.host_links == 2 and one.gpu.host_links == 1
    assert two.gpu.transfer_s(1e9) == pytest.approx(one.gpu.transfer_s(1e9) / 2)


@pytest.mark.parametrize("model,gpu,tp", LLAMA_70B)
def test_llama_70b_pairs_load(model, gpu, tp):
    prof = load_profile(model, gpu, tp)
    assert prof.model.name == model and prof.gpu.name == gpu and prof.tp == tp
    m = prof.model  # its shape is checked against the HF config in test_calibration
    assert m.num_kv_heads % tp == 0 or tp % m.num_kv_heads == 0  # the KV heads split over tp
    assert prof.kv_bytes_per_token_per_gpu == m.kv_bytes_per_token // tp
    assert prof.num_gpu_blocks() > 0
    cost = prof.cost
    assert cost.num_layers == m.num_layers
    assert cost.iteration_time_s([(512, 0)], 32, 32 * 1000.0) > \
        cost.iteration_time_s([], 32, 32 * 1000.0) > 0


def test_llama_70b_scaling():
    tp4, tp8 = load_profile("Llama-3.1-70B", "H100", 4), load_profile("Llama-3.1-70B", "H100", 8)
    assert tp8.num_gpu_blocks() > 2 * tp4.num_gpu_blocks()  # half the KV and weights per GPU
    for batch in ([], 64, 64 * 2048), ([(2048, 0)], 0, 0):
        assert tp8.cost.iteration_time_s(*batch) < tp4.cost.iteration_time_s(*batch)
    a100 = load_profile("Llama-3.1-70B", "A100", 4)
    assert a100.cost.iteration_time_s([(2048, 0)], 0, 0) > \
        tp4.cost.iteration_time_s([(2048, 0)], 0, 0)  # the H100 is faster


# ---------------------------------------------------------------- errors
def test_unknown_tp_names_the_available_ones():
    with pytest.raises(ConfigError) as exc:
        load_profile("Qwen3-32B", "RTXPRO6000", tp=4)
    assert isinstance(exc.value, UnknownProfileError) and isinstance(exc.value, ValueError)
    msg = str(exc.value)
    assert "tensor-parallel sizes for this pair: 1, 2" in msg
    assert "Qwen3-32B/RTXPRO6000 (tp2)" in msg and "Llama-3.1-70B/H100 (tp8)" in msg
    with pytest.raises(ConfigError, match="for this pair: 1\\. "):
        load_profile("Llama-3.1-8B", "RTX4090", tp=2)
    with pytest.raises(ConfigError, match="for this pair: 4"):
        load_profile("Llama-3.1-70B", "A100", tp=8)  # derived, over the hold-out bar
    with pytest.raises(ConfigError, match="Known models"):
        load_profile("Llama-3.1-70B", "RTX4090", tp=2)
    for bad in (0, -1):
        with pytest.raises(ConfigError, match=">= 1"):
            load_profile("Qwen3-32B", "RTXPRO6000", tp=bad)
    with pytest.raises(ConfigError, match="integer"):
        load_profile("Qwen3-32B", "RTXPRO6000", tp=2.0)


# ---------------------------------------------------------------- communication
def test_cost_adds_the_collectives_to_the_per_shard_compute():
    prof = load_profile("Qwen3-32B", "RTXPRO6000", tp=2)
    comm = prof.cost.data["communication"]
    link = tpmod.LINKS["RTXPRO6000"]
    assert comm["source"] == link["source"] and "PCIe" in comm["link"]
    assert comm["bus_bandwidth_gbps"] == link["bus_bandwidth_gbps"]
    h, vocab, L = prof.model.hidden_size, prof.model.vocab_size, prof.model.num_layers
    for chunks, n, kv in (([], 64, 64 * 2048.0), ([(2048, 0)], 0, 0.0), ([(300, 100)], 7, 7e3),
                          ([], 300, 300 * 500.0)):  # 300 sequences: past the last knot
        tokens = n + sum(c for c, _ in chunks)
        seqs = n + len(chunks)
        expected = ((2 * L + 1) * tpmod.allreduce_us(tokens * h * 2, 2, link)
                    + tpmod.allgather_us(seqs * vocab * 2, 2, link))
        added = prof.cost.iteration_time_s(chunks, n, kv) \
            - prof.compute_cost.iteration_time_s(chunks, n, kv)
        assert added * 1e6 == pytest.approx(expected, rel=1e-6)
    # NCCL-tests convention: an all-reduce moves 2 (n-1)/n of the buffer over the bus
    assert tpmod.allreduce_us(40e3, 2, link) == pytest.approx(link["latency_us"] + 1.0)
    assert tpmod.allreduce_us(1e6, 1, link) == 0.0


def test_tp1_files_have_no_communication():
    for m, g in known_profiles():
        prof = load_profile(m, g)
        assert "communication" not in prof.cost.data
        assert prof.compute_cost is prof.cost
        data = prof.cost.data
        assert CostModel(data, communication=False).iteration_time_s([(64, 0)], 8, 8e3) == \
            prof.cost.iteration_time_s([(64, 0)], 8, 8e3)


# ---------------------------------------------------------------- shipped TP files
@pytest.mark.parametrize("path", TP_FILES, ids=lambda p: p.stem)
def test_tp_files_holdout_and_provenance(path):
    """The bar the tp1 files meet (median hold-out error <= 5% per component, n >= 5), the
    collectives' source and formula, and the validation fields."""
    d = _load(path)
    for key in ("source", "method", "licence"):
        assert isinstance(d[key], str) and len(d[key]) > 20, key
    assert f"tp{d['profile']['tp']}" in path.name
    for comp, err in d["holdout_median_abs_rel_err"].items():
        assert 0 <= err <= 0.05, (path.name, comp, err)
        assert d["holdout"][comp]["n"] >= 5
    comm = d["communication"]
    assert comm["tp"] == d["profile"]["tp"] and not comm["included_in_tables"]
    assert comm["source"] and "2(n-1)/n" in comm["formula"]
    assert comm["bus_bandwidth_gbps"] > 0 and comm["latency_us"] > 0
    assert "holdout_scope" in d["validation"]


def test_qwen_tp2_validation_figures():
    v = _load(CALIBRATION_DIR / "cost_qwen3-32b_rtxpro6000_tp2.json")["validation"]["tp1_vs_tp"]
    assert v["gemm_ratio"]["median"] == pytest.approx(0.5, abs=0.03)  # half the matrices
    assert v["split_gemm_prediction"]["median_abs_rel_err"] <= 0.05
    assert v["dense_layer_prediction"]["median_abs_rel_err"] <= 0.05
    assert 0.5 <= v["attention_ratio"]["work_ge_2^20"]["median"] < 1


def test_derivation_reproduces_the_shipped_files(tmp_path):
    """Every shipped calibration file (tp1 and TP, models.json) is byte for byte what
    ``calibrate`` derives from the raw data today."""
    _need_data()
    pytest.importorskip("pandas")
    from kv_cache_rl.hardware import calibrate
    calibrate.run(DATA, tmp_path)
    derived = sorted(p.name for p in tmp_path.glob("*.json"))
    assert derived == sorted(p.name for p in CALIBRATION_DIR.glob("*.json"))
    for name in derived:
        assert (tmp_path / name).read_bytes() == (CALIBRATION_DIR / name).read_bytes(), name


@pytest.mark.parametrize("path", TP_FILES, ids=lambda p: p.stem)
def test_tp_holdout_recomputed_from_raw_data(path):
    """The hold-out errors of the per-shard compute against the raw per-shard points."""
    _need_data()
    pytest.importorskip("pandas")
    from kv_cache_rl.hardware import calibrate
    from kv_cache_rl.hardware import calibrate_aiconfigurator as aic
    from kv_cache_rl.hardware.fitting import is_holdout, predict
    d = _load(path)
    m, g, tp = d["profile"]["model"], d["profile"]["gpu"], d["profile"]["tp"]
    shape = calibrate.model_shape(DATA, m)
    points = (calibrate.lss_points(DATA, m, g, shape["num_layers"], tp)
              if (m, g, tp) in calibrate.LSS_TP_PROFILES else aic.aic_points(DATA, shape, g, tp))
    compute = load_profile(m, g, tp).compute_cost
    for comp in ("attention", "dense", "per_sequence"):
        held = [(x, y) for key, x, y in points[comp] if is_holdout(key)]
        errs = sorted(abs(predict(compute, comp, x) / y - 1) for x, y in held)
        median = (errs[(len(errs) - 1) // 2] + errs[len(errs) // 2]) / 2
        assert median <= 0.05, (path.name, comp, median)
        assert median == pytest.approx(d["holdout_median_abs_rel_err"][comp], abs=1e-3)


def test_qwen_tp2_profile_has_no_communication_ops():
    """The measured tp2 profile is per-shard compute: its ops hold no collective (so the
    all-reduces must be added), and its shard is half the model (meta.yaml)."""
    _need_data()
    d = DATA / "profiles" / "llmservingsim" / "RTXPRO6000" / "Qwen3-32B" / "bf16"
    ops = {line.split(",")[0] for line in (d / "tp2" / "dense.csv").read_text().splitlines()[1:]}
    assert not {op for op in ops if "reduce" in op or "gather" in op or "comm" in op}
    meta = (d / "meta.yaml").read_text()
    assert "tensor_parallel_size: 1" in meta and "intermediate_size: 12800" in meta
    assert "num_key_value_heads: 4" in meta


# ---------------------------------------------------------------- replay, CLI, scenarios, env
TRACE_ROWS = [{"arrival_s": 0.05 * i, "input_toks": 200 + 37 * (i % 9),
               "output_toks": 40 + 11 * (i % 5)} for i in range(40)]


def _trace(tmp_path: Path) -> Path:
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in TRACE_ROWS))
    return path


def test_replay_tp2_small_trace(tmp_path, capsys):
    from kv_cache_rl.apps.cli import main
    trace = _trace(tmp_path)
    out = {}
    for tp in (1, 2):
        assert main(["replay", str(trace), "--model", "Qwen3-32B", "--gpu", "RTXPRO6000",
                     "--tensor-parallel-size", str(tp), "--json", str(tmp_path / f"{tp}.json")]) \
            == 0
        out[tp] = _load(tmp_path / f"{tp}.json")
    text = capsys.readouterr().out
    assert "2x RTXPRO6000 (tensor parallel 2" in text and "per GPU" in text
    assert "ttft_ms" in text and "tpot_ms" in text and "latency_ms" in text
    assert out[2]["num_requests"] == out[1]["num_requests"] == len(TRACE_ROWS)
    assert out[2]["tpot_ms"]["mean"] < out[1]["tpot_ms"]["mean"]  # half the work per GPU


def test_replay_tp2_window_of_the_shared_trace(capsys):
    _need_data()
    from kv_cache_rl.apps.cli import main
    trace = DATA / "traces" / "sharegpt_qwen3-32b_300req_10rps.jsonl"
    assert main(["replay", str(trace), "--model", "Qwen3-32B", "--gpu", "RTXPRO6000", "-tp", "2",
                 "--start", "0", "--end", "5"]) == 0
    assert "tensor parallel 2" in capsys.readouterr().out


def test_cli_unknown_tp_is_one_line(tmp_path, capsys):
    from kv_cache_rl.apps.cli import main
    assert main(["replay", str(_trace(tmp_path)), "--model", "Qwen3-32B", "--gpu", "RTXPRO6000",
                 "--tensor-parallel-size", "4"]) == 2
    err = capsys.readouterr().err
    assert "tensor-parallel sizes for this pair: 1, 2" in err and "Traceback" not in err


def test_cli_arguments():
    from kv_cache_rl.apps.cli import build_parser
    p = build_parser()
    assert p.parse_args(["replay", "t.jsonl"]).tensor_parallel_size == 1
    for cmd in ("bench", "train"):
        args = p.parse_args([cmd, "--model", "Qwen3-32B", "--gpu", "RTXPRO6000",
                             "--tensor-parallel-size", "2"])
        assert (args.model, args.gpu, args.tensor_parallel_size) == ("Qwen3-32B", "RTXPRO6000", 2)
        assert p.parse_args([cmd]).tensor_parallel_size == 1


def test_scenario_picks_model_gpu_and_tp():
    from kv_cache_rl.task.episode import Episode
    from kv_cache_rl.task.scenario import resolve_hardware, make_scenario
    sc = make_scenario("easy", 3, steps=2, model="qwen3-32b", gpu="rtx pro 6000",
                       tensor_parallel_size=2)
    assert (sc.model, sc.gpu, sc.tensor_parallel_size, sc.profile.tp) == \
        ("Qwen3-32B", "RTXPRO6000", 2, 2)
    assert sc.options["tensor_parallel_size"] == 2 and sc.options["model"] == "Qwen3-32B"
    assert "gpu" not in sc.options  # the default GPU is not recorded
    assert make_scenario("easy", 3, steps=2, model="Qwen3-32B", tensor_parallel_size=2) is sc
    default = make_scenario("easy", 3, steps=2)
    assert default.profile.tp == 1 and not {"model", "gpu", "tensor_parallel_size"} \
        & set(default.options)
    episode = Episode(sc)
    episode.advance()
    again = Episode.from_state(json.loads(json.dumps(episode.state_dict())))
    assert again.scenario is sc and again.observation.text() == episode.observation.text()
    with pytest.raises(ConfigError, match="1, 2"):
        make_scenario("easy", 3, steps=2, model="Qwen3-32B", tensor_parallel_size=4)
    with pytest.raises(ConfigError):  # no Llama-3.1-8B TP2
        resolve_hardware(tensor_parallel_size=2)
    assert resolve_hardware("qwen3-32b", tensor_parallel_size=2) == ("Qwen3-32B", "RTXPRO6000", 2)


def test_env_args_pass_tp_through():
    sys.path.insert(0, str(REPO / "environments" / "kv_cache_eviction"))
    from kv_cache_eviction.common import EnvArgs
    args = EnvArgs(difficulty="easy", num_examples=1, steps=2, model="Qwen3-32B",
                   gpu="RTXPRO6000", tensor_parallel_size=2)
    assert args.hardware == {"model": "Qwen3-32B", "gpu": "RTXPRO6000",
                             "tensor_parallel_size": 2}
    episode = args.episode(0)
    assert episode.scenario.profile.tp == 2 and episode.scenario.model == "Qwen3-32B"
    assert EnvArgs().hardware == {}
    with pytest.raises(ValueError, match="1, 2"):
        EnvArgs(model="Qwen3-32B", tensor_parallel_size=3)
