"""Engine: scheduling and batching, preemption, random-trace invariants, determinism, the
decode fast path.

Every run goes through ``tests.support.tracker.Tracker``, which checks the engine's invariants
after every step (pool conservation, block/refcount bookkeeping, queue/state consistency, budget
and max_num_seqs per batch, tokens never going down) and the end-of-run accounting (every request
finished exactly once or rejected; computed + hit tokens == first computations + recomputed).
"""

from __future__ import annotations

import pytest

from kv_cache_rl.apps.replay import replay
from kv_cache_rl.engine import Engine, State
from kv_cache_rl.engine.config import EngineConfig
from tests.support.engines import R, cost, make, output_of, seq_of
from tests.support.invariants import check_invariants
from tests.support.standin import PROFILE
from tests.support.tracker import Tracker, drive
from tests.support.traces import random_trace


# ---- scheduling basics ----------------------------------------------------------------------


def test_single_request_prefill_then_decodes():
    eng = make([R(0.0, 100, 10, "a")])
    t = drive(eng)
    (a,) = eng.finished
    assert a.num_output == 10 and eng.stats.generated_tokens == 10
    assert eng.stats.prompt_tokens == 100
    assert eng.iterations == 10  # one prefill that samples the first token, nine decodes
    assert t.batches[0] == (((100, 0),), 0)
    assert all(b == ((), 1) for b in t.batches[1:])
    assert a.first_token_s == pytest.approx(cost([(100, 0)]))
    decodes = sum(cost((), 1, 100 + k) for k in range(1, 10))
    assert a.finish_s == pytest.approx(a.first_token_s + decodes)
    assert eng.now == pytest.approx(a.finish_s)
    assert eng.pool.used_units == 0 and eng.pool.free_units == eng.pool.total_units
    assert eng.stats.preemptions == eng.stats.recomputed_tokens == eng.stats.rejected == 0
    assert eng.stats.quality_loss == 0.0


def test_chunked_prefill_under_the_token_budget():
    eng = make([R(0.0, 1000, 2, "a")], max_num_batched_tokens=256)
    t = drive(eng)
    assert t.batches == [(((256, 0),), 0), (((256, 256),), 0), (((256, 512),), 0),
                         (((232, 768),), 0), ((), 1)]
    (a,) = eng.finished
    assert a.first_token_s == pytest.approx(sum(cost([c]) for c in
                                                ((256, 0), (256, 256), (256, 512), (232, 768))))


def test_decodes_come_first_and_prefill_gets_the_rest_of_the_budget():
    eng = make([R(0.0, 16, 50, "a"), R(0.05, 1000, 2, "b")], max_num_batched_tokens=256)
    t = drive(eng)
    mixed = [b for b in t.batches if b[1] == 1 and b[0]]
    assert mixed and all(sum(n for n, _ in chunks) == 255 for chunks, _ in mixed[:3])
    assert mixed[0][0] == ((255, 0),)


def test_max_num_seqs_and_fcfs_order():
    reqs = [R(0.0, 50, 10, f"r{i}") for i in range(6)]
    eng = make(reqs, max_num_seqs=2)
    drive(eng)
    assert eng.stats.peak_running == 2
    assert [s.req.request_id for s in eng.finished] == [f"r{i}" for i in range(6)]
    assert eng.stats.peak_waiting == 4


def test_queue_head_that_does_not_fit_blocks_the_queue():
    # b needs 25 of 30 blocks and waits for a; c fits at once but must not overtake b
    eng = make([R(0.0, 300, 100, "a"), R(0.01, 400, 5, "b"), R(0.02, 16, 5, "c")],
               num_gpu_blocks=30)
    drive(eng)
    a, b, c = (seq_of(eng, r) for r in "abc")
    assert b.first_token_s > a.finish_s
    assert c.first_token_s >= b.first_token_s
    assert eng.stats.preemptions == 0


def test_requests_that_can_never_fit_are_rejected():
    # limit = min(max_model_len 200, 20 blocks * 16 = 320 tokens)
    eng = make([R(0.0, 190, 20, "x"), R(0.0, 150, 50, "y"), R(0.0, 300, 30, "z")],
               num_gpu_blocks=20, max_model_len=200)
    drive(eng)
    assert eng.stats.rejected == 2 and [s.req.request_id for s in eng.finished] == ["y"]
    eng = make([R(0.0, 150, 11, "x"), R(0.0, 150, 10, "y")], num_gpu_blocks=10)
    drive(eng)
    assert eng.stats.rejected == 1 and [s.req.request_id for s in eng.finished] == ["y"]


