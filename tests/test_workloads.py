"""Workload statistics (shipped JSONs, derivation) and the generator (plain and agentic).

The statistics are checked against each other, the raw traces and the generator's parameters;
the headline figures next to their published references are printed by
``benchmarks/calibration_figures.py``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from kv_cache_rl.workload.arrivals import fit_mmpp2, interarrival_stats, mmpp2_cv2_idc, sample_arrivals
from kv_cache_rl.workload.requests import Trace
from kv_cache_rl.workload.traces import dump_jsonl, load_trace
from kv_cache_rl.workload.statistics import DEFAULT_OUT_DIR, derive_all_statistics, dumps
from kv_cache_rl.workload.generators import (AGENTIC_DEFAULTS, TURN_STATS_WORKLOAD, WORKLOADS,
                                             expected_requests_per_session, generate,
                                             load_statistics, sample_quantiles)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def arrivals(trace: Trace) -> np.ndarray:
    return np.array([r.arrival_s for r in trace.requests])


def check_hash_consistency(trace: Trace) -> None:
    """Equal id <=> equal prefix: an id always sits at one position after one same id."""
    where: dict[int, tuple[int, int]] = {}
    for r in trace.requests:
        assert len(r.hash_ids) == r.input_toks // trace.hash_block_tokens  # full blocks only
        for i, x in enumerate(r.hash_ids):
            key = (i, r.hash_ids[i - 1] if i else -1)
            assert where.setdefault(x, key) == key, f"id {x} of {r.request_id} conflicts"


# ---- shipped profiles ------------------------------------------------------------------------


@pytest.mark.parametrize("name", WORKLOADS)
def test_shipped_profile_shape(name):
    prof = load_statistics(name)
    assert prof["name"] == name and prof["source"] and prof["licence"]
    for key in ("input_toks", "output_toks"):
        q = prof[key]["quantiles"]
        assert len(q) == 101 and all(isinstance(v, int) and v >= 1 for v in q)
        assert q == sorted(q)
    assert prof["mean_rate_rps"] > 0 and prof["num_requests"] > 0
    assert prof["arrival_model"]["model"] in ("mmpp2", "gamma")


def _mmpp2_rate(model: dict) -> float:
    """The stationary arrival rate of an MMPP2: each state's rate weighted by its time share."""
    (r_hi, r_lo), (d_hi, d_lo) = model["rates_rps"], model["mean_dwell_s"]
    return (r_hi * d_hi + r_lo * d_lo) / (d_hi + d_lo)


@pytest.mark.parametrize("name", WORKLOADS)
def test_shipped_statistics_agree_with_themselves(name):
    """The figures of a statistics file follow from each other: rate, mean gap, the arrival
    model's closed form (which keeps the measured rate and burstiness), the prefix fields."""
    prof = load_statistics(name)
    gaps, model = prof["interarrival"], prof["arrival_model"]
    assert prof["mean_rate_rps"] == pytest.approx((prof["num_requests"] - 1) / prof["duration_s"],
                                                  rel=1e-5)
    assert gaps["mean_s"] == pytest.approx(1 / prof["mean_rate_rps"], rel=1e-4)
    if model["model"] == "mmpp2":
        implied = model["implied"]
        (r_hi, r_lo), (d_hi, d_lo) = model["rates_rps"], model["mean_dwell_s"]
        windows = [float(w) for w in implied["idc"]]
        cv2, idc = mmpp2_cv2_idc(r_hi, r_lo, 1 / d_hi, 1 / d_lo, windows)
        assert implied["cv"] == pytest.approx(np.sqrt(cv2), abs=1e-3)
        assert list(implied["idc"].values()) == pytest.approx(idc, rel=1e-3)
        assert implied["rate_rps"] == pytest.approx(_mmpp2_rate(model), rel=1e-4)
        assert implied["rate_rps"] == pytest.approx(prof["mean_rate_rps"], rel=1e-4)
        assert implied["cv"] == pytest.approx(gaps["cv"], rel=0.05)  # the burstiness is kept
    else:
        assert model["rate_rps"] == pytest.approx(prof["mean_rate_rps"], rel=1e-4)
        assert model["cv"] == gaps["cv"]
    reuse = prof["prefix_reuse"]
    if reuse is not None:
        assert 0 <= reuse["reusable_token_fraction_beyond_system"] \
            <= reuse["reusable_token_fraction"] <= 1
        assert reuse["system_prefix_toks"] == reuse["system_prefix_blocks"] \
            * reuse["hash_block_tokens"]
        if reuse["system_prefix_blocks"] == 0:
            assert reuse["reusable_token_fraction_beyond_system"] == \
                reuse["reusable_token_fraction"]
        assert prof["sessions"]["turns_per_session"]["mean"] >= 1
        assert len(prof["sessions"]["new_toks_quantiles"]) == 101
    if gaps["timestamp_bucket_s"]:  # spreading the buckets' requests evens the gaps out
        assert gaps["cv_raw"] > gaps["cv"]


