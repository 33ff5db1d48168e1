"""Scenarios and episodes: a window of a trace served under KV pressure, decided step by step.

A scenario is fully determined by ``(difficulty, seed)`` (plus optional overrides): which
workload, how fast it arrives, which applications send it, how much KV memory the card and the
host have. An episode starts warm: the engine first serves ``warmup_s`` of the trace with no
agent, so the cache is loaded at step 1. Each of the ``steps`` decision steps is ``step_s``
seconds of serving (3 s: about 90 decode iterations of Llama-3.1-8B); 20 steps make a minute,
long enough that an agent's tool call comes back inside the episode (Dynamo: 2-30 s pauses),
so keeping, swapping or dropping its context is decided by what that costs, not by the clock.

Sessions are closed-loop (``EngineConfig.closed_loop``): a next turn is released a pause after
the previous one finishes, so a decision that slows a turn delays the session's next one.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from kv_cache_rl.errors import ConfigError, MissingFileError
from kv_cache_rl.engine.config import EngineConfig
from kv_cache_rl.workload.requests import Trace
from kv_cache_rl.engine import UNITS_PER_BLOCK, Engine
from kv_cache_rl.task.observation import Observation, observe

DIFFICULTIES = ("easy", "medium", "hard")
MODEL, GPU = "Llama-3.1-8B", "RTXPRO6000"  # the profile validated against a real vLLM run
RETENTION_S = 45.0  # Dynamo keeps an agentic session's context 45 s (domain notes)
SWAP_SPACE_BYTES = 4 << 30  # vLLM's default swap_space: 4 GiB of host memory per GPU
# The deployment's KV precision per request type (chat, code, reasoning): fp8 KV for chat,
# where it is free (GSM8K/MMLU within noise, PrecisionTier.wrong_answer), bf16 for the rest
DEFAULT_TIERS = (1, 0, 0)
TASK_VERSION = 2  # bumped whenever rewards stop being comparable with an older leaderboard
# make_scenario's keyword arguments: what an episode's state records to rebuild its scenario
SCENARIO_OPTIONS = ("steps", "step_s", "warmup_s", "trace_path", "memory_fraction", "model",
                    "gpu", "tensor_parallel_size")


@dataclass(frozen=True)
class Tier:
    """A difficulty: KV memory as a fraction of the window's peak demand, the load, the mix of
    applications and the host swap space.

    ``loads`` maps a workload to its range of mean request rates (req/s). Rates are per
    workload because prompt sizes differ tenfold: Mooncake prompts (median ~13k tokens with
    context) saturate prefill at ~2 req/s on this card, Azure ones (~4k) do not: Azure windows
    are decode-bound (KV memory sets the batch), Mooncake ones prefill-bound.
    ``types`` is the share of sessions per request type: agentic traffic is mostly long
    reasoning, whose answers quantized KV puts at risk (with mostly chat and code, quantizing
    anything is nearly free and no choice matters). ``swap_bytes`` is vLLM's ``swap_space``
    (4 GiB by default; offloading deployments give the host tier more, a host shared by more
    GPUs gives each less).
    """

    memory: tuple[float, float]
    loads: dict
    types: dict
    swap_bytes: int = SWAP_SPACE_BYTES


TIERS = {
    "easy": Tier((0.55, 0.70), {"azure_conv": (1.5, 2.5), "mooncake_conversation": (0.5, 1.0)},
                 {"chat": 0.2, "code": 0.2, "reasoning": 0.6}, 32 << 30),
    "medium": Tier((0.50, 0.65), {"azure_conv": (2.0, 3.0), "mooncake_conversation": (1.0, 1.5),
                                  "mooncake_synthetic": (0.75, 1.25)},
                   {"chat": 0.2, "code": 0.2, "reasoning": 0.6}, 16 << 30),
    "hard": Tier((0.35, 0.50), {"azure_code": (2.0, 3.5), "mooncake_synthetic": (1.25, 2.0)},
                 {"chat": 0.15, "code": 0.2, "reasoning": 0.65}, 8 << 30),
}


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """Everything that fixes an episode. Build with :func:`make_scenario`."""

    difficulty: str
    seed: int
    steps: int = 20
    step_s: float = 3.0
    warmup_s: float = 30.0
    workload: str = ""
    requests_per_s: float = 0.0
    memory_fraction: float = 1.0
    model: str = MODEL
    gpu: str = GPU
    tensor_parallel_size: int = 1  # GPUs the model is sharded over (vLLM's tensor parallel)
    trace: Trace = field(repr=False, compare=False, default=None)
    config: EngineConfig = field(repr=False, compare=False, default=None)
    reference_tokens: float = 0.0  # tokens the window yields with unlimited KV memory
    reference_hit_rate: float = 0.0  # its prefix-cache hit rate
    peak_blocks: int = 0  # the window's peak KV demand with unlimited memory
    # make_scenario's optional arguments, kept so that an episode can be rebuilt from its state
    trace_path: str | None = None  # a raw trace the window was cut from (else generated)
    memory_override: float | None = None  # memory_fraction given instead of the tier's draw

    @property
    def options(self) -> dict:
        """The arguments beyond ``(difficulty, seed)`` that rebuild this scenario with
        :func:`make_scenario`: the steps and their timing, and the trace and the memory
        override only when they were given (so generated episodes' states stay as they were)."""
        out = {"steps": self.steps, "step_s": self.step_s, "warmup_s": self.warmup_s}
        if self.trace_path is not None:
            out["trace_path"] = self.trace_path
        if self.memory_override is not None:
            out["memory_fraction"] = self.memory_override
        if self.model != MODEL:  # the hardware only when it is not the default
            out["model"] = self.model
        if self.gpu != GPU:
            out["gpu"] = self.gpu
        if self.tensor_parallel_size != 1:
            out["tensor_parallel_size"] = self.tensor_parallel_size
        return out

    @property
    def end_s(self) -> float:
        return self.warmup_s + self.steps * self.step_s

    @functools.cached_property
    def profile(self):
        from kv_cache_rl.hardware.profiles import load_profile

        return load_profile(self.model, self.gpu, self.tensor_parallel_size)

    @functools.cached_property
    def plays(self) -> dict:
        """Memo of episodes played on this scenario: (policy name, call cap) -> (reward,
        actions per step). Filled by the oracle and the bench (``policies.oracle.played``)."""
        return {}

    @functools.cached_property
    def last_turn(self) -> dict[int, int]:
        """Session id -> the highest turn index of that session in the trace (the future:
        whether a session comes back inside the horizon)."""
        out: dict[int, int] = {}
        for r in self.trace.requests:
            if r.session_id >= 0 and r.turn >= out.get(r.session_id, -1):
                out[r.session_id] = r.turn
        return out

    @functools.cached_property
    def _warm(self) -> Engine:
        engine = Engine(self.config, self.profile, self.trace)
        engine.run_until(self.warmup_s)
        engine.derive_prefix_keys()
        return engine

    def start(self) -> Engine:
        """A fresh engine at the start of step 1 (a copy of the cached warm-up)."""
        return self._warm.clone()

    @functools.cached_property
    def first_observation(self) -> Observation:
        """What the agent sees at step 1: the same for every episode of this scenario. (Taken
        from the warm engine, it also fills the sequences' size memos that copies inherit.)"""
        warm = self._warm
        return observe(warm, step=0, steps_total=self.steps, above=0,
                       last_pending=len(warm.waiting))


def _raw_trace(path: str) -> tuple[Trace, int]:
    """A raw trace file and its system prefix (in hash blocks, over the whole file), read once
    per version of the file (every seed of a bench run cuts its window from it)."""
    stat = Path(path).stat()
    return _read_raw_trace(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _read_raw_trace(path: str, _mtime_ns: int, _size: int) -> tuple[Trace, int]:
    from kv_cache_rl.workload.sessions import system_prefix_blocks
    from kv_cache_rl.workload.traces import load_trace

    trace = load_trace(path)
    return trace, system_prefix_blocks(trace)


def _engine_config(profile, num_gpu_blocks: int, swap_bytes: int = SWAP_SPACE_BYTES
                   ) -> EngineConfig:
    # swap_space is per GPU; at tensor parallel N each GPU's host copy holds its shard of a block
    swap_blocks = swap_bytes // (profile.kv_bytes_per_token_per_gpu * 16)
    return EngineConfig(num_gpu_blocks=num_gpu_blocks, num_cpu_blocks=swap_blocks,
                        retention_s=RETENTION_S, max_num_seqs=256, max_num_batched_tokens=2048,
                        closed_loop=True, default_tiers=DEFAULT_TIERS)


def _reference(profile, trace: Trace, warmup_s: float, end_s: float, step_s: float):
    """Serve the window with unlimited memory: its peak KV demand, tokens generated and
    prefix-cache hit rate."""
    unlimited = Engine(_engine_config(profile, 1 << 22), profile, trace)
    unlimited.run_until(warmup_s)
    stats = unlimited.stats
    start_tokens, start_cached, start_prompt = (stats.generated_tokens,
                                                stats.cached_prompt_tokens, stats.prompt_tokens)
    peak = 0
    t = warmup_s
    while t < end_s - 1e-9:
        t += step_s
        while unlimited.now < t:
            if unlimited.step() == 0.0:
                nxt = unlimited.next_event_s()
                unlimited._idle_until(t if nxt is None else min(max(nxt, unlimited.now), t))
            peak = max(peak, unlimited.pool.used_units)
    tokens = stats.generated_tokens - start_tokens
    cached, prompt = stats.cached_prompt_tokens - start_cached, stats.prompt_tokens - start_prompt
    hit_rate = cached / (cached + prompt) if cached + prompt else 0.0
    return math.ceil(peak / UNITS_PER_BLOCK), float(tokens), hit_rate


def resolve_hardware(model: str | None = None, gpu: str | None = None,
                     tensor_parallel_size: int | None = None) -> tuple[str, str, int]:
    """(model, gpu, tp) with the defaults (Llama-3.1-8B on one RTX PRO 6000) filled in, checked
    against the shipped profiles and spelt as they are (UnknownProfileError, a ConfigError,
    lists what exists)."""
    from kv_cache_rl.hardware.profiles import load_profile

    profile = load_profile(MODEL if model is None else model, GPU if gpu is None else gpu,
                           1 if tensor_parallel_size is None else tensor_parallel_size)
    return profile.model.name, profile.gpu.name, profile.tp


def make_scenario(difficulty: str, seed: int, *, steps: int = 20, step_s: float = 3.0,
                  warmup_s: float = 30.0, trace_path: str | None = None,
                  memory_fraction: float | None = None, model: str | None = None,
                  gpu: str | None = None, tensor_parallel_size: int | None = None
                  ) -> Scenario:
    """The scenario of ``(difficulty, seed)``: deterministic, cached (one object per set of
    arguments, however they are spelt: ``make_scenario.cache_clear()`` empties the cache).

    ``trace_path`` (JSONL, Azure CSV or Mooncake JSONL, see :func:`kv_cache_rl.workload.traces.load_trace`)
    cuts the window from that real trace instead of generating it from a workload profile: it
    opens at a request drawn from the seed, keeps the file's arrivals and lengths, and gets
    sessions and a system prefix from its hash ids (:func:`kv_cache_rl.workload.sessions.infer_sessions`);
    the tier still sets the KV budget.
    ``memory_fraction`` replaces the tier's draw of the KV budget (as a fraction of the
    window's peak demand) and changes nothing else: same workload, rate and trace.
    ``model``, ``gpu`` and ``tensor_parallel_size`` pick a shipped profile
    (:func:`kv_cache_rl.hardware.profiles.load_profile`; default Llama-3.1-8B on one RTX PRO
    6000): the engine's iteration times and KV capacity are that
    profile's (per GPU at tensor parallel N); the KV budget stays a fraction of the window's
    peak demand on that hardware.
    """
    if trace_path is not None:
        trace_path = trace_file(trace_path)
    model, gpu, tp = resolve_hardware(model, gpu, tensor_parallel_size)
    # one type per argument, so one cache entry and the same state for 1 and 1.0, int64 and int
    return _build_scenario(difficulty, operator.index(seed), operator.index(steps),
                           float(step_s), float(warmup_s), trace_path,
                           None if memory_fraction is None else float(memory_fraction),
                           model, gpu, tp)


def trace_file(path) -> str:
    """``path`` resolved, as scenarios record it (one cache entry and one state whatever the
    working directory); ``MissingFileError`` (a FileNotFoundError) if it names no file."""
    path = Path(path)
    if not path.is_file():
        what = "a directory, not a trace file" if path.is_dir() else "no such file"
        raise MissingFileError(f"trace_path {path}: {what}")
    return str(path.resolve())


def _cache_clear() -> None:
    _build_scenario.cache_clear()
    _read_raw_trace.cache_clear()


@functools.lru_cache(maxsize=256)
def _build_scenario(difficulty: str, seed: int, steps: int, step_s: float, warmup_s: float,
                    trace_path: str | None, memory_fraction: float | None,
                    model: str = MODEL, gpu: str = GPU, tp: int = 1) -> Scenario:
    if difficulty not in TIERS:
        raise ConfigError(f"unknown difficulty {difficulty!r}; choose from {', '.join(TIERS)}")
    if steps < 1 or step_s <= 0 or warmup_s < 0:
        raise ConfigError("steps >= 1, step_s > 0 and warmup_s >= 0 are required")
    if memory_fraction is not None and not 0.0 < memory_fraction <= 10.0:
        raise ConfigError(f"memory_fraction must be in (0, 10], got {memory_fraction}")
    tier = TIERS[difficulty]
    rng = np.random.default_rng([seed, DIFFICULTIES.index(difficulty)])
    base = Scenario(difficulty=difficulty, seed=seed, steps=steps, step_s=step_s,
                    warmup_s=warmup_s, model=model, gpu=gpu, tensor_parallel_size=tp)
    horizon = base.end_s + RETENTION_S  # later turns decide whether an eviction was a loss
    if trace_path is None:
        from kv_cache_rl.workload.generators import generate
        from kv_cache_rl.workload.generators import load_statistics

        names = sorted(tier.loads)
        workload = names[int(rng.integers(len(names)))]
        rate = float(rng.uniform(*tier.loads[workload]))
        scale = rate / load_statistics(workload)["mean_rate_rps"]
        trace = generate(workload, duration_s=horizon, rate_scale=scale, rng=rng, agentic=True,
                         type_shares=tier.types)
    else:
        from kv_cache_rl.workload.sessions import infer_sessions
        from kv_cache_rl.workload.traces import window

        full, system_blocks = _raw_trace(trace_path)
        # the window opens at a request drawn uniformly among those that leave a whole window
        # after them: a uniform start time can fall in a gap of a bursty trace (the Azure code
        # trace has 12 gaps of over a minute, up to 217 s), a drawn request weighs busy
        # periods by their load
        first = full.requests[0].arrival_s
        latest = first + max(full.duration_s - horizon, 0.0)
        starts = [r.arrival_s for r in full.requests if r.arrival_s <= latest]
        start = starts[int(rng.integers(len(starts)))]
        trace = infer_sessions(window(full, start, start + horizon), system_blocks)
        workload, rate = str(trace_path), len(trace.requests) / horizon  # the window's own
    fraction = float(rng.uniform(*tier.memory))  # drawn either way: the stream stays the same
    if memory_fraction is not None:
        fraction = float(memory_fraction)
    profile = base.profile
    peak, reference, hit_rate = _reference(profile, trace, warmup_s, base.end_s, step_s)
    blocks = max(64, math.ceil(fraction * peak))
    return replace(base, workload=workload, requests_per_s=rate, memory_fraction=fraction,
                   trace=trace, config=_engine_config(profile, blocks, tier.swap_bytes),
                   reference_tokens=reference, reference_hit_rate=round(hit_rate, 6),
                   peak_blocks=peak, trace_path=trace_path,
                   memory_override=memory_fraction)


make_scenario.cache_clear = _cache_clear


def memory_fraction_for(seed: int, fractions) -> float | None:
    """A scenario's KV budget for :func:`make_scenario`: None (the tier's own), a fixed
    fraction, or uniform in the range ``fractions`` = (lo, hi), drawn from the seed."""
    if fractions is None or isinstance(fractions, (int, float)):
        return fractions
    return round(float(np.random.default_rng([seed, 0xB1D]).uniform(*fractions)), 4)


def parse_fractions(text: str | None) -> tuple[float, float] | None:
    """``"0.3:0.8"`` -> (0.3, 0.8), ``"0.4"`` -> (0.4, 0.4); None stays None."""
    if not text:
        return None
    usage = f"--memory-fraction must be F or LO:HI with 0 < LO <= HI <= 2, got {text!r}"
    lo, _, hi = text.partition(":")
    try:
        lo, hi = float(lo), float(hi or lo)
    except ValueError:
        raise ConfigError(usage) from None
    if not 0 < lo <= hi <= 2:
        raise ConfigError(usage)
    return lo, hi
