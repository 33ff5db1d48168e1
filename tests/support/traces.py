"""Traces for the engine and episode tests: hypothesis rows, random traces, a raw chat trace."""

from __future__ import annotations

import json
import random
from pathlib import Path

from kv_cache_rl.workload.requests import Trace, TraceRequest


def build_trace(rows, *, hash_block_tokens: int = 16, system_toks: int = 0) -> Trace:
    """A trace from ``(gap_s, input, output, chain, shared, session, reasoning, ephemeral)``
    rows (hypothesis draws them). ``chain`` >= 0 shares the first ``shared`` full blocks of a
    common prefix chain; ``session`` >= 0 makes the row a turn of that session, whose prompt
    extends the session's previous turn and starts with the shared system prompt."""
    hbt = hash_block_tokens
    system_ids = [900_000 + j for j in range(system_toks // hbt)]
    sessions: dict[int, list[int]] = {}
    next_id = 10**6
    t = 0.0
    reqs = []
    for i, (gap, inp, out, chain, shared, session, reasoning, ephemeral) in enumerate(rows):
        t += gap
        fields: dict = {}
        if session >= 0:
            prev = sessions.get(session, system_ids)
            inp = max(inp, system_toks, len(prev) * hbt + 1)
            n_full = inp // hbt
            ids = list(prev[:n_full]) + list(range(next_id, next_id + n_full - len(prev)))
            next_id += n_full
            sessions[session] = ids
            fields.update(session_id=session, system_toks=system_toks, hash_ids=tuple(ids),
                          reasoning_toks=min(reasoning, out), ephemeral=ephemeral)
        elif chain >= 0:
            n_full = inp // hbt
            k = min(shared, n_full)
            ids = [1000 * (chain + 1) + j for j in range(k)]
            ids += range(next_id, next_id + n_full - k)
            next_id += n_full
            fields["hash_ids"] = tuple(ids)
        reqs.append(TraceRequest(round(t, 6), inp, out, request_id=f"r{i}", **fields))
    return Trace(tuple(reqs), hash_block_tokens=hbt, source="hypothesis")


def random_trace(seed: int, n: int = 20, *, max_input: int = 600, max_output: int = 64,
                 rate: float = 20.0, shared_prefix: bool = False, hash_block_tokens: int = 16,
                 sessions: int = 0, system_toks: int = 0, reasoning: bool = False,
                 ephemeral: bool = False, min_input: int = 1) -> Trace:
    """``n`` requests with Poisson arrivals at ``rate``/s and uniform lengths.

    ``shared_prefix``: prompts draw hash ids from a few shared prefix chains, so equal ids mean
    an equal leading run of ``hash_block_tokens``-token blocks (one id per full block).
    ``sessions``: requests are spread over that many sessions; a session's turns extend each
    other's prompts (same hash ids first, then new ones), start with ``system_toks`` shared
    tokens, and may carry reasoning tokens and ephemeral sub-agent turns.
    """
    rng = random.Random(seed)
    t = 0.0
    chains = [[1000 * (c + 1) + j for j in range(64)] for c in range(3)]
    system_ids = [900_000 + j for j in range(system_toks // hash_block_tokens)]
    session_ids: dict[int, list[int]] = {}
    next_id = 10**6
    reqs = []
    for i in range(n):
        t += rng.expovariate(rate)
        inp = rng.randint(min_input, max_input)
        out = rng.randint(1, max_output)
        fields: dict = {}
        n_full = inp // hash_block_tokens
        if sessions:
            sid = rng.randrange(sessions)
            prev = session_ids.get(sid, system_ids)  # every session shares the system ids
            inp = max(inp, system_toks, len(prev) * hash_block_tokens + 1)
            n_full = inp // hash_block_tokens
            ids = list(prev[:n_full])
            while len(ids) < n_full:
                ids.append(next_id)
                next_id += 1
            session_ids[sid] = ids
            fields.update(session_id=sid, system_toks=system_toks,
                          hash_ids=tuple(ids), next_turn_s=1.0)
            if reasoning and rng.random() < 0.5:
                fields["reasoning_toks"] = rng.randint(1, out)
            if ephemeral and rng.random() < 0.25:
                fields["ephemeral"] = True
        elif shared_prefix and n_full:
            chain = chains[rng.randrange(len(chains))]
            k = rng.randint(0, min(n_full, len(chain)))
            ids = chain[:k] + [next_id + j for j in range(n_full - k)]
            next_id += n_full
            fields["hash_ids"] = tuple(ids)
        reqs.append(TraceRequest(round(t, 6), inp, out, request_id=f"r{i}", **fields))
    return Trace(tuple(reqs), hash_block_tokens=hash_block_tokens, source=f"random:{seed}")



CHAT_SYSTEM_IDS = [0, 1]  # every prompt of the chat trace opens with the same 2 blocks


def chat_trace_rows(sessions: int = 260, duration_s: float = 300.0) -> list[dict]:
    """A Mooncake-like chat load in the JSONL format (one hash id per 16 tokens): sessions of
    1-4 turns, each turn's prompt the previous prompt, its answer and a new message, so the
    hash ids of a turn start with all of the previous turn's. About 2.5 req/s of 1.5-6k-token
    prompts: enough to fill a hard tier's KV budget."""
    import numpy as np

    rng = np.random.default_rng(7)
    rows, next_id = [], 10
    for start in np.sort(rng.uniform(0.0, duration_s, sessions)):
        ids, t = list(CHAT_SYSTEM_IDS), float(start)
        for _ in range(int(rng.integers(1, 5))):
            new = int(rng.integers(80, 250))  # blocks: the new message (and the last answer)
            ids += range(next_id, next_id + new)
            next_id += new
            rows.append({"arrival_s": round(t, 4), "input_toks": 16 * len(ids),
                         "output_toks": int(rng.integers(16, 200)), "hash_ids": list(ids)})
            t += float(rng.uniform(5.0, 40.0))
    return sorted(rows, key=lambda r: r["arrival_s"])


def write_chat_trace(path: Path) -> Path:
    """:func:`chat_trace_rows` written to ``path`` as JSONL: a raw trace to cut episodes from."""
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_trace_rows()))
    return path
