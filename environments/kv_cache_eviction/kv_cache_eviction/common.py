"""What both adapters share, with no verifiers import: arguments, the task list, the prompt,
the turn protocol and a cache of live episodes.

Turn protocol (identical in v0, v1 and :func:`play_turns`, the core reference):

* One task = one scenario ``(difficulty, seed)``; the prompt holds the instructions (system)
  and the scenario line plus the first observation (user).
* One assistant message = one simulator step. Its tool calls are applied in order through
  :meth:`Episode.call`, then :meth:`Episode.advance` runs the step.
* A malformed call (unknown tool, arguments that are not a JSON object, a missing, extra or
  non-integer ``seq_id``) gets the core's error text and changes nothing; so do an id that is
  not visible, a call over the per-step cap and a call after the end.
* The observation that follows the step is appended (after a blank line) to one tool result:
  the result of the last well-formed call of the message, or the last result when none is
  well-formed (:func:`carrier_index`). A reply with no tool call is a step with no action;
  the observation comes back as a user message.
* After the last step the appended text says the episode is over and the rollout ends.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from kv_cache_rl.engine import ActionError
from kv_cache_rl.task.episode import ACTION_KINDS, MAX_CALLS_PER_STEP, Episode, parse_call
from kv_cache_rl.task.rubric import RUBRIC
from kv_cache_rl.task.scenario import DIFFICULTIES, SCENARIO_OPTIONS, Scenario, trace_file

DIFFICULTY_CHOICES = ("all", *DIFFICULTIES)
EXAMPLES_PER_DIFFICULTY = 100  # num_examples=-1: 100 seeds per difficulty (300 for "all")
DEFAULT_SEED = 42
DEFAULT_STEPS = 20
RUBRIC_WEIGHTS = {fn.__name__: weight for fn, weight in RUBRIC}
# not in the core rubric: malformed or refused calls, and the episode's normalised score
# (keep 0, the hindsight oracle 1: kv_cache_rl.apps.bench.normalize)
EXTRA_METRICS = ("invalid_calls", "normalized_score")

SYSTEM_PROMPT = """\
You manage the KV cache of an LLM inference server (vLLM-style paged attention, {server}) \
under memory pressure. Every turn you see an observation of the cache; you \
answer with tool calls, which are applied in order, and then the server runs for one step \
({step_s} seconds) and you see the next observation. The episode has a fixed number of steps. \
Agent sessions come back a tool-call pause after their turn ends (search, python, shell calls \
take seconds; a user may take minutes or never return); a late turn delays its session.

Tools (act only on ids listed in visible_seq_ids):
- evict(seq_id): drop an entry's KV blocks. A running generation is aborted and must recompute; \
a session's context or the system prompt that is needed again must be recomputed.
- compress(seq_id): quantize an entry one precision tier (fp16 -> int8 -> int4), halving its \
memory; answers later decoded on it risk being wrong (costs below).
- swap_to_cpu(seq_id): move an entry to host memory over PCIe (costs transfer time, frees GPU \
memory, bounded by the cpu swap space).
- keep(): do nothing this step.

Send all of a step's actions as tool calls in one message (at most {max_calls} per step); \
send keep() when no action is needed. A message with no tool call also counts as a step with \
no action.

Costs, as the operator measured them: recomputing a dropped prompt takes {prefill_us:.0f} us per \
token; moving one block (16 tokens) over PCIe takes {swap_us:.0f} us each way; an answer decoded \
on quantized KV is wrong with probability (int8 / int4): chat {chat8:g} / {chat4:g}, code \
{code8:g} / {code4:g}, reasoning {reas8:g} / {reas4:g}. Chat traffic already runs on int8 (fp8) KV.

Objective (the reward): few failed requests (engine preemptions when the pool runs out of \
blocks, generations you abort by evicting them, expected wrong answers from quantized KV, \
including quantized KV a returning session will read), high goodput (tokens of correct \
answers), room to admit arriving requests (time in which waiting work could not start for \
lack of KV memory counts against you; free memory beyond that earns nothing), a prefix-cache \
hit rate near the unlimited-memory server's, few evictions of entries needed again, little \
swap time. The score is normalised per episode: the server with no agent scores 0, a \
hindsight oracle that uses these same tools scores 1.

Entry columns: id kind type session turns waits tokens blocks tier loc prio progress idle_s \
pause_s. type is the session's application; turns its turns so far; waits what a \
context's session waits on (user, or the tool in flight); idle_s the seconds since it last \
ran; pause_s the mean pause between its earlier turns; blocks exactly what evicting it frees \
(and what swapping moves; compressing frees half, up to three quarters where an int8 entry \
still holds fp16 blocks); progress is a generation's share \
of its output done. The eviction candidates are listed safest first."""


