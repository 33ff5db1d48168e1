"""The verifiers environment's cost per turn, and the tokens of an episode (20 steps).

    .venvs/vf04/bin/python benchmarks/env_overhead.py overhead --api v1   # verifiers 0.4
    .venvs/vf031/bin/python benchmarks/env_overhead.py overhead --api v0  # verifiers 0.3.1
    python benchmarks/env_overhead.py tokens                              # needs tiktoken

``overhead`` plays ``compress_first`` episodes through the adapter's own code in process, in
the order verifiers calls it (as ``tests/adapter_probe.py`` does; no model, no transport), and
times each assistant turn. "core" is the time inside :class:`Episode` (applying the calls,
the simulator step, building an episode): what any adapter pays. v1 pays the step twice, on the
host (the clock) and in the tool server, whose copy catches up on the next call; on a rollout's
first turn the tool server also builds its copy (the scenario, once per task and process). The
host and the tool server are timed in one process here, each with its own episode cache.
"overhead" is the rest, the adapter's own work: validating calls, the tool server's state
pulled and pushed as JSON, finding the episode in the cache, the interceptor, the messages.
verifiers' own cost (HTTP to the tool server, the harness program) is not included: see the
``timing`` of a trace.

``tokens`` counts (o200k_base when available, else cl100k) the prompt, the text the model reads
per turn and the whole conversation of a 20-step ``compress_first`` episode, as both adapters
build it (one assistant message per step, its tool calls as JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "environments" / "kv_cache_eviction"))


def _episodes(episodes: int, steps: int):
    """(difficulty, seed, turns) of every measured episode: the turns compress_first plays,
    the same every adapter is driven with."""
    from kv_cache_eviction.common import policy_turns

    for difficulty in ("easy", "medium", "hard"):
        for i in range(episodes):
            seed = 100 + i
            yield difficulty, seed, policy_turns(difficulty, seed, "compress_first", steps=steps)


class Clock:
    """Accumulates the time spent inside the core (:class:`Episode` building, calls, steps)."""

    def __init__(self):
        from kv_cache_rl.task.episode import Episode

        self.sim = 0.0
        for name in ("__init__", "call", "advance"):
            setattr(Episode, name, self._timed(getattr(Episode, name)))

    def _timed(self, fn):
        clock = self

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock.sim += time.perf_counter() - start

        return timed


def overhead_v1(episodes: int, steps: int) -> list[dict]:
    import asyncio
    from types import SimpleNamespace

    import verifiers.v1 as vf

    from kv_cache_eviction.tools import KVState, apply_call
    from kv_cache_eviction.v1 import (KVCacheEvictionConfig, KVCacheEvictionTaskset)

    import kv_cache_eviction.tools as tool_server
    from kv_cache_eviction.common import EpisodeCache

    tool_server.CACHE = EpisodeCache()  # the tool server's process has its own cache
    clock = Clock()
    rows = []
    for difficulty, seed, turns in _episodes(episodes, steps):
        config = KVCacheEvictionConfig(difficulty=difficulty, num_examples=1, seed=seed,
                                       steps=steps)
        (task,) = list(KVCacheEvictionTaskset(config))
        trace = SimpleNamespace(state=KVState(), num_turns=0, assistant_messages=[], info={})
        asyncio.run(task.setup(trace, None))
        messages = [vf.SystemMessage(content=task.data.system_prompt),
                    vf.UserMessage(content=task.data.prompt)]
        for k, calls in enumerate(turns):
            tool_calls = [vf.ToolCall(id=f"c{k}_{j}", name=n, arguments=a)
                          for j, (n, a) in enumerate(calls)]
            reply = vf.AssistantMessage(tool_calls=tool_calls)
            messages.append(reply)
            trace.num_turns += 1
            trace.assistant_messages.append(reply)
            sim0, start = clock.sim, time.perf_counter()
            for call in tool_calls:  # the gate
                task.protocol(vf.Request(messages=[*messages, vf.ToolMessage(
                    tool_call_id=call.id, content="", name=call.name)]), trace)
            outputs = []
            for call in tool_calls:  # the tool server, state as JSON both ways
                wire = KVState.model_validate_json(trace.state.model_dump_json())
                text = apply_call(wire, call.name, json.loads(call.arguments))
                trace.state = KVState.model_validate_json(wire.model_dump_json())
                outputs.append(vf.ToolMessage(tool_call_id=call.id, content=text,
                                              name=call.name))
            task.clock(trace)
            for j in range(len(outputs)):
                out = task.protocol(vf.Request(messages=[*messages, *outputs[:j + 1]]),
                                    trace)
                if out is not None:
                    outputs[j] = out.messages[-1]
            task.finished(vf.Request(messages=[*messages, *outputs]), trace)
            total = time.perf_counter() - start
            messages.extend(outputs)
            rows.append({"difficulty": difficulty, "calls": len(calls), "turn": k,
                         "total_ms": 1000 * total, "sim_ms": 1000 * (clock.sim - sim0)})
        asyncio.run(task.finalize(trace, None))
    return rows


def overhead_v0(episodes: int, steps: int) -> list[dict]:
    import asyncio

    import verifiers as vf

    from kv_cache_eviction import load_environment

    clock = Clock()
    rows = []
    for difficulty, seed, turns in _episodes(episodes, steps):
        env = load_environment(difficulty=difficulty, num_examples=1, seed=seed, steps=steps)
        row = env.get_eval_dataset(n=1)[0]

        async def go():
            state = vf.State(input={})
            state["info"] = row["info"]
            state["prompt"] = [vf.UserMessage(content=row["prompt"][1]["content"])]
            state = await env.setup_state(state)
            messages = list(state["prompt"])
            for k, calls in enumerate(turns):
                messages.append(vf.AssistantMessage(tool_calls=[
                    vf.ToolCall(id=f"c{k}_{j}", name=n, arguments=a)
                    for j, (n, a) in enumerate(calls)]))
                sim0, start = clock.sim, time.perf_counter()
                out = await env.env_response(messages, state)
                total = time.perf_counter() - start
                messages.extend(out)
                rows.append({"difficulty": difficulty, "calls": len(calls), "turn": k,
                             "total_ms": 1000 * total, "sim_ms": 1000 * (clock.sim - sim0)})

        asyncio.run(go())
    return rows


def summarize(rows: list[dict], api: str) -> dict:
    def stats(values):
        values = sorted(values)
        return {"mean": round(statistics.fmean(values), 3),
                "p50": round(values[len(values) // 2], 3),
                "p95": round(values[min(len(values) - 1, int(0.95 * len(values)))], 3),
                "max": round(values[-1], 3)}

    def block(rows):
        return {"turns": len(rows),
                "calls_per_turn": round(statistics.fmean(r["calls"] for r in rows), 2),
                "env_ms": stats([r["total_ms"] for r in rows]),
                "core_ms": stats([r["sim_ms"] for r in rows]),
                "overhead_ms": stats([r["total_ms"] - r["sim_ms"] for r in rows])}

    return {"api": api, "later_turns": block([r for r in rows if r["turn"] > 0]),
            "first_turn": block([r for r in rows if r["turn"] == 0])}


def tokens(episodes: int, steps: int) -> dict:
    from kv_cache_rl.task.tokens import count_tokens, encoding

    from kv_cache_eviction.common import (after_step, attach, carrier_index, new_episode,
                                          system_prompt, user_prompt)

    rows = []
    for difficulty, seed, turns in _episodes(episodes, steps):
        episode = new_episode(difficulty, seed, steps, 8)
        system, first = system_prompt(8), user_prompt(episode)
        context = count_tokens(system) + count_tokens(first)
        prompt_tokens = context
        sent = 0  # input tokens summed over the episode's requests (no prefix caching)
        per_turn, reply_tokens = [], 0
        for calls in turns:
            sent += context
            reply = json.dumps([{"name": n, "arguments": a} for n, a in calls])
            reply_tokens += count_tokens(reply)
            texts = [episode.call(n, a) for n, a in calls]
            episode.advance()
            k = carrier_index(calls)
            texts[k] = attach(texts[k], after_step(episode))
            read = sum(count_tokens(t) for t in texts)
            per_turn.append(read)
            context += count_tokens(reply) + read
        rows.append({"prompt": prompt_tokens, "per_turn": statistics.fmean(per_turn),
                     "replies": reply_tokens, "final_context": context, "sent": sent})
    mean = {k: round(statistics.fmean(r[k] for r in rows), 1) for k in rows[0]}
    return {"encoding": encoding()[0], "episodes": len(rows), "steps": steps,
            "prompt_tokens": mean["prompt"], "read_per_turn": mean["per_turn"],
            "reply_tokens_per_episode": mean["replies"],
            "conversation_tokens_at_end": mean["final_context"],
            "max_conversation_tokens": max(r["final_context"] for r in rows),
            "input_tokens_summed_over_requests": mean["sent"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("overhead", "tokens"))
    parser.add_argument("--api", choices=("v0", "v1"), default="v1")
    parser.add_argument("--episodes", type=int, default=3, help="per difficulty")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if args.what == "tokens":
        result = tokens(args.episodes, args.steps)
    else:
        run = overhead_v1 if args.api == "v1" else overhead_v0
        run(1, 3)  # warm: imports, first scenario builds
        result = summarize(run(args.episodes, args.steps), args.api)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
