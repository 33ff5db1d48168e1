"""Engine: agent actions (evict, compress, swap_to_cpu): misuse raises and changes nothing,
and each action has exactly its effect.

Every run goes through ``tests.support.tracker.Tracker``, which checks the engine's invariants
after every step (pool conservation, block/refcount bookkeeping, queue/state consistency, budget
and max_num_seqs per batch, tokens never going down) and the end-of-run accounting (every request
finished exactly once or rejected; computed + hit tokens == first computations + recomputed).
"""

from __future__ import annotations

import math

import pytest

from kv_cache_rl.engine import (ActionError, CapacityError, Engine, InvalidStateError, State,
                                UnknownSequenceError)
from kv_cache_rl.engine.config import EngineConfig
from tests.support.engines import (ACTIONS, IDS, UNIT_BYTES, R, expect, holders, make, output_of,
                                   seq_of, state_of)
from tests.support.invariants import check_invariants
from tests.support.standin import PROFILE
from tests.support.tracker import Tracker, drive
from tests.support.traces import random_trace


# ---- actions: misuse --------------------------------------------------------------------------


def test_unknown_ids_raise():
    eng = make([R(0.0, 100, 5, "a"), R(0.0, 100, 5, "b")], max_num_seqs=1, num_cpu_blocks=50)
    t = Tracker(eng)
    t.step()
    a, b = seq_of(eng, "a"), seq_of(eng, "b")
    assert a.state == State.RUNNING and b.state == State.WAITING
    for action in ACTIONS:
        for bad in (999, -1, b.seq_id):  # a waiting request holds no KV: not visible
            err = expect(eng, action, bad, UnknownSequenceError)
            assert isinstance(err, ActionError) and isinstance(err, KeyError)
            assert str(err) == f"no cached sequence with id {bad}"
    t.step_until(lambda e: a.state == State.FINISHED)
    for action in ACTIONS:
        expect(eng, action, a.seq_id, UnknownSequenceError)
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
    expect(eng, "compress", a.seq_id, InvalidStateError)
    expect(eng, "swap_to_cpu", a.seq_id, InvalidStateError)
    assert eng.compress(b.seq_id) > 0 and eng.compress(b.seq_id) > 0
    assert b.tier == 2
    err = expect(eng, "compress", b.seq_id, InvalidStateError)
    assert "int4" in str(err)
    t.run()
    assert len(eng.finished) == 2


def test_full_host_pool_raises_capacity_error():
    eng = make([R(0.0, 200, 40, "a"), R(0.0, 200, 40, "b")], num_cpu_blocks=0)
    t = Tracker(eng)
    t.step()
    a, b = seq_of(eng, "a"), seq_of(eng, "b")
    expect(eng, "swap_to_cpu", a.seq_id, CapacityError)
    eng = make([R(0.0, 200, 40, "a"), R(0.0, 200, 40, "b")], num_cpu_blocks=20)
    t = Tracker(eng)
    t.step()
    a, b = seq_of(eng, "a"), seq_of(eng, "b")
    assert len(a.blocks) == len(b.blocks) == 13
    eng.swap_to_cpu(a.seq_id)  # 13 of 20 host blocks
    assert eng.cpu_free_units == 7 * 4
    expect(eng, "swap_to_cpu", b.seq_id, CapacityError)
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
    expect(eng, "compress", a.seq_id, InvalidStateError)
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
