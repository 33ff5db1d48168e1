"""Load request traces into ``Trace`` records, and cut or speed them up.

Formats (``load_trace(path, fmt="auto")``):

* ``jsonl``    -- one object per line: ``arrival_s, input_toks, output_toks`` and optionally
  ``hash_ids``, ``request_id`` and the agentic ``TraceRequest`` fields. The ShareGPT files of
  LLMServingSim (casys-kaist/LLMServingSim, MIT) use it.
* ``azure``    -- Azure LLM inference trace 2023 CSV (Azure/AzurePublicDataset, CC-BY-4.0):
  ``TIMESTAMP, ContextTokens, GeneratedTokens``; arrival = seconds since the earliest row.
* ``mooncake`` -- Mooncake FAST'25 JSONL (kvcache-ai/Mooncake, Apache-2.0): ``timestamp`` (ms),
  ``input_length``, ``output_length``, ``hash_ids``; one id per 512-token prompt block, the last
  one covering a partial block (``len(hash_ids) == ceil(input_length / 512)`` on every row).

Zero lengths: ``input_toks == 0`` is an error (nothing to prefill). ``output_toks == 0`` is
clamped to 1 by default (``zero_output="clamp"``; vLLM samples at least one token for every
request, and clamping keeps the arrival and its prefill load) and counted in
``Trace.meta["zero_output_rows"]``; ``"skip"`` drops such rows, ``"error"`` rejects them. The
shipped Azure 2023 and Mooncake files have no zero lengths (checked: minimum output 6 / 7 / 1).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from datetime import date
from pathlib import Path

from kv_cache_rl.errors import ConfigError, KVCacheRLError, MissingFileError
from kv_cache_rl.workload.requests import Trace, TraceRequest

FORMATS = ("jsonl", "azure", "mooncake")
MOONCAKE_BLOCK_TOKENS = 512  # Mooncake README: one hash id per 512-token block
_AGENTIC = {"session_id": int, "system_toks": int, "reasoning_toks": int, "priority": int,
            "ephemeral": bool, "next_turn_s": float, "request_type": str, "turn": int,
            "past_pause_s": float, "tool": str, "after": int, "after_s": float}


class TraceFormatError(KVCacheRLError, ValueError):
    """A trace file that cannot be read; the message says ``path:line: what is wrong``."""


def _num(value, key: str, where: str, *, integer: bool):
    # bool is an int subclass; a JSON true/false is never a count or a time
    if isinstance(value, str):  # CSV fields
        try:
            value = int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                raise TraceFormatError(f"{where}: {key} is not a number: {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TraceFormatError(f"{where}: {key} is not a finite number: {value!r}")
    if value < 0:
        raise TraceFormatError(f"{where}: {key} is negative: {value!r}")
    if integer:
        if value != int(value):
            raise TraceFormatError(f"{where}: {key} is not an integer: {value!r}")
        return int(value)
    return float(value)


class _Rows:
    """Collects validated rows and applies the zero-length policy."""

    def __init__(self, path: Path, zero_output: str):
        if zero_output not in ("clamp", "skip", "error"):
            raise ConfigError(f"zero_output must be clamp, skip or error, got {zero_output!r}")
        self.path, self.zero_output = path, zero_output
        self.requests: list[TraceRequest] = []
        self.where: dict[int, str] = {}  # id(request) -> "path:line", for errors found later
        self.zero_rows = 0

    def add(self, where: str, arrival_s: float, input_toks: int, output_toks: int,
            **fields) -> None:
        if input_toks == 0:
            raise TraceFormatError(f"{where}: input length is 0")
        if output_toks == 0:
            self.zero_rows += 1
            if self.zero_output == "error":
                raise TraceFormatError(f"{where}: output length is 0")
            if self.zero_output == "skip":
                return
            output_toks = 1
        try:
            req = TraceRequest(arrival_s, input_toks, output_toks, **fields)
        except ValueError as exc:
            raise TraceFormatError(f"{where}: {exc}") from None
        self.requests.append(req)
        self.where[id(req)] = where

    def trace(self, fmt: str, block: int, **meta) -> Trace:
        reqs = sorted(self.requests, key=lambda r: r.arrival_s)  # stable: ties keep file order
        for i, r in enumerate(reqs):  # a closed-loop link names an earlier request of the trace
            if not -1 <= r.after < i:
                raise TraceFormatError(f"{self.where[id(r)]}: after={r.after} is not the index "
                                       f"of an earlier request (this one is request {i})")
        return Trace(tuple(reqs), hash_block_tokens=block, source=self.path.name,
                     meta={"path": str(self.path), "format": fmt,
                           "zero_output_rows": self.zero_rows,
                           "zero_output_policy": self.zero_output, **meta})


def _hash_ids(value, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(x) is int and x >= 0 for x in value):
        raise TraceFormatError(f"{where}: hash_ids must be a list of non-negative integers")
    return tuple(value)


def _json_lines(path: Path):
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TraceFormatError(f"{where}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise TraceFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield where, lineno, obj


def _need(obj: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise TraceFormatError(f"{where}: missing key(s) {', '.join(missing)}")


def _load_jsonl(path: Path, rows: _Rows, block: int | None) -> Trace:
    keys = ("arrival_s", "input_toks", "output_toks")
    for where, lineno, obj in _json_lines(path):
        _need(obj, keys, where)
        try:
            extra = {k: cast(obj[k]) for k, cast in _AGENTIC.items() if k in obj}
        except (TypeError, ValueError):
            raise TraceFormatError(f"{where}: bad agentic field in {obj}") from None
        rows.add(where, _num(obj["arrival_s"], "arrival_s", where, integer=False),
                 _num(obj["input_toks"], "input_toks", where, integer=True),
                 _num(obj["output_toks"], "output_toks", where, integer=True),
                 hash_ids=_hash_ids(obj.get("hash_ids", []), where),
                 request_id=str(obj.get("request_id", lineno - 1)), **extra)
    # 16 = vLLM's block size, the granularity ``workloads.generate`` writes by default
    return rows.trace("jsonl", block or 16)


def _load_mooncake(path: Path, rows: _Rows, block: int | None) -> Trace:
    keys = ("timestamp", "input_length", "output_length", "hash_ids")
    for where, lineno, obj in _json_lines(path):
        _need(obj, keys, where)
        rows.add(where, _num(obj["timestamp"], "timestamp", where, integer=False) / 1000.0,
                 _num(obj["input_length"], "input_length", where, integer=True),
                 _num(obj["output_length"], "output_length", where, integer=True),
                 hash_ids=_hash_ids(obj["hash_ids"], where), request_id=str(lineno - 1))
    # the last id names a partial block: a consumer caching only full blocks drops it
    return rows.trace("mooncake", block or MOONCAKE_BLOCK_TOKENS, hash_partial_last_block=True)


def _seconds(stamp: str, where: str, days: dict) -> float:
    """``YYYY-MM-DD HH:MM:SS[.fffffff]`` -> seconds since 0001-01-01 (7 decimals allowed)."""
    try:
        day, clock = stamp.strip().replace("T", " ").split(" ")
        if day not in days:
            days[day] = date.fromisoformat(day).toordinal() * 86400.0
        h, m, s = clock.split(":")
        return days[day] + int(h) * 3600 + int(m) * 60 + float(s)
    except ValueError:
        raise TraceFormatError(f"{where}: TIMESTAMP is not 'YYYY-MM-DD HH:MM:SS': {stamp!r}") \
            from None


def _load_azure(path: Path, rows: _Rows, block: int | None) -> Trace:
    cols = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
    stamps: list[tuple[float, str, int, int]] = []
    days: dict = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in cols if c not in header]
        if missing:
            raise TraceFormatError(f"{path}:1: missing column(s) {', '.join(missing)}")
        it, ic, ig = (header.index(c) for c in cols)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row:
                continue
            if len(row) < len(header):
                raise TraceFormatError(f"{where}: expected {len(header)} fields, got {len(row)}")
            stamps.append((_seconds(row[it], where, days), where,
                           _num(row[ic], "ContextTokens", where, integer=True),
                           _num(row[ig], "GeneratedTokens", where, integer=True)))
    t0 = min((s[0] for s in stamps), default=0.0)  # = first row: the files are time-sorted
    for i, (t, where, ctx, gen) in enumerate(stamps):
        rows.add(where, t - t0, ctx, gen, request_id=str(i))
    return rows.trace("azure", block or 16)  # no hash ids: the block size is nominal


def detect_format(path: str | Path) -> str:
    """``azure`` for ``.csv``; for JSON lines, ``mooncake`` if the first row has ``timestamp``
    and ``input_length``, ``jsonl`` if it has ``arrival_s``."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return "azure"
    for where, _, obj in _json_lines(path):
        if "timestamp" in obj and "input_length" in obj:
            return "mooncake"
        if "arrival_s" in obj:
            return "jsonl"
        raise TraceFormatError(f"{where}: unknown row format, keys {sorted(obj)}")
    raise TraceFormatError(f"{path}:1: empty trace file")