# The tools' descriptions (their schemas' text in both adapters).
TOOL_DOCS = {
    "evict": "Evict the entry `seq_id` (one of visible_seq_ids): its KV blocks are dropped at "
             "once. A running generation is aborted and recomputed later; context or a system "
             "prompt that is needed again must be recomputed.",
    "compress": "Compress the entry `seq_id` (one of visible_seq_ids) one precision tier (fp16 "
                "-> int8 -> int4), halving the GPU memory it holds; answers decoded on it "
                "risk being wrong, by request type (reasoning most).",
    "swap_to_cpu": "Swap the entry `seq_id` (one of visible_seq_ids) to host memory over PCIe: "
                   "frees its GPU blocks, costs transfer time, limited by the cpu swap space.",
    "keep": "Take no action this step.",
}
SEQ_ID_DOC = "The id of a cache entry, one of visible_seq_ids."


HARDWARE_KEYS = ("model", "gpu", "tensor_parallel_size")  # EnvArgs' server options, by name


@dataclass(frozen=True)
class EnvArgs:
    """The environment arguments (v0 ``load_environment`` kwargs, v1 taskset config fields)."""

    difficulty: str = "all"
    num_examples: int = -1
    seed: int = DEFAULT_SEED
    steps: int = DEFAULT_STEPS
    max_calls_per_step: int = MAX_CALLS_PER_STEP
    trace_path: str | None = None  # cut every task's episode from a window of this raw trace
    # the simulated server (a shipped profile; None: Llama-3.1-8B on one RTX PRO 6000)
    model: str | None = None
    gpu: str | None = None
    tensor_parallel_size: int = 1  # GPUs the model is sharded over (vLLM's tensor parallel)

    def __post_init__(self) -> None:
        if self.difficulty not in DIFFICULTY_CHOICES:
            raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTY_CHOICES)}, "
                             f"got {self.difficulty!r}")
        if self.num_examples < -1 or self.num_examples == 0:
            raise ValueError("num_examples must be -1 (all) or >= 1")
        if self.steps < 1 or self.max_calls_per_step < 1:
            raise ValueError("steps and max_calls_per_step must be >= 1")
        if self.trace_path is not None:
            trace_file(self.trace_path)  # fail now, not at the first task
        from kv_cache_rl.task.scenario import resolve_hardware
        resolve_hardware(self.model, self.gpu, self.tensor_parallel_size)  # unknown: fails now

    @property
    def hardware(self) -> dict:
        """The server options to pass on (only those given: default tasks stay as they were)."""
        out = {"model": self.model, "gpu": self.gpu}
        out = {k: v for k, v in out.items() if v is not None}
        if self.tensor_parallel_size != 1:
            out["tensor_parallel_size"] = self.tensor_parallel_size
        return out

    @property
    def size(self) -> int:
        """How many tasks: ``num_examples``, or the whole catalogue for -1."""
        if self.num_examples > 0:
            return self.num_examples
        return EXAMPLES_PER_DIFFICULTY * (len(DIFFICULTIES) if self.difficulty == "all" else 1)

    def example(self, i: int) -> tuple[str, int]:
        """Task ``i`` -> scenario ``(difficulty, seed)``. ``all`` interleaves the difficulties:
        task ``i`` is ``(DIFFICULTIES[i % 3], seed + i // 3)``; a single difficulty ``d`` gives
        ``(d, seed + i)``. So the first ``3 n`` tasks of ``all`` are the scenarios of
        ``kv-cache-rl bench --seed SEED --episodes n``."""
        if self.difficulty == "all":
            return DIFFICULTIES[i % len(DIFFICULTIES)], self.seed + i // len(DIFFICULTIES)
        return self.difficulty, self.seed + i

    def episode(self, i: int) -> Episode:
        difficulty, seed = self.example(i)
        return new_episode(difficulty, seed, self.steps, self.max_calls_per_step,
                           self.trace_path, **self.hardware)


def new_episode(difficulty: str, seed: int, steps: int, max_calls_per_step: int,
                trace_path: str | None = None, **hardware) -> Episode:
    """``hardware``: ``model``, ``gpu``, ``tensor_parallel_size`` (see ``make_scenario``)."""
    return Episode.from_seed(difficulty, seed, steps=steps, max_calls_per_step=max_calls_per_step,
                             trace_path=trace_path, **hardware)


