"""The verifiers environment's fast tests: the observation text round trip, the chat server's
decisions, the turn protocol and its bad calls in the core, and the v0 and v1 adapters driven
in process (in the verifiers venvs that ``scripts/setup_verifiers_venvs.sh`` makes) against the
core: same scenario + same calls => same tool texts, observations and rewards.

The real ``vf-eval`` runs are in ``test_verifiers_e2e.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kv_cache_rl.task.episode import Episode
from kv_cache_rl.task.observation import ObservationTextError, find_observations, parse_observation
from kv_cache_rl.task.observation import Observation
from kv_cache_rl.policies import POLICIES, make_policy
from kv_cache_rl.task.runner import play
from kv_cache_rl.task.scenario import make_scenario

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "environments" / "kv_cache_eviction"))

from kv_cache_eviction.common import (CACHE, EnvArgs, EpisodeCache, after_step,  # noqa: E402
                                      attach, call_error, carrier_index, new_episode, play_turns,
                                      policy_turns,
                                      user_prompt)

VENVS = {"v0": ROOT / ".venvs" / "vf031", "v1": ROOT / ".venvs" / "vf04"}


def _call(episode: Episode, action) -> str:
    return episode.call(action.kind, {} if action.seq_id is None else {"seq_id": action.seq_id})


# ---- observation text ------------------------------------------------------------------------

@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_observation_text_round_trips(difficulty):
    for seed in range(3):
        episode = Episode(make_scenario(difficulty, seed, steps=8))
        policy = make_policy("random")
        policy.reset(seed)
        while True:
            obs = episode.observation
            text = obs.text()
            assert Observation.from_text(text) == obs
            assert find_observations(f"ok: evicted 3\n\n{text}\ntrailing") == [text]
            if episode.done:
                break
            for action in policy.act(obs):
                _call(episode, action)
            episode.advance()


def test_observation_parser_rejects_other_text():
    text = Episode(make_scenario("easy", 0, steps=2)).text()
    for bad in ("hello", text.replace("memory_usage", "mem"), text + "\n  1 context"):
        with pytest.raises(ObservationTextError):
            parse_observation(bad)


# ---- the chat server ---------------------------------------------------------------------------

def _serve_play(difficulty: str, seed: int, policy: str, steps: int = 15) -> Episode:
    """Play an episode with `kv-cache-rl serve`'s decision function reading the conversation
    (prompt, tool results with the observation attached) as the environments build it."""
    from kv_cache_rl.apps.serve import ChatPolicy

    chat = ChatPolicy(policy)
    episode = new_episode(difficulty, seed, steps, 8)
    messages = [{"role": "system", "content": "instructions"},
                {"role": "user", "content": user_prompt(episode)}]
    while not episode.done:
        decision = chat.decide({"messages": messages, "tools": [
            {"type": "function", "function": {"name": n}}
            for n in ("evict", "compress", "swap_to_cpu", "keep")]})
        assert isinstance(decision, list) and decision
        calls = [{"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}}
                 for i, (n, a) in enumerate(decision)]
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        texts = [episode.call(n, a) for n, a in decision]
        episode.advance()
        texts[carrier_index(decision)] = attach(texts[carrier_index(decision)],
                                                after_step(episode))
        messages += [{"role": "tool", "tool_call_id": c["id"], "content": t}
                     for c, t in zip(calls, texts)]
    return episode


@pytest.mark.parametrize("policy", [p for p, cls in POLICIES.items() if not cls.sees_future])
def test_served_policy_plays_exactly_like_runner(policy):
    for difficulty, seed in (("hard", 1), ("medium", 2)):
        served = _serve_play(difficulty, seed, policy, steps=8)
        direct = play(make_scenario(difficulty, seed, steps=8), make_policy(policy))
        assert served.score() == direct.score()
        applied = [[a for a in step if a != "keep()"] for step in served.history]
        assert applied == direct.history


def test_serve_refuses_policies_that_need_the_simulator():
    from kv_cache_rl.apps.serve import ChatPolicy

    with pytest.raises(ValueError, match="cannot act from text"):
        ChatPolicy("lookahead")
    with pytest.raises(ValueError, match="unknown policy"):
        ChatPolicy("nope")


def test_serve_http_stream_and_json():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from kv_cache_rl.apps.serve import create_app

    client = TestClient(create_app("compress_first"))
    assert client.get("/v1/models").json()["data"][0]["id"] == "kv-cache-rl/compress_first"
    episode = new_episode("hard", 3, 15, 8)
    body = {"model": "m", "messages": [{"role": "user", "content": user_prompt(episode)}],
            "tools": [{"type": "function", "function": {"name": n}}
                      for n in ("evict", "compress", "swap_to_cpu", "keep")]}
    full = client.post("/v1/chat/completions", json=body).json()
    calls = full["choices"][0]["message"]["tool_calls"]
    assert full["choices"][0]["finish_reason"] == "tool_calls" and calls
    expected = make_policy("compress_first").act(episode.observation) or None
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == (
        [(a.kind, {"seq_id": a.seq_id}) for a in expected] if expected else [("keep", {})])
    stream = client.post("/v1/chat/completions",
                         json={**body, "stream": True, "stream_options": {"include_usage": True}})
    events = [line[6:] for line in stream.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["usage"]["total_tokens"] > 0
    streamed = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for tc in choice["delta"].get("tool_calls", []):
                entry = streamed.setdefault(tc["index"], {"name": "", "arguments": ""})
                entry["name"] += tc.get("function", {}).get("name", "")
                entry["arguments"] += tc.get("function", {}).get("arguments", "")
    assert [(v["name"], v["arguments"]) for _, v in sorted(streamed.items())] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in calls]
    text = client.post("/v1/chat/completions", json={"messages": [{"role": "user",
                                                                   "content": "hi"}]}).json()
    assert "no KV-cache observation" in text["choices"][0]["message"]["content"]
    assert client.post("/v1/chat/completions", content=b"{").status_code == 400


def test_serve_command_answers_on_localhost():
    pytest.importorskip("uvicorn")
    import socket
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "kv_cache_rl", "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(300):
            try:
                models = json.load(urllib.request.urlopen(url + "/models", timeout=1))
                break
            except OSError:
                time.sleep(0.05)
        assert models["data"][0]["id"] == "kv-cache-rl/compress_first"
        body = {"messages": [{"role": "user", "content": user_prompt(
            new_episode("hard", 0, 15, 8))}]}
        request = urllib.request.Request(url + "/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        reply = json.load(urllib.request.urlopen(request, timeout=30))
        assert reply["choices"][0]["message"]["tool_calls"]
    finally:
        proc.terminate()
        proc.wait(10)


# ---- the turn protocol in the core ---------------------------------------------------------------

def bad_calls(visible: list[int]) -> list[tuple[str, str]]:
    """One of every malformed or refused call, with the core's error text each must get."""
    return [
        ("evict", '{"seq_id": 1'), ("evict", "[1]"), ("drop_all", "{}"), ("evict", "{}"),
        ("evict", json.dumps({"seq_id": visible[0], "force": True})),
        ("evict", '{"seq_id": "abc"}'), ("compress", '{"seq_id": 1.5}'),
        ("swap_to_cpu", '{"seq_id": true}'), ("keep", '{"x": 1}'), ("evict", '{"seq_id": 999999}'),
    ]


