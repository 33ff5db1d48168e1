"""Stable import path: re-exports :mod:`kv_cache_rl.task.scenario` (scripts and notebooks use
``kv_cache_rl.scenario``)."""

from kv_cache_rl.task.scenario import (  # noqa: F401
    DIFFICULTIES, RETENTION_S, SWAP_SPACE_BYTES, DEFAULT_TIERS, TASK_VERSION, SCENARIO_OPTIONS,
    Tier, TIERS, Scenario, make_scenario, trace_file, memory_fraction_for, parse_fractions,
)
