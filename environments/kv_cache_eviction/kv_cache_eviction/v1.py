"""The v1 environment (verifiers 0.4: ``vf-eval``, prime-rl, hosted evals).

* :class:`KVCacheEvictionTaskset`: its config fields are the environment arguments; one task
  per scenario, prompt = instructions (system) + scenario line and first observation (user).
* :class:`~kv_cache_eviction.tools.KVCacheTools`: the tools, one shared out-of-process server,
  state round-tripped as plain data.
* The per-turn clock, driven host-side by the task's hooks (the model's turn boundary is
  visible to them: every hook sees the conversation):

  - ``protocol`` (``@vf.intercept``). At the tool gate, before the harness runs anything, it
    answers each malformed call with the core's error text (the call never runs). When a
    result reaches the model it appends the step's observation to the carrier result
    (:func:`~kv_cache_eviction.common.carrier_index`). When every call of a message is
    malformed nothing will run, so the step is closed at the gate and the observation goes
    on the last error.
  - ``clock`` (``@vf.stop`` on the trace, run before every model request): closes the turn
    that just ended (after all its tools ran): records its malformed calls, advances the
    simulator one step, keeps the observation in the state. Idempotent per turn.
  - ``finished`` (``@vf.stop`` on the request, after the interceptor): ends the rollout once
    the last step ran, so the final results are committed to the trace first.
  - :meth:`KVCacheEvictionEnv.run`: a reply with no tool call ends the harness's segment; the
    env closes that turn (a step with no action) and sends the observation as a user turn.

Rewards and metrics are the core rubric's functions with its weights (``reward`` = the core
total), plus the ``invalid_calls`` metric.
"""

from __future__ import annotations

from typing import Literal

import verifiers.v1 as vf
from pydantic import Field

from kv_cache_eviction.common import (CACHE, EXTRA_METRICS, HARDWARE_KEYS, RUBRIC_WEIGHTS,
                                      EnvArgs, after_step, attach, call_error, carrier_index,
                                      finish, new_episode, scores, system_prompt, user_prompt)
from kv_cache_eviction.tools import KVCacheTools, KVState


class KVCacheEvictionConfig(vf.TasksetConfig):
    """The environment arguments (``--env.taskset.<name>``)."""

    difficulty: Literal["all", "easy", "medium", "hard"] = "all"
    """Scenario difficulty; ``all`` interleaves easy, medium, hard."""
    num_examples: int = Field(-1, ge=-1)
    """How many tasks (-1: the catalogue, 100 seeds per difficulty)."""
    seed: int = 42
    """The first scenario seed: task i is (DIFFICULTIES[i % 3], seed + i // 3) for ``all``,
    (difficulty, seed + i) otherwise."""
    steps: int = Field(20, ge=1)
    """Simulator steps (assistant turns) per episode."""
    max_calls_per_step: int = Field(8, ge=1)
    """At most this many actions per assistant message; later ones get an error."""
    trace_path: str | None = None
    """A raw trace (JSONL, Azure CSV, Mooncake JSONL) to cut every episode from, instead of
    generating it; it must exist where the environment and its tool server run."""
    model: str | None = None
    """The simulated server's model (a shipped profile; default Llama-3.1-8B)."""
    gpu: str | None = None
    """Its GPU (default RTXPRO6000)."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs the model is sharded over (a shipped TP profile, e.g. Qwen3-32B on RTXPRO6000 at
    2); an unshipped size fails with the available ones."""

    def args(self) -> EnvArgs:
        return EnvArgs(self.difficulty, self.num_examples, self.seed, self.steps,
                       self.max_calls_per_step, self.trace_path, self.model, self.gpu,
                       self.tensor_parallel_size)


class KVCacheEvictionData(vf.TaskData):
    difficulty: str
    seed: int
    steps: int
    max_calls_per_step: int
    trace_path: str | None = None
    model: str | None = None
    gpu: str | None = None
    tensor_parallel_size: int = 1


def close_turn(state: KVState, turn: int, invalid: list[tuple[str, str]]) -> None:
    """End assistant turn ``turn``: record its malformed calls (they change nothing but the
    invalid-call count), run one simulator step and keep what the model reads next."""
    if turn <= state.observed_turn or not state.episode:
        return
    episode = CACHE.restore(state.episode)
    if not episode.done:
        for name, arguments in invalid:
            episode.call(name, arguments)
        episode.advance()
    state.episode = episode.state_dict()
    state.observation = after_step(episode)
    state.observed_turn = turn
    CACHE.put(episode)


def _content(message) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(getattr(part, "text", "") or "" for part in content or [])


