"""Engine: scheduling, invariants, prefix caching, preemption, agent actions, retention.

Every run goes through ``conftest.Tracker``, which checks the engine's invariants after every
step (pool conservation, block/refcount bookkeeping, queue/state consistency, budget and
max_num_seqs per batch, tokens never going down) and the end-of-run accounting (every request
finished exactly once or rejected; computed + hit tokens == first computations + recomputed).
"""

from __future__ import annotations

import math

import pytest
from conftest import PROFILE, Tracker, check_invariants, drive, random_trace, snapshot

from kv_cache_rl.config import EngineConfig, Trace, TraceRequest
from kv_cache_rl.engine import (ActionError, CapacityError, Engine, InvalidStateError, Sequence,
                                State, UnknownSequenceError)
from kv_cache_rl.engine import scheduler
from kv_cache_rl.engine.scheduler import _held_within as held_within
from kv_cache_rl.replay import replay

UNIT_BYTES = PROFILE.model.kv_bytes_per_token * 16 // 4  # one pool unit at block size 16


def make(reqs, *, hbt: int = 16, **config) -> Engine:
    config.setdefault("num_gpu_blocks", 400)
    return Engine(EngineConfig(**config), PROFILE, Trace(tuple(reqs), hash_block_tokens=hbt))


def R(arrival: float, inp: int, out: int, rid: str, **fields) -> TraceRequest:
    return TraceRequest(arrival, inp, out, request_id=rid, **fields)


def seq_of(engine: Engine, rid: str, default=KeyError):
    for s in list(engine.live.values()) + engine.finished:
        if s.req is not None and s.req.request_id == rid and s.max_output > 0:
            return s
    if default is KeyError:
        raise KeyError(rid)
    return default


def state_of(engine: Engine, rid: str):
    s = seq_of(engine, rid, None)
    return None if s is None else s.state


def output_of(engine: Engine, rid: str) -> int:
    s = seq_of(engine, rid, None)
    return -1 if s is None else s.num_output


def holders(engine: Engine, kind: str) -> list:
    return [s for s in engine.cached_sequences() if s.kind == kind]


def cost(chunks=(), decodes=0, kv_sum=0.0) -> float:
    return PROFILE.cost.iteration_time_s(list(chunks), decodes, kv_sum)


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


# ---- prefix caching ---------------------------------------------------------------------------

IDS = tuple(range(100, 132))  # 32 ids x 16 tokens = 512 tokens


@pytest.mark.parametrize("caching", [True, False])
def test_identical_prefix_hits(caching):
    eng = make([R(0.0, 512, 4, "a", hash_ids=IDS), R(5.0, 512, 4, "b", hash_ids=IDS)],
               enable_prefix_caching=caching)
    drive(eng)
    a, b = seq_of(eng, "a"), seq_of(eng, "b")
    if caching:
        # 31 full blocks hit; the last block is recomputed so its logits can be sampled
        assert eng.stats.prompt_tokens == 512 + 16
        assert b.first_token_s - b.arrival_s < a.first_token_s - a.arrival_s
        assert eng.pool.evictable_units == 32 * 4  # the prompt blocks stay cached after a
    else:
        assert eng.stats.prompt_tokens == 1024
        assert eng.pool.evictable_units == 0


def test_partial_prefix_hits():
    other = IDS[:10] + tuple(range(500, 522))
    eng = make([R(0.0, 512, 4, "a", hash_ids=IDS), R(5.0, 512, 4, "b", hash_ids=other)])
    drive(eng)
    assert eng.stats.prompt_tokens == 512 + (512 - 160)


def test_concurrent_requests_share_prefix_blocks():
    eng = make([R(0.0, 512, 50, "a", hash_ids=IDS), R(0.05, 512, 50, "b", hash_ids=IDS)])
    t = Tracker(eng)
    t.step_until(lambda e: state_of(e, "b") == State.RUNNING)
    a, b = seq_of(eng, "a"), seq_of(eng, "b")
    assert a.blocks[:31] == b.blocks[:31]  # the same blocks, shared
    assert all(eng.pool.ref[blk] == 2 for blk in b.blocks[:31])
    unique = len(a.blocks) + len(b.blocks) - 31
    assert eng.pool.used_units == 4 * unique
    t.run()
    assert eng.stats.prompt_tokens == 512 + 16


