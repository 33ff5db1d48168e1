"""Soak test of the episode API (a benchmark, not CI): many short episodes of random scenarios
played with random, often malformed, actions, with the engine's invariants checked after every
call and every step.

    python benchmarks/soak.py [--sequences 10000] [--seed 0] [--jobs N] [--steps 2:4]
                              [--seed-pool 100] [--only INDEX] [--verbose]

A *sequence* is one episode, drawn from ``np.random.default_rng([seed, index])`` alone (so it
is the same whatever ``--sequences`` and ``--jobs`` are, and ``--only INDEX`` replays it): a
tier (easy/medium/hard), a shipped (model, GPU, TP) server (``known_tp_profiles()``), a scenario seed
from ``range(--seed-pool)``, a call cap per step, and the seed of its actions. A scenario's
length and warm-up are functions of its seed (``--steps`` LO:HI: ``LO + seed % (HI - LO +
1)`` steps; a warm-up of 30 s, the task's, for half the seeds, else 10 s or none) so that
sequences share scenarios: building one (generating its trace, the unlimited-memory reference
run) costs more than playing it, so each worker keeps the scenarios of the (tier, seed) group
it is playing. Scenarios come from ``make_scenario(..., model=, gpu=,
tensor_parallel_size=)``.

Each step makes 0..cap+2 calls (over the cap on purpose), mostly ``evict``/``compress``/
``swap_to_cpu``/``keep`` on visible ids through ``Episode.call``, some through
``Episode.apply``; the rest are repeats (double evicts, an id acted on earlier in the step or
episode), live but invisible ids (queued requests, cached entries not listed), unknown ids,
and malformed calls (unknown tools, missing/extra/ill-typed arguments, bad JSON, Python values
no JSON decoder returns: numpy integers and mixed-type keys). Checked after every accepted
call, every step, at the start and at the end:

* ``tests/support/invariants.check_invariants`` (the property tests' battery: every block's
  reference count equals its holders, free + evictable + used == total units, used <= total,
  host units == swapped sequences' units within the swap space, queues and states agree,
  no block id leaked) and the observation's size memo against a count from scratch;
* tokens only grow, as ``tests/support/tracker.Tracker`` defines it: every request's
  ``num_output`` (live, then in its finished record), the engine's counters (prompt,
  generated and recomputed tokens, preemptions, rejections, finished requests) and its clock
  never go down, and ``high_water`` never does either (an eviction or a preemption resets
  ``num_computed``, by design);
* an accepted call has its documented effect (an evicted sequence holds no KV and recomputes,
  a swapped one is in host memory with the units it freed, a compressed one is a tier lower),
  the first one of a step frees (evict, swap) what the observation's ``blocks`` column says, or
  at most three quarters of it (compress: half when its blocks are all at its tier, more when
  an int8 entry holds fp16 blocks it took over), the call cap holds, the record counts the calls;
* after every observation: visible ids are cached sequences with the location and the
  blocks held alone that the entry shows, usage within capacity, its text reads back to the
  same observation;
* at the end: the score is finite; ``Episode.from_state(state_dict())`` rebuilds the episode
  (sequences driven by ``call`` only, as ``state_dict`` records calls); a call after the end
  is refused and changes nothing, also for ``from_state`` (checked in one sequence in 8:
  a replay costs a whole episode); ``advance`` raises ``EpisodeError``.

A refused call (``error: ...`` from ``call``, an ``ActionError`` from ``apply``) must leave
the engine exactly as it was: an engine action on a visible id (refused by the engine or by
the call cap) is compared with a full ``snapshot`` (the property tests' list of everything an
action could change), a call refused before it could reach the engine (malformed, unknown
tool, invisible id) with a cheap fingerprint; equal, the invariants above still hold, so they
are not run again.

Anything else that escapes is a failure too. A failed sequence stops there and is reported
with its reproducer (tier, pair, scenario seed, steps, cap and every call so far; ``--only``
replays it); the run goes on. Failures are grouped by kind. The digest hashes every
sequence's outcome (final observation text, score, history, counts): equal digests for
``--jobs 1`` and ``--jobs N`` mean identical results. Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
import traceback
from collections import Counter, OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# what make_scenario imports when first called: imported before the workers fork, so that all
# of them run the code as it was when the run started
import kv_cache_rl.workload.generators
import kv_cache_rl.workload.sessions  # noqa: F401
from kv_cache_rl.engine import ActionError, State
from kv_cache_rl.engine.sequence import count_units
from kv_cache_rl.hardware.profiles import known_tp_profiles
from kv_cache_rl.task import scenario as scenario_module
from kv_cache_rl.task.episode import Action, Episode, EpisodeError, parse_call
from kv_cache_rl.task.observation import Observation
from kv_cache_rl.task.scenario import DIFFICULTIES, make_scenario
from tests.support.invariants import check_invariants, snapshot

PAIRS = tuple(known_tp_profiles())  # every shipped (model, GPU, tensor-parallel size)
DEFAULT_PAIR = (scenario_module.MODEL, scenario_module.GPU, 1)
CAPS = (1, 2, 3, 8)  # max_calls_per_step (8 is the task's)
WARMUPS = (30.0, 30.0, 10.0, 0.0)  # warmup_s (30 is the task's; 0: the episode starts cold)
KINDS = ("evict", "compress", "swap_to_cpu")


class Violation(AssertionError):
    """An invariant or documented behaviour that did not hold: ``label`` names which (failures
    are grouped by it), ``detail`` says how."""

    def __init__(self, label: str, detail: str = "") -> None:
        super().__init__(f"{label}: {detail}" if detail else label)
        self.label = label


def need(cond, label: str, detail="") -> None:
    if not cond:
        raise Violation(label, detail() if callable(detail) else detail)


# ---- scenarios ------------------------------------------------------------------------------
_CACHE: OrderedDict = OrderedDict()  # per process: (tier, pair, seed, ...) -> Scenario
CACHE_SIZE = 32


def build_scenario(tier: str, pair: tuple[str, str, int], seed: int, steps: int,
                   warmup_s: float):
    """The scenario of (tier, seed, steps, warmup_s) served by ``pair``'s profile (see the
    module doc)."""
    key = (tier, pair, seed, steps, warmup_s)
    sc = _CACHE.get(key)
    if sc is not None:
        _CACHE.move_to_end(key)
        return sc
    model, gpu, tp = pair
    sc = make_scenario(tier, seed, steps=steps, warmup_s=warmup_s, model=model, gpu=gpu,
                       tensor_parallel_size=tp)
    _CACHE[key] = sc
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return sc


# ---- the sequences ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    index: int
    tier: str
    pair: tuple[str, str]
    seed: int  # the scenario's
    steps: int
    warmup_s: float
    cap: int
    action_seed: int
    use_apply: bool  # some calls through Episode.apply (else Episode.call only)

    @property
    def group(self) -> tuple:
        return (self.tier, self.seed, self.steps, self.warmup_s)

    def describe(self) -> str:
        return (f"tier={self.tier} pair={self.pair[0]}/{self.pair[1]}/tp{self.pair[2]} "
                f"scenario_seed={self.seed} "
                f"steps={self.steps} warmup_s={self.warmup_s:g} max_calls_per_step={self.cap}"
                + (" (some calls through apply)" if self.use_apply else ""))


def make_spec(seed: int, index: int, steps: tuple[int, int], pool: int) -> Spec:
    rng = np.random.default_rng([seed, index])
    tier = DIFFICULTIES[int(rng.integers(len(DIFFICULTIES)))]
    pair = PAIRS[int(rng.integers(len(PAIRS)))]
    sc_seed = int(rng.integers(pool))
    lo, hi = steps
    span = hi - lo + 1
    return Spec(index, tier, pair, sc_seed, lo + sc_seed % span,
                WARMUPS[sc_seed // span % len(WARMUPS)],
                CAPS[int(rng.integers(len(CAPS)))], int(rng.integers(1 << 62)),
                bool(rng.random() < 0.25))


@dataclass
class Outcome:
    index: int
    steps: int = 0
    calls: int = 0
    accepted: int = 0
    refused: int = 0
    digest: str = ""
    failure: dict | None = None
    kinds: Counter = field(default_factory=Counter)  # accepted actions by kind
    refusals: Counter = field(default_factory=Counter)  # refusal messages, numbers taken out


class Checker:
    """The invariants of one episode's engine, checked after every call and step."""

    COUNTERS = ("prompt_tokens", "generated_tokens", "recomputed_tokens", "preemptions",
                "rejected")

    def __init__(self, episode: Episode) -> None:
        self.episode = episode
        self.output: dict[int, int] = {}  # request seq id -> highest num_output seen
        self.high_water: dict[int, int] = {}
        self.finished_seen = 0
        self.counters = None
        self.now = -1.0
        self.snap = None

    @property
    def engine(self):
        return self.episode.engine

    def check(self, where: str) -> None:
        engine = self.engine
        try:
            check_invariants(engine)
        except AssertionError as exc:  # named by the failing assert's line
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            raise Violation(f"invariant ({Path(frame.filename).name}:{frame.lineno}: "
                            f"{frame.line})", f"{where}: {exc}") from None
        pool = engine.pool
        need(pool.used_units <= pool.total_units, "GPU usage above capacity", where)
        need(0 <= engine.cpu_free_units <= engine.cpu_total_units,
             "host usage outside the swap space", where)
        # the observation's remembered sizes equal a count from scratch (as the property
        # tests check: the memo grows with a block list, the system prefix is not counted)
        units, bs = pool.units, engine.config.block_size
        for seq in engine.cached_sequences():
            if seq.state == State.SWAPPED:
                continue
            cut = seq.req.system_toks // bs if seq.kind == "generation" and seq.req else 0
            fresh = sum(units[b] for b in seq.blocks[cut:])
            if count_units(seq, units, bs) != fresh:
                raise Violation("stale size memo", f"{where}: {seq!r}: {fresh} units")
        # tokens only grow
        stats = engine.stats
        counters = tuple(getattr(stats, c) for c in self.COUNTERS) + (len(engine.finished),)
        if self.counters is not None:
            down = [name for name, a, b in zip(self.COUNTERS + ("finished",), counters,
                                              self.counters) if a < b]
            need(not down, "an engine counter went down", lambda: f"{where}: {down}")
        self.counters = counters
        need(engine.now >= self.now, "the clock went back", where)
        self.now = engine.now
        for sid, seq in engine.live.items():
            if seq.max_output > 0:  # a request, not a retained holder
                if seq.num_output < self.output.get(sid, 0):
                    raise Violation("num_output went down",
                                    f"{where}: {seq!r}, had {self.output[sid]}")
                if seq.high_water < self.high_water.get(sid, 0):
                    raise Violation("high_water went down", f"{where}: {seq!r}")
                self.output[sid] = seq.num_output
                self.high_water[sid] = seq.high_water
        for rec in engine.finished[self.finished_seen:]:
            sid, out = rec.seq_id, rec.num_output
            if out < self.output.get(sid, 0):
                raise Violation("a finished request lost tokens",
                                f"{where}: {sid} finished with {out}, had {self.output[sid]}")
            self.output[sid] = out
        self.finished_seen = len(engine.finished)
        self.snap = None  # taken when a call needs it (see snapshot)

    def snapshot(self) -> tuple:
        """``snapshot(engine)``, remembered while the engine does not change (a refused call
        leaves it as it was, so the next call compares against the same one)."""
        if self.snap is None:
            self.snap = snapshot(self.engine)
        return self.snap

    def fingerprint(self) -> tuple:
        """A cheap summary of the engine, for calls refused before they reach it."""
        e = self.engine
        s = e.stats
        return (e.now, e.pool.free_units, e.pool.evictable_units, e.cpu_free_units,
                len(e.live), len(e.running), len(e.waiting), len(e.swapped),
                getattr(e, "_stall_s", 0), s.evicted_active, s.swap_latency_s, s.swap_out_bytes, s.generated_tokens,
                getattr(e, "system_tier", 0))

    def check_observation(self, obs: Observation, where: str) -> None:
        engine = self.engine
        cached = {s.seq_id: s for s in engine.cached_sequences()}
        ref, units = engine.pool.ref, engine.pool.units
        for sid, e in obs.visible.items():
            need(sid in cached, "a visible id is not a cached sequence", f"{where}: {sid}")
            s = cached[sid]
            need(e.on_cpu == (s.state == State.SWAPPED), "an entry's location is wrong",
                 f"{where}: {e}")
            own = 0 if s.state == State.SWAPPED else \
                sum(units[b] for b in s.blocks if ref[b] == 1)
            need(e.blocks * 4 == own, "an entry's blocks are not what it holds alone",
                 f"{where}: {e}, holds {own / 4}")
        need(0.0 <= obs.memory_usage <= 1.0, "observed memory_usage out of [0, 1]",
             f"{where}: {obs.memory_usage}")
        need(0.0 <= obs.cpu_used_blocks <= obs.cpu_total_blocks,
             "observed cpu swap above its total",
             f"{where}: {obs.cpu_used_blocks}/{obs.cpu_total_blocks}")
        need(Observation.from_text(obs.text()) == obs, "observation text does not read back",
             where)


