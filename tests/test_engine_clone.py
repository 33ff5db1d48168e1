"""Engine: clones are independent exact copies (the planners search on them).

The copies are checked against the engine invariants (``tests.support.invariants``).
"""

from __future__ import annotations

from kv_cache_rl.engine import ActionError, Engine, Sequence, State
from kv_cache_rl.engine.config import EngineConfig
from tests.support.invariants import check_invariants, snapshot
from tests.support.standin import PROFILE
from tests.support.traces import random_trace


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
