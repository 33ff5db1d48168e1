"""Stable import path: re-exports :mod:`kv_cache_rl.task.episode` (scripts and notebooks use
``kv_cache_rl.episode``)."""

from kv_cache_rl.task.episode import (  # noqa: F401
    ACTION_KINDS, MAX_CALLS_PER_STEP, EpisodeError, Action, Episode, parse_call,
)
