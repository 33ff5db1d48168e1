"""Replay a trace with no agent: vLLM's own behaviour, summarised like vLLM's benchmark."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

from kv_cache_rl.engine.config import EngineConfig
from kv_cache_rl.workload.requests import Trace
from kv_cache_rl.engine import Engine, Timeseries, request_latencies

SUMMARY_KEYS = ("ttft_ms", "tpot_ms", "latency_ms", "makespan_s", "preemptions",
                "recomputed_tokens", "peak_waiting", "peak_running", "seconds_kv_ge_95",
                "kv_usage_mean", "num_requests", "wall_s")


@dataclass(frozen=True)
class ReplayResult:
    summary: dict
    timeseries: Timeseries | None
    engine: Engine


def replay(trace: Trace, profile, config: EngineConfig, *, timeseries: bool = False
           ) -> ReplayResult:
    """Serve ``trace`` to completion and summarise it."""
    start = time.perf_counter()
    engine = Engine(config, profile, trace, record_timeseries=timeseries)
    engine.run()
    stats = engine.stats
    summary = {
        **request_latencies(engine.finished),
        "makespan_s": engine.now,
        "preemptions": stats.preemptions,
        "recomputed_tokens": stats.recomputed_tokens,
        "peak_waiting": stats.peak_waiting,
        "peak_running": stats.peak_running,
        "seconds_kv_ge_95": stats.seconds_kv_ge_95,
        "kv_usage_mean": stats.kv_usage_mean,
        "num_requests": len(engine.finished),
        "wall_s": time.perf_counter() - start,
    }
    if engine.timeseries is not None:  # close the last, partial second
        engine.timeseries.record(engine, float(int(engine.now) + 1), 0, 0)
    return ReplayResult(summary, engine.timeseries, engine)


def write_timeseries(series: Timeseries, path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(Timeseries.HEADER)
        writer.writerows(series.rows)