def test_hash_ids_finer_than_blocks():
    """8-token hash ids with 16-token blocks: a block is shared only if both of its ids are."""
    base = tuple(range(1, 9))  # 64 tokens
    reqs = [R(0.0, 64, 1, "a", hash_ids=base),
            R(1.0, 64, 1, "b", hash_ids=(1, 20, 21, 22, 23, 24, 25, 26)),  # 8 tokens shared
            R(2.0, 64, 1, "c", hash_ids=(1, 2, 30, 31, 32, 33, 34, 35)),  # 16 tokens shared
            R(3.0, 64, 1, "d", hash_ids=base)]  # all shared: 3 blocks hit (last recomputed)
    eng = make(reqs, hbt=8)
    drive(eng)
    assert eng.stats.prompt_tokens == 64 + 64 + (64 - 16) + (64 - 48)


def test_hash_ids_coarser_than_blocks():
    """Mooncake: one id per 512 tokens, the last one covering a partial block."""
    reqs = [R(0.0, 600, 1, "a", hash_ids=(7, 8)),
            R(1.0, 600, 1, "b", hash_ids=(7, 8)),  # 37 full blocks hit, 8 tokens left
            R(2.0, 600, 1, "c", hash_ids=(7, 9))]  # the first 512 tokens hit
    eng = make(reqs, hbt=512)
    drive(eng)
    assert eng.stats.prompt_tokens == 600 + 8 + 88


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


# ---- actions: misuse --------------------------------------------------------------------------

ACTIONS = ("evict", "compress", "swap_to_cpu")


def _expect(engine: Engine, action: str, seq_id: int, error: type) -> ActionError:
    before = snapshot(engine)
    with pytest.raises(error) as info:
        getattr(engine, action)(seq_id)
    assert snapshot(engine) == before, f"{action} changed the engine before raising"
    check_invariants(engine)
    return info.value


def test_unknown_ids_raise():
    eng = make([R(0.0, 100, 5, "a"), R(0.0, 100, 5, "b")], max_num_seqs=1, num_cpu_blocks=50)
    t = Tracker(eng)
    t.step()
    a, b = seq_of(eng, "a"), seq_of(eng, "b")
    assert a.state == State.RUNNING and b.state == State.WAITING
    for action in ACTIONS:
        for bad in (999, -1, b.seq_id):  # a waiting request holds no KV: not visible
            err = _expect(eng, action, bad, UnknownSequenceError)
            assert isinstance(err, ActionError) and isinstance(err, KeyError)
            assert str(err) == f"no cached sequence with id {bad}"
    t.step_until(lambda e: a.state == State.FINISHED)
    for action in ACTIONS:
        _expect(eng, action, a.seq_id, UnknownSequenceError)
    with pytest.raises(UnknownSequenceError):
        eng.sequence(a.seq_id)
    t.run()


def test_wrong_state_raises():
    eng = make([R(0.0, 200, 40, "a"), R(0.0, 200, 40, "b")], num_cpu_blocks=100)
    t = Tracker(eng)
    t.step()
    a, b = seq_of(eng, "a"), seq_of(eng, "b")
    eng.swap_to_cpu(a.seq_id)
    assert a.state == State.SWAPPED and eng.sequence(a.seq_id) is a
    _expect(eng, "compress", a.seq_id, InvalidStateError)
    _expect(eng, "swap_to_cpu", a.seq_id, InvalidStateError)
    assert eng.compress(b.seq_id) > 0 and eng.compress(b.seq_id) > 0
    assert b.tier == 2
    err = _expect(eng, "compress", b.seq_id, InvalidStateError)
    assert "int4" in str(err)
    t.run()
    assert len(eng.finished) == 2


def test_full_host_pool_raises_capacity_error():
    eng = make([R(0.0, 200, 40, "a"), R(0.0, 200, 40, "b")], num_cpu_blocks=0)
    t = Tracker(eng)
    t.step()
    a, b = seq_of(eng, "a"), seq_of(eng, "b")
    _expect(eng, "swap_to_cpu", a.seq_id, CapacityError)
    eng = make([R(0.0, 200, 40, "a"), R(0.0, 200, 40, "b")], num_cpu_blocks=20)
    t = Tracker(eng)
    t.step()
    a, b = seq_of(eng, "a"), seq_of(eng, "b")
    assert len(a.blocks) == len(b.blocks) == 13
    eng.swap_to_cpu(a.seq_id)  # 13 of 20 host blocks
    assert eng.cpu_free_units == 7 * 4
    _expect(eng, "swap_to_cpu", b.seq_id, CapacityError)
    t.run()
    assert len(eng.finished) == 2 and eng.cpu_free_units == eng.cpu_total_units


