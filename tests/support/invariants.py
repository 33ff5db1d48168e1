"""The engine's invariants: a snapshot of everything an action could change, and the
conservation and bookkeeping checks run after every step."""

from __future__ import annotations

from collections import Counter

from kv_cache_rl.engine import KINDS, Engine, State


def snapshot(engine: Engine, *, identity: bool = True) -> tuple:
    """Everything an action could change, as plain values (to compare before/after).
    ``identity=False`` leaves out which block objects are held (to compare with a clone)."""
    pool = engine.pool
    seqs = tuple(sorted(
        (s.seq_id, s.kind, int(s.state), s.num_computed, s.num_output, s.tier, s.cpu_units,
         tuple((b if identity else 0, pool.ref[b], pool.units[b], pool.key[b]) for b in s.blocks),
         s.high_water, s.evicted)
        for s in engine.live.values()))
    return (pool.free_units, pool.evictable_units, pool.used_units, tuple(pool.cached),
            tuple(pool._evictable), engine.cpu_free_units, seqs,
            tuple(s.seq_id for s in engine.running), tuple(s.seq_id for s in engine.waiting),
            tuple(s.seq_id for s in engine.swapped), engine._stall_s,
            tuple(sorted(engine._session_context)),
            None if engine._system is None else engine._system.seq_id,
            engine.stats.evicted_active, engine.stats.swap_latency_s, engine.stats.swap_out_bytes)


def check_invariants(engine: Engine) -> None:
    """The engine's conservation and bookkeeping invariants; raises AssertionError."""
    pool, cfg = engine.pool, engine.config
    bs = cfg.block_size
    pool.check()
    assert pool.reserved_units == 0, "space reserved but not handed out between iterations"
    assert pool.free_units + pool.evictable_units + pool.used_units == pool.total_units
    assert 0 <= pool.used_units <= pool.total_units
    assert 0 <= pool.free_units and 0 <= pool.evictable_units
    assert pool.total_units == cfg.num_gpu_blocks * 4

    running, waiting, swapped = engine.running, list(engine.waiting), list(engine.swapped)
    ids = [s.seq_id for s in running + waiting + swapped]
    assert len(ids) == len(set(ids)), "a sequence is queued twice"
    assert len(running) <= cfg.max_num_seqs
    for s in running:
        assert s.state == State.RUNNING and engine.live.get(s.seq_id) is s
    for s in waiting:
        assert s.state == State.WAITING and engine.live.get(s.seq_id) is s
        assert s.blocks == [] and s.num_computed == 0
    for s in swapped:
        assert s.state == State.SWAPPED and s.swapped_from == State.RUNNING
        assert engine.live.get(s.seq_id) is s
    queued = set(ids)

    held: list = []  # GPU blocks referenced by live sequences, once per reference
    host_held: list = []  # blocks whose KV is in host memory
    cpu_used = 0
    retained_states = (State.RETAINED, State.SWAPPED)
    for sid, s in engine.live.items():
        state = s.state
        assert s.seq_id == sid and s.kind in KINDS
        if s.max_output == 0:  # a retained holder (on the GPU or swapped out)
            assert state in retained_states and s.kind != "generation"
            assert sid not in queued
            if state == State.RETAINED:
                assert s.blocks and s.num_kv_tokens == len(s.blocks) * bs
            else:
                assert s.swapped_from == State.RETAINED
        else:  # a request
            assert s.req is not None and sid in queued
            assert state in (State.WAITING, State.RUNNING, State.SWAPPED)
            assert s.num_tokens == s.prompt_len + s.num_output
            assert 0 <= s.num_output < s.max_output
            assert s.num_computed <= s.num_tokens - 1 or s.num_computed == 0
            if state != State.WAITING:
                assert len(s.blocks) == -(-s.num_computed // bs), s
                # blocks still to be published hold no key (BlockPool.cache_many relies on it)
                start, stop = s.num_registered, min(len(s.shared_keys), len(s.blocks))
                assert all(pool.key[b] is None for b in s.blocks[start:stop]), s
        if state == State.SWAPPED:
            moved = [b for b in s.blocks if pool.ref[b] == 0]
            assert moved and s.cpu_units == sum(pool.units[b] for b in moved)
            assert all(pool.key[b] is None for b in moved)
            cpu_used += s.cpu_units
            host_held += moved
            held += [b for b in s.blocks if pool.ref[b]]
        else:
            assert s.cpu_units == 0
            held += s.blocks
    # every referenced block is held by live sequences exactly ``ref`` times (so none of them
    # is free), and they are all the used space: no leak, no double count
    counts = Counter(held)
    wrong = [(pool.describe(b), n) for b, n in counts.items() if pool.ref[b] != n]
    assert not wrong, f"blocks held a different number of times than referenced: {wrong[:3]}"
    assert {pool.units[b] for b in counts} <= {1, 2, 4}
    assert sum(pool.units[b] for b in counts) == pool.used_units
    evictable = set(pool._evictable.values())
    assert counts.keys().isdisjoint(evictable)
    for key, b in pool._evictable.items():
        assert pool.ref[b] == 0 and pool.key[b] == key and pool.cached.get(key) == b
    for key, b in pool.cached.items():
        assert pool.ref[b] > 0 or key in pool._evictable
    # every block id is exactly one of: referenced, in host memory, evictable, spare (no leak)
    host, spare = set(host_held), set(pool.spare)
    assert len(host) == len(host_held), "a host block is held twice"
    groups = (set(counts), host, evictable, spare)
    assert sum(map(len, groups)) == len(pool.ref) == len(set().union(*groups)), \
        "a block id leaked or is in two places at once"
    assert cpu_used == engine.cpu_total_units - engine.cpu_free_units
    assert 0 <= engine.cpu_free_units <= engine.cpu_total_units
    # retained holders
    if engine._system is not None:
        assert engine._system.kind == "system" and engine._system.seq_id in engine.live
    for sid, ctx in engine._session_context.items():
        assert ctx.kind == "context" and ctx.session_id == sid and ctx.seq_id in engine.live
