"""A fast, exact copy of an engine (for warm starts and lookahead search).

``copy.deepcopy`` walks every object generically. Blocks are integer ids into the pool's
lists, so copying the pool is a few list copies and a sequence's block list copies as is; only
the live sequences (a few hundred) are copied one by one. Immutable parts (config, profile,
trace, cost model) and finished requests are shared.
"""

from __future__ import annotations

import copy
from collections import deque

from kv_cache_rl.engine.sequence import Sequence


def clone_engine(engine):
    seqs: dict[int, Sequence] = {}

    def seq(s: Sequence | None) -> Sequence | None:
        if s is None:
            return None
        new = seqs.get(id(s))
        if new is None:
            new = seqs[id(s)] = s.copy()
        return new

    new = engine.__class__.__new__(engine.__class__)
    new.__dict__.update(engine.__dict__)
    new.pool = engine.pool.copy()
    new.live = {k: seq(s) for k, s in engine.live.items()}
    new.waiting = deque(seq(s) for s in engine.waiting)
    new.running = [seq(s) for s in engine.running]
    new.swapped = deque(seq(s) for s in engine.swapped)
    new.finished = list(engine.finished)  # finished requests never change again
    new.stats = copy.copy(engine.stats)
    new.timeseries = copy.deepcopy(engine.timeseries)
    new._expiry = list(engine._expiry)
    new._released = list(engine._released)
    new._session_context = {k: seq(s) for k, s in engine._session_context.items()}
    new._system = seq(engine._system)
    new._hits_memo = None
    return new