def test_failed_actions_do_not_change_the_run():
    trace = random_trace(11, 20, max_input=300, rate=30.0)
    config = EngineConfig(num_gpu_blocks=60, num_cpu_blocks=5)
    clean = Engine(config, PROFILE, trace)
    drive(clean)
    noisy = Engine(config, PROFILE, trace)
    failures = 0

    def bad_actions(t):
        nonlocal failures
        eng = t.engine
        for action in ACTIONS:
            try:
                getattr(eng, action)(10_000)
            except UnknownSequenceError:
                failures += 1
        for s in list(eng.waiting)[:2]:  # queued: no KV to act on
            with pytest.raises(UnknownSequenceError):
                eng.compress(s.seq_id)
            failures += 1
        for s in eng.cached_sequences():
            own = sum(eng.pool.units[b] for b in s.blocks if eng.pool.ref[b] == 1)
            if own > eng.cpu_free_units:
                with pytest.raises(CapacityError):
                    eng.swap_to_cpu(s.seq_id)
                failures += 1

    drive(noisy, between=bad_actions)
    assert failures > 100
    assert [(s.req.request_id, s.first_token_s, s.finish_s) for s in noisy.finished] == \
        [(s.req.request_id, s.first_token_s, s.finish_s) for s in clean.finished]
    assert noisy.stats == clean.stats


# ---- actions: effects -------------------------------------------------------------------------


def test_evict_running_request_requeues_it_first_and_it_recomputes():
    eng = make([R(0.0, 200, 40, "a"), R(0.0, 100, 5, "b")], max_num_seqs=1)
    t = Tracker(eng)
    t.step_until(lambda e: output_of(e, "a") == 5)
    a, b = seq_of(eng, "a"), seq_of(eng, "b")
    assert [s.seq_id for s in eng.waiting] == [b.seq_id]
    lost, n_blocks, free = a.num_computed, len(a.blocks), eng.pool.free_units
    assert n_blocks == math.ceil(lost / 16) == 13
    t.record_drop(a)
    assert eng.evict(a.seq_id) == n_blocks
    assert eng.pool.free_units == free + 4 * n_blocks and eng.pool.used_units == 0
    assert a.state == State.WAITING and a.blocks == [] and a.num_computed == 0
    assert [s.seq_id for s in eng.waiting] == [a.seq_id, b.seq_id]
    assert a.evicted == 1 and eng.stats.evicted_active == 1
    assert a not in eng.cached_sequences() and a not in eng.running
    with pytest.raises(UnknownSequenceError):
        eng.evict(a.seq_id)  # no KV left to drop
    check_invariants(eng)
    t.run()
    assert eng.stats.recomputed_tokens == lost
    assert [s.req.request_id for s in eng.finished] == ["a", "b"]
    assert a.num_output == 40 and eng.stats.generated_tokens == 45


def test_evict_drops_the_requests_own_cached_prefix():
    eng = make([R(0.0, 512, 20, "a", hash_ids=IDS)])
    t = Tracker(eng)
    t.step()
    a = seq_of(eng, "a")
    assert eng.pool.lookup(a.shared_keys[0]) == a.blocks[0]
    t.record_drop(a)
    eng.evict(a.seq_id)
    assert eng.pool.cached == {} and eng.pool.free_units == eng.pool.total_units
    t.run()
    assert eng.stats.recomputed_tokens == 512
    assert eng.stats.prompt_tokens == 512 + 513  # the prompt and the token it had sampled


def test_evict_swapped_request_returns_host_space():
    eng = make([R(0.0, 200, 40, "a")], num_cpu_blocks=50)
    t = Tracker(eng)
    t.step_until(lambda e: output_of(e, "a") == 3)
    a = seq_of(eng, "a")
    eng.swap_to_cpu(a.seq_id)
    lost = a.num_computed
    t.record_drop(a)
    assert eng.evict(a.seq_id) == 0  # nothing of it was on the GPU
    assert eng.cpu_free_units == eng.cpu_total_units and not eng.swapped
    assert eng.waiting[0] is a
    t.run()
    assert eng.stats.recomputed_tokens == lost and a.num_output == 40


def test_compress_halves_private_blocks_and_costs_quality():
    eng = make([R(0.0, 200, 40, "a")])
    t = Tracker(eng)
    t.step_until(lambda e: output_of(e, "a") == 5)
    a = seq_of(eng, "a")
    n = len(a.blocks)
    free = eng.pool.free_units
    assert eng.compress(a.seq_id) == 2 * n
    assert eng.pool.free_units == free + 2 * n and eng.pool.used_units == 2 * n
    assert a.tier == 1 and all(eng.pool.units[b] == 2 for b in a.blocks)
    t.run()
    assert eng.stats.quality_loss == pytest.approx(35 * 0.01)
    assert all(eng.pool.units[b] == 2 for b in a.blocks) or a.blocks == []


