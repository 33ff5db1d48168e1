"""Read observations back from the text agents see.

:meth:`Observation.text` prints every number at the precision it is stored with, so the text is
lossless: ``parse_observation(obs.text()) == obs``. The chat server (``kv-cache-rl serve``) uses
this to play a built-in policy from a conversation exactly as :func:`kv_cache_rl.runner.play`
plays it from the simulator, and :func:`find_observations` picks the observations out of any
message (a prompt, a tool result with the observation appended, a user turn).
"""

from __future__ import annotations

import re

from kv_cache_rl.config import REQUEST_TYPES
from kv_cache_rl.observation import (COLUMNS, KIND_ORDER, TIER_NAMES, Entry, Observation,
                                     eviction_value)

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


class ObservationTextError(ValueError):
    """The text is not an observation as :meth:`Observation.text` writes it."""


def _entry(line: str) -> Entry:
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
        memory = tuple(_entry(line) for line in lines[4:split])
        candidates = tuple(_entry(line) for line in lines[split + 1:-1])
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
