"""A fast, exact copy of an engine (for warm starts and lookahead search).

``copy.deepcopy`` walks every object generically. Blocks are integer ids into the pool's
lists, so copying the pool is a few list copies and a sequence's block list copies as is; only
the live sequences (a few hundred) are copied one by one, once each, so every queue and index
that holds a sequence holds the same copy.

Every attribute of an engine is named here with how it is copied. Immutable values (numbers,
strings, tuples, frozen sets and configs) are shared; so are the parts listed in ``SHARED``,
which never change after construction. An attribute that is neither raises ``TypeError``
instead of being shared by accident: a mutable attribute added to the engine later must be
given a copy rule here first.
"""

from __future__ import annotations

import copy
from collections import deque
from types import MappingProxyType

from kv_cache_rl.engine.sequence import Sequence

IMMUTABLE = (int, float, bool, str, bytes, tuple, frozenset, type(None))
# never mutated after construction: the frozen config and trace, the profile (frozen specs and
# the cost model's tables), its bound cost function, and the closed-loop links (a read-only
# mapping of tuples)
SHARED = frozenset({"config", "profile", "trace", "_iteration_time_s", "_children"})


def clone_engine(engine):
    seqs: dict[int, Sequence] = {}

    def seq(s: Sequence | None) -> Sequence | None:
        if s is None:
            return None
        new = seqs.get(id(s))
        if new is None:
            new = seqs[id(s)] = s.copy()
        return new

    rules = {
        "pool": lambda pool: pool.copy(),
        "live": lambda live: {k: seq(s) for k, s in live.items()},
        "waiting": lambda q: deque(map(seq, q)),
        "running": lambda q: list(map(seq, q)),
        "swapped": lambda q: deque(map(seq, q)),
        "finished": list,  # of FinishedRequest records, immutable
        "stats": copy.copy,  # a dataclass of numbers
        "timeseries": copy.deepcopy,  # None or a few hundred rows of numbers
        "_keys_cache": dict,  # id(request) -> its prefix keys (tuples)
        "_expiry": list,  # heaps of (time, id) tuples
        "_released": list,
        "_session_context": lambda d: {k: seq(s) for k, s in d.items()},
        "_system": seq,
        "_hits_memo": lambda memo: None,  # a memo of this engine's own sequences: start afresh
    }
    new = engine.__class__.__new__(engine.__class__)
    for name, value in vars(engine).items():
        rule = rules.get(name)
        if rule is not None:
            value = rule(value)
        elif name not in SHARED and not isinstance(value, IMMUTABLE):
            raise TypeError(f"clone_engine: no copy rule for engine attribute {name!r} "
                            f"({type(value).__name__}); add one to kv_cache_rl/engine/clone.py")
        setattr(new, name, value)
    if not isinstance(new._children, MappingProxyType):
        raise TypeError("clone_engine: _children must be a read-only mapping to be shared")
    return new
