"""Generate workloads from a profile (``data/workloads/<name>.json``, see ``workload_profiles``).

``generate(profile, duration_s=..., rate_scale=..., rng=...)`` is deterministic given the
numpy Generator. Lengths are drawn by inverse-CDF sampling (linear interpolation) from the
profile's 101 percentiles; arrivals from its fitted arrival model (``arrivals``); the mean
request rate is the profile's times ``rate_scale``.

``agentic=False``: independent requests with profile lengths and arrivals, ``rate_scale``
compressing time like ``traces.scale_rate`` (inter-arrival CV unchanged). If the profile has
Mooncake prefix statistics, every prompt shares the measured system prefix and a request
continues an earlier one with the measured probability (``continuing_request_share``): its
parent is the latest request at least a measured turn gap earlier, its prompt the parent's plus
a measured growth, its hash ids the parent's plus fresh ones. Sessions are not labelled. This
matches the continuing share, not the token reuse: with an infinite cache about 0.32 of prompt
tokens are reusable for conversation (trace: 0.37) and 0.35 for synthetic (trace: 0.65, where
long documents are re-queried more often than short ones; parents here ignore length).

``agentic=True``: the structure of NVIDIA Dynamo's block value classes
(``../shared/notes/domain.md``).
Defaults, ``AGENTIC_DEFAULTS`` (override with keyword arguments):

* ``system_toks=2048`` shared by every request (same hash ids). Assumption: Mooncake shows a
  512-1023-token system prefix shared by every chat request; agent tool definitions add more.
* turns per session: geometric on 1, 2, ... with ``continue_prob=0.8`` (mean 5, capped at
  ``max_turns=40``). Mooncake conversation sessions that reached turn 3+ continue with
  probability 0.50-0.88, synthetic ones 0.65-0.85; multi-turn sessions average 3.0 / 5.7 turns.
* tool-call pause before the next turn: log-uniform in ``pause_s=(2, 30)`` s (Dynamo). Turn
  k+1 arrives at ``arrival_k + output_k * nominal_tpot_s + pause_k``; ``nominal_tpot_s=0.0325``
  is the TPOT mean of the vLLM validation run (README). A closed-loop simulator should instead
  release turn k+1 ``next_turn_s`` after turn k finishes.
* prompt of turn k+1 = prompt k + visible output k (output minus reasoning) + new tool/user
  tokens drawn from Mooncake conversation's ``new_toks_quantiles`` (positive part).
* ``reasoning_turn_share=0.5`` of turns reason; their ``reasoning_toks`` = output x Beta(8, 12)
  (mean ``0.4``, Dynamo's "about 40% of output").
* ``subagent_prob=0.2``: after each non-final turn, one ephemeral sub-agent call (single turn,
  only the system prefix shared, ``session_id=-1``, its parent's priority) arrives during the
  pause; about 14% of requests at the defaults. Prompt = system + profile input length.
* ``priority_share=0.1`` of sessions have ``priority=1``.
* opening prompt = ``system_toks`` + a profile input length; output = a profile output length.
* session starts: the profile's arrival process with its rates multiplied by ``rate_scale`` /
  expected requests per session and its burst/lull durations kept, so the mean *request* rate
  is profile rate x rate_scale (plain mode instead compresses time, as ``scale_rate`` does).
  Sessions start from ``-warmup_s=-600`` s and only requests in ``[0, duration_s)`` are kept, so
  the trace opens in steady state (some sessions are mid-way at t=0).
* a session ends early when its next prompt + output would exceed ``max_model_len=131072``.

Hash ids (``hash_block_tokens`` per id): only full blocks get ids (vLLM caches full blocks);
blocks wholly inside a turn's prompt keep their ids in the next turn, later blocks get fresh
ids, so equal id <=> equal prefix content up to that block.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .arrivals import sample_arrivals
from .config import Trace, TraceRequest
from .workload_profiles import derive_profiles, main  # noqa: F401  (re-exported API)

PROFILE_DIR = Path(__file__).resolve().parent / "data" / "workloads"
PROFILES = ("azure_conv", "azure_code", "mooncake_conversation", "mooncake_synthetic", "sharegpt")
TURN_STATS_PROFILE = "mooncake_conversation"  # the one trace with conversational sessions

AGENTIC_DEFAULTS = {
    "system_toks": 2048, "continue_prob": 0.8, "max_turns": 40, "pause_s": (2.0, 30.0),
    "reasoning_turn_share": 0.5, "reasoning_fraction": 0.4, "subagent_prob": 0.2,
    "priority_share": 0.1, "nominal_tpot_s": 0.0325, "max_model_len": 131072,
    "warmup_s": 600.0,
}


def load_profile(profile: dict | str) -> dict:
    """A profile dict, a shipped profile name, or a path to a profile JSON."""
    if isinstance(profile, dict):
        return profile
    path = PROFILE_DIR / f"{profile}.json" if profile in PROFILES else Path(profile)
    if not path.is_file():
        raise ValueError(f"unknown profile {profile!r}: use one of {PROFILES} or a JSON path")
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


def expected_requests_per_session(p: dict) -> float:
    turns = (1 - p["continue_prob"] ** p["max_turns"]) / (1 - p["continue_prob"])
    return turns + p["subagent_prob"] * (turns - 1)


def generate(profile: dict | str, *, duration_s: float, rate_scale: float = 1.0,
             rng: np.random.Generator, agentic: bool = True, hash_block_tokens: int = 16,
             **overrides) -> Trace:
    """A ``Trace`` of ``duration_s`` seconds drawn from ``profile`` (see the module doc)."""
    prof = load_profile(profile)
    if not (duration_s > 0 and rate_scale > 0 and hash_block_tokens > 0):
        raise ValueError("duration_s, rate_scale and hash_block_tokens must be > 0")
    unknown = set(overrides) - set(AGENTIC_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown generate() parameter(s): {sorted(unknown)}")
    params = {**AGENTIC_DEFAULTS, **overrides}
    meta = {"profile": prof.get("name", ""), "agentic": agentic, "duration_s": duration_s,
            "rate_scale": rate_scale, "hash_partial_last_block": False}
    make = _agentic if agentic else _plain
    reqs = make(prof, params, duration_s, rate_scale, rng, hash_block_tokens, meta)
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


def _agentic(prof, p, duration_s, rate_scale, rng, block, meta) -> list[TraceRequest]:
    if not (0 <= p["continue_prob"] < 1 and p["max_turns"] >= 1 and 0 < p["pause_s"][0]
            <= p["pause_s"][1] and 0 <= p["reasoning_fraction"] < 1):
        raise ValueError(f"bad agentic parameters {p}")
    turn_stats = prof.get("sessions") if prof.get("name") == TURN_STATS_PROFILE else None
    turn_stats = turn_stats or load_profile(TURN_STATS_PROFILE)["sessions"]
    in_q, out_q = prof["input_toks"]["quantiles"], prof["output_toks"]["quantiles"]
    sys_toks, warm, limit = int(p["system_toks"]), float(p["warmup_s"]), p["max_model_len"]
    per_session = expected_requests_per_session(p)
    # rates x rate_scale / requests per session, dwell times kept: a source burst lasts as long
    # at any load (time compression would stretch Azure code's 45 s lulls to minutes at 0.25x)
    starts = sample_arrivals(prof["arrival_model"], duration_s + warm, rng,
                             rate_factor=rate_scale / per_session) - warm
    # every random number up front, one array per quantity: fast and still seed-deterministic
    n = len(starts)
    prio = (rng.random(n) < p["priority_share"]).tolist()
    first_in = _counts(in_q, rng, n).tolist()
    turns = np.minimum(rng.geometric(1 - p["continue_prob"], n), p["max_turns"])
    first = np.r_[0, np.cumsum(turns)[:-1]].tolist()
    m = int(turns.sum())
    out = _counts(out_q, rng, m).tolist()
    new = _counts(turn_stats["new_toks_quantiles"], rng, m,
                  turn_stats["new_toks_negative_share"]).tolist()  # positive part
    pause = np.exp(rng.uniform(math.log(p["pause_s"][0]), math.log(p["pause_s"][1]), m)).tolist()
    f = p["reasoning_fraction"]

    def reasoning_toks(outs: list[int]) -> list[int]:
        # Beta(20f, 20(1-f)): mean f (0.4: Beta(8, 12), sd 0.11); keep one visible token
        frac = rng.beta(20 * f, 20 * (1 - f), len(outs)) if f > 0 else np.zeros(len(outs))
        on = rng.random(len(outs)) < p["reasoning_turn_share"]
        return [min(round(o * x), o - 1) if y else 0
                for o, x, y in zip(outs, frac, on, strict=True)]

    think = reasoning_toks(out)
    sub = (rng.random(m) < p["subagent_prob"]).tolist()
    sub_at = rng.uniform(0, 0.5, m).tolist()  # share of the pause before the sub-agent call
    sub_out = _counts(out_q, rng, m).tolist()
    sub_in = _counts(in_q, rng, m).tolist()
    sub_think = reasoning_toks(sub_out)
    meta.update(params={k: list(v) if isinstance(v, tuple) else v for k, v in p.items()},
                expected_requests_per_session=round(per_session, 4),
                session_rate_rps=round(n / (duration_s + warm), 6),
                turn_timing="turn k+1 arrives output_k * nominal_tpot_s + next_turn_s after "
                            "turn k; closed-loop: release it next_turn_s after turn k ends")

    ids, reqs, sessions = _Ids(), [], {}
    sys_ids = ids.fresh(sys_toks // block)

    def emit(t, inp, out_, h, sid, rid, **kw) -> None:
        if 0 <= t < duration_s:
            if sid >= 0:  # sessions numbered in start order, counting only those in the trace
                sid = sessions.setdefault(sid, len(sessions))
            reqs.append(TraceRequest(t, inp, out_, h, rid, session_id=sid,
                                     system_toks=min(sys_toks, inp), **kw))

    def opening(inp: int) -> tuple[int, ...]:
        shared = sys_ids[:inp // block]
        return shared + ids.fresh(inp // block - len(shared))

    for s in range(n):
        t, j0 = float(starts[s]), first[s]
        inp = min(sys_toks + first_in[s], limit - out[j0])
        h = opening(inp)
        for k in range(int(turns[s])):
            j = j0 + k
            done = t + out[j] * p["nominal_tpot_s"]
            last = k == turns[s] - 1
            if not last:
                nxt_inp = inp + out[j] - think[j] + new[j]
                # the context limit ends the session; a next turn past the horizon is not here
                last = nxt_inp + out[j + 1] > limit or done + pause[j] >= duration_s
            emit(t, inp, out[j], h, s, f"s{s}t{k}", reasoning_toks=think[j], priority=prio[s],
                 next_turn_s=-1.0 if last else pause[j])
            if last:
                break
            if sub[j]:  # a sub-agent runs as this turn's tool call: system prefix only
                e_in = min(sys_toks + sub_in[j], limit - sub_out[j])
                emit(done + sub_at[j] * pause[j], e_in, sub_out[j], opening(e_in), -1,
                     f"s{s}t{k}e", reasoning_toks=sub_think[j], priority=prio[s], ephemeral=True)
            # the next prompt starts with this whole prompt: its full blocks keep their ids
            h = h + ids.fresh(nxt_inp // block - len(h))
            t, inp = done + pause[j], nxt_inp
    meta["sessions"] = len(sessions)
    return reqs
