"""Generate workloads from workload statistics (``data/workloads/<name>.json``, see ``statistics``).

``generate(workload, duration_s=..., rate_scale=..., rng=...)`` is deterministic given the
numpy Generator. Lengths are drawn by inverse-CDF sampling (linear interpolation) from the
statistics' 101 percentiles; arrivals from its fitted arrival model (``arrivals``); the mean
request rate is the statistics' times ``rate_scale``.

``agentic=False``: independent requests with the statistics' lengths and arrivals, ``rate_scale``
compressing time like ``traces.scale_rate`` (inter-arrival CV unchanged). If the statistics have
Mooncake prefix statistics, every prompt shares the measured system prefix and a request
continues an earlier one with the measured probability (``continuing_request_share``): its
parent is the latest request at least a measured turn gap earlier, its prompt the parent's plus
a measured growth, its hash ids the parent's plus fresh ones. Sessions are not labelled. This
matches the continuing share, not the token reuse: with an infinite cache about 0.32 of prompt
tokens are reusable for conversation (trace: 0.37) and 0.35 for synthetic (trace: 0.65, where
long documents are re-queried more often than short ones; parents here ignore length).

``agentic=True``: closed-loop agentic sessions with the structure of NVIDIA Dynamo's block
value classes (``../shared/notes/domain.md``). Defaults, ``AGENTIC_DEFAULTS`` (override with
keyword arguments):

* ``system_toks=2048`` shared by every request (same hash ids). Assumption: Mooncake shows a
  512-1023-token system prefix shared by every chat request; agent tool definitions add more.
* each session has a request type (``type_shares``): ``chat``, ``code`` or ``reasoning``. It
  decides what quantized KV costs (``PrecisionTier.wrong_answer``) and how the session loops.
* each turn ends either with a tool call (probability ``tool_call_prob[type]``; the tool drawn
  from ``tools[type]``) or with an answer to the user (``tool="user"``). A tool call always
  comes back: the pause is log-uniform in ``tool_pause_s[tool]`` (ranges inside Dynamo's
  "tool-call pauses of 2-30 s") times the session's pace, a log-normal factor
  (``pace_sigma``) drawn once per session, so past pauses predict the next one. A user comes
  back with Mooncake conversation's measured probability of continuing after turn k
  (``continue_prob_after_turn_1_to_10``: 0.25 after turn 1 rising to 0.7-0.9) after a pause
  drawn from its measured turn-gap distribution (``turn_gap_s_percentiles``: p5 30 s, median
  126 s, arrival to arrival), so most users come back after the episode, some never.
* ``turn``, ``past_pause_s`` (the mean of the session's earlier pauses) and ``tool`` are the
  history a server can know; ``next_turn_s`` (the pause to come, -1 when the session ends) is
  the future.
* closed loop: turn k+1 carries ``after`` = turn k's index and ``after_s`` = the pause, so an
  engine with ``closed_loop`` releases it a pause after turn k *finishes*; its ``arrival_s`` is
  the open-loop estimate ``arrival_k + output_k * nominal_tpot_s + pause_k``
  (``nominal_tpot_s=0.0325``, the TPOT mean of the vLLM validation run).
* prompt of turn k+1 = prompt k + visible output k (output minus reasoning) + new tool/user
  tokens drawn from Mooncake conversation's ``new_toks_quantiles`` (positive part).
* ``reasoning_turn_share[type]`` of turns reason; their ``reasoning_toks`` = output x
  Beta(8, 12) (mean ``reasoning_fraction=0.4``, Dynamo's "about 40% of output").
* ``subagent_prob=0.2``: after each tool call, one ephemeral sub-agent call (single turn, only
  the system prefix shared, ``session_id=-1``, its parent's type and priority) is released
  during the pause.
* ``priority_share=0.1`` of sessions have ``priority=1``.
* opening prompt = ``system_toks`` + an input length drawn from the statistics; output likewise.
* session starts: the statistics' arrival process with its rates multiplied by ``rate_scale`` /
  expected requests per session and its burst/lull durations kept, so the mean *request* rate
  is about the measured rate x rate_scale. Sessions start from ``-warmup_s=-1800`` s and only
  requests in ``[0, duration_s)`` are kept, so the trace opens in steady state (a user may
  come back after many minutes; 1800 s of history gives 90% of the steady-state rate).
* a session ends at ``max_turns=40`` or when its next prompt + output would exceed
  ``max_model_len=131072``.

Hash ids (``hash_block_tokens`` per id): only full blocks get ids (vLLM caches full blocks);
blocks wholly inside a turn's prompt keep their ids in the next turn, later blocks get fresh
ids, so equal id <=> equal prefix content up to that block.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from kv_cache_rl.errors import ConfigError
from kv_cache_rl.workload.arrivals import sample_arrivals
from kv_cache_rl.workload.requests import Trace, TraceRequest
from kv_cache_rl import DATA_DIR
from kv_cache_rl.workload.statistics import derive_all_statistics, main  # noqa: F401  (re-exported API)

STATISTICS_DIR = DATA_DIR / "workloads"
WORKLOADS = ("azure_conv", "azure_code", "mooncake_conversation", "mooncake_synthetic", "sharegpt")
TURN_STATS_WORKLOAD = "mooncake_conversation"  # the one trace with conversational sessions

AGENTIC_DEFAULTS = {
    "system_toks": 2048, "max_turns": 40,
    "type_shares": {"chat": 0.4, "code": 0.3, "reasoning": 0.3},
    "tool_call_prob": {"chat": 0.2, "code": 0.85, "reasoning": 0.75},
    "tools": {"chat": ("search",), "code": ("shell", "search"), "reasoning": ("python", "search")},
    "tool_pause_s": {"search": (2.0, 8.0), "python": (3.0, 12.0), "shell": (8.0, 30.0)},
    "pace_sigma": 0.5,
    "reasoning_turn_share": {"chat": 0.0, "code": 0.3, "reasoning": 1.0},
    "reasoning_fraction": 0.4, "subagent_prob": 0.2,
    "priority_share": 0.1, "nominal_tpot_s": 0.0325, "max_model_len": 131072,
    "warmup_s": 1800.0,
}


def load_statistics(workload: dict | str) -> dict:
    """Workload statistics: a dict, a shipped workload name, or a path to a statistics JSON."""
    if isinstance(workload, dict):
        return workload
    path = STATISTICS_DIR / f"{workload}.json" if workload in WORKLOADS else Path(workload)
    if not path.is_file():
        raise ConfigError(f"unknown workload {workload!r}: use one of {WORKLOADS} or a JSON path")
    return json.loads(path.read_text())


def sample_quantiles(q, rng: np.random.Generator, n: int, lo: float = 0.0) -> np.ndarray:
    """Inverse-CDF draws from evenly spaced percentiles ``q`` (p0..p100), restricted to
    probabilities above ``lo`` (0..1)."""
    q = np.asarray(q, dtype=float)
    u = lo + (1 - lo) * rng.random(n)
    return np.interp(u * (len(q) - 1), np.arange(len(q)), q)


def _counts(q, rng, n, lo: float = 0.0) -> np.ndarray:
    return np.maximum(1, np.rint(sample_quantiles(q, rng, n, lo))).astype(np.int64)


class _Ids:
    """Fresh hash ids: one counter, so equal ids only where a prefix is deliberately shared."""

    def __init__(self) -> None:
        self.next = 0

    def fresh(self, n: int) -> tuple[int, ...]:
        n = max(0, n)
        self.next += n
        return tuple(range(self.next - n, self.next))


def expected_requests_per_session(p: dict, user_continue=None) -> float:
    """Mean requests per session (turns, plus sub-agent calls after tool calls), over types."""
    if user_continue is None:
        user_continue = load_statistics(TURN_STATS_WORKLOAD)["sessions"]["turns_per_session"][
            "continue_prob_after_turn_1_to_10"]
    total = 0.0
    for rtype, share in p["type_shares"].items():
        q = p["tool_call_prob"][rtype]
        alive, turns, calls = 1.0, 0.0, 0.0
        for k in range(p["max_turns"]):
            turns += alive
            if k == p["max_turns"] - 1:
                break
            calls += alive * q
            alive *= q + (1 - q) * user_continue[min(k, len(user_continue) - 1)]
        total += share * (turns + p["subagent_prob"] * calls)
    return total


def generate(profile: dict | str, *, duration_s: float, rate_scale: float = 1.0,
             rng: np.random.Generator, agentic: bool = True, hash_block_tokens: int = 16,
             **overrides) -> Trace:
    """A ``Trace`` of ``duration_s`` seconds drawn from ``profile`` (see the module doc)."""
    prof = load_statistics(profile)
    if not (duration_s > 0 and rate_scale > 0 and hash_block_tokens > 0):
        raise ConfigError("duration_s, rate_scale and hash_block_tokens must be > 0")
    unknown = set(overrides) - set(AGENTIC_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown generate() parameter(s): {sorted(unknown)}")
    params = {**AGENTIC_DEFAULTS, **overrides}
    meta = {"profile": prof.get("name", ""), "agentic": agentic, "duration_s": duration_s,
            "rate_scale": rate_scale, "hash_partial_last_block": False}
    if agentic:
        linked = _agentic(prof, params, duration_s, rate_scale, rng, hash_block_tokens, meta)
        linked.sort(key=lambda x: x[0].arrival_s)
        index = {req.request_id: i for i, (req, _, _) in enumerate(linked)}
        reqs = [replace(req, after=index[parent], after_s=round(after_s, 6)) if parent else req
                for req, parent, after_s in linked]
    else:
        reqs = _plain(prof, params, duration_s, rate_scale, rng, hash_block_tokens, meta)
        reqs.sort(key=lambda r: r.arrival_s)
    return Trace(tuple(reqs), hash_block_tokens, f"generated:{prof.get('name', '')}", meta)


def _plain(prof, params, duration_s, rate_scale, rng, block, meta) -> list[TraceRequest]:
    t = sample_arrivals(prof["arrival_model"], duration_s, rng, time_scale=rate_scale)
    n = len(t)
    out = _counts(prof["output_toks"]["quantiles"], rng, n)
    inp = np.minimum(_counts(prof["input_toks"]["quantiles"], rng, n),
                     params["max_model_len"] - out)
    sys_toks = (prof.get("prefix_reuse") or {}).get("system_prefix_toks", 0)
    sess = prof.get("sessions")
    share = sess["continuing_request_share"] if sess else 0.0
    cont = rng.random(n) < share
    gaps, growth = np.zeros(n), np.zeros(n)
    if sess:  # the turn-gap table is every 5th percentile; gaps shrink with time compression
        gaps = sample_quantiles(sess["turn_gap_s_percentiles_0_5_100"], rng, n) / rate_scale
        growth = np.rint(sample_quantiles(sess["input_growth_toks_quantiles"], rng, n))
    ids, reqs, hids = _Ids(), [], []
    sys_ids = ids.fresh(sys_toks // block)
    meta.update(system_toks=sys_toks, continuing_request_share=share)
    parent = np.where(cont, np.searchsorted(t, t - gaps, "right") - 1, -1).tolist()
    for i in range(n):
        j = parent[i]
        if 0 <= j < i:
            inp[i] = min(max(1, inp[j] + growth[i]), params["max_model_len"] - out[i])
            keep = min(len(hids[j]), inp[i] // block)
            h = hids[j][:keep] + ids.fresh(inp[i] // block - keep)
        else:
            keep = min(sys_toks, inp[i]) // block
            h = sys_ids[:keep] + ids.fresh(inp[i] // block - keep)
        hids.append(h)
        reqs.append(TraceRequest(float(t[i]), int(inp[i]), int(out[i]), h, f"r{i}",
                                 system_toks=min(sys_toks, int(inp[i]))))
    return reqs


def _agentic(prof, p, duration_s, rate_scale, rng, block, meta
             ) -> list[tuple[TraceRequest, str, float]]:
    """(request, id of the in-window request whose finish releases it or "", delay)."""
    from kv_cache_rl.workload.requests import REQUEST_TYPES

    shares = p["type_shares"]
    if not (p["max_turns"] >= 1 and 0 <= p["reasoning_fraction"] < 1 and p["pace_sigma"] >= 0
            and set(shares) <= set(REQUEST_TYPES) and abs(sum(shares.values()) - 1) < 1e-6
            and all(0 < lo <= hi for lo, hi in p["tool_pause_s"].values())):
        raise ConfigError(f"bad agentic parameters {p}")
    turn_stats = load_statistics(TURN_STATS_WORKLOAD)["sessions"]
    user_continue = turn_stats["turns_per_session"]["continue_prob_after_turn_1_to_10"]
    user_gap = turn_stats["turn_gap_s_percentiles_0_5_100"]
    in_q, out_q = prof["input_toks"]["quantiles"], prof["output_toks"]["quantiles"]
    sys_toks, warm, limit = int(p["system_toks"]), float(p["warmup_s"]), p["max_model_len"]
    per_session = expected_requests_per_session(p, user_continue)
    # rates x rate_scale / requests per session, dwell times kept: a source burst lasts as long
    # at any load (time compression would stretch Azure code's 45 s lulls to minutes at 0.25x)
    starts = sample_arrivals(prof["arrival_model"], duration_s + warm, rng,
                             rate_factor=rate_scale / per_session) - warm
    n = len(starts)
    types = list(shares)
    kind = rng.choice(len(types), n, p=[shares[t] for t in types]).tolist()
    prio = (rng.random(n) < p["priority_share"]).tolist()
    pace = np.exp(p["pace_sigma"] * rng.standard_normal(n)).tolist()
    first_in = _counts(in_q, rng, n).tolist()
    f = p["reasoning_fraction"]
    meta.update(params={k: v for k, v in p.items()},
                expected_requests_per_session=round(per_session, 4),
                session_rate_rps=round(n / (duration_s + warm), 6),
                turn_timing="closed loop: turn k+1 is released after_s after turn k finishes")
    ids, reqs, sessions = _Ids(), [], {}
    sys_ids = ids.fresh(sys_toks // block)

    def emit(t, inp, out_, h, sid, rid, parent: str, after_s: float, **kw) -> bool:
        """Keep a request inside the window, with the id of the in-window request whose finish
        releases it ("" for none) and the delay (``generate`` turns the id into an index)."""
        if 0 <= t < duration_s:
            if sid >= 0:  # sessions numbered in start order, counting only those in the trace
                sid = sessions.setdefault(sid, len(sessions))
            reqs.append((TraceRequest(t, inp, out_, h, rid, session_id=sid,
                                      system_toks=min(sys_toks, inp), **kw), parent, after_s))
            return True
        return False

    def opening(inp: int) -> tuple[int, ...]:
        shared = sys_ids[:inp // block]
        return shared + ids.fresh(inp // block - len(shared))

    def draw(q, lo: float = 0.0) -> int:
        return int(_counts(q, rng, 1, lo)[0])

    def thinking(rtype: str, out_: int) -> int:
        if f <= 0 or rng.random() >= p["reasoning_turn_share"][rtype]:
            return 0
        return min(round(out_ * rng.beta(20 * f, 20 * (1 - f))), out_ - 1)

    for s in range(n):
        rtype = types[kind[s]]
        t = float(starts[s])
        out = draw(out_q)
        inp = min(sys_toks + first_in[s], limit - out)
        h = opening(inp)
        parent, after_s, pauses = "", 0.0, []  # previous in-trace turn, its pause; all pauses
        for k in range(p["max_turns"]):
            think = thinking(rtype, out)
            done = t + out * p["nominal_tpot_s"]
            if rng.random() < p["tool_call_prob"][rtype]:
                tool = p["tools"][rtype][int(rng.integers(len(p["tools"][rtype])))]
                lo, hi = p["tool_pause_s"][tool]
                pause = math.exp(rng.uniform(math.log(lo), math.log(hi))) * pace[s]
                returns = True
            else:
                tool = "user"
                returns = rng.random() < user_continue[min(k, len(user_continue) - 1)]
                pause = float(sample_quantiles(user_gap, rng, 1)[0])
            nxt_out = draw(out_q)
            nxt_inp = inp + out - think + draw(turn_stats["new_toks_quantiles"],
                                                turn_stats["new_toks_negative_share"])
            returns = returns and k < p["max_turns"] - 1 and nxt_inp + nxt_out <= limit
            past = sum(pauses) / len(pauses) if pauses else -1.0
            rid = f"s{s}t{k}"
            here = emit(t, inp, out, h, s, rid, parent, after_s, reasoning_toks=think,
                        priority=prio[s], next_turn_s=pause if returns else -1.0,
                        request_type=rtype, turn=k, past_pause_s=round(past, 3), tool=tool)
            parent = rid if here else ""
            if not returns:
                break
            if tool != "user" and rng.random() < p["subagent_prob"]:
                # a sub-agent runs as this turn's tool call: system prefix only
                at = rng.uniform(0, 0.5) * pause
                e_out = draw(out_q)
                e_in = min(sys_toks + draw(in_q), limit - e_out)
                emit(done + at, e_in, e_out, opening(e_in), -1, f"s{s}t{k}e", parent, at,
                     reasoning_toks=thinking(rtype, e_out), priority=prio[s], ephemeral=True,
                     request_type=rtype)
            pauses.append(pause)
            after_s = pause
            # the next prompt starts with this whole prompt: its full blocks keep their ids
            h = h + ids.fresh(nxt_inp // block - len(h))
            t, inp, out = done + pause, nxt_inp, nxt_out
            if t >= duration_s:
                break
    meta["sessions"] = len(sessions)
    return reqs
