"""Counters, time-weighted gauges and vLLM-style per-second logs of one engine run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

KV_HIGH = 0.95  # "KV cache usage >= 95%": the pressure threshold reported by replay


@dataclass
class EngineStats:
    """Totals over a run. Gauges are weighted by iteration time."""

    prompt_tokens: int = 0  # prompt tokens computed, recomputation included
    generated_tokens: int = 0
    recomputed_tokens: int = 0  # tokens computed again after a preemption or eviction
    preemptions: int = 0  # engine preemptions (out of blocks)
    evicted_active: int = 0  # running/swapped requests whose KV an agent dropped
    rejected: int = 0  # requests that could never fit
    forced_releases: int = 0  # retained KV the engine released early because nothing could run
    swap_out_bytes: int = 0
    swap_in_bytes: int = 0
    swap_latency_s: float = 0.0  # host-link time spent by swaps, stalling the engine
    quality_loss: float = 0.0  # expected wasted tokens: per token, P(wrong) at its KV precision
    wrong_answers: float = 0.0  # expected wrong answers of finished requests (their KV precision)
    cached_prompt_tokens: int = 0  # prompt tokens served from the prefix cache at admission
    memory_blocked_s: float = 0.0  # time in which waiting work could not start for KV memory
    peak_running: int = 0
    peak_waiting: int = 0
    busy_s: float = 0.0
    seconds_kv_ge_95: float = 0.0
    kv_usage_integral: float = 0.0  # integral of usage over time
    observed_s: float = 0.0

    def observe(self, dt: float, usage: float, running: int, waiting: int) -> None:
        self.observed_s += dt
        self.kv_usage_integral += usage * dt
        if usage >= KV_HIGH:
            self.seconds_kv_ge_95 += dt
        if running > self.peak_running:
            self.peak_running = running
        if waiting > self.peak_waiting:
            self.peak_waiting = waiting

    @property
    def kv_usage_mean(self) -> float:
        return self.kv_usage_integral / self.observed_s if self.observed_s else 0.0


@dataclass
class Timeseries:
    """Per-second rows like vLLM's stat logger: running, waiting, KV %, prompt and gen tok/s."""

    rows: list[tuple[float, int, int, float, float, float]] = field(default_factory=list)
    _second: int = 1
    _prompt: int = 0
    _gen: int = 0

    def record(self, engine, t: float, prompt_tokens: int, generated: int,
               usage: float | None = None) -> None:
        # tokens of an iteration are credited to the second in which it ends
        while t >= self._second:
            pct = 100.0 * (engine.pool.usage if usage is None else usage)
            self.rows.append((float(self._second), len(engine.running), len(engine.waiting),
                              round(pct, 2), float(self._prompt),
                              float(self._gen)))
            self._second += 1
            self._prompt = self._gen = 0
        self._prompt += prompt_tokens
        self._gen += generated

    HEADER = ("t", "running", "waiting", "kv_cache_pct", "prompt_throughput", "gen_throughput")


def percentiles(values: list[float]) -> dict[str, float]:
    """mean, p50, p90, p99 (linear interpolation, as numpy's default)."""
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    xs = sorted(values)

    def q(p: float) -> float:
        pos = p * (len(xs) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return {"mean": sum(xs) / len(xs), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99)}


def request_latencies(finished) -> dict[str, dict[str, float]]:
    """TTFT, TPOT and end-to-end latency (ms) of finished requests, as vLLM's benchmark does."""
    ttft, tpot, latency = [], [], []
    for seq in finished:
        ttft.append(1000.0 * (seq.first_token_s - seq.arrival_s))
        latency.append(1000.0 * (seq.finish_s - seq.arrival_s))
        if seq.num_output > 1:
            tpot.append(1000.0 * (seq.finish_s - seq.first_token_s) / (seq.num_output - 1))
    return {"ttft_ms": percentiles(ttft), "tpot_ms": percentiles(tpot),
            "latency_ms": percentiles(latency)}
