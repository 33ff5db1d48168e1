"""What the agent sees: a compact summary of the cache, built only from what an operator could
know now (sizes, kinds, precision, location, priority, progress, idle time, and per session its
request type, turns so far, mean past pause and the call it waits on), never the future.

``Entry.blocks`` is exactly what evicting the entry frees on the GPU (its blocks no other
sequence holds, in fp16-equivalent blocks) and what swapping it moves. Compressing it shrinks
its own blocks to the next tier (the shared system prompt shrinks whole): that frees half of
``blocks`` when they are all at the entry's tier, up to three quarters when an int8 entry still
holds fp16 blocks (a prefix it took over), nothing for blocks already at int4.

The same :class:`Observation` renders the text given to LLM agents (every adapter shows the
same text) and the fixed-size arrays of the Gymnasium env.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from itertools import compress as select
from operator import attrgetter, eq
from typing import NamedTuple

from kv_cache_rl.errors import KVCacheRLError
from kv_cache_rl.engine import UNITS_PER_BLOCK, Sequence, State
from kv_cache_rl.engine.block_pool import gather
from kv_cache_rl.engine.sequence import count_units
from kv_cache_rl.workload.requests import REQUEST_TYPES

TIER_NAMES = ("fp16", "int8", "int4")
KIND_ORDER = ("system", "context", "generation", "reasoning", "ephemeral")
# Base eviction value by kind (1.0 = safest to evict), after NVIDIA Dynamo's value classes:
# reasoning tokens are dead once the turn closes, a sub-agent's KV dies after its turn,
# a session's context comes back after a tool-call pause, a running request must recompute,
# and every request reads the system prefix.
KIND_VALUE = {"reasoning": 0.95, "ephemeral": 0.85, "context": 0.55, "generation": 0.15,
              "system": 0.0}
CONTEXT_PAUSE_S = 30.0  # tool-call pauses last 2-30 s (Dynamo): idle longer, less likely back
TOP_K = 6  # entries listed per table (12 rows keep the text under 600 tokens)


class Entry(NamedTuple):  # immutable; a tuple because observations build a dozen per step
    seq_id: int
    kind: str
    tokens: int
    blocks: float  # fp16-equivalent GPU blocks it holds alone (exactly what evicting it frees)
    tier: int
    on_cpu: bool
    priority: int
    progress: float  # generated / requested tokens (generation), else 1.0
    idle_s: float  # seconds since it last ran (a context: since its turn ended)
    eviction_value: float
    session: int = -1  # its session (-1: none, e.g. the system prompt or a sub-agent)
    request_type: str = "chat"  # the session's application: chat, code or reasoning
    turns: int = 0  # turns the session has completed so far
    tool: str = "-"  # what a context's session waits on: "user", a tool name, or "-"
    pause_s: float = -1.0  # mean pause between the session's earlier turns (-1: none yet)

    @property
    def location(self) -> str:
        return "cpu" if self.on_cpu else "gpu"


def eviction_value(kind: str, priority: int, progress: float, idle_s: float) -> float:
    """0.0 worst to evict ... 1.0 safest, from observable features only."""
    value = KIND_VALUE[kind]
    if kind == "context":
        value += 0.3 * min(idle_s / CONTEXT_PAUSE_S, 1.0)
    elif kind == "generation":
        value *= 1.0 - progress  # nearly done: evicting wastes the most work
    if priority > 0:
        value *= 0.5
    return round(0.0 if value < 0.0 else 1.0 if value > 1.0 else value, 3)  # clamped


# kinds whose value depends on neither progress nor idle time, by priority (normal, high)
_FIXED_VALUE = tuple({kind: eviction_value(kind, high, 1.0, 0.0) for kind in KIND_VALUE
                      if kind not in ("context", "generation")} for high in (0, 1))
_RUNNING, _SWAPPED = State.RUNNING, State.SWAPPED
_num_tokens, _arrival_s = attrgetter("num_tokens"), attrgetter("arrival_s")
_one = partial(eq, 1)


def _ranked(seq: Sequence, now: float, units_of: list[int], block_size: int) -> tuple:
    """What ranking needs (own units, eviction value, sequence), without building an Entry
    (a hard scenario caches a hundred sequences; the text lists twelve)."""
    state = seq.state
    own_units = 0 if state is _SWAPPED else count_units(seq, units_of, block_size)
    kind = seq.kind
    value = _FIXED_VALUE[seq.priority > 0].get(kind)
    if value is None:  # a request's value depends on its progress, a context's on idle time
        if kind == "generation":
            progress = seq.num_output / seq.max_output if seq.max_output else 1.0
            value = eviction_value(kind, seq.priority, progress, 0.0)
        else:
            idle = 0.0 if state is _RUNNING else max(0.0, now - seq.last_active_s)
            value = eviction_value(kind, seq.priority, 1.0, idle)
    return own_units, value, seq


def _entry(row: tuple, now: float, ref: list[int], units_of: list[int]) -> Entry:
    _, value, seq = row
    progress = seq.num_output / seq.max_output if seq.kind == "generation" and seq.max_output \
        else 1.0
    idle = 0.0 if seq.state is _RUNNING else max(0.0, now - seq.last_active_s)
    blocks = seq.blocks
    if seq.state is _SWAPPED or not blocks:
        freed = 0
    else:  # exactly what evicting it frees: the blocks no other sequence references
        freed = sum(select(gather(units_of, blocks), map(_one, gather(ref, blocks))))
    req = seq.req
    if req is None:
        session, rtype, turns, tool, pause = -1, "chat", 0, "-", -1.0
    else:
        session, rtype = seq.session_id, req.request_type
        turns = req.turn + (seq.kind != "generation")  # a holder's turn has ended
        tool = (req.tool or "-") if seq.kind == "context" else "-"
        pause = req.past_pause_s if session >= 0 else -1.0
    progress, idle = round(progress, 3), round(idle, 1)
    # the value as the text's reader computes it (from the rounded columns it shows)
    value = eviction_value(seq.kind, seq.priority, progress, idle)
    return Entry(seq.seq_id, seq.kind, seq.kv_tokens, freed / UNITS_PER_BLOCK, seq.tier,
                 seq.state is _SWAPPED, seq.priority, progress, idle, value,
                 session, rtype, turns, tool, round(pause, 1))


@dataclass(frozen=True)
class Observation:
    step: int  # decision steps already served: 0 at the start, ``steps_total`` once over
    steps_total: int
    memory_usage: float
    memory_budget: int  # GPU KV blocks
    time_above_0_95: int  # steps so far that ended with usage above 0.95
    pending: int
    pending_queue_growth: int
    pending_tokens: int
    oldest_wait_s: float
    running: int
    cpu_used_blocks: float
    cpu_total_blocks: int
    overview: dict  # kind -> (count, compressed, swapped)
    top_memory: tuple[Entry, ...]
    top_candidates: tuple[Entry, ...]

    @property
    def episode_remaining(self) -> int:
        return self.steps_total - self.step

    @property
    def visible(self) -> dict[int, Entry]:
        return {e.seq_id: e for e in self.top_memory + self.top_candidates}

    @classmethod
    def from_text(cls, text: str) -> "Observation":
        """Rebuild an observation from :meth:`text` exactly (see :func:`parse_observation`)."""
        return parse_observation(text)

    def text(self) -> str:
        """The observation as shown to language-model agents (under 600 tokens). Lossless:
        every number is printed at the precision it is stored with, and ``eviction_value`` is
        a function of the printed columns, so ``Observation.from_text(obs.text()) == obs``."""
        ov = ", ".join(f"{k} {c}" + (f" ({z} compressed)" if z else "") +
                       (f" ({s} on cpu)" if s else "") for k, (c, z, s) in self.overview.items()
                       if c)
        lines = [
            f"step {min(self.step + 1, self.steps_total)}/{self.steps_total} | episode_remaining "
            f"{self.episode_remaining}"
            f" | memory_usage {self.memory_usage:.4f} | memory_budget {self.memory_budget} blocks"
            f" | time_above_0_95 {self.time_above_0_95} | pending_queue_growth "
            f"{self.pending_queue_growth:+d}",
            f"pending_summary: {self.pending} waiting ({self.pending_tokens} tokens, oldest "
            f"{self.oldest_wait_s:.1f}s) | running {self.running} | cpu swap "
            f"{_num(self.cpu_used_blocks)}/{self.cpu_total_blocks} blocks",
            f"cache_overview: {ov or 'empty'}",
            f"top_memory_entries ({COLUMNS}):",
            *(_row(e) for e in self.top_memory),
            "top_eviction_candidates (safest first, same columns):",
            *(_row(e) for e in self.top_candidates),
            f"visible_seq_ids: {sorted(self.visible)}",
        ]
        return "\n".join(lines)


COLUMNS = "id kind type session turns waits tokens blocks tier loc prio progress idle_s pause_s"


def _row(e: Entry) -> str:
    return (f"  {e.seq_id} {e.kind} {e.request_type} {e.session if e.session >= 0 else '-'} "
            f"{e.turns} {e.tool} {e.tokens} {_num(e.blocks)} {TIER_NAMES[e.tier]} "
            f"{e.location} {'high' if e.priority else 'normal'} {e.progress:.3f} "
            f"{_num(e.idle_s)} {_num(e.pause_s) if e.pause_s >= 0 else '-'}")


def _num(x: float) -> str:
    """The shortest text that parses back to exactly ``x`` (``1337``, ``905.75``, ``1.2``)."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def observe(engine, *, step: int, steps_total: int, above: int, last_pending: int) -> Observation:
    """Summarise ``engine`` for an agent at the start of ``step``."""
    now = engine.now
    units_of, block_size = engine.pool.units, engine.config.block_size
    counts = {kind: [0, 0, 0] for kind in KIND_ORDER}  # count, compressed, on cpu
    by_memory, by_value = [], []  # sort keys; seq ids are unique, so rows are never compared
    for seq in engine.cached_sequences():  # one pass: a hard scenario caches ~100 sequences
        row = _ranked(seq, now, units_of, block_size)
        own, value = row[0], row[1]
        by_memory.append((-own, seq.seq_id, row))
        by_value.append((-value, -own, seq.seq_id, row))
        c = counts[seq.kind]
        c[0] += 1
        c[1] += seq.tier > 0
        c[2] += seq.state is _SWAPPED
    overview = {kind: tuple(c) for kind, c in counts.items()}
    by_memory.sort()  # a few dozen rows: a C sort beats heapq.nsmallest's Python loop
    by_value.sort()
    entries = {}  # a sequence listed in both tables is described once
    ref = engine.pool.ref
    for k in by_memory[:TOP_K]:
        entries[k[1]] = _entry(k[2], now, ref, units_of)
    top_memory = list(entries.values())
    candidates = [entries.get(k[2]) or _entry(k[3], now, ref, units_of) for k in by_value[:TOP_K]]
    waiting = engine.waiting
    return Observation(
        step=step, steps_total=steps_total, memory_usage=round(engine.pool.usage, 4),
        memory_budget=engine.config.num_gpu_blocks, time_above_0_95=above,
        pending=len(waiting), pending_queue_growth=len(waiting) - last_pending,
        pending_tokens=sum(map(_num_tokens, waiting)),
        oldest_wait_s=round(now - min(map(_arrival_s, waiting)), 1) if waiting else 0.0,
        running=len(engine.running),
        cpu_used_blocks=(engine.cpu_total_units - engine.cpu_free_units) / UNITS_PER_BLOCK,
        cpu_total_blocks=engine.config.num_cpu_blocks, overview=overview,
        top_memory=tuple(top_memory), top_candidates=tuple(candidates))


