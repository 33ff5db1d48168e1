"""Engine: retention of finished turns (system prefix, context, reasoning, ephemeral turns),
their TTLs, and agent actions on retained KV.

Every run goes through ``tests.support.tracker.Tracker``, which checks the engine's invariants
after every step (pool conservation, block/refcount bookkeeping, queue/state consistency, budget
and max_num_seqs per batch, tokens never going down) and the end-of-run accounting (every request
finished exactly once or rejected; computed + hit tokens == first computations + recomputed).
"""

from __future__ import annotations

import math

import pytest

from kv_cache_rl.engine import Engine, InvalidStateError, State, UnknownSequenceError
from kv_cache_rl.engine import scheduler
from kv_cache_rl.engine.config import EngineConfig
from kv_cache_rl.engine.scheduler import _held_within as held_within
from tests.support.engines import (SYS, T1_IDS, UNIT_BYTES, R, expect, holders, make, seq_of,
                                   state_of, turn1, turn2)
from tests.support.invariants import check_invariants, snapshot
from tests.support.standin import PROFILE
from tests.support.tracker import Tracker, drive
from tests.support.traces import random_trace


# ---- retention --------------------------------------------------------------------------------

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
    expect(eng, "evict", ctx.seq_id, UnknownSequenceError)
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
    expect(eng, "swap_to_cpu", sys_.seq_id, InvalidStateError)
    # the system prefix is everyone's: compressing it shrinks the shared blocks too
    assert eng.compress(sys_.seq_id) == 4 * 2
    t.run()
