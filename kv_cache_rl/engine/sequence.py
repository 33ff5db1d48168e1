"""A sequence: anything that holds KV blocks and can be acted on.

Active requests are sequences of kind ``generation``. When a request of an agentic session
finishes, the server may keep (retain) parts of its KV for the session's next turn; those parts
become sequences of their own: ``context`` (the prompt, reusable as the next turn's prefix),
``reasoning`` (thinking tokens, never reused), ``ephemeral`` (a sub-agent's KV) and ``system``
(the shared system prefix).
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from kv_cache_rl.workload.requests import REQUEST_TYPES, TraceRequest
from kv_cache_rl.engine.block_pool import gather

KINDS = ("system", "context", "generation", "reasoning", "ephemeral")


class State(IntEnum):
    WAITING = 0  # queued, no KV on the GPU
    RUNNING = 1  # scheduled every iteration (prefilling or decoding)
    SWAPPED = 2  # KV in host memory; must come back before it can run or be reused
    RETAINED = 3  # finished, KV pinned on the GPU for reuse
    FINISHED = 4  # done; holds no KV


class Sequence:
    """Runtime state of one KV holder. Mutable; owned by one ``Engine``."""

    __slots__ = (
        "seq_id", "req", "kind", "state", "prompt_len", "max_output", "num_output",
        "num_computed", "blocks", "shared_keys", "num_registered", "tier", "arrival_s",
        "first_token_s", "finish_s", "last_active_s", "expires_s", "swapped_from",
        "num_preemptions", "num_kv_tokens", "session_id", "priority",
        "high_water", "cpu_units", "cpu_keys", "evicted", "num_tokens",
        "size_memo", "rtype",
    )

    def __init__(self, seq_id: int, req: TraceRequest | None, kind: str, prompt_len: int,
                 max_output: int, arrival_s: float) -> None:
        self.seq_id = seq_id
        self.req = req
        self.kind = kind
        self.state = State.WAITING
        self.prompt_len = prompt_len
        self.max_output = max_output
        self.num_output = 0
        self.num_tokens = prompt_len  # prompt + generated (vLLM Request.num_tokens), kept in step
        self.num_computed = 0  # tokens whose KV has been computed (vLLM num_computed_tokens)
        self.blocks: list[int] = []  # block ids in the engine's pool, in token order
        self.shared_keys: tuple = ()  # prefix-cache keys of the prompt's shareable full blocks
        self.num_registered = 0  # how many of shared_keys are published in the cache
        self.tier = 0  # precision of the sequence's private blocks: 0 fp16, 1 int8, 2 int4
        self.arrival_s = arrival_s
        self.first_token_s = -1.0
        self.finish_s = -1.0
        self.last_active_s = arrival_s
        self.expires_s = float("inf")
        self.swapped_from = State.RUNNING
        self.num_preemptions = 0
        self.num_kv_tokens = 0  # retained holders: tokens their blocks hold
        self.session_id = req.session_id if req is not None else -1
        self.priority = req.priority if req is not None else 0
        self.high_water = 0  # tokens computed before the last preemption: what recompute repeats
        self.cpu_units = 0  # units of this sequence's KV held in host memory
        self.cpu_keys: list = []  # (block index, cache key) to republish on swap-in
        self.evicted = 0  # times an agent dropped this sequence's KV
        self.size_memo = None  # (blocks, tier, state, count, units): see count_units
        self.rtype = REQUEST_TYPES.index(req.request_type) if req is not None else 0

    def copy(self) -> "Sequence":
        """An independent copy (for engine clones): its own block and host-key lists; the
        request and the prefix keys are immutable and shared. Every slot is listed by name:
        engine clones copy a hundred sequences, and a loop over ``__slots__`` costs 3x."""
        new = Sequence.__new__(Sequence)
        new.seq_id = self.seq_id
        new.req = self.req
        new.kind = self.kind
        new.state = self.state
        new.prompt_len = self.prompt_len
        new.max_output = self.max_output
        new.num_output = self.num_output
        new.num_computed = self.num_computed
        new.blocks = self.blocks[:]
        new.shared_keys = self.shared_keys
        new.num_registered = self.num_registered
        new.tier = self.tier
        new.arrival_s = self.arrival_s
        new.first_token_s = self.first_token_s
        new.finish_s = self.finish_s
        new.last_active_s = self.last_active_s
        new.expires_s = self.expires_s
        new.swapped_from = self.swapped_from
        new.num_preemptions = self.num_preemptions
        new.num_kv_tokens = self.num_kv_tokens
        new.session_id = self.session_id
        new.priority = self.priority
        new.high_water = self.high_water
        new.cpu_units = self.cpu_units
        new.cpu_keys = self.cpu_keys[:]
        new.evicted = self.evicted
        new.num_tokens = self.num_tokens
        new.rtype = self.rtype
        memo = self.size_memo  # the size memo follows its block list
        new.size_memo = (new.blocks, *memo[1:]) if memo is not None and memo[0] is self.blocks \
            else None
        return new

    def system_blocks(self, block_size: int) -> int:
        """Leading blocks that hold the shared system prefix: a request's first
        ``system_toks // block_size`` (retained holders never start with it)."""
        if self.kind == "generation" and self.req is not None:
            return self.req.system_toks // block_size
        return 0

    @property
    def kv_tokens(self) -> int:
        return self.num_computed if self.kind == "generation" else self.num_kv_tokens

    def __repr__(self) -> str:
        return (f"Sequence({self.seq_id}, {self.kind}, {self.state.name}, "
                f"computed={self.num_computed}, out={self.num_output}/{self.max_output}, "
                f"blocks={len(self.blocks)}, tier={self.tier})")


