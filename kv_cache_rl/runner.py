"""Stable import path: re-exports :mod:`kv_cache_rl.task.runner` (scripts and notebooks use
``kv_cache_rl.runner``)."""

from kv_cache_rl.task.runner import (  # noqa: F401
    apply_actions, play_out, play,
)