def test_statistics_orderings():
    """What tells the workloads apart: Azure code is burstier than Azure conversation, the
    Mooncake synthetic trace reuses more prefix than the conversation trace, and only the
    conversation trace has a system prefix and coarse timestamps."""
    code, conv = load_statistics("azure_code"), load_statistics("azure_conv")
    assert code["interarrival"]["cv"] > conv["interarrival"]["cv"]
    assert code["interarrival"]["idc"]["60"] > conv["interarrival"]["idc"]["60"]
    mc, ms = load_statistics("mooncake_conversation"), load_statistics("mooncake_synthetic")
    assert ms["prefix_reuse"]["reusable_token_fraction"] > \
        mc["prefix_reuse"]["reusable_token_fraction"]
    assert mc["prefix_reuse"]["system_prefix_blocks"] > 0 == \
        ms["prefix_reuse"]["system_prefix_blocks"]
    assert mc["interarrival"]["timestamp_bucket_s"] and not \
        ms["interarrival"]["timestamp_bucket_s"]


@pytest.mark.parametrize("name", ["mooncake_conversation", "mooncake_synthetic"])
def test_prefix_and_timestamp_statistics_match_the_raw_file(name):
    """Recounted straight from the raw JSONL (not through the derivation code): the leading
    blocks every request shares, the prefix reuse an infinite cache would see, and whether the
    timestamps come in buckets."""
    prof = load_statistics(name)
    path = DATA / "traces" / prof["file"]
    if not path.is_file():
        pytest.skip(f"{path} not present")
    rows = sorted((json.loads(line) for line in path.open() if line.strip()),
                  key=lambda r: r["timestamp"])
    reuse = prof["prefix_reuse"]
    shared = 0
    while all(len(r["hash_ids"]) > shared for r in rows) and \
            len({r["hash_ids"][shared] for r in rows}) == 1:
        shared += 1
    assert reuse["system_prefix_blocks"] == shared
    seen: set[int] = set()
    hit = 0
    for r in rows:
        lead = 0
        while lead < len(r["hash_ids"]) and r["hash_ids"][lead] in seen:
            lead += 1
        hit += min(lead * reuse["hash_block_tokens"], r["input_length"])
        seen.update(r["hash_ids"])
    total = sum(r["input_length"] for r in rows)
    assert reuse["reusable_token_fraction"] == pytest.approx(hit / total, abs=1e-4)
    stamps = sorted({r["timestamp"] for r in rows})  # milliseconds
    bucket = prof["interarrival"]["timestamp_bucket_s"]
    if bucket:
        steps = np.diff(stamps) / (1000 * bucket)
        assert len(stamps) < len(rows) / 2  # many requests share a timestamp
        assert np.all(np.abs(steps - np.round(steps)) < 0.01)  # whole buckets apart
    else:
        assert len(stamps) > len(rows) / 2