def load_trace(path: str | Path, fmt: str = "auto", *, zero_output: str = "clamp",
               hash_block_tokens: int | None = None) -> Trace:
    """Read a trace file; requests sorted by arrival (stable).

    ``hash_block_tokens`` overrides the tokens per hash id (Mooncake 512, JSONL 16).
    Raises ``TraceFormatError`` naming ``path:line`` and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: no such trace file")
    if path.exists() and not path.is_file():
        raise TraceFormatError(f"{path}: not a file")
    try:
        fmt = detect_format(path) if fmt == "auto" else fmt
        loader = {"jsonl": _load_jsonl, "azure": _load_azure, "mooncake": _load_mooncake}.get(fmt)
        if loader is None:
            raise ConfigError(f"fmt must be 'auto' or one of {FORMATS}, got {fmt!r}")
        trace = loader(path, _Rows(path, zero_output), hash_block_tokens)
    except UnicodeDecodeError:
        raise TraceFormatError(f"{path}:{_first_undecodable_line(path)}: not UTF-8 text "
                               "(a compressed or binary file?)") from None
    if not trace.requests:
        raise TraceFormatError(f"{path}:1: no requests in the file")
    return trace


def _first_undecodable_line(path: Path) -> int:
    """The line number of the first line that is not UTF-8 (read only on that error)."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return lineno
    return 1