def test_empty_trace():
    eng = make([])
    assert eng.done and eng.next_event_s() is None
    assert eng.step() == 0.0
    drive(eng)
    assert eng.finished == [] and eng.now == 0.0


# ---- preemption -------------------------------------------------------------------------------


def _two_growing(caching: bool) -> Engine:
    # each needs 19 of 20 blocks by its end: they cannot both run to completion together
    return make([R(0.0, 100, 200, "a"), R(0.001, 100, 200, "b")], num_gpu_blocks=20,
                enable_prefix_caching=caching)


@pytest.mark.parametrize("caching", [True, False])
def test_preemption_takes_the_most_recently_admitted_request(caching):
    eng = _two_growing(caching)
    t = drive(eng)
    a, b = seq_of(eng, "a"), seq_of(eng, "b")
    assert a.num_preemptions == 0 and b.num_preemptions >= 1
    assert eng.stats.preemptions == b.num_preemptions
    assert [s.req.request_id for s in eng.finished] == ["a", "b"]
    assert eng.stats.recomputed_tokens > 0
    assert eng.stats.recomputed_tokens <= t.lost
    assert a.num_output == b.num_output == 200


def test_preempted_request_rehits_its_own_cached_blocks():
    on, off = _two_growing(True), _two_growing(False)
    drive(on)
    drive(off)
    assert on.stats.preemptions > 0 and off.stats.preemptions > 0
    assert on.stats.recomputed_tokens < off.stats.recomputed_tokens
    assert on.stats.prompt_tokens < off.stats.prompt_tokens


@pytest.mark.parametrize("caching", [True, False])
def test_tiny_pool_preempts_and_still_finishes_everything(caching):
    trace = random_trace(7, 40, max_input=400, max_output=64, rate=50.0)
    eng = Engine(EngineConfig(num_gpu_blocks=60, enable_prefix_caching=caching), PROFILE, trace)
    t = drive(eng)
    assert eng.stats.preemptions > 0 and eng.stats.recomputed_tokens > 0
    assert eng.stats.rejected == 0 and len(eng.finished) == 40
    if not caching:  # nothing to re-hit: every dropped token is computed again
        assert eng.stats.recomputed_tokens == t.lost
    assert eng.stats.seconds_kv_ge_95 > 0


def test_recompute_cut_to_one_token_by_the_budget_samples_nothing():
    """A recomputing request that gets a 1-token chunk is a prefill, not a decode.

    Regression: the decode fast path took any 1-token chunk of a request with output for a
    decode and sampled a token from a half-recomputed sequence.
    """
    eng = make([R(0.0, 20, 200, "a"), R(0.0, 20, 30, "b")], max_num_batched_tokens=2,
               enable_prefix_caching=False)
    t = Tracker(eng)
    t.step_until(lambda e: output_of(e, "b") >= 3)
    b = seq_of(eng, "b")
    out, lost = b.num_output, b.num_computed
    t.record_drop(b)
    eng.evict(b.seq_id)
    while b.num_computed < b.num_tokens - 1 or b.state != State.RUNNING:
        t.step()
        assert b.num_output == out and b.num_tokens == b.prompt_len + out
    assert b.num_computed == lost  # recomputed exactly what it had, one token per step
    assert all(chunks in ((), ((1, chunks[0][1]),)) for chunks, _ in t.batches[-lost:])
    t.run()
    assert eng.stats.recomputed_tokens == lost
    assert b.num_output == 30 and eng.stats.generated_tokens == 230


# ---- random traces ----------------------------------------------------------------------------

SCENARIOS = {
    "default": ({}, {}),
    "tiny_pool": ({"num_gpu_blocks": 60}, {"rate": 100.0}),
    "tiny_pool_no_cache": ({"num_gpu_blocks": 60, "enable_prefix_caching": False},
                           {"rate": 100.0}),
    "shared_prefix": ({"num_gpu_blocks": 120}, {"shared_prefix": True}),
    "mooncake_ids": ({"num_gpu_blocks": 200},
                     {"shared_prefix": True, "hash_block_tokens": 512, "max_input": 1500}),
    "ids_finer_than_blocks": ({"num_gpu_blocks": 120},
                              {"shared_prefix": True, "hash_block_tokens": 8}),
    "block_size_8": ({"num_gpu_blocks": 150, "block_size": 8}, {"shared_prefix": True}),
    "small_budget_many_seqs": ({"num_gpu_blocks": 100, "max_num_batched_tokens": 16,
                                "max_num_seqs": 16}, {"max_input": 100, "rate": 200.0}),
    "one_seq": ({"num_gpu_blocks": 80, "max_num_seqs": 1}, {}),
    "sessions_retention": ({"num_gpu_blocks": 150, "retention_s": 10.0},
                           {"sessions": 4, "system_toks": 32, "reasoning": True,
                            "ephemeral": True, "rate": 5.0}),
    "sessions_retention_tiny": ({"num_gpu_blocks": 60, "retention_s": 20.0},
                                {"sessions": 3, "system_toks": 48, "reasoning": True,
                                 "ephemeral": True, "max_input": 300}),
}


