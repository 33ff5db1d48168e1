"""Engine: a clone shares no mutable state with its original, and the pure-decode fast path
stays exact with agent actions in the run."""

from __future__ import annotations

import dataclasses
from collections import deque
from enum import Enum

import pytest

from kv_cache_rl.engine import ActionError, Engine, Sequence
from kv_cache_rl.engine.clone import IMMUTABLE, SHARED
from kv_cache_rl.engine.config import EngineConfig
from kv_cache_rl.scenario import make_scenario
from tests.support.invariants import check_invariants
from tests.support.traces import random_trace


def _plain(obj, seen: set[int]):
    """Everything reachable from ``obj`` as plain values (the original's fingerprint)."""
    if isinstance(obj, IMMUTABLE) and not isinstance(obj, tuple) or isinstance(obj, Enum):
        return obj
    if id(obj) in seen:
        return ("<seen>",)
    seen.add(id(obj))
    if isinstance(obj, (list, tuple, deque)):
        return [_plain(x, seen) for x in obj]
    if isinstance(obj, dict):
        return sorted((repr(k), _plain(v, seen)) for k, v in obj.items())
    names = getattr(obj, "__slots__", None) or vars(obj)
    return sorted((n, _plain(getattr(obj, n), seen)) for n in names if hasattr(obj, n))


def _frozen(obj) -> bool:
    return isinstance(obj, IMMUTABLE) or isinstance(obj, Enum) or (
        dataclasses.is_dataclass(obj) and obj.__dataclass_params__.frozen)


def _mutate(obj, seen: set[int]) -> int:
    """Change every mutable thing reachable from a clone's attribute; return how many."""
    if _frozen(obj) or id(obj) in seen:
        return 0
    seen.add(id(obj))
    count = 0
    if isinstance(obj, (list, deque)):
        for x in list(obj):
            count += _mutate(x, seen)
        obj.append("sentinel")
        return count + 1
    if isinstance(obj, dict):
        for v in list(obj.values()):
            count += _mutate(v, seen)
        obj["sentinel"] = "sentinel"
        return count + 1
    names = getattr(obj, "__slots__", None) or list(vars(obj))
    for name in names:
        value = getattr(obj, name)
        if _frozen(value):
            setattr(obj, name, "sentinel")
            count += 1
        else:
            count += _mutate(value, seen)
    return count


def _busy_engine() -> Engine:
    """A hard scenario mid-window, after compress, swap and evict actions: retained holders,
    host copies, a compressed system prompt, the closed loop's pending releases."""
    engine = make_scenario("hard", 0).start()
    engine.run_until(engine.now + 2.0)
    actions = ("compress", "swap_to_cpu", "evict", "compress")
    for seq, action in zip(sorted(engine.cached_sequences(), key=lambda s: -len(s.blocks)),
                           actions * 3):
        try:
            getattr(engine, action)(seq.seq_id)
        except ActionError:
            pass
    engine.run_until(engine.now + 1.0)
    return engine


def test_clone_shares_no_mutable_state():
    original = _busy_engine()
    assert original.swapped or any(s.cpu_units for s in original.live.values())
    assert original.finished and original._session_context
    before = _plain({k: v for k, v in vars(original).items() if k not in SHARED}, set())
    clone = original.clone()
    mutated = 0
    for name, value in vars(clone).items():
        if name in SHARED:
            continue
        if isinstance(value, IMMUTABLE):
            setattr(clone, name, "sentinel")
            mutated += 1
        else:
            mutated += _mutate(value, set())
    assert mutated > 1000  # sequences, pool lists, queues, stats, heaps
    with pytest.raises(TypeError):
        clone._children[0] = ()  # shared because it cannot be written
    after = _plain({k: v for k, v in vars(original).items() if k not in SHARED}, set())
    assert after == before
    check_invariants(original)


def test_clone_refuses_an_attribute_it_has_no_rule_for():
    engine = make_scenario("easy", 0).start()
    engine.new_mutable_thing = []
    with pytest.raises(TypeError, match="new_mutable_thing"):
        engine.clone()
    engine.new_mutable_thing = 3  # an immutable value is shared, as every number is
    assert engine.clone().new_mutable_thing == 3


def test_sequence_copy_shares_only_immutable_parts():
    engine = _busy_engine()
    for seq in engine.live.values():
        new = seq.copy()
        for name in Sequence.__slots__:
            value = getattr(seq, name)
            if not isinstance(value, IMMUTABLE) and name not in ("req", "size_memo"):
                assert getattr(new, name) is not value, name


def _schedule(engine: Engine, step: int) -> list[str]:
    """A state-dependent action schedule: the same state gives the same actions."""
    done = []
    visible = sorted(engine.cached_sequences(), key=lambda s: (-len(s.blocks), s.seq_id))
    for k, seq in enumerate(visible[:3]):
        action = ("compress", "swap_to_cpu", "evict")[(step + k) % 3]
        try:
            getattr(engine, action)(seq.seq_id)
            done.append(f"{action}({seq.seq_id})")
        except ActionError:
            done.append("refused")
    return done


@pytest.mark.parametrize("seed", [3, 8])
def test_decode_fast_path_is_exact_with_agent_actions(profile, seed):
    """Runs with and without the pure-decode fast path give the same schedule, the same
    actions and the same results when evict, compress and swap act between intervals."""
    runs = []
    for fast in (False, True):
        trace = random_trace(seed, n=60, max_output=300, sessions=6, system_toks=64,
                             reasoning=True, ephemeral=True)
        engine = Engine(EngineConfig(num_gpu_blocks=400, max_num_seqs=8, num_cpu_blocks=200,
                                     max_num_batched_tokens=256, retention_s=20.0),
                        profile, trace)
        engine.fast_forward = fast
        log = []
        for step in range(40):
            engine.run_until(0.25 * (step + 1))
            check_invariants(engine)
            log.append((engine.now, engine.iterations, tuple(_schedule(engine, step))))
        engine.run()
        s = engine.stats
        runs.append((log, [(q.seq_id, q.first_token_s, q.finish_s, q.num_output)
                           for q in engine.finished], engine.now, engine.iterations,
                     s.preemptions, s.recomputed_tokens, s.generated_tokens, s.evicted_active,
                     s.swap_out_bytes, s.swap_in_bytes, s.quality_loss))
    slow, fast = runs
    assert sum(a != "refused" for _, _, acts in slow[0] for a in acts) >= 20
    assert fast[1:] == slow[1:] and fast[0] == slow[0]
