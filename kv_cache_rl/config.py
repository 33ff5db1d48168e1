"""Immutable, validated specifications: model shape, GPU, KV precision tiers, engine limits.

Byte sizes and capacities are derived properties, never stored twice. Instances are frozen;
make variants with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

GIB = 1 << 30
REQUEST_TYPES = ("chat", "code", "reasoning")  # applications with different KV-quantization risk


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be > 0, got {value!r}")


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
        _positive(self, "num_layers", "hidden_size", "num_attention_heads", "num_kv_heads",
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
    """One accelerator: device memory and its host link."""

    name: str
    memory_bytes: int
    pcie_gbps: float  # host<->device, one direction, large (MiB-sized) transfers, GB/s
    source: str = ""

    def __post_init__(self) -> None:
        _positive(self, "memory_bytes", "pcie_gbps")

    def transfer_s(self, num_bytes: float) -> float:
        """Seconds to move ``num_bytes`` over the host link one way."""
        return num_bytes / (self.pcie_gbps * 1e9)


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
            raise ValueError(f"bytes_factor must be in (0, 1], got {self.bytes_factor}")
        if not 0 <= self.quality_cost <= 1:
            raise ValueError(f"quality_cost must be in [0, 1], got {self.quality_cost}")
        _positive(self, "attention_factor")
        if self.wrong_answer is not None and (len(self.wrong_answer) != len(REQUEST_TYPES) or
                                              not all(0 <= p <= 1 for p in self.wrong_answer)):
            raise ValueError(f"wrong_answer needs {len(REQUEST_TYPES)} probabilities, got "
                             f"{self.wrong_answer!r}")

    def wrong_answer_p(self, request_type: int) -> float:
        """P(wrong answer) for a request of type index ``request_type`` decoded at this tier."""
        if self.wrong_answer is None:
            return self.quality_cost
        return self.wrong_answer[request_type]


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
        _positive(self, "num_gpu_blocks", "block_size", "max_num_seqs", "max_num_batched_tokens",
                  "max_model_len")
        if self.num_cpu_blocks < 0 or self.retention_s < 0:
            raise ValueError("num_cpu_blocks and retention_s must be >= 0")
        if len(self.default_tiers) != len(REQUEST_TYPES) or \
                not all(t in (0, 1, 2) for t in self.default_tiers):
            raise ValueError(f"default_tiers needs a tier 0..2 for each of {REQUEST_TYPES}, "
                             f"got {self.default_tiers!r}")

    @property
    def num_gpu_tokens(self) -> int:
        return self.num_gpu_blocks * self.block_size

    def replace(self, **changes: object) -> "EngineConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TraceRequest:
    """One request of a workload.

    ``hash_ids`` name the prompt's prefix blocks, each covering ``Trace.hash_block_tokens``
    tokens (Mooncake: 512); equal ids mean an equal prefix, so their KV can be shared.
    The agentic fields (``session_id`` ... ``after_s``) are set by generated episodes; a plain
    trace leaves them at their defaults. ``next_turn_s`` is the future (what an oracle may
    read, never an observation); ``request_type``, ``turn``, ``past_pause_s`` and ``tool`` are
    what a server knows about the session (its application, its history, the call in flight).

    Closed loop (``EngineConfig.closed_loop``): a request with ``after >= 0`` is released
    ``after_s`` seconds after request ``after`` (an index into the trace) finishes, instead of
    at ``arrival_s`` (then only the open-loop estimate). A late turn comes back late.
    """

    arrival_s: float
    input_toks: int
    output_toks: int
    hash_ids: tuple[int, ...] = ()
    request_id: str = ""
    session_id: int = -1  # requests of one session reuse each other's context
    system_toks: int = 0  # leading prompt tokens shared by every request (system + tools)
    reasoning_toks: int = 0  # thinking tokens in the output: dead once the turn closes
    priority: int = 0  # 0 normal, 1 high
    ephemeral: bool = False  # sub-agent work whose KV dies after its turn
    next_turn_s: float = -1.0  # pause until the session's next turn (-1: none); the future
    request_type: str = "chat"  # the application: chat, code or reasoning (quality risk)
    turn: int = 0  # turns of its session before this one
    past_pause_s: float = -1.0  # mean pause between the session's earlier turns (-1: none)
    tool: str = ""  # what the session waits on when this turn ends ("user", a tool, "" unknown)
    after: int = -1  # closed loop: the request whose finish releases this one
    after_s: float = 0.0  # closed loop: seconds from that finish to this request's arrival

    def __post_init__(self) -> None:
        if self.arrival_s < 0 or self.input_toks < 1 or self.output_toks < 1:
            raise ValueError(
                f"bad request {self.request_id!r}: arrival_s >= 0, input_toks >= 1 and "
                f"output_toks >= 1 required, got {self.arrival_s}, {self.input_toks}, "
                f"{self.output_toks}")
        if self.request_type not in REQUEST_TYPES:
            raise ValueError(f"bad request {self.request_id!r}: request_type must be one of "
                             f"{', '.join(REQUEST_TYPES)}, got {self.request_type!r}")


@dataclass(frozen=True)
class Trace:
    """Requests sorted by arrival, and how many prompt tokens one hash id covers."""

    requests: tuple[TraceRequest, ...]
    hash_block_tokens: int = 512
    source: str = ""
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def duration_s(self) -> float:
        return self.requests[-1].arrival_s - self.requests[0].arrival_s if self.requests else 0.0