@pytest.fixture(scope="module")
def derived():
    if not (DATA / "traces").is_dir():
        pytest.skip(f"{DATA / 'traces'} not present")
    return derive_all_statistics(DATA)


def test_derivation_reproduces_shipped_profiles(derived):
    for name, prof in derived.items():
        shipped = (DEFAULT_OUT_DIR / f"{name}.json").read_text()
        assert dumps(prof) + "\n" == shipped, f"{name}.json is stale: rerun kv_cache_rl.workload.statistics"


def test_dumps_is_json():
    obj = {"a": [1, 2], "b": {"c": [{"d": 1.5}], "e": None}}
    assert json.loads(dumps(obj)) == obj


# ---- arrival models --------------------------------------------------------------------------


def test_mmpp2_sample_matches_closed_form():
    model = load_statistics("azure_code")["arrival_model"]
    t = sample_arrivals(model, 40 * 3600.0, rng(1))
    st = interarrival_stats(t)
    assert len(t) / (40 * 3600) == pytest.approx(_mmpp2_rate(model), rel=0.1)
    assert st["cv"] == pytest.approx(model["implied"]["cv"], rel=0.15)
    assert st["idc"]["10"] == pytest.approx(model["implied"]["idc"]["10"], rel=0.25)


def test_fit_mmpp2_recovers_a_known_process():
    truth = {"model": "mmpp2", "rates_rps": [20.0, 0.5], "mean_dwell_s": [5.0, 30.0]}
    t = sample_arrivals(truth, 20_000.0, rng(2))
    st = interarrival_stats(t)
    fit = fit_mmpp2(len(t) / 20_000.0, st["cv"], {float(k): v for k, v in st["idc"].items()},
                    20_000.0)
    cv2, _ = mmpp2_cv2_idc(20.0, 0.5, 1 / 5.0, 1 / 30.0)
    assert fit["implied"]["cv"] == pytest.approx(np.sqrt(cv2), rel=0.15)
    assert fit["rates_rps"][0] == pytest.approx(20.0, rel=0.35)
    assert fit["mean_dwell_s"][1] == pytest.approx(30.0, rel=0.5)


def test_gamma_and_scaling():
    model = {"model": "gamma", "rate_rps": 4.0, "cv": 0.5}
    t = sample_arrivals(model, 5000.0, rng(3))
    assert len(t) / 5000 == pytest.approx(4.0, rel=0.05)
    assert interarrival_stats(t)["cv"] == pytest.approx(0.5, rel=0.1)
    fast = sample_arrivals(model, 5000.0, rng(3), time_scale=2.0, rate_factor=0.5)
    assert len(fast) / 5000 == pytest.approx(4.0, rel=0.05)
    with pytest.raises(ValueError):
        sample_arrivals(model, 10.0, rng(), rate_factor=0.0)


def test_mmpp2_rate_factor_keeps_dwell_time_scale_compresses():
    model = {"model": "mmpp2", "rates_rps": [10.0, 0.0], "mean_dwell_s": [10.0, 40.0]}
    thin = sample_arrivals(model, 20_000.0, rng(4), rate_factor=0.5)
    fast = sample_arrivals(model, 20_000.0, rng(4), time_scale=0.5)
    assert len(thin) == pytest.approx(len(fast), rel=0.1)  # both halve the rate (2/s -> 1/s)
    # the longest lull is an off period: kept by rate_factor, doubled by time_scale
    assert np.diff(fast).max() > 1.4 * np.diff(thin).max()


def test_sample_quantiles_inverse_cdf():
    x = sample_quantiles(np.linspace(0, 100, 101), rng(), 20_000)
    assert x.min() >= 0 and x.max() <= 100 and np.mean(x) == pytest.approx(50, abs=1)
    upper = sample_quantiles(np.linspace(0, 100, 101), rng(), 1000, lo=0.9)
    assert upper.min() >= 90


# ---- generation: determinism and consistency -------------------------------------------------


