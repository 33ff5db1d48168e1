"""Immutable, validated hardware specifications: model shape, GPU, KV precision tiers.

Byte sizes and capacities are derived properties, never stored twice. Instances are frozen;
make variants with ``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kv_cache_rl.errors import ConfigError
from kv_cache_rl.workload.requests import REQUEST_TYPES  # a tier's wrong-answer risk is per type

GIB = 1 << 30


def require_positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be > 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Transformer shape, from the model's HF ``config.json``."""

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_params: int  # weights, counted from the shapes above
    dtype_bytes: int = 2  # bf16 weights and KV ("kv_cache_dtype=auto")
    source: str = ""

    def __post_init__(self) -> None:
        require_positive(self, "num_layers", "hidden_size", "num_attention_heads", "num_kv_heads",
                  "head_dim", "intermediate_size", "vocab_size", "num_params", "dtype_bytes")

    @property
    def kv_bytes_per_token(self) -> int:
        # K and V, every layer, every KV head: 2 x layers x kv_heads x head_dim x dtype bytes.
        # Llama-3.1-8B: 2 x 32 x 8 x 128 x 2 = 131,072 B (a 16-token block is 2 MiB).
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes


@dataclass(frozen=True, kw_only=True)
class GPUSpec:
    """One accelerator: device memory and its host link.

    ``host_links`` is how many such GPUs move one transfer together: a tensor-parallel group of
    N GPUs holds 1/N of every KV block on each GPU, and each GPU moves its shard over its own
    host link at the same time (``Profile`` sets it to the TP degree).
    """

    name: str
    memory_bytes: int  # per GPU
    pcie_gbps: float  # host<->device, one direction, large (MiB-sized) transfers, GB/s, per GPU
    source: str = ""
    host_links: int = 1

    def __post_init__(self) -> None:
        require_positive(self, "memory_bytes", "pcie_gbps", "host_links")

    def transfer_s(self, num_bytes: float) -> float:
        """Seconds to move ``num_bytes`` (all shards) over the host link(s) one way."""
        if self.host_links == 1:
            return num_bytes / (self.pcie_gbps * 1e9)
        return num_bytes / (self.pcie_gbps * 1e9 * self.host_links)


@dataclass(frozen=True, kw_only=True)
class PrecisionTier:
    """One KV precision level an agent can compress to.

    ``bytes_factor`` scales bytes per token (fp16 1, int8 1/2, int4 1/4); ``quality_cost`` is the
    fraction of answer quality lost per token held at this tier; ``attention_factor`` scales the
    decode-attention time of those tokens (dequantisation vs. fewer bytes read).
    """

    name: str
    bytes_factor: float
    quality_cost: float
    attention_factor: float
    source: str = ""
    # P(an answer decoded on KV at this tier is wrong), per REQUEST_TYPES; None: quality_cost
    wrong_answer: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.bytes_factor <= 1:
            raise ConfigError(f"bytes_factor must be in (0, 1], got {self.bytes_factor}")
        if not 0 <= self.quality_cost <= 1:
            raise ConfigError(f"quality_cost must be in [0, 1], got {self.quality_cost}")
        require_positive(self, "attention_factor")
        if self.wrong_answer is not None and (len(self.wrong_answer) != len(REQUEST_TYPES) or
                                              not all(0 <= p <= 1 for p in self.wrong_answer)):
            raise ConfigError(f"wrong_answer needs {len(REQUEST_TYPES)} probabilities, got "
                             f"{self.wrong_answer!r}")

    def wrong_answer_p(self, request_type: int) -> float:
        """P(wrong answer) for a request of type index ``request_type`` decoded at this tier."""
        if self.wrong_answer is None:
            return self.quality_cost
        return self.wrong_answer[request_type]
