"""The Gymnasium environment ``KVCacheEviction-v1`` (registered on ``import kv_cache_rl``; the
old id ``KVCacheEviction-v0`` makes the same env)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from kv_cache_rl.errors import ConfigError
from kv_cache_rl.task.episode import MAX_CALLS_PER_STEP, Episode
from kv_cache_rl.task.features import (ENTRY_FEATURES, GLOBAL_FEATURES, NUM_ENTRY, NUM_GLOBAL,
                                  NUM_SLOTS, OBS_SIZE, cpu_room, encode, slots)
from kv_cache_rl.task.scenario import DIFFICULTIES, make_scenario, trace_file

ACTION_NAMES = ("keep", "evict", "compress", "swap_to_cpu")  # per-slot action codes 0..3
SEED_LIMIT = 2**31 - 1


class KVCacheEvictionEnv(gym.Env[np.ndarray, np.ndarray]):
    """
    ## Description

    A vLLM-faithful serving simulator (Llama-3.1-8B on an RTX PRO 6000) serves a window of an
    closed-loop agentic request trace with too little KV-cache memory. Every step is
    ``step_s`` = 3 s of
    serving; before it the agent may evict, compress (one precision tier) or swap to host
    memory any of the visible cached sequences. The scenario is fixed by
    ``(difficulty, scenario_seed)`` (:func:`kv_cache_rl.task.scenario.make_scenario`); every step is
    played through :class:`kv_cache_rl.task.episode.Episode`, as for the heuristics and LLM agents.

    ## Action Space

    `MultiDiscrete([4] * 12)`: one code per candidate slot (the slots of the observation; 12 =
    2 x ``observation.TOP_K``, every id the agent may act on).

    - 0: keep (do nothing to this slot)
    - 1: evict (drop its KV; a running request recomputes)
    - 2: compress (quantize one tier: fp16 -> int8 -> int4, halving its blocks)
    - 3: swap_to_cpu (move its own blocks to host swap space)

    Non-keep codes are applied in slot order, at most ``max_calls_per_step`` (8) of them; codes
    on empty slots and codes past the cap are ignored (counted in ``info["ignored"]``). A code
    outside 0..3 raises ValueError naming the slot and the code. ``info["action_mask"]``
    (12 x 4, bool) marks the codes that the simulator accepts on their own: a single allowed
    code is always applied. With several codes in one step, an earlier one can make a later
    one impossible: swaps share the host's free space, so a later ``swap_to_cpu`` past it is
    refused (a no-op counted in ``info["refused"]`` and as an invalid action); nothing else
    in the mask depends on another slot's action.

    ## Observation Space

    `Box(-1, 1, (9 + 12 * 23,), float32)`, built by :func:`kv_cache_rl.task.features.encode` from the
    same :class:`~kv_cache_rl.task.observation.Observation` LLM agents read as text (no future):

    | Index            | Observation                                                       |
    |------------------|-------------------------------------------------------------------|
    | 0-8              | globals: memory_usage, pending/32, queue growth/8, pending tokens,|
    |                  | oldest wait/30 s, running/64, free host swap/budget, steps        |
    |                  | remaining, pressure steps so far (``GLOBAL_FEATURES``)            |
    | 9 + 23 s + j     | slot s, feature j (``ENTRY_FEATURES``): present, kind one-hot (5),|
    |                  | eviction_value, blocks x 4/budget, log tokens, tier, on_cpu,      |
    |                  | priority, progress, idle/30 s, can_compress, can_swap, request    |
    |                  | type one-hot (3), turns/20, waits on user, waits on a tool,       |
    |                  | mean past pause/30 s                                              |

    Slots list the eviction candidates (safest first), then the largest entries not already
    listed; empty slots are all zeros. ``info["seq_ids"]`` gives each slot's sequence id (-1
    when empty).

    ## Rewards

    The episode's return is exactly its rubric reward (:func:`kv_cache_rl.task.rubric.score`,
    -0.679 .. +0.550). With ``reward_mode="shaped"`` (default) step t pays
    ``R(record after t steps) - R(record after t-1 steps)`` with ``R(nothing) = 0``, the rubric
    applied to the partial record (evictions are judged at the end, so the last step carries
    the eviction-quality correction); the rewards telescope to the final score. With
    ``reward_mode="terminal"`` every step pays 0 except the last, which pays the score.

    ## Starting State

    The engine has served ``warmup_s`` = 30 s of the trace with no agent, so the cache is loaded.

    ## Episode End

    Terminated after ``steps`` (20) steps; never truncated.

    ## Arguments

    ```python
    gymnasium.make("KVCacheEviction-v1", difficulty="hard", seeds=None, steps=20,
                   max_calls_per_step=8, reward_mode="shaped", render_mode=None,
                   trace_path=None)
    ```

    ``trace_path`` cuts every episode from a window of that raw trace (JSONL, Azure CSV or
    Mooncake JSONL) instead of generating it; the difficulty still sets the KV budget.

    ``reset(seed=s)`` seeds the env's generator, which draws the scenario seed: from ``seeds``
    (a sequence, e.g. ``range(1000, 2000)``; scenarios are cached, so a small pool resets fast)
    or, when ``seeds`` is None, uniformly from [0, 2**31 - 1) (every reset builds a new
    scenario, ~0.2 s). ``reset(options={"scenario_seed": 7})`` plays a given scenario.
    ``render_mode="ansi"`` renders the observation text the LLM agents read.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, difficulty: str = "hard", seeds=None, steps: int = 20,
                 max_calls_per_step: int = MAX_CALLS_PER_STEP, reward_mode: str = "shaped",
                 render_mode: str | None = None, trace_path: str | None = None):
        if difficulty not in DIFFICULTIES:
            raise ConfigError(f"unknown difficulty {difficulty!r}; choose from {DIFFICULTIES}")
        if reward_mode not in ("shaped", "terminal"):
            raise ConfigError("reward_mode must be 'shaped' or 'terminal'")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"render_mode must be one of {self.metadata['render_modes']}")
        self.difficulty, self.steps = difficulty, steps
        self.trace_path = None if trace_path is None else trace_file(trace_path)
        self.seeds = None if seeds is None else [int(s) for s in seeds]
        self.max_calls_per_step = max_calls_per_step
        self.reward_mode, self.render_mode = reward_mode, render_mode
        self.observation_space = spaces.Box(-1.0, 1.0, (OBS_SIZE,), np.float32)
        self.action_space = spaces.MultiDiscrete([len(ACTION_NAMES)] * NUM_SLOTS)
        self.episode: Episode | None = None
        self._slots: list = []
        self._last_score = 0.0

    # ---- gymnasium API ------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "scenario_seed" in options:
            scenario_seed = int(options["scenario_seed"])
        elif self.seeds is not None:
            scenario_seed = self.seeds[int(self.np_random.integers(len(self.seeds)))]
        else:
            scenario_seed = int(self.np_random.integers(SEED_LIMIT))
        scenario = make_scenario(self.difficulty, scenario_seed, steps=self.steps,
                                 trace_path=self.trace_path)
        self.episode = Episode(scenario, max_calls_per_step=self.max_calls_per_step)
        self._last_score = 0.0
        return self._obs(), self._info(ignored=0)

    def step(self, action):
        if self.episode is None or self.episode.done:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action).reshape(-1)
        if action.shape != (NUM_SLOTS,):
            raise ValueError(f"expected {NUM_SLOTS} action codes, got shape {action.shape}")
        codes = action.tolist()
        for slot, code in enumerate(codes):
            if isinstance(code, bool) or not isinstance(code, int) \
                    or not 0 <= code < len(ACTION_NAMES):
                raise ValueError(f"action slot {slot}: code {code!r} is not one of "
                                 f"0..{len(ACTION_NAMES) - 1} ({', '.join(ACTION_NAMES)})")
        episode, ignored, refused = self.episode, 0, 0
        for slot, code in enumerate(codes):
            if code == 0:
                continue
            if slot >= len(self._slots) or episode.calls_this_step >= self.max_calls_per_step:
                ignored += 1
                continue
            result = episode.call(ACTION_NAMES[code], {"seq_id": self._slots[slot].seq_id})
            refused += result.startswith("error")
        episode.advance()
        terminated = episode.done
        score = episode.score()
        if self.reward_mode == "shaped":
            reward = score["reward"] - self._last_score
            self._last_score = score["reward"]
        else:
            reward = score["reward"] if terminated else 0.0
        obs = self._obs()  # first: the slots, ids and mask below are the new observation's
        info = self._info(ignored=ignored, refused=refused)
        if terminated:
            info["score"] = score
        return obs, float(reward), terminated, False, info

    def render(self):
        if self.render_mode == "ansi" and self.episode is not None:
            return self.episode.text()
        return None

    # ---- helpers ------------------------------------------------------------------------
    def _obs(self) -> np.ndarray:
        obs = self.episode.observation
        self._slots = slots(obs)
        return encode(obs)

    def _info(self, *, ignored: int, refused: int = 0) -> dict[str, Any]:
        obs = self.episode.observation
        ids = np.full(NUM_SLOTS, -1, dtype=np.int64)
        mask = np.zeros((NUM_SLOTS, len(ACTION_NAMES)), dtype=bool)
        mask[:, 0] = True
        room = cpu_room(obs)
        for i, e in enumerate(self._slots):
            ids[i] = e.seq_id
            mask[i, 1] = True
            mask[i, 2] = not e.on_cpu and e.tier < 2
            mask[i, 3] = not e.on_cpu and 0 < e.blocks <= room
        return {"scenario_seed": self.episode.scenario.seed, "step": self.episode.step_index,
                "seq_ids": ids, "action_mask": mask, "ignored": ignored,
                "refused": refused}


def actions_to_codes(obs, actions) -> np.ndarray:
    """Translate a policy's :class:`~kv_cache_rl.task.episode.Action` list into this env's action
    (the env applies them in slot order; ``keep`` and invisible ids are dropped)."""
    index = {e.seq_id: i for i, e in enumerate(slots(obs))}
    codes = np.zeros(NUM_SLOTS, dtype=np.int64)
    for a in actions:
        if a.kind != "keep" and a.seq_id in index:
            codes[index[a.seq_id]] = ACTION_NAMES.index(a.kind)
    return codes


__all__ = ["ACTION_NAMES", "ENTRY_FEATURES", "GLOBAL_FEATURES", "KVCacheEvictionEnv",
           "NUM_ENTRY", "NUM_GLOBAL", "NUM_SLOTS", "actions_to_codes"]
