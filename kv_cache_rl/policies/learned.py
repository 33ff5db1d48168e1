"""learned: a small linear scorer trained with the cross-entropy method (``kv-cache-rl train``).

It acts on the observation alone (``sees_future = False``), like the heuristics, in two parts:

* **Pressure control.** A projected usage ``p = usage + lead . (pending, running, growth+)``
  (what the step will add before the next decision) decides whether to act (``p >= trigger``)
  and how many blocks to free (``(p - target) x budget``).
* **Entry scorer.** For every visible GPU entry, three linear scores, one per action (evict,
  compress, swap_to_cpu), over the entry's features (kind one-hot, eviction_value, size,
  precision, priority, progress, idle time) and the pool usage. Impossible actions are masked
  (compress at int4, swap beyond the host's free space). An entry's priority is its best score;
  entries scoring <= 0 are left alone (keep). Entries are relieved best first, each with its
  best action, until the projected usage reaches ``target`` or the step's call cap.

All parameters are named in :data:`PARAMS` (with the CEM's initial mean and spread). The
shipped values are ``kv_cache_rl/data/policies/learned.json``, which also records the command,
seed, date and evaluation that produced them.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

import numpy as np

from kv_cache_rl.errors import ConfigError
from kv_cache_rl.task.episode import MAX_CALLS_PER_STEP, Action
from kv_cache_rl.task.features import (ENTRY_FEATURES, GLOBAL_FEATURES, cpu_room, entry_matrix,
                                  global_features)
from kv_cache_rl.policies.base import Policy

ACTIONS = ("evict", "compress", "swap_to_cpu")
SCORER_INPUTS = ("kind_system", "kind_context", "kind_generation", "kind_reasoning",
                 "kind_ephemeral", "eviction_value", "blocks", "tier", "priority", "progress",
                 "idle", "usage")
_ENTRY_COLS = [ENTRY_FEATURES.index(f) for f in SCORER_INPUTS[:-1]]
_G = {name: i for i, name in enumerate(GLOBAL_FEATURES)}
_E = {name: i for i, name in enumerate(ENTRY_FEATURES)}

# Initial mean: roughly compress_first / lru (relieve safe, idle entries; never running or
# system ones; compress what may come back), so the search starts from a sensible policy.
_INIT_SCORES = {
    "evict": {"kind_system": -2.0, "kind_generation": -2.0, "kind_reasoning": 0.5,
              "eviction_value": 0.5, "idle": 0.5, "tier": 0.3},
    "compress": {"kind_system": -2.0, "kind_generation": -0.5, "eviction_value": 0.6,
                 "idle": 0.2},
    "swap_to_cpu": {"kind_system": -2.0, "kind_generation": -2.0, "eviction_value": 0.3,
                    "idle": 0.3, "kind_reasoning": -0.5},
}
# name -> (initial mean, initial CEM standard deviation)
PARAMS: dict[str, tuple[float, float]] = {
    "trigger": (0.85, 0.08),
    "target": (0.75, 0.08),
    "lead_pending": (0.0, 0.1),
    "lead_running": (0.0, 0.1),
    "lead_growth": (0.0, 0.1),
    **{f"{a}.{f}": (_INIT_SCORES[a].get(f, 0.0), 0.5) for a in ACTIONS for f in SCORER_INPUTS},
}
PARAM_NAMES = tuple(PARAMS)
DEFAULT_WEIGHTS = "data/policies/learned.json"


def initial_vector() -> tuple[np.ndarray, np.ndarray]:
    """The CEM's initial mean and standard deviation, in :data:`PARAM_NAMES` order."""
    return (np.array([PARAMS[n][0] for n in PARAM_NAMES]),
            np.array([PARAMS[n][1] for n in PARAM_NAMES]))


@functools.cache
def _shipped_text() -> str:
    return resources.files("kv_cache_rl").joinpath(DEFAULT_WEIGHTS).read_text()


def load_weights(path: str | Path | None = None) -> dict:
    """The weights file (the shipped one by default) as a dict with ``params`` and ``meta``."""
    data = json.loads(_shipped_text() if path is None else Path(path).read_text())
    missing = set(PARAM_NAMES) - set(data["params"])
    if missing:
        raise ConfigError(f"weights file lacks parameters {sorted(missing)}")
    return data


class LearnedPolicy(Policy):
    name = "learned"

    def __init__(self, params: dict | np.ndarray | None = None) -> None:
        if params is None:
            params = load_weights()["params"]
        if isinstance(params, dict):
            vector = np.array([float(params[n]) for n in PARAM_NAMES])
        else:
            vector = np.asarray(params, dtype=float)
            if vector.shape != (len(PARAM_NAMES),):
                raise ConfigError(f"expected {len(PARAM_NAMES)} parameters, got {vector.shape}")
        self.vector = vector
        p = dict(zip(PARAM_NAMES, vector))
        self.trigger, self.target = p["trigger"], p["target"]
        self.lead = np.array([p["lead_pending"], p["lead_running"], p["lead_growth"]])
        # (inputs, actions): entry columns then the usage column
        self.weights = np.array([[p[f"{a}.{f}"] for a in ACTIONS] for f in SCORER_INPUTS])

    @property
    def params(self) -> dict[str, float]:
        return {n: float(v) for n, v in zip(PARAM_NAMES, self.vector)}

    def projected_usage(self, obs, g: np.ndarray) -> float:
        growth = max(float(g[_G["pending_queue_growth"]]), 0.0)
        return obs.memory_usage + float(self.lead @ (g[_G["pending"]], g[_G["running"]], growth))

    def act(self, obs, episode=None) -> list[Action]:
        g = global_features(obs)
        projected = self.projected_usage(obs, g)
        if projected < self.trigger:
            return []
        to_free = (projected - self.target) * obs.memory_budget
        if to_free <= 0:
            return []
        entries, mat = entry_matrix(obs)
        keep = [i for i, e in enumerate(entries) if not e.on_cpu and e.blocks > 0]
        if not keep:
            return []
        entries = [entries[i] for i in keep]
        mat = mat[keep]
        x = np.empty((len(entries), len(SCORER_INPUTS)))
        x[:, :-1] = mat[:, _ENTRY_COLS]
        x[:, -1] = obs.memory_usage
        scores = x @ self.weights  # (entries, actions)
        scores[mat[:, _E["can_compress"]] == 0, 1] = -np.inf
        order = np.lexsort(([e.seq_id for e in entries], -scores.max(axis=1)))
        room = cpu_room(obs)
        actions: list[Action] = []
        for i in order:
            if to_free <= 0 or len(actions) >= MAX_CALLS_PER_STEP:
                break
            e, s = entries[i], scores[i].copy()
            if e.blocks > room:
                s[2] = -np.inf
            k = int(np.argmax(s))
            if s[k] <= 0:
                continue
            actions.append(Action(ACTIONS[k], e.seq_id))
            freed = e.blocks / 2 if k == 1 else e.blocks
            if k == 2:
                room -= e.blocks
            to_free -= freed
        return actions