def system_prompt(max_calls_per_step: int, step_s: float = Scenario.step_s,
                  hardware: dict | None = None) -> str:
    """The instructions, with the server (``hardware``: make_scenario's model, gpu and
    tensor_parallel_size; default Llama-3.1-8B on one RTX PRO 6000) and its costs filled in."""
    from kv_cache_rl.hardware.profiles import GPU_LABELS
    from kv_cache_rl.policies.costs import costs
    from kv_cache_rl.task.scenario import resolve_hardware

    model, gpu, tp = resolve_hardware(**(hardware or {}))
    c = costs(model, gpu, tp)
    w = c["wrong"]
    label = GPU_LABELS.get(gpu, gpu)
    server = f"{model} on one {label}" if tp == 1 else f"{model} on {tp} {label} GPUs, tensor parallel"
    return SYSTEM_PROMPT.replace("{max_calls}", str(max_calls_per_step)).format(
        server=server, step_s=f"{step_s:g}", prefill_us=1e6 * c["prefill_s_per_token"],
        swap_us=1e6 * c["swap_s_per_block"], chat8=w["chat"][1], chat4=w["chat"][2],
        code8=w["code"][1], code4=w["code"][2], reas8=w["reasoning"][1],
        reas4=w["reasoning"][2])


def user_prompt(episode: Episode) -> str:
    sc = episode.scenario
    source = "" if sc.trace_path is None else f", a window of trace {Path(sc.trace_path).name}"
    return (f"Scenario: difficulty {sc.difficulty}, seed {sc.seed}{source}, {sc.steps} steps of "
            f"{sc.step_s:g} s. The first observation:\n\n{episode.text()}")


def after_step(episode: Episode) -> str:
    """What the model reads after a step: the next observation, or the end of the episode."""
    if episode.done:
        obs = episode.observation
        return (f"The episode is over: all {episode.scenario.steps} steps were played "
                f"(final memory_usage {obs.memory_usage:.4f}, time_above_0_95 "
                f"{obs.time_above_0_95}). No more actions.")
    return episode.text()


def attach(result: str, observation: str) -> str:
    return f"{result}\n\n{observation}"


def call_error(name: str, arguments) -> str | None:
    """The core's error text for a malformed call (exactly what :meth:`Episode.call` returns
    for it), or None for a well-formed one."""
    try:
        parse_call(name, arguments)
    except ActionError as exc:
        return f"error: {exc}"
    return None


def carrier_index(calls: list[tuple[str, object]]) -> int:
    """Which of a message's tool results carries the step's observation: the last well-formed
    call's, else the last one's."""
    good = [i for i, (name, args) in enumerate(calls) if call_error(name, args) is None]
    return good[-1] if good else len(calls) - 1


def play_turn(episode: Episode, calls: list[tuple[str, object]]) -> list[str]:
    """One assistant turn: each call through :meth:`Episode.call` (a malformed one is recorded
    and answered with its error), then one simulator step; the step's observation goes on the
    carrier's result. Returns one text per call, or the observation alone for a turn without
    calls (a step with no action)."""
    texts = [episode.call(name, arguments) for name, arguments in calls]
    if not episode.done:
        episode.advance()
    note = after_step(episode)
    if not texts:
        return [note]
    k = carrier_index(calls)
    texts[k] = attach(texts[k], note)
    return texts


def finish(episode: Episode) -> Episode:
    """Play the steps a rollout did not reach with no action, so the reward is always the
    whole episode's (a rollout cut short by a limit or an early stop)."""
    while not episode.done:
        episode.advance()
    return episode


def scores(episode: Episode) -> dict[str, float]:
    """The core rubric's values (and ``reward``) plus the extra metrics."""
    from kv_cache_rl.apps.bench import normalize
    from kv_cache_rl.policies.oracle import played

    values = dict(episode.score())
    values["invalid_calls"] = float(episode.record.invalid_actions)
    sc, cap = episode.scenario, episode.max_calls_per_step
    # keep's and the oracle's rewards, computed once per scenario (memoised on it)
    values["normalized_score"] = normalize(values["reward"], played(sc, "keep", cap)[0],
                                           played(sc, "oracle", cap)[0])
    return values


def play_turns(difficulty: str, seed: int, turns: list, *, steps: int = DEFAULT_STEPS,
               max_calls_per_step: int = MAX_CALLS_PER_STEP,
               trace_path: str | None = None) -> dict:
    """The core reference for the adapters: play ``turns`` (each a list of ``(name, raw JSON
    arguments)`` tool calls, ``[]`` for a text reply) with the turn protocol. Returns the tool
    result texts per turn (observation attached as the adapters attach it), the observations
    and the scores."""
    episode = new_episode(difficulty, seed, steps, max_calls_per_step, trace_path)
    results, observations = [], [episode.text()]
    for calls in turns:
        if episode.done:
            break
        texts = [episode.call(name, args) for name, args in calls]
        episode.advance()
        note = after_step(episode)
        observations.append(note)
        if texts:
            k = carrier_index(calls)
            texts[k] = attach(texts[k], note)
        results.append(texts if texts else [note])
    finish(episode)
    return {"results": results, "observations": observations, "scores": scores(episode)}


