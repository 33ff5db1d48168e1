"""Shared fixtures. The helpers behind them live in ``tests/support``: the stand-in hardware
profile (``standin``), traces (``traces``), the engine invariants (``invariants``) and the
checking driver (``tracker``); tests import those directly (``from tests.support.x import``).
"""

from __future__ import annotations

import pytest

from kv_cache_rl.engine import Engine
from kv_cache_rl.engine.config import EngineConfig
from kv_cache_rl.workload.requests import Trace
from tests.support.standin import PROFILE, StandInProfile
from tests.support.tracker import drive
from tests.support.traces import random_trace, write_chat_trace


@pytest.fixture(scope="session")
def profile() -> StandInProfile:
    """The stand-in hardware profile (linear-ish cost model, three KV tiers)."""
    return PROFILE


@pytest.fixture(scope="session")
def make_trace():
    """:func:`tests.support.traces.random_trace`."""
    return random_trace


@pytest.fixture(scope="session")
def chat_trace(tmp_path_factory):
    """:func:`tests.support.traces.chat_trace_rows` written to a JSONL file: a raw trace to cut
    episodes from."""
    return write_chat_trace(tmp_path_factory.mktemp("raw") / "chat.jsonl")


@pytest.fixture(scope="session")
def run_checked():
    """:func:`tests.support.tracker.drive`: run an engine to the end with invariant checks."""
    return drive


@pytest.fixture(scope="session")
def new_engine(profile):
    """An engine on the stand-in profile: ``new_engine(trace, **config)`` (400 blocks unless
    ``num_gpu_blocks`` says otherwise)."""
    def make(trace: Trace, **config) -> Engine:
        config.setdefault("num_gpu_blocks", 400)
        return Engine(EngineConfig(**config), profile, trace)
    return make