BAD_MESSAGES = ["not valid JSON", "must be a JSON object", "unknown tool 'drop_all'",
                "needs seq_id", "unexpected ['force']", "must be an integer, got 'abc'",
                "must be an integer, got 1.5", "must be an integer, got True",
                "keep takes no arguments", "seq_id 999999 is not visible"]


def bad_turns(difficulty: str, seed: int, steps: int, cap: int) -> list[list[tuple[str, str]]]:
    """A script with every kind of bad call, a call-cap overflow, a text reply, an all-malformed
    message and calls after the end, between well-formed calls."""
    visible = sorted(new_episode(difficulty, seed, steps, cap).observation.visible)
    bad = bad_calls(visible)
    turns = [bad[:5] + [("compress", json.dumps({"seq_id": visible[-1]}))] + bad[5:],
             [("keep", "{}")] * (cap + 2), [], [("evict", '{"seq_id": 1'), ("nope", "")],
             [("evict", json.dumps({"seq_id": str(visible[1])})),
              ("evict", json.dumps({"seq_id": visible[1]}))]]
    return turns + [[("keep", "")]] * (steps - len(turns)) + [[("keep", "{}")]] * 2


def test_bad_calls_get_clear_errors_and_change_nothing():
    turns = bad_turns("hard", 7, 6, 3)
    out = play_turns("hard", 7, turns, steps=6, max_calls_per_step=3)
    first = out["results"][0]
    for text, message in zip(first[:5] + first[6:], BAD_MESSAGES):
        assert text.startswith("error: ") and message in text and "Traceback" not in text
    assert first[5].startswith("ok: compressed")
    assert all(t.startswith("error: at most 3 actions") for t in out["results"][1][3:])
    assert out["results"][2] == [out["observations"][3]]  # text reply: the observation alone
    assert out["results"][3][1].endswith(out["observations"][4])  # all malformed: on the last
    assert len(out["results"]) == 6 and "The episode is over" in out["results"][-1][-1]
    # the same turns without any bad call: identical observations and reward
    clean = [[c for c in t if call_error(*c) is None and "999999" not in c[1]] for t in turns]
    clean[1] = clean[1][:3]
    ref = play_turns("hard", 7, clean, steps=6, max_calls_per_step=3)
    assert ref["observations"] == out["observations"]
    assert {k: v for k, v in ref["scores"].items() if k != "invalid_calls"} == \
        {k: v for k, v in out["scores"].items() if k != "invalid_calls"}
    assert out["scores"]["invalid_calls"] > ref["scores"]["invalid_calls"]