def dump_jsonl(trace: Trace, path: str | Path) -> None:
    """Write ``trace`` in the ``jsonl`` format (all fields), readable by ``load_trace``."""
    with open(path, "w", encoding="utf-8") as f:
        for r in trace.requests:
            f.write(json.dumps({k: list(v) if isinstance(v, tuple) else v
                                for k, v in dataclasses.asdict(r).items()}) + "\n")


def _close_sessions(reqs: list[TraceRequest]) -> list[TraceRequest]:
    """Set ``next_turn_s = -1`` on a session's last kept turn: its next turn was cut away."""
    last = {r.session_id: i for i, r in enumerate(reqs) if r.session_id >= 0}
    return [dataclasses.replace(r, next_turn_s=-1.0)
            if r.session_id >= 0 and last[r.session_id] == i and r.next_turn_s >= 0 else r
            for i, r in enumerate(reqs)]


def _derive(trace: Trace, reqs: list[TraceRequest], op: str) -> Trace:
    meta = dict(trace.meta)
    meta["transforms"] = [*meta.get("transforms", []), op]
    return Trace(tuple(_close_sessions(reqs)), trace.hash_block_tokens, trace.source, meta)


def window(trace: Trace, start_s: float, end_s: float) -> Trace:
    """Requests arriving in ``[start_s, end_s)``, times shifted so ``start_s`` becomes 0."""
    if not end_s > start_s >= 0:
        raise ConfigError(f"need 0 <= start_s < end_s, got {start_s}, {end_s}")
    kept = [i for i, r in enumerate(trace.requests) if start_s <= r.arrival_s < end_s]
    index = {old: new for new, old in enumerate(kept)}  # closed-loop links follow the cut
    reqs = [dataclasses.replace(r, arrival_s=r.arrival_s - start_s,
                                after=index.get(r.after, -1) if r.after >= 0 else -1)
            for r in (trace.requests[i] for i in kept)]
    return _derive(trace, reqs, f"window({start_s}, {end_s})")


def scale_rate(trace: Trace, factor: float) -> Trace:
    """Compress time by ``factor`` (> 1 = faster): arrivals and tool pauses divided by it."""
    if not factor > 0:
        raise ConfigError(f"factor must be > 0, got {factor}")
    # pauses shrink too, so a turn never lands before its predecessor's nominal end
    reqs = [dataclasses.replace(r, arrival_s=r.arrival_s / factor,
                                next_turn_s=r.next_turn_s / factor if r.next_turn_s >= 0 else -1.0,
                                after_s=r.after_s / factor)
            for r in trace.requests]
    return _derive(trace, reqs, f"scale_rate({factor})")


def head(trace: Trace, n: int) -> Trace:
    """The first ``n`` requests by arrival."""
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    return _derive(trace, list(trace.requests[:n]), f"head({n})")