@pytest.mark.parametrize("agentic", [True, False])
def test_generate_deterministic(agentic):
    kw = dict(duration_s=120.0, rate_scale=0.5, agentic=agentic)
    a = generate("mooncake_conversation", rng=rng(7), **kw)
    b = generate("mooncake_conversation", rng=rng(7), **kw)
    c = generate("mooncake_conversation", rng=rng(8), **kw)
    assert a == b and a.requests and a.requests != c.requests
    times = arrivals(a)
    assert (np.diff(times) >= 0).all() and times[0] >= 0 and times[-1] < 120.0
    assert len({r.request_id for r in a.requests}) == len(a.requests)


@pytest.mark.parametrize("name", WORKLOADS)
@pytest.mark.parametrize("agentic", [True, False])
def test_hash_ids_consistent(name, agentic):
    trace = generate(name, duration_s=300.0, rate_scale=1.0, rng=rng(), agentic=agentic)
    assert trace.hash_block_tokens == 16 and trace.source == f"generated:{name}"
    check_hash_consistency(trace)


def test_statistics_by_dict_and_path(tmp_path):
    prof = load_statistics("sharegpt")
    (tmp_path / "p.json").write_text(json.dumps(prof))
    a = generate(prof, duration_s=30.0, rng=rng(), agentic=False)
    b = generate(str(tmp_path / "p.json"), duration_s=30.0, rng=rng(), agentic=False)
    assert a == b
    with pytest.raises(ValueError, match="unknown workload"):
        generate("nope", duration_s=30.0, rng=rng())
    with pytest.raises(TypeError, match="unknown"):
        generate(prof, duration_s=30.0, rng=rng(), turns=3)
    with pytest.raises(ValueError):
        generate(prof, duration_s=0.0, rng=rng())


def test_generated_trace_round_trips(tmp_path):
    trace = generate("azure_conv", duration_s=60.0, rate_scale=0.5, rng=rng())
    dump_jsonl(trace, tmp_path / "g.jsonl")
    assert load_trace(tmp_path / "g.jsonl").requests == trace.requests


# ---- agentic structure -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def agentic_trace() -> Trace:
    return generate("azure_conv", duration_s=1800.0, rate_scale=0.5, rng=rng(11))


