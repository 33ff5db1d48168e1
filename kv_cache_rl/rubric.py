"""The episode's reward: the seed design's weighted functions, in real units.

Every function is pure: it reads an :class:`EpisodeRecord` (plain data, JSON round-trip) and
returns a float. Sign convention, decided once: **rewards are >= 0, penalties are <= 0, and
every weight is positive**, so the total is ``sum(weight * value)``. Ranges:

| function | weight | range |
|---|---|---|
| failure_penalty | 0.40 | [-1, 0] |
| throughput_reward | 0.25 | [0, 1] |
| headroom_bonus | 0.18 | [-1, 1] |
| memory_efficiency | 0.07 | [-0.2, 0.2] |
| eviction_quality | 0.05 | [0, 1] |
| latency_penalty | 0.03 | [-0.3, 0] |
| risky_eviction_penalty | 0.02 | [-1, 0] |
| total | | [-0.623, 0.494] |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

OVERFLOW_USAGE = 0.999  # a step that ends with the pool full counts as overflow


@dataclass
class EpisodeRecord:
    """What happened in one episode: everything the rubric needs, as plain data."""

    difficulty: str
    seed: int
    steps: int
    step_usage: list[float] = field(default_factory=list)  # KV usage at the end of each step
    step_failures: list[int] = field(default_factory=list)
    preemptions: int = 0  # engine preemptions forced by an out-of-blocks moment
    evicted_active: int = 0  # running requests aborted by an agent's eviction
    tokens_served: float = 0.0  # generated tokens in the window, weighted by KV quality
    reference_tokens: float = 0.0  # the same window served with unlimited KV memory
    swap_latency_s: float = 0.0
    evictions: list[dict] = field(default_factory=list)  # kind, tokens, risky, reused, lost
    actions: int = 0
    invalid_actions: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EpisodeRecord":
        return cls(**data)


def failure_penalty(record: EpisodeRecord) -> float:
    """Accelerating in failures f (preemptions + aborted generations): -min(0.15f + 0.1max(0,f-2), 1)."""
    f = record.preemptions + record.evicted_active
    return -min(f * 0.15 + max(0, f - 2) * 0.1, 1.0)


def throughput_reward(record: EpisodeRecord) -> float:
    """Quality-weighted tokens served, as a fraction of the unlimited-memory run's."""
    if record.reference_tokens <= 0:
        return 1.0
    return min(record.tokens_served / record.reference_tokens, 1.0)


def headroom_bonus(record: EpisodeRecord) -> float:
    """Mean over steps: +1 below 0.8 usage, +0.5 below 0.95, 0 below 1.0, -1 full or failing."""
    if not record.step_usage:
        return 0.0
    total = 0.0
    for usage, failures in zip(record.step_usage, record.step_failures):
        if failures or usage >= OVERFLOW_USAGE:
            total -= 1.0
        elif usage < 0.8:
            total += 1.0
        elif usage < 0.95:
            total += 0.5
    return total / len(record.step_usage)


def memory_efficiency(record: EpisodeRecord) -> float:
    """Final state: +0.2 below 0.85 usage, -0.2 on overflow (full or failing), else 0."""
    if not record.step_usage:
        return 0.0
    usage, failures = record.step_usage[-1], record.step_failures[-1]
    if failures or usage >= OVERFLOW_USAGE:
        return -0.2
    return 0.2 if usage < 0.85 else 0.0


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
    return float(record.preemptions + record.evicted_active)


def total_latency_metric(record: EpisodeRecord) -> float:
    return float(record.swap_latency_s)


def pressure_steps_metric(record: EpisodeRecord) -> float:
    return float(sum(1 for u in record.step_usage if u > 0.95))


RUBRIC = (
    (failure_penalty, 0.40), (throughput_reward, 0.25), (headroom_bonus, 0.18),
    (memory_efficiency, 0.07), (eviction_quality, 0.05), (latency_penalty, 0.03),
    (risky_eviction_penalty, 0.02), (total_tokens_metric, 0.0), (total_failures_metric, 0.0),
    (total_latency_metric, 0.0), (pressure_steps_metric, 0.0),
)
REWARD_RANGE = (-0.623, 0.494)


def score(record: EpisodeRecord) -> dict[str, float]:
    """Every function's value and the weighted ``reward``."""
    values = {fn.__name__: fn(record) for fn, _ in RUBRIC}
    values["reward"] = sum(weight * values[fn.__name__] for fn, weight in RUBRIC)
    return values
