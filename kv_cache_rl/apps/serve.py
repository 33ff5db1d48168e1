"""``kv-cache-rl serve``: an OpenAI-compatible chat server that plays a built-in policy.

It reads the conversation the way a language model would: it finds the observations in the
messages (the prompt holds the first; each later one is appended to a tool result or sent as
a user turn), rebuilds each with :meth:`Observation.from_text` (lossless) and asks the policy.
The answer is one assistant message holding all of that step's tool calls, in order (a
``keep()`` call when the policy does nothing). Because the policy sees exactly the
observations :func:`kv_cache_rl.task.runner.play` would give it, in the same order, an evaluation
through a verifiers environment scores exactly what ``kv-cache-rl bench`` reports for the
same scenarios. Policies that keep state between steps (``random``) are replayed over every
observation of the conversation, seeded from ``seed N`` in the first user message (the
environment's prompt states it; 0 when absent). ``lookahead`` needs the simulator and cannot
be served.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (``stream`` true or false; with
``stream_options.include_usage`` a usage chunk is sent). Token counts in ``usage`` are
estimates (4 characters a token). FastAPI and uvicorn are imported only here (``[serve]``).
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint annotations
import json
import re
import time
import uuid
from collections.abc import Callable

from kv_cache_rl.errors import ConfigError
from kv_cache_rl.task.episode import ACTION_KINDS, MAX_CALLS_PER_STEP, Action
from kv_cache_rl.task.observation import find_observations
from kv_cache_rl.task.observation import Observation
from kv_cache_rl.policies import POLICIES, make_policy

DEFAULT_POLICY = "compress_first"  # the best heuristic on `kv-cache-rl bench` (sees no future)
_SEED = re.compile(r"\bseed (\d+)\b")

# A decision: the tool calls of one assistant message as (name, JSON arguments), or a text reply.
Decision = list[tuple[str, str]] | str


def servable_policies() -> list[str]:
    """Registry names that act from the observation text alone."""
    return [name for name, cls in POLICIES.items() if not cls.sees_future]


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def tool_names(body: dict) -> list[str]:
    return [t.get("function", {}).get("name", "") for t in body.get("tools") or []
            if isinstance(t, dict) and t.get("type", "function") == "function"]


def _advertised(names: list[str], kind: str) -> str:
    """The advertised name of tool ``kind`` (a harness may prefix it: ``server_evict``)."""
    for name in names:
        if name == kind:
            return name
    for name in names:
        if name.endswith("_" + kind):
            return name
    return kind


class ChatPolicy:
    """Decides the next assistant message of a conversation with a registry policy."""

    def __init__(self, name: str = DEFAULT_POLICY, *, max_calls: int = MAX_CALLS_PER_STEP):
        if name not in POLICIES:
            raise ConfigError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
        if POLICIES[name].sees_future:
            raise ConfigError(f"policy {name!r} plans with the simulator and cannot act from "
                             f"text; servable: {', '.join(servable_policies())}")
        if max_calls < 1:
            raise ConfigError("max_calls must be >= 1")
        self.name, self.max_calls = name, max_calls

    def actions(self, messages: list[dict]) -> list[Action] | None:
        """The policy's actions for the latest observation (None: no observation found)."""
        texts = [_text(m.get("content")) for m in messages
                 if isinstance(m, dict) and m.get("role") in ("system", "user", "tool")]
        blocks = [block for text in texts for block in find_observations(text)]
        if not blocks:
            return None
        first_user = next((_text(m.get("content")) for m in messages
                           if isinstance(m, dict) and m.get("role") == "user"), "")
        seed = _SEED.search(first_user)
        policy = make_policy(self.name)
        policy.reset(int(seed.group(1)) if seed else 0)
        actions: list[Action] = []
        for block in blocks:  # replay: a stateful policy sees every step, as in runner.play
            actions = policy.act(Observation.from_text(block))
        return actions[: self.max_calls]

    def decide(self, body: dict) -> Decision:
        actions = self.actions(body.get("messages") or [])
        if actions is None:
            return ("I see no KV-cache observation in this conversation (a line starting "
                    "'step N/M | episode_remaining'); nothing to do.")
        names = tool_names(body)
        if not actions:
            return [(_advertised(names, "keep"), "{}")]
        return [(_advertised(names, a.kind),
                 "{}" if a.seq_id is None else json.dumps({"seq_id": a.seq_id}))
                for a in actions]