def policy_turns(difficulty: str, seed: int, policy: str, *, steps: int = DEFAULT_STEPS,
                 trace_path: str | None = None) -> list:
    """The turns a built-in policy plays in ``runner.play`` (every call it made, as ``(name, raw
    JSON arguments)``; a step with no call becomes ``keep()``), for replaying through adapters."""
    from kv_cache_rl.policies import make_policy
    from kv_cache_rl.task.runner import play
    from kv_cache_rl.task.scenario import make_scenario

    episode = play(make_scenario(difficulty, seed, steps=steps, trace_path=trace_path),
                   make_policy(policy))
    return [[(name, json.dumps(args or {})) for name, args in step] or [("keep", "{}")]
            for step in episode.calls]


# ---- live episodes from plain state ------------------------------------------------------------

def _key(state: dict) -> tuple:
    """What identifies a plain state's scenario and call cap (equal to :func:`_episode_key` of
    an episode rebuilt from it)."""
    return (state["difficulty"], state["seed"], *(state.get(k) for k in SCENARIO_OPTIONS),
            state["max_calls_per_step"])


def _lag(episode: Episode, state: dict) -> int | None:
    """How far ``episode`` is behind ``state`` (calls + steps to replay), or None if its history
    is not a prefix of the state's."""
    calls, step = state["calls"], state["step_index"]
    k = episode.step_index
    if k > step or len(episode.calls) > len(calls):
        return None
    if episode.calls[:-1] != calls[:len(episode.calls) - 1]:
        return None
    mine, theirs = episode.calls[-1], calls[len(episode.calls) - 1]
    if theirs[:len(mine)] != mine:
        return None
    return (step - k) + sum(map(len, calls)) - sum(map(len, episode.calls))


def _episode_key(episode: Episode) -> tuple:
    sc = episode.scenario
    options = sc.options
    return (sc.difficulty, sc.seed, *(options.get(k) for k in SCENARIO_OPTIONS),
            episode.max_calls_per_step)


def _catch_up(episode: Episode, state: dict) -> Episode:
    """Replay what ``state`` holds beyond ``episode`` (as :meth:`Episode.from_state` does)."""
    calls, step = state["calls"], state["step_index"]
    j = len(episode.calls) - 1
    for k in range(j, len(calls)):
        done = len(episode.calls[k]) if k == j else 0
        for name, arguments in calls[k][done:]:
            episode.call(name, arguments)
        if k < step and not episode.done:
            episode.advance()
    return episode


class EpisodeCache:
    """Live episodes keyed by what they have played, so rebuilding an episode from its plain
    state (:meth:`Episode.state_dict`) replays only what is new. The state is the truth: an
    episode is taken out of the cache to be used (two users never share one) and put back
    after; a miss replays the state from the start. Thread-safe; bounded (LRU)."""

    def __init__(self, size: int = 64):
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, Episode] = OrderedDict()

    def restore(self, state: dict) -> Episode:
        key = _key(state)
        best, best_lag, scenario = None, None, None
        with self._lock:
            for ident, episode in self._entries.items():
                if _episode_key(episode) != key:
                    continue
                scenario = episode.scenario
                lag = _lag(episode, state)
                if lag is not None and (best_lag is None or lag < best_lag):
                    best, best_lag = ident, lag
            episode = self._entries.pop(best) if best is not None else None
        if episode is not None:
            return _catch_up(episode, state)
        if scenario is not None:  # same scenario, other history: replay it from the start
            return _catch_up(Episode(scenario, max_calls_per_step=key[-1]), state)
        return Episode.from_state(state)

    def put(self, episode: Episode) -> None:
        with self._lock:
            self._entries[id(episode)] = episode
            self._entries.move_to_end(id(episode))
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


CACHE = EpisodeCache()

__all__ = ["ACTION_KINDS", "CACHE", "DIFFICULTY_CHOICES", "EXAMPLES_PER_DIFFICULTY", "EnvArgs",
           "EpisodeCache", "RUBRIC_WEIGHTS", "SEQ_ID_DOC", "SYSTEM_PROMPT", "TOOL_DOCS",
           "after_step", "attach", "call_error", "carrier_index", "finish", "new_episode",
           "play_turn", "play_turns", "scores", "system_prompt", "user_prompt"]