def test_agentic_sessions_extend_each_other(agentic_trace):
    p, bs = AGENTIC_DEFAULTS, agentic_trace.hash_block_tokens
    user_gap = load_statistics(TURN_STATS_WORKLOAD)["sessions"]["turn_gap_s_percentiles_0_5_100"]
    reqs = agentic_trace.requests
    sys_ids = None
    sessions = defaultdict(list)
    for r in reqs:
        assert r.system_toks == min(p["system_toks"], r.input_toks)
        n_sys = r.system_toks // bs
        sys_ids = sys_ids or r.hash_ids[:p["system_toks"] // bs]
        assert r.hash_ids[:n_sys] == sys_ids[:n_sys]  # one shared system prefix
        if not r.ephemeral:
            sessions[r.session_id].append(r)
    assert len(sessions) == agentic_trace.meta["sessions"] > 50
    multi = 0
    for turns in sessions.values():
        assert len({r.request_type for r in turns}) == 1  # a session keeps its application
        for prev, nxt in zip(turns, turns[1:], strict=False):
            multi += 1
            assert nxt.turn == prev.turn + 1
            if prev.tool == "user":  # a user's gap: Mooncake's measured distribution
                assert user_gap[0] <= prev.next_turn_s <= user_gap[-1]
            else:  # a tool call: its range times the session's pace (log-normal, sigma 0.5)
                lo, hi = p["tool_pause_s"][prev.tool]
                assert lo * 0.05 <= prev.next_turn_s <= hi * 20
                assert prev.tool in p["tools"][prev.request_type]
            # closed loop: released the pause after the previous turn finishes
            assert reqs[nxt.after] is prev and nxt.after_s == pytest.approx(prev.next_turn_s)
            assert nxt.arrival_s == pytest.approx(
                prev.arrival_s + prev.output_toks * p["nominal_tpot_s"] + prev.next_turn_s)
            if turns[0].turn == 0:  # the whole history is in the trace
                pauses = [t.next_turn_s for t in turns[:turns.index(nxt)]]
                assert nxt.past_pause_s == pytest.approx(sum(pauses) / len(pauses), abs=1e-3)
            visible = prev.output_toks - prev.reasoning_toks
            assert nxt.input_toks > prev.input_toks + visible  # + new tool/user tokens
            assert nxt.hash_ids[:len(prev.hash_ids)] == prev.hash_ids  # context is a prefix hit
            assert nxt.priority == prev.priority
    assert multi > 100
    ends = [turns[-1] for turns in sessions.values() if turns[-1].next_turn_s < 0]
    # only an answer ends a session early (or the turn limit, or the context length)
    assert ends and all(r.tool == "user" or r.turn == p["max_turns"] - 1
                        or r.input_toks > p["max_model_len"] // 2 for r in ends)


def test_agentic_ephemeral_share_only_system(agentic_trace):
    bs = agentic_trace.hash_block_tokens
    count = defaultdict(int)
    for r in agentic_trace.requests:
        for x in r.hash_ids:
            count[x] += 1
    eph = [r for r in agentic_trace.requests if r.ephemeral]
    assert eph and all(r.session_id == -1 and r.next_turn_s == -1.0 for r in eph)
    assert all(r.after == -1 or reqs_tool(agentic_trace, r) != "user" for r in eph)
    for r in eph:
        assert all(count[x] == 1 for x in r.hash_ids[r.system_toks // bs:])


def reqs_tool(trace, r) -> str:
    return trace.requests[r.after].tool


def test_agentic_shares(agentic_trace):
    """The generator's shares, each within four standard errors of its parameter: a sub-agent
    call after a returning tool call, a priority session, the reasoning part of thinking turns."""
    p, reqs = AGENTIC_DEFAULTS, agentic_trace.requests

    def near(share: float, n: int, prob: float) -> bool:
        return abs(share - prob) <= 4 * np.sqrt(prob * (1 - prob) / n)

    turns = [r for r in reqs if not r.ephemeral]
    tool_calls = [r for r in turns if r.tool != "user" and r.next_turn_s > 0]
    eph = sum(r.ephemeral for r in reqs)
    assert near(eph / len(tool_calls), len(tool_calls), p["subagent_prob"])
    priority = {r.session_id: r.priority for r in turns}  # one draw per session
    assert near(np.mean(list(priority.values())), len(priority), p["priority_share"])
    thinking = [r for r in reqs if r.reasoning_toks > 0]
    frac = np.sum([r.reasoning_toks for r in thinking]) / np.sum([r.output_toks for r in thinking])
    assert frac == pytest.approx(p["reasoning_fraction"], abs=0.05)
    # every reasoning-type turn thinks, no chat turn does
    assert all(r.reasoning_toks > 0 for r in turns if r.request_type == "reasoning"
               and r.output_toks > 2)
    assert not any(r.reasoning_toks for r in turns if r.request_type == "chat")


def test_agentic_request_rate_matches_profile():
    prof = load_statistics("mooncake_conversation")
    trace = generate(prof, duration_s=1800.0, rate_scale=0.5, rng=rng(5))
    rate = len(trace.requests) / 1800.0
    assert rate == pytest.approx(prof["mean_rate_rps"] * 0.5, rel=0.2)
    assert trace.meta["expected_requests_per_session"] == pytest.approx(
        expected_requests_per_session(AGENTIC_DEFAULTS))
    opening = [r.input_toks - r.system_toks for r in trace.requests
               if r.ephemeral or r.request_id.endswith("t0")]
    q = prof["input_toks"]["quantiles"]
    assert np.median(opening) == pytest.approx(q[50], rel=0.15)


def test_agentic_overrides():
    trace = generate("sharegpt", duration_s=200.0, rng=rng(), system_toks=512, subagent_prob=0.0,
                     max_turns=1, priority_share=1.0, type_shares={"code": 1.0})
    reqs = trace.requests
    assert all(r.system_toks == 512 and r.priority == 1 and not r.ephemeral for r in reqs)
    assert all(r.next_turn_s == -1 and r.request_type == "code" for r in reqs)
    assert len({r.session_id for r in reqs}) == len(reqs)
    with pytest.raises(ValueError):
        generate("sharegpt", duration_s=20.0, rng=rng(), type_shares={"chat": 0.5})


# ---- plain workloads -------------------------------------------------------------------------


@pytest.mark.parametrize("name, duration, tol_rate, tol_cv", [
    ("azure_conv", 3600.0, 0.15, 0.15), ("azure_code", 4 * 3600.0, 0.3, 0.3),
    ("sharegpt", 600.0, 0.1, 0.15)])
def test_plain_statistics_match_profile(name, duration, tol_rate, tol_cv):
    prof = load_statistics(name)
    trace = generate(name, duration_s=duration, rate_scale=1.0, rng=rng(3), agentic=False)
    assert all(r.session_id == -1 and not r.hash_ids[:0] for r in trace.requests)
    t = arrivals(trace)
    assert len(t) / duration == pytest.approx(prof["mean_rate_rps"], rel=tol_rate)
    assert interarrival_stats(t)["cv"] == pytest.approx(prof["interarrival"]["cv"], rel=tol_cv)
    for key, attr in (("input_toks", "input_toks"), ("output_toks", "output_toks")):
        x = np.array([getattr(r, attr) for r in trace.requests])
        q = prof[key]["quantiles"]
        for pct in (10, 50, 90):
            assert np.percentile(x, pct) == pytest.approx(q[pct], rel=0.1, abs=2)


def test_plain_rate_scale_compresses_time():
    slow = generate("azure_conv", duration_s=600.0, rate_scale=1.0, rng=rng(4), agentic=False)
    fast = generate("azure_conv", duration_s=600.0, rate_scale=3.0, rng=rng(4), agentic=False)
    assert len(fast.requests) / len(slow.requests) == pytest.approx(3.0, rel=0.25)


@pytest.mark.parametrize("name", ["mooncake_conversation", "mooncake_synthetic"])
def test_plain_mooncake_prefix_reuse(name):
    prof = load_statistics(name)
    trace = generate(name, duration_s=1800.0, rate_scale=1.0, rng=rng(9), agentic=False)
    sys_toks = prof["prefix_reuse"]["system_prefix_toks"]
    assert trace.meta["system_toks"] == sys_toks
    assert all(r.system_toks == min(sys_toks, r.input_toks) for r in trace.requests)
    seen: set[int] = set()
    continuing = 0
    for r in trace.requests:
        lead = 0
        for x in r.hash_ids:
            if x not in seen:
                break
            lead += 1
        continuing += lead * 16 > sys_toks + 16
        seen.update(r.hash_ids)
    share = continuing / len(trace.requests)
    assert share == pytest.approx(prof["sessions"]["continuing_request_share"], abs=0.08)


@pytest.mark.parametrize("block", [64, 512])
def test_other_hash_block_sizes(block):
    trace = generate("mooncake_synthetic", duration_s=120.0, rng=rng(), hash_block_tokens=block)
    assert trace.hash_block_tokens == block
    check_hash_consistency(trace)


def test_short_slow_episode_is_valid():
    # the shape of a scenario episode: 80 s at a quarter of the profile rate, bursty profile
    for seed in range(5):
        trace = generate("azure_code", duration_s=80.0, rate_scale=0.25, rng=rng(seed))
        assert all(0 <= r.arrival_s < 80.0 for r in trace.requests)
        check_hash_consistency(trace)