def test_compress_twice_to_int4():
    eng = make([R(0.0, 200, 40, "a")])
    t = Tracker(eng)
    t.step_until(lambda e: output_of(e, "a") == 5)
    a = seq_of(eng, "a")
    n = len(a.blocks)
    assert eng.compress(a.seq_id) == 2 * n
    assert eng.compress(a.seq_id) == n
    assert eng.pool.used_units == n
    _expect(eng, "compress", a.seq_id, InvalidStateError)
    t.step()
    assert eng.stats.quality_loss == pytest.approx(0.04)
    t.run()
    assert eng.stats.quality_loss == pytest.approx(35 * 0.04)


def test_compress_leaves_shared_prefix_blocks_alone():
    eng = make([R(0.0, 512, 50, "a", hash_ids=IDS), R(0.05, 512, 50, "b", hash_ids=IDS)])
    t = Tracker(eng)
    t.step_until(lambda e: state_of(e, "b") == State.RUNNING)
    b = seq_of(eng, "b")
    private = [blk for blk in b.blocks if eng.pool.ref[blk] == 1]
    assert len(private) == len(b.blocks) - 31
    assert eng.compress(b.seq_id) == 2 * len(private)
    assert all(eng.pool.units[blk] == 4 for blk in b.blocks[:31])
    assert all(eng.pool.units[blk] == 2 for blk in private)
    t.run()


def test_swap_to_cpu_round_trip():
    eng = make([R(0.0, 200, 40, "a", hash_ids=tuple(range(12)))], num_cpu_blocks=100)
    t = Tracker(eng)
    t.step_until(lambda e: output_of(e, "a") == 5)
    a = seq_of(eng, "a")
    units = 4 * len(a.blocks)
    key = a.shared_keys[0]
    assert eng.pool.lookup(key) == a.blocks[0]
    expected = units * UNIT_BYTES / (50 * 1e9)
    assert eng.unit_bytes == UNIT_BYTES == 524288
    assert eng.swap_to_cpu(a.seq_id) == pytest.approx(expected)
    assert eng.stats.swap_latency_s == pytest.approx(expected)
    assert eng.stats.swap_out_bytes == units * UNIT_BYTES
    assert eng.cpu_free_units == eng.cpu_total_units - units
    assert eng.pool.used_units == 0 and eng.pool.lookup(key) is None
    assert a.state == State.SWAPPED and list(eng.swapped) == [a] and not eng.running
    assert a in eng.cached_sequences()
    check_invariants(eng)
    # the next iteration stalls for the transfer out and the transfer back in
    assert t.step() == pytest.approx(2 * expected)
    assert a.state == State.RUNNING and eng.running == [a]
    assert eng.stats.swap_in_bytes == eng.stats.swap_out_bytes
    assert eng.stats.swap_latency_s == pytest.approx(2 * expected)
    assert eng.cpu_free_units == eng.cpu_total_units and eng.pool.used_units == units
    assert eng.pool.lookup(key) == a.blocks[0]  # its prefix is published again
    t.run()
    assert a.num_output == 40 and eng.stats.recomputed_tokens == 0
    assert eng.stats.generated_tokens == 40


def test_swapped_request_kept_out_by_pinned_kv_gets_it_released():
    """Regression: pinned KV that kept a swapped request out for good crashed
    ``_reject_head`` with an empty waiting queue (IndexError); now retention gives way."""
    trace = [R(0.0, 200, 50, "a"), R(0.0, 900, 2, "b", system_toks=880)]
    eng = make(trace, num_gpu_blocks=60, retention_s=30.0, num_cpu_blocks=100,
               max_num_batched_tokens=512)
    t = Tracker(eng)
    t.step()
    a = seq_of(eng, "a")
    eng.swap_to_cpu(a.seq_id)
    t.run(max_steps=2000)  # b grows into a's space, then pins 55 blocks of system prompt
    assert seq_of(eng, "b").num_output == 2
    assert eng.cpu_free_units == eng.cpu_total_units and not eng.swapped
    assert a.state == State.FINISHED and a.seq_id not in eng.live
    assert eng.stats.forced_releases == 1 and not holders(eng, "system")
    assert eng.stats.rejected == 0 and [s.req.request_id for s in eng.finished] == ["b", "a"]
    assert a.num_output == 50 and eng.stats.recomputed_tokens == 0
    assert eng.stats.swap_in_bytes == eng.stats.swap_out_bytes


def test_swapped_request_that_can_never_return_is_rejected():
    """White box: the GPU is taken by something no action or TTL can release (here: units
    reserved behind the engine's back), so the swapped head is given up, not crashed on."""
    eng = make([R(0.0, 200, 50, "a")], num_cpu_blocks=100)
    eng.step()
    (a,) = eng.running
    eng.swap_to_cpu(a.seq_id)
    assert eng.pool.reserve(eng.pool.allocatable_units)
    eng.step()  # the swap-out stall
    assert eng.step() == 0.0 and eng.stats.rejected == 1
    assert a.state == State.FINISHED and not eng.swapped and not eng.live
    assert eng.cpu_free_units == eng.cpu_total_units and eng.done