def _pick_call(rng, episode: Episode, made: list, fresh_ids: list,
               use_apply: bool) -> tuple[str, str, object]:
    """(via, name, arguments): via "call" or "apply" (then arguments is the seq_id)."""
    via, name, arguments = _draw_call(rng, episode, made, fresh_ids)
    if via == "apply" and not use_apply:  # the same action as a tool call
        return "call", name, {} if arguments is None else {"seq_id": arguments}
    return via, name, arguments


def _draw_call(rng, episode: Episode, made: list, fresh_ids: list) -> tuple[str, str, object]:
    obs, engine = episode.observation, episode.engine
    visible = sorted(obs.visible)
    r = rng.random()
    if r < 0.62 and visible:
        kind = ("evict", "compress", "swap_to_cpu", "keep")[int(rng.choice(4, p=(.3, .3, .3, .1)))]
        sid = int(rng.choice(visible))
        if rng.random() < 0.2:
            return "apply", kind, None if kind == "keep" else sid
        if kind == "keep":
            return "call", "keep", ({}, None, "", "{}")[int(rng.integers(4))]
        form = rng.random()
        if form < 0.15:
            return "call", kind, json.dumps({"seq_id": sid})
        if form < 0.2:
            return "call", kind, {"seq_id": str(sid)}
        return "call", kind, {"seq_id": sid}
    if r < 0.72 and made:  # a repeat: a double evict, an id acted on earlier
        via, name, arguments = made[int(rng.integers(len(made)))]
        return via, name, arguments
    if r < 0.80:  # live but invisible (queued, or cached but not listed), or gone
        pool = [s for s in engine.live if s not in obs.visible] + fresh_ids
        sid = int(rng.choice(pool)) if pool else 10**6
        kind = KINDS[int(rng.integers(3))]
        return ("apply", kind, sid) if rng.random() < 0.3 else ("call", kind, {"seq_id": sid})
    sid = int(rng.choice(visible)) if visible else 0
    kind = KINDS[int(rng.integers(3))]
    top = max(engine.live, default=0) + 1
    malformed = (
        ("call", kind, {"seq_id": top + int(rng.integers(1000))}),  # unknown id
        ("call", kind, {"seq_id": -1 - int(rng.integers(5))}),
        ("call", kind, {"seq_id": 10**30}),
        ("call", kind, {}),
        ("call", kind, None),
        ("call", kind, {"seq_id": sid, "why": "x"}),
        ("call", kind, {"seq": sid}),
        ("call", kind, {"seq_id": float(sid)}),
        ("call", kind, {"seq_id": True}),
        ("call", kind, {"seq_id": None}),
        ("call", kind, {"seq_id": [sid]}),
        ("call", kind, {"seq_id": f"{sid}.0"}),
        ("call", kind, {"seq_id": f" {sid} "}),
        ("call", kind, {"seq_id": "abc"}),
        ("call", kind, "{"),
        ("call", kind, "[1, 2]"),
        ("call", kind, "null"),
        ("call", kind, "  "),
        ("call", kind, 42),
        ("call", kind, '{"seq_id": NaN}'),
        ("call", "keep", {"seq_id": sid}),
        ("call", "keep", '{"seq_id": 1}'),
        ("call", ("delete", "Evict", "", "swap", "noop")[int(rng.integers(5))],
         {"seq_id": sid}),
        ("call", None, None),
        ("apply", ("delete", "EVICT", "swap_to_gpu")[int(rng.integers(3))], sid),
        ("apply", kind, None),
        ("apply", kind, top + 7),
    )
    if rng.random() < 0.03:  # what a Python caller may pass (no JSON decoder returns these)
        python_only = (("call", kind, {"seq_id": np.int64(sid)}),
                       ("call", kind, {"seq_id": sid, 1: "x", "a": 2}))
        return python_only[int(rng.integers(len(python_only)))]
    return malformed[int(rng.integers(len(malformed)))]


