"""A fast, exact copy of an engine (for warm starts and lookahead search).

``copy.deepcopy`` walks every object generically; an engine holds tens of thousands of blocks,
so this copies them by hand: each block once, each sequence once, every reference remapped.
Immutable parts (config, profile, trace, cost model) and finished requests are shared.
"""

from __future__ import annotations

import copy
from collections import OrderedDict, deque

from kv_cache_rl.engine.block_pool import Block, BlockPool
from kv_cache_rl.engine.sequence import Sequence

_SEQ_SLOTS = Sequence.__slots__


def clone_engine(engine):
    # every block reachable from the pool or a live sequence, copied once, in one pass
    old_pool = engine.pool
    unique: dict[int, Block] = {id(b): b for b in old_pool.cached.values()}
    for s in engine.live.values():
        for b in s.blocks:
            unique.setdefault(id(b), b)
    new_block = Block.__new__
    copies = []
    for b in unique.values():
        c = new_block(Block)
        c.hash = b.hash
        c.ref = b.ref
        c.units = b.units
        copies.append(c)
    blocks = dict(zip(unique, copies))

    seqs: dict[int, Sequence] = {}

    def seq(s: Sequence | None) -> Sequence | None:
        if s is None:
            return None
        new = seqs.get(id(s))
        if new is None:
            new = Sequence.__new__(Sequence)
            for name in _SEQ_SLOTS:
                setattr(new, name, getattr(s, name))
            new.blocks = [blocks[id(b)] for b in s.blocks]
            new.cpu_keys = list(s.cpu_keys)
            seqs[id(s)] = new
        return new

    pool = BlockPool.__new__(BlockPool)
    pool.__dict__.update(old_pool.__dict__)
    pool.cached = {k: blocks[id(b)] for k, b in old_pool.cached.items()}
    pool._evictable = OrderedDict((k, blocks[id(b)]) for k, b in old_pool._evictable.items())
    new = engine.__class__.__new__(engine.__class__)
    new.__dict__.update(engine.__dict__)
    new.pool = pool
    new.live = {k: seq(s) for k, s in engine.live.items()}
    new.waiting = deque(seq(s) for s in engine.waiting)
    new.running = [seq(s) for s in engine.running]
    new.swapped = deque(seq(s) for s in engine.swapped)
    new.finished = list(engine.finished)  # finished requests never change again
    new.stats = copy.copy(engine.stats)
    new.timeseries = copy.deepcopy(engine.timeseries)
    new._expiry = list(engine._expiry)
    new._session_context = {k: seq(s) for k, s in engine._session_context.items()}
    new._system = seq(engine._system)
    new._hits_memo = None
    return new
