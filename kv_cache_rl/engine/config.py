"""The engine's limits (``EngineConfig``), named and defaulted as in vLLM V1."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kv_cache_rl.errors import ConfigError
from kv_cache_rl.hardware.specs import require_positive
from kv_cache_rl.workload.requests import REQUEST_TYPES


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Scheduler limits, named and defaulted as in vLLM V1 (``SchedulerConfig``/``CacheConfig``).

    ``num_gpu_blocks`` is the KV pool size in fp16 blocks of ``block_size`` tokens.
    ``num_cpu_blocks`` is the host swap pool (same block size). ``retention_s`` keeps a finished
    request's KV pinned for that long when its session will return (0 = vLLM: free at once).
    """

    num_gpu_blocks: int
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    num_cpu_blocks: int = 0
    retention_s: float = 0.0
    max_model_len: int = 131072
    closed_loop: bool = False  # release a session's next turn when the previous one finishes
    # the KV precision a request starts at, per REQUEST_TYPES (0 fp16, 1 fp8/int8): the
    # deployment's kv_cache_dtype as an operator sets it per traffic class
    default_tiers: tuple[int, ...] = (0, 0, 0)

    def __post_init__(self) -> None:
        require_positive(self, "num_gpu_blocks", "block_size", "max_num_seqs", "max_num_batched_tokens",
                  "max_model_len")
        if self.num_cpu_blocks < 0 or self.retention_s < 0:
            raise ConfigError("num_cpu_blocks and retention_s must be >= 0")
        if len(self.default_tiers) != len(REQUEST_TYPES) or \
                not all(t in (0, 1, 2) for t in self.default_tiers):
            raise ConfigError(f"default_tiers needs a tier 0..2 for each of {REQUEST_TYPES}, "
                             f"got {self.default_tiers!r}")

    @property
    def num_gpu_tokens(self) -> int:
        return self.num_gpu_blocks * self.block_size

    def replace(self, **changes: object) -> "EngineConfig":
        return dataclasses.replace(self, **changes)
