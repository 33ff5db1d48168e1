"""Hypothesis: random small traces, random engine configs and random agent actions.

Every example runs an engine to the end through ``tests.support.tracker.Tracker``, which checks
after every step: pool conservation (free + evictable + used == total, used <= total,
``BlockPool.check``), referenced blocks == blocks held by live sequences (refcounts and units),
host-pool units == swapped sequences' units, running sequences hold ceil(computed / block_size)
blocks, token budget and max_num_seqs per batch, tokens and counters never going down; and at
the end: every request finished exactly once or was rejected, TTFT >= 0, finish >= first token,
and the recompute accounting (tokens computed + first-time prefix hits == tokens reached +
recomputed).
Actions that raise must be ActionErrors and leave the engine unchanged.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kv_cache_rl.engine.config import EngineConfig
from kv_cache_rl.engine import ActionError, Engine, State
from kv_cache_rl.engine.sequence import count_units as observed_units
from tests.support.invariants import snapshot
from tests.support.standin import PROFILE
from tests.support.tracker import Tracker
from tests.support.traces import build_trace

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

configs = st.fixed_dictionaries({
    "num_gpu_blocks": st.one_of(st.integers(20, 80), st.integers(20, 400)),  # mostly tight
    "block_size": st.sampled_from([8, 16]),
    # biased to small budgets shared by many sequences: chunks cut to a few tokens
    "max_num_seqs": st.one_of(st.just(16), st.integers(1, 16)),
    "max_num_batched_tokens": st.one_of(st.just(16), st.integers(16, 24),
                                        st.integers(16, 512)),
    "enable_prefix_caching": st.booleans(),
    "retention_s": st.one_of(st.just(0.0), st.floats(5.0, 30.0)),
    "num_cpu_blocks": st.integers(0, 200),
})

rows = st.tuples(
    st.one_of(st.just(0.0), st.floats(0.0, 0.05), st.floats(0.0, 0.5),
              st.floats(0.0, 20.0)),  # gap to the previous arrival
    st.integers(1, 600),  # input tokens
    st.integers(1, 64),  # output tokens
    st.integers(-1, 2),  # shared prefix chain (-1: none)
    st.integers(0, 40),  # blocks of the chain shared
    st.integers(-1, 3),  # session (-1: none)
    st.integers(0, 20),  # reasoning tokens
    st.booleans(),  # ephemeral
)


@st.composite
def traces(draw, sessions: bool):
    hbt = draw(st.sampled_from([8, 16, 32, 512]))
    system_toks = draw(st.sampled_from([0, 16, 40, 100])) if sessions else 0
    n = draw(st.integers(1, 30))  # hypothesis alone would favour very short lists
    drawn = draw(st.lists(rows, min_size=n, max_size=n))
    if not sessions:
        drawn = [r[:5] + (-1, 0, False) for r in drawn]
    return build_trace(drawn, hash_block_tokens=hbt, system_toks=system_toks)


actions = st.lists(st.tuples(
    st.integers(0, 4),  # steps to wait before this action
    st.sampled_from(["evict", "compress", "swap_to_cpu", "keep"]),
    st.integers(0, 10_000),  # which visible sequence
    st.sampled_from(["visible", "visible", "visible", "unknown", "waiting"]),
), max_size=40)


def _check_observed_sizes(eng: Engine) -> None:
    """The observation's remembered entry sizes equal a count from scratch (the memo grows
    with a sequence's block list; the request's system prefix is never counted)."""
    units, bs = eng.pool.units, eng.config.block_size
    for seq in eng.cached_sequences():
        if seq.state == State.SWAPPED:
            continue
        cut = seq.req.system_toks // bs if seq.kind == "generation" and seq.req else 0
        fresh = sum(units[b] for b in seq.blocks[cut:])
        assert observed_units(seq, units, bs) == fresh, (seq, fresh)


def _run(config: dict, trace, plan, fast: bool = False, profile=PROFILE) -> Tracker:
    engine = Engine(EngineConfig(**config), profile, trace)
    todo = list(plan)
    wait = [todo[0][0] if todo else 0]

    def between(t: Tracker) -> None:
        eng = t.engine
        _check_observed_sizes(eng)
        while todo:
            if wait[0] > 0:
                wait[0] -= 1
                return
            _, action, pick, target = todo.pop(0)
            if todo:
                wait[0] = todo[0][0]
            if target == "visible":
                visible = eng.cached_sequences()
                if not visible:
                    continue
                seq_id = visible[pick % len(visible)].seq_id
            elif target == "waiting" and eng.waiting:
                seq_id = eng.waiting[pick % len(eng.waiting)].seq_id
            else:
                seq_id = 10**6 + pick
            if action == "keep":
                eng.keep()
                continue
            seq = eng.live.get(seq_id)
            visible = seq is not None and seq.state in (State.RUNNING, State.SWAPPED,
                                                        State.RETAINED)
            before = snapshot(eng)
            if action == "evict" and visible:
                t.record_drop(seq)
            try:
                result = getattr(eng, action)(seq_id)
            except ActionError:
                assert snapshot(eng) == before, f"failed {action} changed the engine"
                assert not (action == "evict" and visible)
                continue
            assert visible, f"{action} accepted an invisible sequence {seq_id}"
            assert result >= 0
            if action == "swap_to_cpu":
                assert seq.state == State.SWAPPED and seq.cpu_units > 0
            elif action == "evict":
                assert seq.state in (State.WAITING, State.FINISHED) and seq.blocks == []

    return Tracker(engine, fast=fast).run(between=between, stall_steps=1_000)


@settings(max_examples=50, **SETTINGS)
@given(config=configs, trace=traces(sessions=False), fast=st.booleans())
def test_random_traces_keep_invariants(config, trace, fast):
    t = _run(config, trace, [], fast)
    engine = t.engine
    assert len(engine.finished) + engine.stats.rejected == len(trace.requests)
    if engine.config.retention_s == 0:
        assert engine.pool.used_units == 0 and not engine.live
    assert engine.stats.evicted_active == 0 and engine.stats.quality_loss == 0.0


@settings(max_examples=70, **SETTINGS)
@given(config=configs, trace=traces(sessions=True), plan=actions, fast=st.booleans())
def test_random_traces_and_actions_keep_invariants(config, trace, plan, fast):
    t = _run(config, trace, plan, fast)
    engine = t.engine
    assert len(engine.finished) + engine.stats.rejected == len(trace.requests)
    assert engine.cpu_free_units + sum(s.cpu_units for s in engine.live.values()) \
        == engine.cpu_total_units


TENSOR_PARALLEL = [("Qwen3-32B", "RTXPRO6000", 2), ("Llama-3.1-70B", "H100", 8)]


@settings(max_examples=30, **SETTINGS)
@given(config=configs, trace=traces(sessions=True), plan=actions, fast=st.booleans(),
       server=st.sampled_from(TENSOR_PARALLEL))
def test_tensor_parallel_servers_keep_invariants(config, trace, plan, fast, server):
    """The shipped TP profiles (per-GPU KV, collectives in the iteration time, a host link per
    GPU) under the same random traces and actions."""
    from kv_cache_rl.hardware.profiles import load_profile

    t = _run(config, trace, plan, fast, profile=load_profile(*server))
    engine = t.engine
    assert engine.profile.tp == server[2]
    assert len(engine.finished) + engine.stats.rejected == len(trace.requests)
    assert engine.cpu_free_units + sum(s.cpu_units for s in engine.live.values()) \
        == engine.cpu_total_units


@settings(max_examples=25, **SETTINGS)
@given(
    prompts=st.lists(st.tuples(st.integers(1, 24), st.integers(40, 120)), min_size=16,
                     max_size=20),
    evictions=st.lists(st.tuples(st.integers(5, 40), st.integers(0, 100)), min_size=1,
                       max_size=6),
    caching=st.booleans(),
)
def test_recompute_under_the_tightest_budget(prompts, evictions, caching):
    """16 sequences sharing a 16-token budget: a recomputing request behind 15 decodes gets
    1-token chunks, which must stay prefill chunks (no token sampled mid-recompute)."""
    trace = build_trace([(0.0, i, o, -1, 0, -1, 0, False) for i, o in prompts])
    config = {"num_gpu_blocks": 400, "max_num_seqs": 16, "max_num_batched_tokens": 16,
              "enable_prefix_caching": caching}
    plan = [(wait, "evict", pick, "visible") for wait, pick in evictions]
    t = _run(config, trace, plan)
    assert t.engine.stats.evicted_active > 0
