"""The v0 (classic verifiers, 0.3.x) environment: a ``vf.StatefulToolEnv``.

The episode lives in the rollout state and is injected into the tools as a hidden argument
(``args_to_skip`` / ``update_tool_args``). ``env_response`` applies every tool call of the
assistant message in order, advances the simulator one step and attaches the observation
(:mod:`kv_cache_eviction.common` states the protocol); the last step sets
``final_env_response``, which ends the rollout.
"""

from __future__ import annotations

import json

from kv_cache_rl.task.episode import Episode
from kv_cache_rl.task.rubric import RUBRIC

from kv_cache_eviction.common import (EXTRA_METRICS, HARDWARE_KEYS, TOOL_DOCS, EnvArgs, finish,
                                      new_episode, play_turn, scores, system_prompt,
                                      user_prompt)

V1_ENTRY_POINT = ("the v1 taskset kv_cache_eviction.KVCacheEvictionTaskset (with its Env "
                  "KVCacheEvictionEnv): `vf-eval kv-cache-eviction -m MODEL --client.base-url URL "
                  "--client.api-key-var VAR -n N --no-push`, arguments as "
                  "--env.taskset.<name>")


def _legacy():
    """``import verifiers as vf`` with the v0 API, or a clear error naming the v1 entry point."""
    try:
        import verifiers as vf

        vf.StatefulToolEnv  # noqa: B018 - 0.3.x resolves it through verifiers.legacy
        from datasets import Dataset
    except (ImportError, AttributeError):
        try:
            from importlib.metadata import version

            found = f"verifiers {version('verifiers')}"
        except Exception:  # noqa: BLE001
            found = "this verifiers"
        raise RuntimeError(
            f"load_environment is the v0 (classic verifiers) entry point, and {found} has no v0 "
            f"API (StatefulToolEnv was removed in 0.4). Use {V1_ENTRY_POINT}. The v0 "
            "environment needs verifiers>=0.3.1,<0.4.") from None
    return vf, Dataset


# ---- tools: declared to StatefulToolEnv for their schemas (the episode argument hidden); a turn's
# calls run through common.play_turn, i.e. Episode.call, the one dispatch the v1 toolset uses too

def evict(seq_id: int, episode: Episode) -> str:
    return episode.call("evict", {"seq_id": seq_id})


def compress(seq_id: int, episode: Episode) -> str:
    return episode.call("compress", {"seq_id": seq_id})


def swap_to_cpu(seq_id: int, episode: Episode) -> str:
    return episode.call("swap_to_cpu", {"seq_id": seq_id})


def keep(episode: Episode) -> str:
    return episode.call("keep", {})


TOOLS = (evict, compress, swap_to_cpu, keep)
for _tool in TOOLS:
    _tool.__doc__ = TOOL_DOCS[_tool.__name__]


def _rubric_func(name: str):
    async def func(state) -> float:
        return state["kv_scores"][name]

    func.__name__ = func.__qualname__ = name
    return func


def load_environment(difficulty: str = "all", num_examples: int = -1, seed: int = 42,
                     steps: int = 20, max_calls_per_step: int = 8,
                     trace_path: str | None = None, model: str | None = None,
                     gpu: str | None = None, tensor_parallel_size: int = 1, **kwargs):
    """The v0 environment. ``difficulty`` all|easy|medium|hard; ``num_examples`` -1 = the
    whole catalogue (100 seeds per difficulty); task ``i`` is scenario
    :meth:`EnvArgs.example`; ``steps`` per episode; ``max_calls_per_step`` tool calls per
    assistant message; ``trace_path`` a raw trace to cut the episodes from; ``model``, ``gpu``
    and ``tensor_parallel_size`` the simulated server (a shipped profile). Other keyword
    arguments go to ``vf.StatefulToolEnv``."""
    vf, Dataset = _legacy()
    args = EnvArgs(difficulty, num_examples, seed, steps, max_calls_per_step, trace_path,
                   model, gpu, tensor_parallel_size)

    class KVCacheEvictionV0Env(vf.StatefulToolEnv):
        def __init__(self, **kw):
            super().__init__(tools=[], max_turns=args.steps + 2, **kw)
            for tool in TOOLS:
                self.add_tool(tool, args_to_skip=["episode"])

        async def setup_state(self, state, **kw):
            info = state["info"]
            episode = new_episode(info["difficulty"], info["seed"], info["steps"],
                                  info["max_calls_per_step"], info.get("trace_path"),
                                  **{k: info[k] for k in HARDWARE_KEYS
                                     if info.get(k) is not None})
            state["kv_episode"] = episode
            # the first observation joins the prompt here, so building the dataset is instant
            prompt = list(state["prompt"])
            last = prompt[-1]
            prompt[-1] = type(last)(**{**last.model_dump(), "content": user_prompt(episode)})
            state["prompt"] = prompt
            return await super().setup_state(state, **kw)

        def update_tool_args(self, tool_name, tool_args, messages, state, **kw):
            """StatefulToolEnv's hook: the episode is the tools' hidden argument."""
            return {**tool_args, "episode": state["kv_episode"]}

        async def env_response(self, messages, state, **kw):
            episode: Episode = state["kv_episode"]
            calls = messages[-1].tool_calls or []
            texts = play_turn(episode, [(c.name, c.arguments) for c in calls])
            if calls:
                out = [vf.ToolMessage(tool_call_id=c.id, content=t) for c, t in zip(calls, texts)]
            else:  # a reply without tool calls: a step with no action
                out = [vf.UserMessage(content=texts[0])]
            if episode.done:
                state["final_env_response"] = out
            return out

        async def no_tools_called(self, state) -> bool:
            """Not a stop here: a reply without tool calls is a step with no action."""
            return False

        @vf.cleanup
        async def score_episode(self, state) -> None:
            episode = state.get("kv_episode")
            if episode is not None:
                state["kv_scores"] = scores(finish(episode))
                state["kv_state"] = episode.state_dict()

    def rows():
        header = system_prompt(args.max_calls_per_step, hardware=args.hardware)
        out = []
        for i in range(args.size):
            difficulty, seed = args.example(i)
            info = {"difficulty": difficulty, "seed": seed, "steps": args.steps,
                    "max_calls_per_step": args.max_calls_per_step}
            if args.trace_path is not None:
                info["trace_path"] = args.trace_path
            info.update(args.hardware)
            out.append({
                "prompt": [{"role": "system", "content": header},
                           {"role": "user", "content": f"Scenario: difficulty {difficulty}, "
                                                       f"seed {seed} (observation below)."}],
                "info": json.dumps(info), "answer": "", "task": "kv-cache-eviction"})
        return Dataset.from_list(out).map(lambda r: {"info": json.loads(r["info"])})

    names = [fn.__name__ for fn, _ in RUBRIC] + list(EXTRA_METRICS)
    weights = [w for _, w in RUBRIC] + [0.0] * len(EXTRA_METRICS)
    rubric = vf.Rubric(funcs=[_rubric_func(n) for n in names], weights=weights)
    dataset = rows()
    return KVCacheEvictionV0Env(dataset=dataset, eval_dataset=dataset, rubric=rubric, **kwargs)