def test_request_that_pinned_kv_keeps_from_completing_does_not_livelock():
    """Regression: with a pinned system prefix a request whose first chunk fits but whose
    whole KV does not was readmitted, recomputed its first chunk and preempted itself again,
    forever. Once even the oldest request cannot grow alone, retention gives way."""
    eng = make([R(0.0, 120, 2, "s", system_toks=100),  # pins 6 of 23 blocks for good
                R(1.0, 302, 15, "x")],  # needs 20 blocks, fits the pool but not beside them
               num_gpu_blocks=23, max_num_batched_tokens=256, retention_s=30.0,
               enable_prefix_caching=False)  # (with caching, its own hits block readmission)
    t = Tracker(eng)
    t.step_until(lambda e: len(e.finished) == 1)
    assert len(holders(eng, "system")) == 1 and len(holders(eng, "system")[0].blocks) == 6
    t.run(max_steps=500)
    assert [s.req.request_id for s in eng.finished] == ["s", "x"]
    assert eng.stats.forced_releases == 1 and eng.stats.preemptions == 1
    assert eng.stats.recomputed_tokens == 256  # its first chunk, once
    assert eng.stats.prompt_tokens == 120 + 256 + 302
    assert not holders(eng, "system") and eng.stats.rejected == 0


# ---- retention --------------------------------------------------------------------------------

SYS = 64  # 4 blocks of system prompt
T1_IDS = tuple(range(1, 13))  # turn 1: 200-token prompt, 12 full blocks
T2_IDS = T1_IDS + tuple(range(13, 26))  # turn 2 extends it: 400 tokens, 25 full blocks


def turn1(arrival=0.0, **kw):
    return R(arrival, 200, 20, "t1", session_id=7, system_toks=SYS, reasoning_toks=10,
             hash_ids=T1_IDS, next_turn_s=4.0, **kw)


def turn2(arrival=5.0):
    return R(arrival, 400, 10, "t2", session_id=7, system_toks=SYS, hash_ids=T2_IDS)


def test_finished_turn_is_retained_as_system_context_and_reasoning():
    eng = make([turn1()], retention_s=30.0)
    t = Tracker(eng)
    t.step_until(lambda e: len(e.finished) == 1)
    done = eng.now
    (sys_,), (ctx,), (rsn,) = (holders(eng, k) for k in ("system", "context", "reasoning"))
    assert len(eng.cached_sequences()) == 3
    # 219 computed tokens = 14 blocks: 4 system, 8 more of the prompt, 2 of output
    assert (len(sys_.blocks), len(ctx.blocks), len(rsn.blocks)) == (4, 8, 2)
    assert ctx.kv_tokens == 8 * 16 and ctx.state == State.RETAINED
    assert eng.pool.used_units == 14 * 4  # pinned KV counts as used
    assert sys_.expires_s == math.inf
    assert ctx.expires_s == rsn.expires_s == pytest.approx(done + 30.0)
    assert eng._session_context[7] is ctx and eng._system is sys_
    assert eng.sequence(ctx.seq_id) is ctx
    # the TTL: still there just before, gone after; the system prefix stays
    t.advance(done + 29.0)
    assert len(eng.cached_sequences()) == 3
    t.advance(done + 31.0)
    assert eng.cached_sequences() == [sys_]
    assert ctx.state == rsn.state == State.FINISHED and 7 not in eng._session_context
    assert eng.pool.used_units == 4 * 4
    assert eng.pool.evictable_units == 8 * 4  # the context's prompt blocks stay cached
    t.run()


def test_ephemeral_turn_is_retained_until_its_ttl():
    eng = make([R(0.0, 100, 10, "e", session_id=3, system_toks=SYS, ephemeral=True,
                  hash_ids=tuple(range(40, 46)))], retention_s=5.0)
    t = Tracker(eng)
    t.step_until(lambda e: len(e.finished) == 1)
    (eph,) = holders(eng, "ephemeral")
    assert len(eph.blocks) == math.ceil(109 / 16) - 4
    assert not holders(eng, "context") and 3 not in eng._session_context
    t.run()
    assert holders(eng, "ephemeral") == [] and len(holders(eng, "system")) == 1


