"""Fixed-size numeric features of an :class:`~kv_cache_rl.task.observation.Observation`.

Features are only ever appended (consumers index them by name), so a scorer trained on an
earlier list keeps reading the same columns.

Shared by the Gymnasium env (its observation vector) and the ``learned`` policy (its scorer),
so a policy trained on either sees the same numbers. Everything here is computed from the
observation alone (sizes, kinds, precision, location, priority, progress, idle time, queue),
never from the simulator, so nothing leaks the future.

Every feature lies in [-1, 1] (most in [0, 1]); the scales are round numbers chosen from the
ranges seen on the hard tier (entries hold up to ~40% of the budget, queues reach a few
dozen requests, contexts come back within ``CONTEXT_PAUSE_S``).
"""

from __future__ import annotations

import math

import numpy as np

from kv_cache_rl.workload.requests import REQUEST_TYPES
from kv_cache_rl.task.observation import CONTEXT_PAUSE_S, KIND_ORDER, TOP_K, Entry, Observation

NUM_SLOTS = 2 * TOP_K  # top_memory and top_candidates together: every id an agent may act on
GLOBAL_FEATURES = (
    "memory_usage",  # pool usage, 0..1
    "pending",  # waiting requests / 32, clipped
    "pending_queue_growth",  # change in waiting requests since last step / 8, in [-1, 1]
    "pending_tokens",  # tokens waiting / (budget x 16 tokens per block), clipped
    "oldest_wait",  # oldest wait / 30 s, clipped
    "running",  # running requests / 64, clipped
    "cpu_room",  # free host swap blocks / budget, clipped
    "steps_remaining",  # episode_remaining / steps_total
    "time_above_0_95",  # pressure steps so far / steps_total
)
ENTRY_FEATURES = (
    "present",  # 1 for a real entry, 0 for an empty slot (all zeros)
    *(f"kind_{k}" for k in KIND_ORDER),  # one-hot kind
    "eviction_value",  # the observation's 0..1 safety score
    "blocks",  # fp16-equivalent GPU blocks / budget x 4, clipped (evicting frees this)
    "tokens",  # log(1 + tokens) / log(1 + 131072)
    "tier",  # 0 fp16, 0.5 int8, 1 int4
    "on_cpu",
    "priority",  # 1 if high priority
    "progress",  # generation progress (1.0 for cached holders)
    "idle",  # idle seconds / CONTEXT_PAUSE_S, clipped
    "can_compress",  # on the GPU and above int4
    "can_swap",  # on the GPU and fits in the host's free swap space
    *(f"type_{t}" for t in REQUEST_TYPES),  # one-hot request type of its session
    "turns",  # turns the session has completed / 20, clipped
    "waits_user",  # a context whose session waits on its user
    "waits_tool",  # a context whose session waits on a tool call
    "pause",  # mean past pause of the session / CONTEXT_PAUSE_S, clipped (0: none yet)
)
NUM_GLOBAL = len(GLOBAL_FEATURES)
NUM_ENTRY = len(ENTRY_FEATURES)
OBS_SIZE = NUM_GLOBAL + NUM_SLOTS * NUM_ENTRY
_LOG_TOKENS = math.log1p(131072)


def _clip(x: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo if x < lo else hi if x > hi else x


def slots(obs: Observation) -> list[Entry]:
    """The visible entries in slot order: the candidates (safest first), then the memory
    table's entries not already listed (largest first). At most :data:`NUM_SLOTS`."""
    seen, order = set(), []
    for e in obs.top_candidates + obs.top_memory:
        if e.seq_id not in seen:
            seen.add(e.seq_id)
            order.append(e)
    return order[:NUM_SLOTS]


def cpu_room(obs: Observation) -> float:
    """Free host swap space in blocks."""
    return obs.cpu_total_blocks - obs.cpu_used_blocks


def global_features(obs: Observation) -> np.ndarray:
    budget = max(obs.memory_budget, 1)
    steps = max(obs.steps_total, 1)
    return np.array([
        _clip(obs.memory_usage),
        _clip(obs.pending / 32),
        _clip(obs.pending_queue_growth / 8, -1.0),
        _clip(obs.pending_tokens / (16 * budget)),
        _clip(obs.oldest_wait_s / 30),
        _clip(obs.running / 64),
        _clip(cpu_room(obs) / budget),
        _clip(obs.episode_remaining / steps),
        _clip(obs.time_above_0_95 / steps),
    ], dtype=np.float32)


def _entry_row(e: Entry, budget: int, room: float) -> list[float]:
    kind = [1.0 if e.kind == k else 0.0 for k in KIND_ORDER]
    return [
        1.0, *kind, e.eviction_value, _clip(4 * e.blocks / budget),
        math.log1p(max(e.tokens, 0)) / _LOG_TOKENS, e.tier / 2, float(e.on_cpu),
        1.0 if e.priority > 0 else 0.0, _clip(e.progress), _clip(e.idle_s / CONTEXT_PAUSE_S),
        float(not e.on_cpu and e.tier < 2), float(not e.on_cpu and 0 < e.blocks <= room),
        *(1.0 if e.request_type == t else 0.0 for t in REQUEST_TYPES), _clip(e.turns / 20),
        float(e.tool == "user"), float(e.tool not in ("user", "-")),
        _clip(e.pause_s / CONTEXT_PAUSE_S) if e.pause_s > 0 else 0.0,
    ]


def entry_features(e: Entry, obs: Observation, room: float | None = None) -> np.ndarray:
    room = cpu_room(obs) if room is None else room
    return np.array(_entry_row(e, max(obs.memory_budget, 1), room), dtype=np.float32)


def entry_matrix(obs: Observation) -> tuple[list[Entry], np.ndarray]:
    """The slot entries and their ``(len(entries), NUM_ENTRY)`` feature matrix."""
    entries = slots(obs)
    budget, room = max(obs.memory_budget, 1), cpu_room(obs)
    mat = np.array([_entry_row(e, budget, room) for e in entries], dtype=np.float32)
    return entries, mat.reshape(len(entries), NUM_ENTRY)


def encode(obs: Observation) -> np.ndarray:
    """The flat observation vector: globals, then ``NUM_SLOTS`` slots (empty ones all zero)."""
    out = np.zeros(OBS_SIZE, dtype=np.float32)
    out[:NUM_GLOBAL] = global_features(obs)
    _, mat = entry_matrix(obs)
    out[NUM_GLOBAL:NUM_GLOBAL + mat.size] = mat.ravel()
    return out