# ---------------------------------------------------------------- reading the text back
# Read observations back from the text agents see.
# 
# :meth:`Observation.text` prints every number at the precision it is stored with, so the text is
# lossless: ``parse_observation(obs.text()) == obs``. The chat server (``kv-cache-rl serve``) uses
# this to play a built-in policy from a conversation exactly as ``runner.play``
# plays it from the simulator, and :func:`find_observations` picks the observations out of any
# message (a prompt, a tool result with the observation appended, a user turn).

_HEAD = re.compile(
    r"step (?P<step>\d+)/(?P<total>\d+) \| episode_remaining (?P<remaining>-?\d+)"
    r" \| memory_usage (?P<usage>\S+) \| memory_budget (?P<budget>\d+) blocks"
    r" \| time_above_0_95 (?P<above>\d+) \| pending_queue_growth (?P<growth>[+-]\d+)$")
_PENDING = re.compile(
    r"pending_summary: (?P<pending>\d+) waiting \((?P<tokens>\d+) tokens, oldest "
    r"(?P<oldest>\S+)s\) \| running (?P<running>\d+) \| cpu swap (?P<cpu_used>\S+)/"
    r"(?P<cpu_total>\d+) blocks$")
_KIND = re.compile(r"(?P<kind>[a-z]+) (?P<count>\d+)(?: \((?P<z>\d+) compressed\))?"
                   r"(?: \((?P<s>\d+) on cpu\))?$")