def _same_episode(live: Episode, rebuilt: Episode, label: str) -> None:
    """``rebuilt`` is ``live`` exactly: observation, actions applied per step, score."""
    if rebuilt.history != live.history:
        step = next(i for i, (a, b) in enumerate(zip(rebuilt.history + [None],
                                                     live.history + [None])) if a != b)
        raise Violation(label, f"step {step}: rebuilt applied "
                        f"{(rebuilt.history + [None])[step]}, live {(live.history + [None])[step]}")
    need(rebuilt.observation.text() == live.observation.text(), label,
         "the final observations differ")
    need(rebuilt.score() == live.score(), label,
         lambda: f"scores differ: rebuilt {rebuilt.score()}, live {live.score()}")


def _describe_call(via: str, name, arguments) -> str:
    if via == "apply":
        return f"apply(Action({name!r}, {arguments!r}))"
    return f"call({name!r}, {arguments!r})"


def play(spec: Spec, *, verbose: bool = False) -> Outcome:
    out = Outcome(spec.index)
    log: list[str] = []  # the reproducer: every call and step, in order
    rng = np.random.default_rng(spec.action_seed)
    where = "setup"
    try:
        sc = build_scenario(spec.tier, spec.pair, spec.seed, spec.steps, spec.warmup_s)
        episode = Episode(sc, max_calls_per_step=spec.cap)
        chk = Checker(episode)
        chk.check("start")
        chk.check_observation(episode.observation, "start")
        acted: list[int] = []  # ids acted on (they may be gone now)
        invalid = 0
        while not episode.done:
            step = episode.step_index
            made: list = []
            applied_this_step = 0
            mutated = False
            for k in range(int(rng.integers(spec.cap + 3))):
                via, name, arguments = _pick_call(rng, episode, made, acted, spec.use_apply)
                text = _describe_call(via, name, arguments)
                log.append(f"step {step}: {text}")
                where = f"step {step} call {k} {text}"
                engine, obs = episode.engine, episode.observation
                if via == "apply":
                    sid = arguments
                else:  # the id the episode will read (a refused call reads none)
                    try:
                        sid = parse_call(name, arguments).seq_id
                    except Exception:  # noqa: BLE001 - the call itself must handle it
                        sid = None
                seq = engine.live.get(sid) if isinstance(sid, int) else None
                entry = obs.visible.get(sid) if isinstance(sid, int) else None
                state_before = seq.state if seq is not None else None
                tier_before = seq.tier if seq is not None else None
                alloc_before, cpu_before = engine.pool.allocatable_units, engine.cpu_free_units
                # a call the episode hands to the engine (a visible id and an engine action):
                # compared whole if refused; the others are refused before reaching it
                deep = entry is not None and name in KINDS
                before = chk.snapshot() if deep else chk.fingerprint()
                if via == "apply":
                    try:
                        result = episode.apply(Action(name, arguments))
                    except ActionError as exc:
                        result = f"error: {exc}"
                else:
                    result = episode.call(name, arguments)
                    invalid += result.startswith("error: ")
                out.calls += 1
                made.append((via, name, arguments))
                refused = result.startswith("error: ")
                if verbose:
                    print(f"  {where} -> {result}")
                if refused:  # the engine as it was (so its invariants still hold)
                    out.refused += 1
                    out.refusals[re.sub(r"\b(evict|compress|swap_to_cpu)\b", "ACTION",
                                        _generic(result.split(";")[0], 70))] += 1
                    need((snapshot(engine) if deep else chk.fingerprint()) == before,
                         "a refused call changed the engine", f"{where} -> {result}")
                else:
                    out.accepted += 1
                    applied_this_step += 1
                    kind = name
                    out.kinds[kind] += 1
                    need(applied_this_step <= spec.cap, "the call cap did not hold",
                         f"{where}: action {applied_this_step} of {spec.cap}")
                    if kind != "keep":
                        need(seq is not None and entry is not None,
                             "an action on an invisible id was accepted", f"{where} -> {result}")
                        acted.append(sid)
                        freed = engine.pool.allocatable_units - alloc_before
                        if kind == "evict":
                            need(seq.blocks == [] and seq.state in (State.WAITING,
                                                                    State.FINISHED),
                                 "an evicted sequence kept KV", f"{where}: {seq!r}")
                            if seq.max_output > 0:
                                need(seq.num_computed == 0,
                                     "an evicted request kept its computed tokens",
                                     f"{where}: {seq!r}")
                            if not mutated:
                                need(freed == entry.blocks * 4,
                                     "evict did not free the entry's blocks",
                                     f"{where}: freed {freed / 4}, observed {entry}")
                        elif kind == "swap_to_cpu":
                            need(seq.state == State.SWAPPED and seq.cpu_units > 0,
                                 "a swapped sequence is not in host memory", f"{where}: {seq!r}")
                            need(state_before != State.SWAPPED, "swapped twice", where)
                            moved = cpu_before - engine.cpu_free_units
                            need(moved == seq.cpu_units and freed == moved,
                                 "swap's host and GPU units disagree",
                                 f"{where}: moved {moved} host units, freed {freed}, "
                                 f"holds {seq.cpu_units}")
                            if not mutated:
                                need(moved == entry.blocks * 4,
                                     "swap did not move the entry's blocks",
                                     f"{where}: moved {moved / 4}, observed {entry}")
                        else:
                            need(seq.tier == tier_before + 1, "compress did not lower the tier",
                                 f"{where}: {seq!r}, was tier {tier_before}")
                            need(freed >= 0, "compress took space", f"{where}: {-freed} units")
                            if not mutated and seq.kind != "system":
                                bound = entry.blocks * (2 if entry.tier == 0 else 3)  # units
                                need(freed <= bound,
                                     "compress freed more than the observation allows",
                                     f"{where}: freed {freed / 4}, observed {entry}")
                        mutated = True
                    chk.check(where)
                need(episode.record.actions == out.accepted, "record.actions is wrong",
                     f"{where}: {episode.record.actions} != {out.accepted}")
                need(episode.record.invalid_actions == invalid,
                     "record.invalid_actions is wrong",
                     f"{where}: {episode.record.invalid_actions} != {invalid}")
            log.append(f"advance() -> step {step + 1}")
            where = f"advance to step {step + 1}"
            obs = episode.advance()
            out.steps += 1
            chk.check(where)
            chk.check_observation(obs, where)
            need(episode.step_index == step + 1 and episode.calls_this_step == 0,
                 "advance did not count the step", f"{where}: {episode.step_index}")
        where = "end"
        score = episode.score()
        need(all(math.isfinite(v) for v in score.values()), "the score is not finite",
             lambda: str(score))
        history = [list(h) for h in episode.history]
        need(len(history) == spec.steps, "the history does not have one list per step",
             lambda: str(history))
        # state_dict records calls only, and the hardware when make_scenario takes it
        rebuild = not spec.use_apply
        if rebuild:
            where = "end: from_state"
            _same_episode(episode, Episode.from_state(episode.state_dict()),
                          "Episode.from_state(state_dict()) does not rebuild the episode")
        # a call after the end (an agent that keeps calling tools): refused, and nothing else
        visible = sorted(episode.observation.visible)
        if visible:
            name, arguments = KINDS[int(rng.integers(3))], {"seq_id": int(rng.choice(visible))}
        else:
            name, arguments = "keep", None
        log.append(f"after the end: {_describe_call('call', name, arguments)}")
        where = f"end: {_describe_call('call', name, arguments)}"
        before = chk.snapshot()
        result = episode.call(name, arguments)
        out.calls += 1
        out.refused += 1
        need(result.startswith("error: "), "a call after the end was accepted", result)
        need(snapshot(episode.engine) == before, "a call after the end changed the engine")
        try:
            episode.advance()
        except EpisodeError:
            pass
        else:
            raise Violation("advance() after the end did not raise EpisodeError")
        chk.check(where)
        need(episode.score() == score and episode.history == history,
             "a call after the end changed the score or history")
        if rebuild and rng.random() < 0.125:  # a replay costs a whole episode: sampled
            where += " then from_state"
            _same_episode(episode, Episode.from_state(episode.state_dict()),
                          "from_state replays a call made after the end (refused live) "
                          "into the last step")
        payload = json.dumps([spec.index, episode.observation.text(), score, history,
                              out.calls, out.accepted, out.refused], sort_keys=True,
                             default=str)
        out.digest = hashlib.sha256(payload.encode()).hexdigest()
    except Exception as exc:  # noqa: BLE001 - anything escaping is what a soak looks for
        kind = "violation" if isinstance(exc, Violation) else "exception"
        frames = traceback.extract_tb(exc.__traceback__)
        site = next((f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames)
                     if "kv_cache_rl" in f.filename), frames[-1].name if frames else "?")
        message = str(exc).split("\n")[0]
        out.failure = {
            "kind": kind, "type": type(exc).__name__, "where": where,
            "message": str(exc)[:2000], "site": site if kind == "exception" else "",
            "signature": (f"exception: {type(exc).__name__} at {site}: {_generic(message)}"
                          if kind == "exception" else f"violation: {exc.label}"),
            "spec": spec.describe(), "index": spec.index, "log": log,
            "traceback": "".join(traceback.format_exception(exc))[-3000:],
        }
        out.digest = hashlib.sha256(json.dumps([spec.index, "failed", kind, type(exc).__name__,
                                                where]).encode()).hexdigest()
    return out