def test_calls_after_the_end_are_refused():
    episode = new_episode("easy", 0, 2, 8)
    while not episode.done:
        episode.advance()
    assert episode.call("keep", "{}") == "error: the episode is over; no more actions"


def test_observation_goes_on_the_last_well_formed_result():
    assert carrier_index([("keep", "{}"), ("evict", "{}"), ("nope", "{}")]) == 0
    assert carrier_index([("evict", "{"), ("nope", "{}")]) == 1
    assert carrier_index([("keep", ""), ("keep", "{}")]) == 1


def test_episode_cache_rebuilds_exactly_from_plain_state():
    cache = EpisodeCache(size=4)
    reference = new_episode("medium", 5, 6, 8)
    policy = make_policy("random")
    policy.reset(5)
    while not reference.done:
        for action in policy.act(reference.observation) + []:
            _call(reference, action)
            state = json.loads(json.dumps(reference.state_dict()))
            rebuilt = cache.restore(state)
            assert rebuilt.state_dict() == state and rebuilt.text() == reference.text()
            cache.put(rebuilt)
        reference.advance()
        state = json.loads(json.dumps(reference.state_dict()))
        rebuilt = cache.restore(state)
        assert rebuilt.text() == reference.text() and rebuilt.score() == reference.score()
        cache.put(rebuilt)
    # a state that is not an extension of any cached episode replays from the start
    other = new_episode("medium", 5, 6, 8).state_dict()
    assert cache.restore(other).text() == new_episode("medium", 5, 6, 8).text()
    assert CACHE.size >= 8


def test_task_list_interleaves_difficulties_like_bench():
    args = EnvArgs()
    assert [args.example(i) for i in range(4)] == [("easy", 42), ("medium", 42), ("hard", 42),
                                                   ("easy", 43)]
    assert args.size == 300 and EnvArgs(difficulty="hard").size == 100
    assert EnvArgs(difficulty="hard", seed=0).example(5) == ("hard", 5)
    assert EnvArgs(num_examples=7).size == 7
    for bad in ({"difficulty": "extreme"}, {"num_examples": 0}, {"steps": 0},
                {"max_calls_per_step": 0}):
        with pytest.raises(ValueError):
            EnvArgs(**bad)
    with pytest.raises(FileNotFoundError, match="no such file"):
        EnvArgs(trace_path="/nonexistent/trace.jsonl")


