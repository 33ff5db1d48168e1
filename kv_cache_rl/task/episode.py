"""One episode played step by step: the single place where actions meet the simulator.

Every adapter (policies, the Gymnasium env, both verifiers environments, the chat server)
drives an :class:`Episode`, so they agree exactly: the same scenario and the same actions give
the same observations and the same reward.

Step contract: at most ``max_calls_per_step`` actions are applied in order, each checked against
the current observation (only visible ids may be acted on); then :meth:`Episode.advance` serves
``step_s`` seconds and returns the next observation. The episode ends after ``steps`` steps.
"""

from __future__ import annotations

import copy
import json
import operator
from dataclasses import dataclass

from kv_cache_rl.errors import ConfigError
from kv_cache_rl.engine import ActionError
from kv_cache_rl.task.observation import Observation, observe
from kv_cache_rl.task.rubric import EpisodeRecord, score
from kv_cache_rl.task.scenario import SCENARIO_OPTIONS, Scenario, make_scenario

ACTION_KINDS = ("evict", "compress", "swap_to_cpu", "keep")
MAX_CALLS_PER_STEP = 8


class EpisodeError(ActionError):
    """An action the episode refuses (not visible, over the cap, after the end, malformed)."""


@dataclass(frozen=True)
class Action:
    kind: str
    seq_id: int | None = None

    def __str__(self) -> str:
        return self.kind + "()" if self.seq_id is None else f"{self.kind}({self.seq_id})"