@pytest.mark.parametrize("seed,fast", [(1, False), (2, False), (3, True)])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_random_trace_invariants(name, seed, fast):
    config, trace_args = SCENARIOS[name]
    trace = random_trace(seed, 25, **trace_args)
    eng = Engine(EngineConfig(**{"num_gpu_blocks": 400, **config}), PROFILE, trace)
    t = drive(eng, fast=fast)  # invariants after every step (or decode run), accounting
    assert len(eng.finished) + eng.stats.rejected == 25
    if eng.config.retention_s == 0:
        assert eng.pool.used_units == 0 and not eng.live
    assert t.steps >= len(eng.finished)
    ttft = [s.first_token_s - s.arrival_s for s in eng.finished]
    assert all(x > 0 for x in ttft)


def test_invariant_checker_catches_a_leak():
    eng = make([R(0.0, 100, 10, "a")])
    eng.step()
    check_invariants(eng)
    eng.pool.reserve(4)  # units taken by no block
    with pytest.raises(AssertionError):
        check_invariants(eng)


# ---- determinism and time ---------------------------------------------------------------------


def test_determinism():
    trace = random_trace(3, 40, shared_prefix=True, rate=60.0)
    config = EngineConfig(num_gpu_blocks=80)
    runs = [replay(trace, PROFILE, config, timeseries=ts) for ts in (False, False, True)]
    summaries = [{k: v for k, v in r.summary.items() if k != "wall_s"} for r in runs]
    assert summaries[0] == summaries[1] == summaries[2]
    assert summaries[0]["preemptions"] > 0 and summaries[0]["num_requests"] == 40
    times = [[(s.seq_id, s.req.request_id, s.first_token_s, s.finish_s)
              for s in r.engine.finished] for r in runs]
    assert times[0] == times[1] == times[2]
    assert runs[2].timeseries.rows


def test_run_until_in_small_increments_matches_run():
    trace = random_trace(4, 30, max_input=300, rate=5.0)
    config = EngineConfig(num_gpu_blocks=60)
    whole = Engine(config, PROFILE, trace)
    whole.run()
    pieces = Engine(config, PROFILE, trace)
    t_end = 0.0
    while not (pieces.done and pieces.next_event_s() is None):
        t_end += 0.05
        pieces.run_until(t_end)
        check_invariants(pieces)
        assert pieces.now >= t_end
    assert [(s.req.request_id, s.first_token_s, s.finish_s) for s in pieces.finished] == \
        [(s.req.request_id, s.first_token_s, s.finish_s) for s in whole.finished]
    assert pieces.stats.preemptions == whole.stats.preemptions
    assert pieces.stats.recomputed_tokens == whole.stats.recomputed_tokens


@pytest.mark.parametrize("blocks,retention", [(4000, 0.0), (120, 0.0), (300, 20.0)])
def test_decode_fast_path_is_exact(profile, blocks, retention):
    """run() with pure-decode runs batched gives exactly what stepping one by one gives."""
    results = []
    for fast in (False, True):
        trace = random_trace(11, n=40, max_output=200, sessions=4 if retention else 0,
                             system_toks=64 if retention else 0, reasoning=bool(retention),
                             ephemeral=bool(retention))
        engine = Engine(EngineConfig(num_gpu_blocks=blocks, max_num_seqs=8,
                                     max_num_batched_tokens=256, retention_s=retention),
                        profile, trace, record_timeseries=True)
        engine.fast_forward = fast
        engine.run()
        engine.pool.check()
        s = engine.stats
        results.append(([(q.seq_id, q.first_token_s, q.finish_s, q.num_output)
                         for q in engine.finished], engine.now, engine.iterations,
                        s.preemptions, s.recomputed_tokens, s.generated_tokens,
                        round(s.kv_usage_mean, 12), round(s.seconds_kv_ge_95, 12),
                        engine.timeseries.rows))
    assert results[0] == results[1]
