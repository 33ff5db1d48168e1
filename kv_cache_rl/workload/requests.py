"""A workload's requests (``TraceRequest``) and the trace that holds them (``Trace``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kv_cache_rl.errors import ConfigError

REQUEST_TYPES = ("chat", "code", "reasoning")  # applications with different KV-quantization risk


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
            raise ConfigError(
                f"bad request {self.request_id!r}: arrival_s >= 0, input_toks >= 1 and "
                f"output_toks >= 1 required, got {self.arrival_s}, {self.input_toks}, "
                f"{self.output_toks}")
        if self.request_type not in REQUEST_TYPES:
            raise ConfigError(f"bad request {self.request_id!r}: request_type must be one of "
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