def _usage(body: dict, decision: Decision) -> dict:
    prompt = sum(len(_text(m.get("content"))) for m in body.get("messages") or []
                 if isinstance(m, dict))
    completion = len(decision) if isinstance(decision, str) else \
        sum(len(n) + len(a) for n, a in decision)
    p, c = prompt // 4 + 1, completion // 4 + 1
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def completion(body: dict, decision: Decision) -> tuple[dict, list[dict]]:
    """The chat.completion object and the equivalent stream chunks."""
    cid = "chatcmpl-" + uuid.uuid4().hex[:16]
    created = int(time.time())
    model = body.get("model") or "kv-cache-rl"
    turn = sum(1 for m in body.get("messages") or [] if isinstance(m, dict)
               and m.get("role") == "assistant")
    usage = _usage(body, decision)
    if isinstance(decision, str):
        message = {"role": "assistant", "content": decision}
        finish = "stop"
        calls = []
    else:
        calls = [{"id": f"call_{turn}_{i}_{uuid.uuid4().hex[:6]}", "type": "function",
                  "function": {"name": name, "arguments": args}}
                 for i, (name, args) in enumerate(decision)]
        message = {"role": "assistant", "content": None, "tool_calls": calls}
        finish = "tool_calls"
    full = {"id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": None}],
            "usage": usage}

    def chunk(delta: dict, finish_reason=None) -> dict:
        return {"id": cid, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [{"index": 0, "delta": delta,
                                             "finish_reason": finish_reason, "logprobs": None}]}

    chunks = [chunk({"role": "assistant", "content": message["content"] or ""})]
    for i, call in enumerate(calls):
        args = call["function"]["arguments"]
        chunks.append(chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                             "function": {"name": call["function"]["name"],
                                                          "arguments": ""}}]}))
        chunks.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": args}}]}))
    chunks.append(chunk({}, finish))
    chunks.append({"id": cid, "object": "chat.completion.chunk", "created": created,
                   "model": model, "choices": [], "usage": usage})
    return full, chunks


def create_app(policy: str = DEFAULT_POLICY, *, max_calls: int = MAX_CALLS_PER_STEP,
               decide: Callable[[dict], Decision] | None = None):
    """The FastAPI app. ``decide`` replaces the policy (tests script models with it)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    chat_policy = ChatPolicy(policy, max_calls=max_calls)
    decide = decide or chat_policy.decide
    model_id = f"kv-cache-rl/{policy}"
    app = FastAPI(title="kv-cache-rl serve")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model",
                                            "created": 0, "owned_by": "kv-cache-rl"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": {"message": "the body is not JSON",
                                           "type": "invalid_request_error"}}, status_code=400)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return JSONResponse({"error": {"message": "expected a JSON object with 'messages'",
                                           "type": "invalid_request_error"}}, status_code=400)
        full, chunks = completion(body, decide(body))
        if not body.get("stream"):
            return JSONResponse(full)
        if not (body.get("stream_options") or {}).get("include_usage"):
            chunks = chunks[:-1]

        def events():
            for c in chunks:
                yield "data: " + json.dumps(c) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def serve(policy: str = DEFAULT_POLICY, *, host: str = "127.0.0.1", port: int = 8000,
          max_calls: int = MAX_CALLS_PER_STEP, log_level: str = "warning") -> None:
    import uvicorn

    app = create_app(policy, max_calls=max_calls)
    print(f"kv-cache-rl serve: policy {policy} on http://{host}:{port}/v1 "
          f"(model id kv-cache-rl/{policy}; any API key)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = ["ACTION_KINDS", "DEFAULT_POLICY", "ChatPolicy", "completion", "create_app", "serve",
           "servable_policies"]