_MEMORY_HEADER = f"top_memory_entries ({COLUMNS}):"
_CANDIDATE_HEADER = "top_eviction_candidates (safest first, same columns):"
# one observation block, from its first line to its visible ids (for finding it in a message)
_BLOCK = re.compile(r"^step \d+/\d+ \| episode_remaining .*?^visible_seq_ids: \[[^\]\n]*\]$",
                    re.M | re.S)


class ObservationTextError(KVCacheRLError, ValueError):
    """The text is not an observation as :meth:`Observation.text` writes it."""


def _parse_entry(line: str) -> Entry:
    parts = line.split()
    if len(parts) != 14 or not line.startswith("  "):
        raise ObservationTextError(f"bad entry row {line!r}")
    (seq_id, kind, rtype, session, turns, tool, tokens, blocks, tier, loc, prio, progress, idle,
     pause) = parts
    if kind not in KIND_ORDER or tier not in TIER_NAMES or loc not in ("gpu", "cpu") \
            or prio not in ("high", "normal") or rtype not in REQUEST_TYPES:
        raise ObservationTextError(f"bad entry row {line!r}")
    return Entry(seq_id=int(seq_id), kind=kind, tokens=int(tokens), blocks=float(blocks),
                 tier=TIER_NAMES.index(tier), on_cpu=loc == "cpu",
                 priority=1 if prio == "high" else 0, progress=float(progress),
                 idle_s=float(idle),
                 eviction_value=eviction_value(kind, prio == "high", float(progress), float(idle)),
                 session=-1 if session == "-" else int(session), request_type=rtype,
                 turns=int(turns), tool=tool, pause_s=-1.0 if pause == "-" else float(pause))