def test_ephemeral_turn_of_nothing_but_system_prompt_leaves_no_empty_holder():
    """Regression: an ephemeral turn whose blocks were all system prefix got an ephemeral
    holder with no blocks (visible to agents, impossible to swap)."""
    eng = make([R(0.0, 32, 1, "e", system_toks=32, ephemeral=True, session_id=0)],
               retention_s=30.0)
    t = Tracker(eng)
    t.step()
    assert [(s.kind, len(s.blocks)) for s in eng.cached_sequences()] == [("system", 2)]
    t.run()


def test_returning_turn_hits_its_retained_context():
    eng = make([turn1(), turn2()], retention_s=30.0)
    t = Tracker(eng)
    t.step_until(lambda e: state_of(e, "t2") == State.RUNNING)
    assert not holders(eng, "context")  # the new turn took over the context's blocks
    t.run()
    assert eng.stats.prompt_tokens == 200 + (400 - 12 * 16)
    (ctx,) = [s for s in eng.live.values() if s.kind == "context"] or [None]
    assert ctx is None  # expired by the end of the run


@pytest.mark.parametrize("tail_units", [2, 4])
def test_remembered_hits_after_lru_eviction_match_a_fresh_lookup(tail_units):
    """A blocked head's remembered prefix hits give the answer a fresh lookup gives (hits,
    their touch cost, the smallest hit, the units past the system prefix) while LRU eviction
    takes them from the tail, compressed or not: asked again, the head's unreferenced hits are
    watched, and evicting one of them forces a new lookup."""
    eng = make([R(0.0, 10 * 16, 4, "head", hash_ids=tuple(range(100, 110)), system_toks=32)],
               num_gpu_blocks=16)
    eng._arrive()
    (head,) = eng.waiting
    pool = eng.pool
    pool.allocate(8)  # held by others: the pool is full once the head's blocks are cached
    blocks = pool.allocate(8)
    pool.cache_many(blocks, head.shared_keys, 0, 8)
    for b in blocks[6:]:
        pool.resize(b, tail_units)  # a compressed tail
    pool.free(reversed(blocks))  # cached and unreferenced: the tail is evicted first

    def fresh():
        hits = eng._lookup_hits(head)
        sizes = [pool.units[b] for b in hits]
        return hits, pool.hit_cost_units(hits), min(sizes, default=4), sum(sizes[2:])

    assert eng._prefix_hits(head) == fresh() and len(fresh()[0]) == 8
    assert not pool.watch  # asked once: not watched yet
    pool.reserve(pool.free_units + 2 * tail_units)  # LRU takes the last two hits
    assert len(fresh()[0]) == 6 and eng._prefix_hits(head) == fresh()
    assert pool.watch == set(blocks[:6])  # asked again: watched from now on
    pool.reserve(pool.free_units)  # no eviction: still valid
    assert not pool.watch_hit and eng._prefix_hits(head) == fresh()
    pool.reserve(pool.free_units + 4 * 4)  # LRU takes four more
    assert pool.watch_hit and len(fresh()[0]) == 2
    assert eng._prefix_hits(head) == fresh()
    pool.reserve(pool.free_units + 2 * 4)  # all of them
    assert eng._prefix_hits(head) == fresh() == ([], 0, 4, 0)


@pytest.mark.parametrize("seed", [3, 4])
def test_context_handover_equals_touch_then_release(seed, monkeypatch):
    """A returning turn takes its context's references over instead of touching every block
    and releasing the context: the same pool after every step (block ids included)."""
    trace = random_trace(seed, 60, sessions=3, system_toks=48, reasoning=True, rate=8.0)
    config = EngineConfig(num_gpu_blocks=160, retention_s=20.0, num_cpu_blocks=40)
    handover = {"on": True, "taken": 0}

    def switchable(context, hits):
        where = held_within(context, hits) if handover["on"] else None
        handover["taken"] += where is not None
        return where

    monkeypatch.setattr(scheduler, "_held_within", switchable)
    fast, slow = Engine(config, PROFILE, trace), Engine(config, PROFILE, trace)
    while True:
        handover["on"] = True
        dt = fast.step()
        handover["on"] = False
        assert slow.step() == dt
        check_invariants(fast)
        assert snapshot(fast) == snapshot(slow)
        if dt == 0.0:
            nxt = fast.next_event_s()
            if nxt is None:
                break
            fast._idle_until(max(nxt, fast.now))
            slow._idle_until(max(nxt, slow.now))
    assert handover["taken"] > 0
    assert fast.stats == slow.stats and len(fast.finished) == 60


def _flushed(retention_s: float) -> Engine:
    # three unrelated requests between the turns push cached blocks out of an LRU pool
    flush = [R(1.0 + 0.5 * i, 320, 1, f"f{i}", hash_ids=tuple(range(1000 * (i + 1),
                                                                  1000 * (i + 1) + 20)))
             for i in range(3)]
    return make([turn1(), *flush, turn2()], retention_s=retention_s, num_gpu_blocks=48)