class FinishedRequest(NamedTuple):
    """A completed request, frozen: the engine's ``finished`` list holds these, so an engine
    and its clones can share them (a finished request never changes again)."""

    seq_id: int
    req: TraceRequest | None
    arrival_s: float
    first_token_s: float
    finish_s: float
    prompt_len: int
    max_output: int
    num_output: int
    num_preemptions: int
    tier: int

    @classmethod
    def of(cls, seq: Sequence) -> "FinishedRequest":
        return cls(seq.seq_id, seq.req, seq.arrival_s, seq.first_token_s, seq.finish_s,
                   seq.prompt_len, seq.max_output, seq.num_output, seq.num_preemptions,
                   seq.tier)

    @property
    def state(self) -> State:
        return State.FINISHED


def count_units(seq: Sequence, units_of: list[int], block_size: int) -> int:
    """The units of ``seq``'s blocks past its system prefix (what evicting it frees, the
    prefix being every request's), counting only what its size memo does not know.

    The observation needs every cached sequence's size at every step, and counting thousands
    of blocks each time would dominate it. The memo ``(blocks, tier, state, count, units)``
    stays true while the block list is the same object and the tier and state are unchanged:
    then the first ``count`` blocks keep their sizes (only compressing the sequence itself
    shrinks blocks it holds alone, and the system prefix is not counted), so only blocks added
    since need counting. The engine records the size where it knows it (admission, compressing,
    splitting a finished turn into holders), so a long prompt is never counted block by block.
    """
    blocks = seq.blocks
    memo = seq.size_memo
    valid = memo is not None and memo[0] is blocks and memo[1] == seq.tier \
        and memo[2] is seq.state
    if valid and memo[3] == len(blocks):
        return memo[4]  # the common case: nothing new since it was counted
    cut = seq.system_blocks(block_size)
    if valid:
        units = memo[4] + sum(gather(units_of, blocks[max(memo[3], cut):]))
    else:
        units = sum(gather(units_of, blocks[cut:]))
    remember_units(seq, units)
    return units


def remember_units(seq: Sequence, units: int) -> None:
    """Record that ``seq``'s blocks past its system prefix hold ``units`` now."""
    seq.size_memo = (seq.blocks, seq.tier, seq.state, len(seq.blocks), units)