def _overview(text: str) -> dict:
    overview = {kind: (0, 0, 0) for kind in KIND_ORDER}
    if text == "empty":
        return overview
    for part in text.split(", "):
        m = _KIND.match(part)
        if m is None or m["kind"] not in overview:
            raise ObservationTextError(f"bad cache_overview item {part!r}")
        overview[m["kind"]] = (int(m["count"]), int(m["z"] or 0), int(m["s"] or 0))
    return overview


def parse_observation(text: str) -> Observation:
    """The :class:`Observation` whose :meth:`~Observation.text` is ``text``."""
    lines = text.strip("\n").split("\n")
    try:
        head, pending = _HEAD.match(lines[0]), _PENDING.match(lines[1])
        if head is None or pending is None or not lines[2].startswith("cache_overview: ") \
                or lines[3] != _MEMORY_HEADER:
            raise ObservationTextError("not an observation")
        split = lines.index(_CANDIDATE_HEADER)
        memory = tuple(_parse_entry(line) for line in lines[4:split])
        candidates = tuple(_parse_entry(line) for line in lines[split + 1:-1])
        if not lines[-1].startswith("visible_seq_ids: "):
            raise ObservationTextError("missing visible_seq_ids")
        obs = Observation(
            step=int(head["total"]) - int(head["remaining"]), steps_total=int(head["total"]),
            memory_usage=float(head["usage"]), memory_budget=int(head["budget"]),
            time_above_0_95=int(head["above"]), pending=int(pending["pending"]),
            pending_queue_growth=int(head["growth"]), pending_tokens=int(pending["tokens"]),
            oldest_wait_s=float(pending["oldest"]), running=int(pending["running"]),
            cpu_used_blocks=float(pending["cpu_used"]), cpu_total_blocks=int(pending["cpu_total"]),
            overview=_overview(lines[2][len("cache_overview: "):]),
            top_memory=memory, top_candidates=candidates)
    except (IndexError, ValueError) as exc:
        if isinstance(exc, ObservationTextError):
            raise
        raise ObservationTextError(f"not an observation: {exc}") from None
    if obs.text() != text.strip("\n"):  # the format is lossless; anything else was altered
        raise ObservationTextError("observation text does not round-trip")
    return obs


def find_observations(text: str) -> list[str]:
    """Every observation block in ``text`` (a message that may hold other text), in order."""
    return [m.group(0) for m in _BLOCK.finditer(text)]
