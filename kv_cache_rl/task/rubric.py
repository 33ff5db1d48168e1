"""The episode's reward: the seed design's seven weighted functions, in units an operator signs.

Every function is pure: it reads an :class:`EpisodeRecord` (plain data, JSON round-trip) and
returns a float in [-1, 1]. Sign convention, decided once: **rewards are >= 0, penalties are
<= 0, and every weight is positive**, so the total is ``sum(weight * value)``.

| function | weight | unit | range |
|---|---|---|---|
| failure_penalty | 0.40 | failed requests: preemptions, aborted generations, expected wrong answers | [-1, 0] |
| throughput_reward | 0.25 | goodput: expected correct tokens / the unlimited-memory run's tokens | [0, 1] |
| headroom_bonus | 0.18 | share of time arriving work could start (not waiting for KV memory) | [-1, 1] |
| memory_efficiency | 0.07 | prefix-cache hit rate relative to the unlimited-memory run's | [-1, 1] |
| eviction_quality | 0.05 | share of evicted tokens that were not needed again | [0, 1] |
| latency_penalty | 0.03 | host-link seconds spent swapping | [-0.3, 0] |
| risky_eviction_penalty | 0.02 | evictions of system, high-priority or over-half-done entries | [-1, 0] |
| total | | | [-0.679, 0.550] |

Failures are the ones the agent's choices cause or fail to prevent: vLLM's recompute
preemptions (the pool ran out of blocks), generations an agent aborted by evicting them, and
the expected wrong answers of requests decoded on quantized KV (``PrecisionTier.wrong_answer``
by request type: fp8 KV costs a chat answer nothing, a long reasoning answer 19.5%), counting
quantized KV still held at the end that a returning session will read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class EpisodeRecord:
    """What happened in one episode: everything the rubric needs, as plain data."""

    difficulty: str
    seed: int
    steps: int
    step_s: float = 1.0
    step_usage: list[float] = field(default_factory=list)  # KV usage at the end of each step
    step_failures: list[float] = field(default_factory=list)  # failures in each step
    step_blocked_s: list[float] = field(default_factory=list)  # seconds work waited for KV
    preemptions: int = 0  # engine preemptions forced by an out-of-blocks moment
    evicted_active: int = 0  # running requests aborted by an agent's eviction
    wrong_answers: float = 0.0  # expected wrong answers from quantized KV
    tokens_served: float = 0.0  # generated tokens in the window, less expected wrong ones
    reference_tokens: float = 0.0  # the same window served with unlimited KV memory
    cached_prompt_tokens: int = 0  # prompt tokens served from the prefix cache
    prompt_tokens: int = 0  # prompt tokens computed (recomputation included)
    reference_hit_rate: float = 0.0  # the unlimited-memory run's prefix-cache hit rate
    swap_latency_s: float = 0.0
    evictions: list[dict] = field(default_factory=list)  # kind, tokens, risky, reused
    actions: int = 0
    invalid_actions: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EpisodeRecord":
        return cls(**data)

    @property
    def failures(self) -> float:
        return self.preemptions + self.evicted_active + self.wrong_answers


def failure_penalty(record: EpisodeRecord) -> float:
    """Accelerating in failures f: -min(0.15 f + 0.1 max(0, f - 2), 1) (f may be fractional:
    expected wrong answers)."""
    f = record.failures
    return -min(f * 0.15 + max(0.0, f - 2) * 0.1, 1.0)


def throughput_reward(record: EpisodeRecord) -> float:
    """Goodput (tokens less the expected wrong ones) as a fraction of the unlimited-memory
    run's tokens."""
    if record.reference_tokens <= 0:
        return 1.0
    return max(0.0, min(record.tokens_served / record.reference_tokens, 1.0))


def headroom_bonus(record: EpisodeRecord) -> float:
    """Room to admit what arrives: mean over steps of 1 - 2 x (the share of the step in which
    waiting work could not start for lack of KV memory); a step with a failure counts -1."""
    if not record.step_blocked_s:
        return 0.0
    total = 0.0
    for blocked, failures in zip(record.step_blocked_s, record.step_failures):
        total += -1.0 if failures >= 1 else 1.0 - 2.0 * min(blocked / record.step_s, 1.0)
    return total / len(record.step_blocked_s)


def memory_efficiency(record: EpisodeRecord) -> float:
    """Prefix-cache hit rate (vLLM's: prompt tokens served from cache / prompt tokens) over the
    unlimited-memory run's, mapped to [-1, 1]: 1 at the reference, -1 with no hits."""
    seen = record.cached_prompt_tokens + record.prompt_tokens
    if seen <= 0 or record.reference_hit_rate <= 0:
        return 0.0
    ratio = min(record.cached_prompt_tokens / seen / record.reference_hit_rate, 1.0)
    return 2.0 * ratio - 1.0


def eviction_quality(record: EpisodeRecord) -> float:
    """1 - (evicted tokens that were needed again) / (evicted tokens); 1.0 with no evictions."""
    evicted = sum(e["tokens"] for e in record.evictions)
    if evicted <= 0:
        return 1.0
    lost = sum(e["tokens"] for e in record.evictions if e["reused"])
    return 1.0 - lost / evicted


def latency_penalty(record: EpisodeRecord) -> float:
    """-min(0.2 x host-link seconds spent swapping, 0.3)."""
    return -min(record.swap_latency_s * 0.2, 0.3)


def risky_eviction_penalty(record: EpisodeRecord) -> float:
    """-0.2 per eviction of a system, high-priority or over-half-done entry, down to -1."""
    return -min(0.2 * sum(1 for e in record.evictions if e["risky"]), 1.0)


def total_tokens_metric(record: EpisodeRecord) -> float:
    return float(record.tokens_served)


def total_failures_metric(record: EpisodeRecord) -> float:
    return float(record.failures)


def total_latency_metric(record: EpisodeRecord) -> float:
    return float(record.swap_latency_s)


def pressure_steps_metric(record: EpisodeRecord) -> float:
    """Steps in which waiting work had to wait for KV memory."""
    return float(sum(1 for b in record.step_blocked_s if b > 0))


RUBRIC = (
    (failure_penalty, 0.40), (throughput_reward, 0.25), (headroom_bonus, 0.18),
    (memory_efficiency, 0.07), (eviction_quality, 0.05), (latency_penalty, 0.03),
    (risky_eviction_penalty, 0.02), (total_tokens_metric, 0.0), (total_failures_metric, 0.0),
    (total_latency_metric, 0.0), (pressure_steps_metric, 0.0),
)
REWARD_RANGE = (-0.679, 0.55)


def score(record: EpisodeRecord) -> dict[str, float]:
    """Every function's value and the weighted ``reward``."""
    values = {fn.__name__: fn(record) for fn, _ in RUBRIC}
    values["reward"] = sum(weight * values[fn.__name__] for fn, weight in RUBRIC)
    return values