def test_retention_keeps_context_that_lru_caching_would_lose():
    kept, lost = _flushed(30.0), _flushed(0.0)
    drive(kept)
    drive(lost)
    assert kept.pool.evicted_blocks > 0 and lost.pool.evicted_blocks > 0
    t2_prompt = {e: e.stats.prompt_tokens - 200 - 3 * 320 for e in (kept, lost)}
    assert t2_prompt[kept] == 400 - 12 * 16
    assert t2_prompt[lost] == 400  # system and context blocks were evicted
    assert seq_of(kept, "t2").first_token_s - 5.0 < seq_of(lost, "t2").first_token_s - 5.0


def test_no_retention_keeps_nothing():
    eng = make([turn1(), turn2()], retention_s=0.0)
    t = Tracker(eng)
    t.step_until(lambda e: len(e.finished) == 1)
    assert eng.cached_sequences() == [] and eng.pool.used_units == 0
    t.run()
    assert eng.stats.prompt_tokens == 200 + (400 - 12 * 16)  # plain prefix caching
    assert eng.live == {}


def test_evicting_retained_context_makes_the_next_turn_recompute_it():
    eng = make([turn1(), turn2()], retention_s=30.0)
    t = Tracker(eng)
    t.step_until(lambda e: len(e.finished) == 1)
    (ctx,) = holders(eng, "context")
    used = eng.pool.used_units
    assert eng.evict(ctx.seq_id) == 8
    assert eng.pool.used_units == used - 8 * 4
    assert ctx.state == State.FINISHED and ctx.seq_id not in eng.live
    assert 7 not in eng._session_context and eng.stats.evicted_active == 0
    _expect(eng, "evict", ctx.seq_id, UnknownSequenceError)
    t.run()
    assert eng.stats.prompt_tokens == 200 + (400 - 4 * 16)  # only the system prefix hits
    assert eng.stats.recomputed_tokens == 0  # another request's KV, not a recompute


def test_swapped_context_comes_back_for_the_next_turn():
    eng = make([turn1(), turn2()], retention_s=30.0, num_cpu_blocks=20)
    t = Tracker(eng)
    t.step_until(lambda e: len(e.finished) == 1)
    (ctx,) = holders(eng, "context")
    latency = eng.swap_to_cpu(ctx.seq_id)
    assert latency == pytest.approx(8 * 4 * UNIT_BYTES / 50e9)
    assert ctx.state == State.SWAPPED and ctx not in eng.swapped  # not a request
    assert ctx.cpu_keys and all(eng.pool.lookup(k) is None for _, k in ctx.cpu_keys)
    t.run()
    assert eng.stats.swap_in_bytes == eng.stats.swap_out_bytes == 8 * 4 * UNIT_BYTES
    assert eng.stats.prompt_tokens == 200 + (400 - 12 * 16)
    assert eng.cpu_free_units == eng.cpu_total_units


def test_swapped_retained_context_expires_and_frees_host_space():
    eng = make([turn1()], retention_s=10.0, num_cpu_blocks=20)
    t = Tracker(eng)
    t.step_until(lambda e: len(e.finished) == 1)
    (ctx,) = holders(eng, "context")
    eng.swap_to_cpu(ctx.seq_id)
    assert eng.cpu_free_units < eng.cpu_total_units
    t.run()
    assert ctx.state == State.FINISHED and eng.cpu_free_units == eng.cpu_total_units


def test_compressed_context_lowers_the_next_turns_precision():
    eng = make([turn1(), turn2()], retention_s=30.0)
    t = Tracker(eng)
    t.step_until(lambda e: len(e.finished) == 1)
    (ctx,) = holders(eng, "context")
    assert eng.compress(ctx.seq_id) == 8 * 2
    t.run()
    t2 = seq_of(eng, "t2")
    assert t2.tier == 1
    assert eng.stats.quality_loss == pytest.approx(10 * 0.01)
    assert eng.stats.prompt_tokens == 200 + (400 - 12 * 16)


def test_system_prefix_shared_by_a_running_request_cannot_be_swapped():
    other = R(5.0, 200, 50, "o", session_id=8, system_toks=SYS,
              hash_ids=T1_IDS[:4] + tuple(range(60, 68)))
    eng = make([turn1(), other], retention_s=30.0, num_cpu_blocks=50)
    t = Tracker(eng)
    t.step_until(lambda e: state_of(e, "o") == State.RUNNING)
    (sys_,) = holders(eng, "system")
    assert all(eng.pool.ref[b] == 2 for b in sys_.blocks)
    _expect(eng, "swap_to_cpu", sys_.seq_id, InvalidStateError)
    # the system prefix is everyone's: compressing it shrinks the shared blocks too
    assert eng.compress(sys_.seq_id) == 4 * 2
    t.run()


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


