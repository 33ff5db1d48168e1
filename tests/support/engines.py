"""Helpers of the engine tests (``tests/test_engine_*.py``): engines on the stand-in profile,
hand-written requests, lookups by request id, refused actions, and a two-turn session."""

from __future__ import annotations

import pytest

from kv_cache_rl.engine import ActionError, Engine
from kv_cache_rl.engine.config import EngineConfig
from kv_cache_rl.workload.requests import Trace, TraceRequest
from tests.support.invariants import check_invariants, snapshot
from tests.support.standin import PROFILE

UNIT_BYTES = PROFILE.model.kv_bytes_per_token * 16 // 4  # one pool unit at block size 16
ACTIONS = ("evict", "compress", "swap_to_cpu")
IDS = tuple(range(100, 132))  # 32 ids x 16 tokens = 512 tokens


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


def expect(engine: Engine, action: str, seq_id: int, error: type) -> ActionError:
    """``action`` on ``seq_id`` raises ``error`` and leaves the engine exactly as it was."""
    before = snapshot(engine)
    with pytest.raises(error) as info:
        getattr(engine, action)(seq_id)
    assert snapshot(engine) == before, f"{action} changed the engine before raising"
    check_invariants(engine)
    return info.value


# ---- a two-turn session (retention) -----------------------------------------------------------

SYS = 64  # 4 blocks of system prompt
T1_IDS = tuple(range(1, 13))  # turn 1: 200-token prompt, 12 full blocks
T2_IDS = T1_IDS + tuple(range(13, 26))  # turn 2 extends it: 400 tokens, 25 full blocks


def turn1(arrival=0.0, **kw):
    return R(arrival, 200, 20, "t1", session_id=7, system_toks=SYS, reasoning_toks=10,
             hash_ids=T1_IDS, next_turn_s=4.0, **kw)


def turn2(arrival=5.0):
    return R(arrival, 400, 10, "t2", session_id=7, system_toks=SYS, hash_ids=T2_IDS)