class KVCacheEvictionTask(vf.Task[KVCacheEvictionData, KVState, vf.TaskConfig]):
    async def setup(self, trace, runtime) -> None:
        d = self.data
        episode = new_episode(d.difficulty, d.seed, d.steps, d.max_calls_per_step, d.trace_path,
                              **{k: getattr(d, k) for k in HARDWARE_KEYS
                                 if getattr(d, k) not in (None, 1)})
        trace.state.episode = episode.state_dict()
        CACHE.put(episode)

    @vf.stop
    def clock(self, trace: vf.Trace) -> bool:
        """Before each model request: close the assistant turn that just ended."""
        state = trace.state
        turn = trace.num_turns
        if turn > state.observed_turn:
            replies = trace.assistant_messages
            calls = (replies[-1].tool_calls or []) if replies else []
            close_turn(state, turn, [(c.name, c.arguments) for c in calls
                                     if call_error(c.name, c.arguments) is not None])
        state.clock_turns = turn
        return False

    @vf.intercept
    def protocol(self, request: vf.Request, trace: vf.Trace) -> vf.Request | None:
        """Gate malformed calls; attach each step's observation to its carrier result."""
        messages = request.messages
        if not messages or not isinstance(messages[-1], vf.ToolMessage):
            return None
        result = messages[-1]
        turn_at = max((i for i, m in enumerate(messages) if isinstance(m, vf.AssistantMessage)),
                      default=None)
        if turn_at is None:
            return None
        calls = messages[turn_at].tool_calls or []
        index = next((i for i, c in enumerate(calls) if c.id == result.tool_call_id), None)
        if index is None:
            return None
        raw = [(c.name, c.arguments) for c in calls]
        error = call_error(*raw[index])
        carrier = carrier_index(raw)
        turn = sum(isinstance(m, vf.AssistantMessage) for m in messages)
        state = trace.state
        content = _content(result)
        if content == "":  # the gate's probe: this call has not run yet
            if error is None:
                return None  # allowed: the tool server runs it
            text = error
            if index == carrier:  # every call is malformed: nothing will run, the turn ends now
                close_turn(state, turn, raw)
                text = attach(text, state.observation)
        else:  # a result on its way to the model
            text = content if error is None else error
            if index == carrier and state.observed_turn == turn \
                    and not text.endswith(state.observation):
                text = attach(text, state.observation)
        if text == content:
            return None
        new = result.model_copy(update={"content": text})
        return request.model_copy(update={"messages": [*messages[:-1], new]})

    @vf.stop
    def finished(self, request: vf.Request, trace: vf.Trace) -> bool:
        """The last step ran: stop before the model is asked again (not at the tool gate,
        where the clock has not run since the reply: ``clock_turns`` tells them apart)."""
        state = trace.state
        if not state.episode or state.clock_turns != trace.num_turns \
                or state.episode["step_index"] < state.episode["steps"]:
            return False
        # stop at the end of the request, once every result of the turn has its final text
        last = request.messages[-1] if request.messages else None
        if isinstance(last, vf.ToolMessage):
            turn = next((m for m in reversed(request.messages)
                         if isinstance(m, vf.AssistantMessage)), None)
            calls = (turn.tool_calls or []) if turn is not None else []
            return not calls or calls[-1].id == last.tool_call_id
        return True

    async def finalize(self, trace, runtime) -> None:
        state = trace.state
        if not state.episode:
            return
        episode = finish(CACHE.restore(state.episode))
        state.scores = scores(episode)
        trace.info["episode"] = episode.state_dict()  # the replayable log (state is not traced)
        trace.info["steps_played"] = state.observed_turn
        CACHE.put(episode)


def _signal(name: str, weight: float):
    async def signal(self, trace) -> float:
        return float(trace.state.scores[name])

    signal.__name__ = signal.__qualname__ = name
    return vf.reward(signal, weight=weight) if weight > 0 else vf.metric(signal)


for _name, _weight in {**RUBRIC_WEIGHTS, **dict.fromkeys(EXTRA_METRICS, 0.0)}.items():
    setattr(KVCacheEvictionTask, _name, _signal(_name, _weight))


class KVCacheEvictionTaskset(vf.Taskset[KVCacheEvictionTask, KVCacheEvictionConfig]):
    """One task per scenario; see :class:`KVCacheEvictionConfig`."""

    @classmethod
    def toolsets(cls, config):
        return [KVCacheTools(vf.SharedToolsetConfig())]

    def load(self):
        args = self.config.args()
        system = system_prompt(args.max_calls_per_step, hardware=args.hardware)
        for i in range(args.size):
            difficulty, seed = args.example(i)
            episode = args.episode(i)
            yield KVCacheEvictionTask(
                KVCacheEvictionData(
                    name=f"{difficulty}-{seed}", prompt=user_prompt(episode),
                    system_prompt=system, difficulty=difficulty, seed=seed, steps=args.steps,
                    max_calls_per_step=args.max_calls_per_step, trace_path=args.trace_path,
                    **args.hardware),
                self.config.task)


class KVCacheEvictionEnvConfig(vf.EnvConfig):
    # Offline defaults: the tool-calling chat loop (`null` harness) in a local subprocess. No
    # turn limit is needed: the task stops the rollout after the last step.
    agent: vf.AgentConfig = vf.AgentConfig(harness={"id": "null"}, runtime=vf.SubprocessConfig())


class KVCacheEvictionEnv(vf.Env[KVCacheEvictionEnvConfig]):
    async def run(self, task, agents) -> None:
        """One segment of the harness runs until the model replies without a tool call (the
        task's hooks clock the tool-call turns inside it). Such a reply is a step with no
        action: close it and answer with the observation as the next user turn."""
        async with agents.agent.interaction(task) as interaction:
            segment = await interaction.turn()
            while not segment.terminated:
                trace = interaction.trace
                if trace.stop_condition is not None or not trace.state.episode:
                    break
                close_turn(trace.state, trace.num_turns, [])
                segment = await interaction.turn(trace.state.observation)


__all__ = ["KVCacheEvictionConfig", "KVCacheEvictionData", "KVCacheEvictionEnv",
           "KVCacheEvictionEnvConfig", "KVCacheEvictionTask", "KVCacheEvictionTaskset",
           "KVCacheTools", "KVState", "close_turn"]