# ---- the adapters, in process, against the core ---------------------------------------------

CASES = [
    {"difficulty": "hard", "seed": 7, "steps": 6, "max_calls_per_step": 3,
     "turns": bad_turns("hard", 7, 6, 3)},
    {"difficulty": "medium", "seed": 11, "steps": 20, "max_calls_per_step": 8,
     "turns": policy_turns("medium", 11, "compress_first", steps=20)},
    {"difficulty": "easy", "seed": 2, "steps": 5, "max_calls_per_step": 8,
     "turns": [[], [("swap_to_cpu", '{"seq_id": 1}')], [], [], [("keep", "{}")]]},
]


def _probe(api: str, cases: list[dict]) -> list[dict]:
    python = VENVS[api] / "bin" / "python"
    proc = subprocess.run([str(python), str(ROOT / "tests" / "adapter_probe.py"), api],
                          input=json.dumps(cases), capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_core_v0_and_v1_agree_exactly(chat_trace):
    missing = [api for api, venv in VENVS.items() if not (venv / "bin" / "python").exists()]
    if missing:
        pytest.skip(f"no verifiers venv for {missing}: run scripts/setup_verifiers_venvs.sh")
    # an episode cut from a raw trace too (``trace_path``): the hard tier's pressure, sessions
    # from hash ids, the actions of a policy that evicts idle contexts
    raw = {"difficulty": "hard", "seed": 3, "steps": 8, "max_calls_per_step": 8,
           "trace_path": str(chat_trace),
           "turns": policy_turns("hard", 3, "lru", steps=8, trace_path=str(chat_trace))}
    assert any(name == "evict" for turn in raw["turns"] for name, _ in turn)
    cases = [*CASES, raw]
    with ThreadPoolExecutor(2) as pool:
        v0, v1 = pool.map(_probe, ("v0", "v1"), (cases, cases))
    for case, a, b in zip(cases, v0, v1, strict=True):
        core = play_turns(case["difficulty"], case["seed"], case["turns"], steps=case["steps"],
                          max_calls_per_step=case["max_calls_per_step"],
                          trace_path=case.get("trace_path"))
        episode = new_episode(case["difficulty"], case["seed"], case["steps"],
                              case["max_calls_per_step"], case.get("trace_path"))
        for out in (a, b):
            assert out["results"] == core["results"]
            assert out["scores"] == core["scores"]
            assert out["prompt"][1] == user_prompt(episode)
        assert b["stops"][-1] and not any(b["stops"][:-1])
    # the policy case scores what runner.play scores
    direct = play(make_scenario("medium", 11), make_policy("compress_first")).score()
    assert v1[1]["scores"]["reward"] == direct["reward"] == v0[1]["scores"]["reward"]
    lru = play(make_scenario("hard", 3, steps=8, trace_path=str(chat_trace)),
               make_policy("lru")).score()
    assert v1[-1]["scores"]["reward"] == lru["reward"] == v0[-1]["scores"]["reward"]
    assert "a window of trace chat.jsonl" in v1[-1]["prompt"][1]


def test_v0_entry_point_under_verifiers_04_names_v1():
    python = VENVS["v1"] / "bin" / "python"
    if not python.exists():
        pytest.skip("no verifiers 0.4 venv: run scripts/setup_verifiers_venvs.sh")
    code = ("import kv_cache_eviction as k\ntry:\n    k.load_environment()\n"
            "except RuntimeError as e:\n    print(e)")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
    assert "no v0 API" in out.stdout and "KVCacheEvictionTaskset" in out.stdout
    assert "vf-eval kv-cache-eviction" in out.stdout