class Episode:
    """A scenario in play. Build with ``Episode(make_scenario("hard", 7))``."""

    def __init__(self, scenario: Scenario, *, max_calls_per_step: int = MAX_CALLS_PER_STEP):
        if max_calls_per_step < 1:
            raise ConfigError("max_calls_per_step must be >= 1")
        self.scenario = scenario
        self.max_calls_per_step = max_calls_per_step
        self.observation = scenario.first_observation  # before the copy: see there
        self.engine = scenario.start()
        self.step_index = 0
        self.calls_this_step = 0
        self.record = EpisodeRecord(scenario.difficulty, scenario.seed, scenario.steps,
                                    step_s=scenario.step_s,
                                    reference_tokens=scenario.reference_tokens,
                                    reference_hit_rate=scenario.reference_hit_rate)
        self.history: list[list[str]] = [[]]  # actions applied, per step
        self.calls: list[list[list]] = [[]]  # every call received, per step: [name, arguments]
        self._start = self._counters()
        self._above = 0

    @classmethod
    def from_seed(cls, difficulty: str, seed: int, **kwargs) -> "Episode":
        scenario_kw = {k: kwargs.pop(k) for k in SCENARIO_OPTIONS if k in kwargs}
        return cls(make_scenario(difficulty, seed, **scenario_kw), **kwargs)

    @property
    def done(self) -> bool:
        return self.step_index >= self.scenario.steps

    def text(self) -> str:
        return self.observation.text()

    def _observe(self, last_pending: int) -> Observation:
        return observe(self.engine, step=self.step_index,
                       steps_total=self.scenario.steps, above=self._above,
                       last_pending=last_pending)

    # ---- actions ------------------------------------------------------------------------
    def apply(self, action: Action) -> str:
        """Apply one action; return a short result. Raises :class:`ActionError` if refused."""
        if self.done:
            raise EpisodeError("the episode is over; no more actions")
        if action.kind not in ACTION_KINDS:
            raise EpisodeError(f"unknown action {action.kind!r}; use one of "
                               f"{', '.join(ACTION_KINDS)}")
        if self.calls_this_step >= self.max_calls_per_step:
            raise EpisodeError(f"at most {self.max_calls_per_step} actions per step; "
                               "this one was not applied")
        if action.kind == "keep":
            self._applied(action)
            return "ok: keep (no change)"
        if action.seq_id is None or action.seq_id not in self.observation.visible:
            raise EpisodeError(f"seq_id {action.seq_id} is not visible; act on one of "
                               f"{sorted(self.observation.visible)}")
        engine = self.engine
        seq = engine.sequence(action.seq_id)
        entry = self.observation.visible[action.seq_id]
        if action.kind == "evict":
            kind, tokens, session = seq.kind, seq.kv_tokens, seq.session_id
            turn = seq.req.turn if seq.req is not None else 0
            freed = engine.evict(action.seq_id)
            self.record.evictions.append({
                "kind": kind, "tokens": tokens, "session": session, "turn": turn,
                "time_s": engine.now, "risky": kind == "system" or entry.priority > 0
                or (kind == "generation" and entry.progress > 0.5), "reused": False})
            message = f"ok: evicted {action.seq_id} ({kind}), {freed:g} blocks freed"
        elif action.kind == "compress":
            units = engine.compress(action.seq_id)
            message = (f"ok: compressed {action.seq_id} to {engine.profile.tiers[seq.tier].name}"
                       f", {units / 4:g} blocks freed")
        else:
            seconds = engine.swap_to_cpu(action.seq_id)
            message = f"ok: swapped {action.seq_id} to cpu ({1000 * seconds:.2f} ms on the link)"
        self._applied(action)
        return message

    def _applied(self, action: Action) -> None:
        self.calls_this_step += 1
        self.record.actions += 1
        self.history[-1].append(str(action))

    def call(self, name: str, arguments: dict | str | None = None) -> str:
        """Tool-call front end for language models: never raises, errors come back as text."""
        if self.done and len(self.calls) == self.step_index:
            self.calls.append([])  # calls after the end: refused, and replayed after it
        self.calls[-1].append([name, arguments])
        try:
            action = parse_call(name, arguments)
            return self.apply(action)
        except ActionError as exc:
            self.record.invalid_actions += 1
            return f"error: {exc}"

    # ---- time ---------------------------------------------------------------------------
    def _counters(self) -> tuple:
        s = self.engine.stats
        return (s.generated_tokens, s.quality_loss, s.preemptions, s.evicted_active,
                s.swap_latency_s, s.wrong_answers, s.cached_prompt_tokens, s.prompt_tokens)

    def advance(self) -> Observation:
        """Serve one step; return the next observation."""
        if self.done:
            raise EpisodeError("the episode is over")
        engine, record = self.engine, self.record
        failures_before = record.failures
        blocked_before = engine.stats.memory_blocked_s
        waiting_before = len(engine.waiting)
        self.step_index += 1
        engine.run_until(self.scenario.warmup_s + self.step_index * self.scenario.step_s)
        usage = round(engine.pool.usage, 4)
        record.step_usage.append(usage)
        if usage > 0.95:
            self._above += 1
        now = self._counters()
        gen, loss, pre, evicted, swap, wrong, cached, prompt = (
            a - b for a, b in zip(now, self._start))
        record.tokens_served = round(gen - loss, 6)
        record.preemptions, record.evicted_active = pre, evicted
        record.swap_latency_s = swap
        record.wrong_answers = round(wrong, 6)
        record.cached_prompt_tokens, record.prompt_tokens = cached, prompt
        self.calls_this_step = 0
        if self.done:
            self._settle()
        record.step_failures.append(round(record.failures - failures_before, 6))
        record.step_blocked_s.append(round(engine.stats.memory_blocked_s - blocked_before, 6))
        if not self.done:
            self.history.append([])
            self.calls.append([])
        self.observation = self._observe(waiting_before)
        return self.observation

    def _settle(self) -> None:
        """At the end, from what the trace holds after it: which evictions lost value, and the
        expected wrong answers of quantized KV still held (generations that will finish on it,
        contexts a returning session will read, a compressed system prompt every later
        request reads)."""
        sc, engine = self.scenario, self.engine
        requests = sc.trace.requests
        horizon = requests[-1].arrival_s if requests else sc.end_s
        for e in self.record.evictions:
            if e["kind"] == "generation":
                e["reused"] = True  # an aborted request always recomputes
            elif e["kind"] == "system":
                e["reused"] = any(e["time_s"] < r.arrival_s <= horizon for r in requests)
            elif e["kind"] == "context":
                last = sc.last_turn.get(e["session"], -1)
                if last > 0:  # turns are numbered: does the session have a later one?
                    e["reused"] = last > e["turn"]
                else:  # a raw trace numbers no turns: does the session arrive again?
                    e["reused"] = any(r.session_id == e["session"]
                                      and e["time_s"] < r.arrival_s <= horizon for r in requests)
        later = sum(1 for r in requests if r.arrival_s > engine.now)
        self.record.wrong_answers = round(self.record.wrong_answers + engine.pending_wrong_answers(
            sc.last_turn, later), 6)

    def score(self) -> dict[str, float]:
        """The rubric's values and the weighted reward (complete once :attr:`done`)."""
        return score(self.record)

    def clone(self) -> "Episode":
        """An independent copy of the episode in its current state (for planning)."""
        new = copy.copy(self)
        new.engine = self.engine.clone()
        new.record = EpisodeRecord.from_dict(copy.deepcopy(self.record.to_dict()))
        new.history = [list(h) for h in self.history]
        new.calls = [list(c) for c in self.calls]
        return new

    # ---- plain-data state (for out-of-process tools) -------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to rebuild this episode exactly: the scenario and every call, as
        plain JSON data (the calls are copied through JSON, at C speed: the verifiers adapters
        build a state after every tool call)."""
        sc = self.scenario
        return {"difficulty": sc.difficulty, "seed": sc.seed, **sc.options,
                "max_calls_per_step": self.max_calls_per_step,
                "calls": json.loads(json.dumps(self.calls, default=_plain)),
                "step_index": self.step_index}

    @classmethod
    def from_state(cls, state: dict) -> "Episode":
        """Rebuild an episode by replaying its calls on its (cached, deterministic) scenario."""
        options = {k: state[k] for k in SCENARIO_OPTIONS if k in state}
        episode = cls(make_scenario(state["difficulty"], state["seed"], **options),
                      max_calls_per_step=state["max_calls_per_step"])
        for k, calls in enumerate(state["calls"]):
            for name, arguments in calls:
                episode.call(name, arguments)
            if k < state["step_index"]:
                episode.advance()
        return episode


def _plain(value):
    """JSON for what a caller may pass beyond JSON types (numpy scalars and the like)."""
    return value.item() if hasattr(value, "item") else str(value)


def parse_call(name: str, arguments: dict | str | None) -> Action:
    """Validate a tool call's name and arguments (a dict or a JSON string)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise EpisodeError(f"arguments are not valid JSON ({exc.msg})") from None
    arguments = {} if arguments is None else arguments
    if not isinstance(arguments, dict):
        raise EpisodeError("arguments must be a JSON object")
    if name not in ACTION_KINDS:
        raise EpisodeError(f"unknown tool {name!r}; use one of {', '.join(ACTION_KINDS)}")
    if name == "keep":
        if arguments:
            raise EpisodeError(f"keep takes no arguments, got {sorted(map(str, arguments))}")
        return Action("keep")
    extra = sorted(map(str, set(arguments) - {"seq_id"}))
    if extra:
        raise EpisodeError(f"{name} takes only seq_id, got unexpected {extra}")
    if "seq_id" not in arguments:
        raise EpisodeError(f"{name} needs seq_id (an integer from visible_seq_ids)")
    seq_id = arguments["seq_id"]
    if isinstance(seq_id, str) and seq_id.strip().lstrip("-").isdigit():
        seq_id = int(seq_id)
    elif not isinstance(seq_id, (bool, int)) and hasattr(seq_id, "__index__"):
        seq_id = operator.index(seq_id)  # a numpy integer, as a Gym policy may pass
    if isinstance(seq_id, bool) or not isinstance(seq_id, int):
        raise EpisodeError(f"seq_id must be an integer, got {seq_id!r}")
    return Action(name, seq_id)
