"""Sessions and the shared system prefix, inferred from a raw trace's prefix hash ids.

Mooncake's ``hash_ids`` name each 512-token prompt block by its whole prefix (equal id = equal
prefix up to it), so a multi-turn conversation shows in the trace: a turn's prompt starts with
the previous turn's full blocks. The workload profiles measure these statistics
(:mod:`kv_cache_rl.workload.statistics`), and :func:`infer_sessions` gives a raw trace the same
agentic structure generated episodes have, so that a window cut from it (``make_scenario(...,
trace_path=)``) holds retained system and context entries, reused for real when the session
returns. Pure Python: the replay path imports no numpy.
"""

from __future__ import annotations

import dataclasses

from kv_cache_rl.workload.requests import Trace


def system_prefix_blocks(trace: Trace) -> int:
    """Leading hash-id positions at which every request has the same id."""
    reqs = trace.requests
    n = 0
    while reqs and all(len(r.hash_ids) > n for r in reqs) and \
            len({r.hash_ids[n] for r in reqs}) == 1:
        n += 1
    return n


def find_parents(trace: Trace, sys_blocks: int) -> list[int]:
    """Index of the request each request continues (-1: it opens a session).

    Request B continues A if B's ids start with all of A's *full*-block ids (A's last id covers
    a partial block, which the next turn cannot match) and that match goes beyond the system
    prefix. Among several candidates the longest match (latest on ties) is the parent.
    """
    block, reqs = trace.hash_block_tokens, trace.requests
    by_last: dict[int, int] = {}  # last full-block id of a request's prompt -> latest request
    parent = [-1] * len(reqs)
    for i, r in enumerate(reqs):
        h = r.hash_ids
        for k in range(len(h), sys_blocks, -1):
            j = by_last.get(h[k - 1])
            # ids are prefix-consistent (workload_profiles.prefix_reuse checks the shipped
            # traces); compare anyway, it is one slice
            if j is not None and reqs[j].hash_ids[:k] == h[:k]:
                parent[i] = j
                break
        full = r.input_toks // block
        if full > sys_blocks:
            by_last[h[full - 1]] = i
    return parent


def infer_sessions(trace: Trace, system_blocks: int | None = None) -> Trace:
    """``trace`` with ``session_id`` (the index of the turn that opened the session) and
    ``system_toks`` (the prefix every request shares) set from its hash ids.

    ``system_blocks``: the system prefix in hash blocks, as measured on the whole file a
    window was cut from (by default it is measured on ``trace``, which in a small window can
    take a whole prompt for a shared prefix).

    A trace without hash ids (Azure), or one whose requests already carry sessions (a dumped
    generated trace), is returned as it is. Nothing of the future is added: ``next_turn_s``
    stays unknown, as it is to a server.
    """
    reqs = trace.requests
    if not any(r.hash_ids for r in reqs) or any(r.session_id >= 0 for r in reqs):
        return trace
    sys_blocks = system_prefix_blocks(trace) if system_blocks is None else system_blocks
    parent = find_parents(trace, sys_blocks)
    root = list(range(len(reqs)))
    for i, p in enumerate(parent):
        if p >= 0:
            root[i] = root[p]
    system = sys_blocks * trace.hash_block_tokens
    annotated = tuple(dataclasses.replace(r, session_id=root[i],
                                          system_toks=min(system, r.input_toks))
                      for i, r in enumerate(reqs))
    meta = {**trace.meta, "transforms": [*trace.meta.get("transforms", []), "infer_sessions"],
            "system_prefix_blocks": sys_blocks, "sessions": len(set(root))}
    return dataclasses.replace(trace, requests=annotated, meta=meta)
