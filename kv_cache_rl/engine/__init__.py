"""The serving engine: block pool, sequences, scheduler, agent actions, metrics."""

from kv_cache_rl.engine.actions import (ActionError, CapacityError, InvalidStateError,
                                        UnknownSequenceError)
from kv_cache_rl.engine.block_pool import UNITS_PER_BLOCK, BlockPool, BlockPoolError
from kv_cache_rl.engine.engine import Engine
from kv_cache_rl.engine.metrics import EngineStats, Timeseries, request_latencies
from kv_cache_rl.engine.sequence import KINDS, Sequence, State

__all__ = [
    "ActionError", "BlockPool", "BlockPoolError", "CapacityError", "Engine",
    "EngineStats", "InvalidStateError", "KINDS", "Sequence", "State", "Timeseries",
    "UNITS_PER_BLOCK", "UnknownSequenceError", "request_latencies",
]