def _generic(message: str, width: int = 160) -> str:
    """A message with its numbers and quoted values taken out (to group messages)."""
    message = re.sub(r"'[^']*'|\[[^\]]*\]|\{[^}]*\}|np\.int64\(\d+\)", "X", message)
    return re.sub(r"-?\d+(\.\d+)?(e[+-]?\d+)?|nan|inf", "N", message)[:width]


def play_group(specs: list[Spec]) -> list[Outcome]:
    return [play(s) for s in specs]


# ---- the run ---------------------------------------------------------------------------------
def parse_steps(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    lo, hi = int(lo), int(hi or lo)
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"--steps must be N or LO:HI with 1 <= LO <= HI, "
                                         f"got {text!r}")
    return lo, hi


def source_fingerprint() -> str:
    """A hash of the package's sources: the code state a result belongs to."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "kv_cache_rl").rglob("*.py")):
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sequences", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--steps", type=parse_steps, default=(2, 4), help="N or LO:HI (2:4)")
    p.add_argument("--seed-pool", type=int, default=100,
                   help="scenario seeds per tier (sequences share their scenarios)")
    p.add_argument("--only", type=int, default=None, help="replay one sequence, verbosely")
    p.add_argument("--verbose", action="store_true", help="print every failure in full")
    args = p.parse_args(argv)

    if args.only is not None:
        spec = make_spec(args.seed, args.only, args.steps, args.seed_pool)
        print(f"sequence {spec.index}: {spec.describe()} action_seed={spec.action_seed}")
        out = play(spec, verbose=True)
        if out.failure:
            print(out.failure["traceback"])
            print("FAILED:", out.failure["signature"])
            return 1
        print(f"ok: {out.steps} steps, {out.calls} calls ({out.accepted} accepted, "
              f"{out.refused} refused), digest {out.digest[:16]}")
        return 0

    start = time.perf_counter()
    specs = [make_spec(args.seed, i, args.steps, args.seed_pool) for i in range(args.sequences)]
    groups: dict[tuple, list[Spec]] = {}
    for s in specs:  # one task per scenario group: its scenarios are built once
        groups.setdefault(s.group, []).append(s)
    tasks = sorted(groups.values(), key=len, reverse=True)  # the longest first
    outcomes: list[Outcome] = []
    if args.jobs <= 1:
        for t in tasks:
            outcomes += play_group(t)
    else:
        with ProcessPoolExecutor(args.jobs) as ex:
            for result in ex.map(play_group, tasks, chunksize=1):
                outcomes += result
    wall = time.perf_counter() - start
    outcomes.sort(key=lambda o: o.index)

    failures = [o.failure for o in outcomes if o.failure]
    digest = hashlib.sha256("".join(o.digest for o in outcomes).encode()).hexdigest()
    kinds, refusals = Counter(), Counter()
    for o in outcomes:
        kinds.update(o.kinds)
        refusals.update(o.refusals)
    cover = Counter((s.tier, f"{s.pair[0]}/{s.pair[1]}/tp{s.pair[2]}") for s in specs)
    lo, hi = args.steps
    print(f"soak: seed {args.seed}, steps {lo}..{hi}, seed pool {args.seed_pool}, jobs "
          f"{args.jobs}, sources {source_fingerprint()}")
    print(f"sequences {len(outcomes)}  steps {sum(o.steps for o in outcomes)}  calls "
          f"{sum(o.calls for o in outcomes)} ({sum(o.accepted for o in outcomes)} accepted: "
          + ", ".join(f"{k} {kinds[k]}" for k in ("evict", "compress", "swap_to_cpu", "keep"))
          + f"; {sum(o.refused for o in outcomes)} refused)  scenarios "
          f"{len({(s.tier, s.pair, s.seed) for s in specs})}  failures {len(failures)}  "
          f"wall {wall:.1f} s "
          f"({1000 * wall / max(len(outcomes), 1):.1f} ms/sequence)")
    print("coverage (sequences per tier and pair): " + "; ".join(
        f"{t} " + ", ".join(f"{pr} {cover[(t, pr)]}" for pr in
                            sorted({f"{m}/{g}/tp{t}" for m, g, t in PAIRS}))
        for t in DIFFICULTIES))
    print("refusals: " + "; ".join(f"{n} x {m!r}" for m, n in refusals.most_common()))
    print(f"digest {digest[:32]} (of every sequence's outcome: equal for any --jobs)")
    if failures:
        by_sig: dict[str, list[dict]] = {}
        for f in failures:
            by_sig.setdefault(f["signature"], []).append(f)
        print(f"\n{len(failures)} failed sequences, {len(by_sig)} kinds:")
        for sig, fs in sorted(by_sig.items(), key=lambda kv: -len(kv[1])):
            first = min(fs, key=lambda f: len(f["log"]))  # the shortest reproducer
            print(f"\n[{len(fs)}x] {sig}")
            print(f"  e.g. sequence {first['index']} ({first['spec']}), at {first['where']}")
            print(f"  {first['message'][:600]}")
            print(f"  replay: python benchmarks/soak.py --seed {args.seed} --steps {lo}:{hi} "
                  f"--seed-pool {args.seed_pool} --only {first['index']}")
            print("  calls: " + " | ".join(first["log"])[:3000])
            if args.verbose:
                print(first["traceback"])
            print("  sequences: " + " ".join(str(f["index"]) for f in fs[:40])
                  + (" ..." if len(fs) > 40 else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
