"""Drive one verifiers adapter in process, with no model and no network (run inside a verifiers
venv by ``tests/test_env_adapters.py``).

    python tests/adapter_probe.py v0|v1 < cases.json > results.json

A case is ``{"difficulty", "seed", "steps", "max_calls_per_step", "turns"}`` and optionally
``"trace_path"``; ``turns`` is a list of assistant messages, each a list of ``[tool name, raw
JSON arguments]`` (``[]``: a reply with no tool call). The result per case is what
:func:`kv_cache_eviction.common.play_turns` returns for the core: the tool results (or user
turn) the model reads after each message, the observations and the scores.

* v0: the real ``load_environment`` environment: ``setup_state``, ``env_response`` per message,
  the cleanup that scores, the ``vf.Rubric`` functions.
* v1: the real task hooks and tool functions, called in the order verifiers 0.4 calls them
  (``Task.setup``; per message: the tool gate, then the null harness's dispatch (JSON, object,
  known tool) and the tool server's call with the state sent as JSON and back; before the next
  request: the clock, the interceptor per new result, ``finished``; ``Env.run`` for a reply
  with no tool call; ``finalize`` and the rewards). The real ``vf-eval`` runs are in
  ``tests/test_verifiers_e2e.py``.
"""

import asyncio
import json
import sys
from types import SimpleNamespace


def total(scores: dict, weights: dict) -> float:
    """The weighted sum in the core rubric's order (float addition is not associative)."""
    from kv_cache_rl.task.rubric import RUBRIC

    return sum(weights.get(fn.__name__, 0.0) * scores[fn.__name__] for fn, _ in RUBRIC)


def run_v0(case: dict) -> dict:
    import verifiers as vf

    from kv_cache_eviction import load_environment

    env = load_environment(difficulty=case["difficulty"], num_examples=1, seed=case["seed"],
                           steps=case["steps"], max_calls_per_step=case["max_calls_per_step"],
                           trace_path=case.get("trace_path"))
    row = env.get_eval_dataset(n=1)[0]

    async def go():
        state = vf.State(input={})
        state["info"] = row["info"]
        state["prompt"] = [vf.SystemMessage(content=row["prompt"][0]["content"]),
                           vf.UserMessage(content=row["prompt"][1]["content"])]
        state = await env.setup_state(state)
        messages = list(state["prompt"])
        observations = [state["kv_episode"].text()]
        results = []
        for k, calls in enumerate(case["turns"]):
            if state.get("final_env_response") is not None:
                break
            tool_calls = [vf.ToolCall(id=f"c{k}_{i}", name=n, arguments=a)
                          for i, (n, a) in enumerate(calls)]
            messages.append(vf.AssistantMessage(content=None if calls else "no tool call",
                                                tool_calls=tool_calls or None))
            out = await env.env_response(messages, state)
            messages.extend(out)
            results.append([m.content for m in out])
            observations.append(state["kv_episode"].text() if not state["kv_episode"].done
                                else None)
        await env.score_episode(state)
        rubrics = getattr(env.rubric, "rubrics", [env.rubric])  # a group with the monitors
        (rubric,) = [r for r in rubrics if "failure_penalty" in [f.__name__ for f in r.funcs]]
        scores = {f.__name__: await f(state=state) for f in rubric.funcs}
        scores["reward"] = total(scores, {f.__name__: w
                                          for f, w in zip(rubric.funcs, rubric.weights)})
        return {"results": results, "scores": scores,
                "prompt": [m.content for m in state["prompt"]], "tools": sorted(
                    (t.name, json.dumps(t.parameters, sort_keys=True)) for t in env.tool_defs)}

    return asyncio.run(go())