# ---- clone ------------------------------------------------------------------------------------


def _scripted_actions(engine: Engine, step: int) -> None:
    """A fixed, state-dependent action schedule (same input, same actions)."""
    visible = engine.cached_sequences()
    if not visible or step % 7:
        return
    seq = visible[(step // 7) % len(visible)]
    action = ("compress", "swap_to_cpu", "evict")[(step // 7) % 3]
    try:
        getattr(engine, action)(seq.seq_id)
    except ActionError:
        pass


def _finish_with_actions(engine: Engine, start: int) -> None:
    step = start
    while True:
        _scripted_actions(engine, step)
        step += 1
        if engine.step() == 0.0:
            nxt = engine.next_event_s()
            if nxt is None:
                return
            engine._idle_until(max(nxt, engine.now))
        check_invariants(engine)


def test_clone_is_an_independent_exact_copy():
    trace = random_trace(5, 30, shared_prefix=False, sessions=3, system_toks=32,
                         reasoning=True, ephemeral=True, rate=30.0)
    config = EngineConfig(num_gpu_blocks=80, retention_s=10.0, num_cpu_blocks=40)
    original = Engine(config, PROFILE, trace)
    for step in range(80):
        _scripted_actions(original, step)
        if original.step() == 0.0:
            original._idle_until(original.next_event_s())
    assert original.running and original.cached_sequences()
    stats = original.stats
    assert stats.evicted_active and stats.swap_out_bytes and stats.quality_loss  # rich state
    copy = original.clone()
    check_invariants(copy)
    assert snapshot(copy) == snapshot(original)  # block ids included
    assert copy.pool.ref is not original.pool.ref and copy.pool.units is not original.pool.units
    assert all(a.blocks is not b.blocks for a, b in zip(original.live.values(),
                                                          copy.live.values()))
    assert all(a is not b for a, b in zip(original.live.values(), copy.live.values()))
    # acting on the copy leaves the original alone
    before = snapshot(original)
    victim = copy.cached_sequences()[0]
    copy.evict(victim.seq_id)
    for s in copy.running[:2]:
        copy.compress(s.seq_id)
    copy.step()
    assert snapshot(original) == before
    # and the original and a fresh copy finish identically
    twin = original.clone()
    _finish_with_actions(original, 80)
    _finish_with_actions(twin, 80)
    assert [(s.req.request_id, s.first_token_s, s.finish_s) for s in twin.finished] == \
        [(s.req.request_id, s.first_token_s, s.finish_s) for s in original.finished]
    assert twin.stats == original.stats
    assert len(original.finished) + original.stats.rejected == 30


def test_sequence_copy_copies_every_slot():
    """``Sequence.copy`` names its slots one by one (for speed): a slot added later and
    forgotten there would silently keep its default in engine clones."""
    req = random_trace(1, 1).requests[0]
    seq = Sequence(7, req, "generation", 40, 9, 1.5)
    for i, name in enumerate(Sequence.__slots__):  # a distinct value in every slot
        setattr(seq, name, [i, name] if name in ("blocks", "cpu_keys") else (i, name))
    seq.size_memo = (seq.blocks, 0, State.RUNNING, 2, 8)
    copy = seq.copy()
    for name in Sequence.__slots__:
        if name != "size_memo":
            assert getattr(copy, name) == getattr(seq, name), name
    assert copy.blocks is not seq.blocks and copy.cpu_keys is not seq.cpu_keys
    assert copy.size_memo == (copy.blocks, 0, State.RUNNING, 2, 8)
    assert copy.size_memo[0] is copy.blocks  # the memo follows the copy's own list


@pytest.mark.parametrize("hbt", [16, 512, 7])
@pytest.mark.parametrize("ids", [(1, 2, 3, 4, 5) * 50, (2**63, 5, 7)])
def test_shared_keys_follow_the_hash_id_formula(hbt, ids):
    """The vectorised key derivation equals the documented per-block formula, 64-bit ids too."""
    trace = Trace((), hbt, "t")
    engine = Engine(EngineConfig(num_gpu_blocks=8), PROFILE, trace)
    for n in (1, 15, 16, 17, 600, 10_000):
        req = TraceRequest(arrival_s=0.0, input_toks=n, output_toks=1, hash_ids=ids)
        n_full = min(n, len(ids) * hbt) // 16
        want = [ids[e // hbt] * hbt + e % hbt for e in range(15, n_full * 16, 16)]
        got = engine._shared_keys(req)
        assert got == want and all(type(k) is int for k in got)