def run_v1(case: dict) -> dict:
    import verifiers.v1 as vf

    from kv_cache_eviction.common import ACTION_KINDS, EnvArgs, system_prompt, user_prompt
    from kv_cache_eviction.tools import KVState, apply_call
    from kv_cache_eviction.v1 import (KVCacheEvictionConfig, KVCacheEvictionData,
                                      KVCacheEvictionTask, KVCacheEvictionTaskset, close_turn)

    import kv_cache_eviction.tools as tool_server
    from kv_cache_eviction.common import EpisodeCache

    tool_server.CACHE = EpisodeCache()  # the tool server's process has its own cache
    config = KVCacheEvictionConfig(difficulty=case["difficulty"], num_examples=1,
                                   seed=case["seed"], steps=case["steps"],
                                   max_calls_per_step=case["max_calls_per_step"],
                                   trace_path=case.get("trace_path"))
    (task,) = list(KVCacheEvictionTaskset(config))
    assert isinstance(task, KVCacheEvictionTask) and isinstance(task.data, KVCacheEvictionData)
    args = EnvArgs(case["difficulty"], 1, case["seed"], case["steps"],
                   case["max_calls_per_step"], case.get("trace_path"))
    assert task.data.prompt == user_prompt(args.episode(0))
    assert task.data.system_prompt == system_prompt(case["max_calls_per_step"])
    trace = SimpleNamespace(state=KVState(), num_turns=0, assistant_messages=[], info={})

    async def go():
        await task.setup(trace, None)
        messages = [vf.SystemMessage(content=task.data.system_prompt),
                    vf.UserMessage(content=task.data.prompt)]
        results, stops = [], []
        for k, calls in enumerate(case["turns"]):
            if stops and stops[-1]:
                break
            tool_calls = [vf.ToolCall(id=f"c{k}_{i}", name=n, arguments=a)
                          for i, (n, a) in enumerate(calls)]
            reply = vf.AssistantMessage(content=None if calls else "no tool call",
                                        tool_calls=tool_calls or None)
            messages.append(reply)
            trace.num_turns += 1
            trace.assistant_messages.append(reply)
            if not tool_calls:  # Env.run: a reply with no tool call ends the segment
                close_turn(trace.state, trace.num_turns, [])
                messages.append(vf.UserMessage(content=trace.state.observation))
                results.append([trace.state.observation])
                task.clock(trace)  # the resumed harness's request
                stops.append(task.finished(vf.Request(messages=messages), trace))
                continue
            verdicts = {}  # the tool gate, once per proposed call, before anything runs
            for call in tool_calls:
                probe = vf.ToolMessage(tool_call_id=call.id, content="", name=call.name)
                out = task.protocol(vf.Request(messages=[*messages, probe]), trace)
                if out is not None:
                    verdicts[call.id] = out.messages[-1]
            outputs = []
            for call in tool_calls:  # the null harness runs the allowed calls in order
                if call.id in verdicts:
                    outputs.append(verdicts[call.id])
                    continue
                arguments = json.loads(call.arguments or "{}")
                assert isinstance(arguments, dict) and call.name in ACTION_KINDS
                wire = KVState.model_validate_json(trace.state.model_dump_json())  # pull
                text = apply_call(wire, call.name, arguments)
                trace.state = KVState.model_validate_json(wire.model_dump_json())  # push
                outputs.append(vf.ToolMessage(tool_call_id=call.id, content=text,
                                              name=call.name))
            task.clock(trace)  # the next model request: clock, interceptor, stops
            for j, message in enumerate(outputs):
                if message.tool_call_id in verdicts:
                    continue  # pinned at the gate
                out = task.protocol(vf.Request(messages=[*messages, *outputs[:j + 1]]), trace)
                if out is not None:
                    outputs[j] = out.messages[-1]
            messages.extend(outputs)
            results.append([m.content for m in outputs])
            stops.append(task.finished(vf.Request(messages=messages), trace))
        await task.finalize(trace, None)
        scores = {}
        for name in (*vf_signal_names(task),):
            scores[name] = await getattr(task, name)(trace)
        scores["reward"] = total(scores, {fn.__name__: getattr(fn, "_vf_weight", 1.0)
                                          for fn in task.hooks("reward")})
        return {"results": results, "scores": scores, "stops": stops,
                "prompt": [task.data.system_prompt, task.data.prompt]}

    def vf_signal_names(task):
        return [fn.__name__ for fn in (*task.hooks("reward"), *task.hooks("metric"))]

    return asyncio.run(go())


if __name__ == "__main__":
    api = sys.argv[1]
    cases = json.load(sys.stdin)
    run = run_v0 if api == "v0" else run_v1
    json.dump([run(case) for case in cases], sys.stdout)
