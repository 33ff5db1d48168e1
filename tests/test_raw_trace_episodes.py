"""Episodes cut from a raw trace file (``make_scenario(..., trace_path=)``, ``bench --trace``,
the Gymnasium env's ``trace_path``): a real window of the file, the tier's KV budget, and the
same determinism and state round trip as generated episodes."""

import json

import pytest

from kv_cache_rl.apps.cli import main
from kv_cache_rl.workload.requests import Trace, TraceRequest
from kv_cache_rl.task.episode import Episode
from kv_cache_rl.policies import make_policy
from kv_cache_rl.task.runner import play
from kv_cache_rl.task.scenario import RETENTION_S, TIERS, make_scenario
from kv_cache_rl.workload.sessions import infer_sessions
from kv_cache_rl.workload.traces import TraceFormatError
from tests.support.traces import CHAT_SYSTEM_IDS, chat_trace_rows


def test_window_is_a_real_cut_of_the_file_with_the_tiers_budget(chat_trace):
    rows = chat_trace_rows()
    scenario = make_scenario("hard", 3, trace_path=str(chat_trace))
    requests = scenario.trace.requests
    assert requests and scenario.workload == str(chat_trace)
    # the same requests as a contiguous run of the file, shifted by one start time
    first = next(i for i, r in enumerate(rows) if r["input_toks"] == requests[0].input_toks
                 and tuple(r["hash_ids"]) == requests[0].hash_ids)
    start = rows[first]["arrival_s"] - requests[0].arrival_s
    for req, row in zip(requests, rows[first:]):
        assert (req.input_toks, req.output_toks, req.hash_ids) == \
            (row["input_toks"], row["output_toks"], tuple(row["hash_ids"]))
        assert req.arrival_s == pytest.approx(row["arrival_s"] - start, abs=1e-6)
    horizon = scenario.end_s + RETENTION_S
    assert requests[-1].arrival_s < horizon
    assert scenario.requests_per_s == pytest.approx(len(requests) / horizon)
    lo, hi = TIERS["hard"].memory
    assert lo <= scenario.memory_fraction <= hi
    assert scenario.config.num_gpu_blocks < scenario.peak_blocks
    assert make_scenario("hard", 4, trace_path=str(chat_trace)).trace != scenario.trace


def test_infer_sessions_links_turns_by_their_prefix_ids():
    def req(t, ids, **kw):
        return TraceRequest(t, 16 * len(ids), 8, hash_ids=tuple(ids), **kw)

    trace = Trace((req(0, [1, 2, 3]), req(1, [1, 7]), req(2, [1, 2, 3, 4, 5]),
                   req(3, [1, 2, 3, 4, 5, 6]), req(4, [1, 7, 8]), req(5, [1, 9])), 16)
    annotated = infer_sessions(trace)
    # turns continue the latest request whose every full block they start with; sharing
    # only the system block (id 1, in every prompt) opens a session
    assert [r.session_id for r in annotated.requests] == [0, 1, 0, 0, 1, 5]
    assert [r.system_toks for r in annotated.requests] == [16] * 6
    assert annotated.meta["sessions"] == 3 and annotated.meta["system_prefix_blocks"] == 1
    assert [r.arrival_s for r in annotated.requests] == [r.arrival_s for r in trace.requests]
    plain = Trace((TraceRequest(0, 100, 8), TraceRequest(1, 50, 8)), 16)  # Azure: no ids
    assert infer_sessions(plain) is plain
    assert infer_sessions(annotated) is annotated  # sessions already set: left as they are


def test_chat_trace_windows_hold_sessions_the_agent_can_manage(chat_trace):
    scenario = make_scenario("hard", 3, trace_path=str(chat_trace))
    requests = scenario.trace.requests
    assert len({r.session_id for r in requests}) < len(requests), "multi-turn sessions"
    assert all(r.system_toks == 16 * len(CHAT_SYSTEM_IDS) for r in requests)
    overview = scenario.first_observation.overview
    assert overview.get("system", (0,))[0] == 1 and overview.get("context", (0,))[0] > 0
    keep, lru = (play(scenario, make_policy(n)) for n in ("keep", "lru"))
    assert any(a.startswith("evict") for step in lru.history for a in step)
    assert lru.score() != keep.score()


def test_chat_trace_episode_is_deterministic_and_round_trips(chat_trace):
    scenario = make_scenario("hard", 3, trace_path=str(chat_trace))
    make_scenario.cache_clear()
    again = make_scenario("hard", 3, trace_path=str(chat_trace))
    assert again == scenario and again.trace == scenario.trace
    keep = play(again, make_policy("keep"))
    best = play(again, make_policy("compress_first"))
    assert keep.score()["total_failures_metric"] > 0, "the hard budget puts it under pressure"
    assert best.score()["reward"] > keep.score()["reward"]
    state = json.loads(json.dumps(best.state_dict()))
    assert state["trace_path"] == str(chat_trace) and "memory_fraction" not in state
    rebuilt = Episode.from_state(state)
    assert rebuilt.text() == best.text() and rebuilt.score() == best.score()


def test_memory_override_round_trips_through_state():
    episode = play(make_scenario("hard", 2, memory_fraction=0.4), make_policy("lru"))
    state = json.loads(json.dumps(episode.state_dict()))
    assert state["memory_fraction"] == 0.4 and "trace_path" not in state
    rebuilt = Episode.from_state(state)
    assert rebuilt.scenario == episode.scenario and rebuilt.scenario.memory_fraction == 0.4
    assert rebuilt.text() == episode.text() and rebuilt.score() == episode.score()


def test_bad_chat_traces_fail_clearly_and_sparse_ones_still_play(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"arrival_s": 0, "input_toks": 10, "output_toks": 5}\n{"arrival_s": 1}\n')
    with pytest.raises(TraceFormatError, match=r"bad\.jsonl:2"):
        make_scenario("easy", 0, trace_path=str(bad))
    sparse = tmp_path / "sparse.jsonl"  # 3 requests minutes apart: most start times are gaps
    sparse.write_text("".join(json.dumps({"arrival_s": t, "input_toks": 10, "output_toks": 5})
                              + "\n" for t in (0, 200, 500)))
    for seed in range(6):  # a window opens at a request: never empty
        requests = make_scenario("easy", seed, trace_path=str(sparse)).trace.requests
        assert requests and requests[0].arrival_s == 0.0
    with pytest.raises(FileNotFoundError):
        make_scenario("easy", 0, trace_path=str(tmp_path / "missing.jsonl"))


def test_bench_cli_with_a_trace(chat_trace, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--difficulty", "hard", "--episodes", "2", "--seed", "3",
                 "--policies", "keep,compress_first", "--trace", str(chat_trace),
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["trace"] == str(chat_trace)
    rewards = {r["policy"]: r["rewards"] for r in result["results"]}
    for name in ("keep", "compress_first"):
        expected = [play(make_scenario("hard", s, trace_path=str(chat_trace)),
                         make_policy(name)).score()["reward"] for s in (3, 4)]
        assert rewards[name] == [round(x, 6) for x in expected]
    assert "episodes cut from windows of" in capsys.readouterr().out
    assert main(["bench", "--episodes", "1", "--trace", str(tmp_path / "nope.jsonl")]) == 2
    assert "error" in capsys.readouterr().err


def test_gym_env_plays_chat_trace_windows(chat_trace):
    pytest.importorskip("gymnasium")
    from kv_cache_rl.task.gym_env import KVCacheEvictionEnv

    env = KVCacheEvictionEnv(difficulty="hard", seeds=[3], trace_path=str(chat_trace))
    env.reset(seed=0)
    assert env.episode.scenario is make_scenario("hard", 3, trace_path=str(chat_trace))
    with pytest.raises(FileNotFoundError):
        KVCacheEvictionEnv(trace_path=str(chat_trace) + ".missing")


def test_a_relative_trace_path_names_the_file_not_the_string(tmp_path, monkeypatch):
    rows = chat_trace_rows()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        scale = 1 if name == "a" else 2  # b's file: the same arrivals, longer answers
        (tmp_path / name / "t.jsonl").write_text("".join(
            json.dumps({**r, "output_toks": r["output_toks"] * scale}) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path / "a")
    a = make_scenario("hard", 3, trace_path="t.jsonl")
    assert a.trace_path == str(tmp_path / "a" / "t.jsonl")
    assert make_scenario("hard", 3, trace_path="./t.jsonl") is a
    monkeypatch.chdir(tmp_path / "b")
    b = make_scenario("hard", 3, trace_path="t.jsonl")
    assert b.trace_path == str(tmp_path / "b" / "t.jsonl") and b.trace != a.trace
    state = Episode(a).state_dict()
    assert state["trace_path"] == a.trace_path  # rebuilds from anywhere
    assert Episode.from_state(state).scenario is a


def test_an_edited_trace_file_is_read_again(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = chat_trace_rows()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = make_scenario("hard", 3, trace_path=str(path))
    path.write_text("".join(json.dumps({**r, "output_toks": r["output_toks"] + 7}) + "\n"
                            for r in rows))
    make_scenario.cache_clear()
    after = make_scenario("hard", 3, trace_path=str(path))
    assert [r.output_toks for r in after.trace.requests] == \
        [r.output_toks + 7 for r in before.trace.requests]


def test_the_system_prefix_is_the_whole_files(tmp_path):
    """A window with one request must not take its whole prompt for a shared prefix: the
    system prefix is what every request of the file shares (here 1 block of 16 tokens)."""
    path = tmp_path / "sparse.jsonl"
    rows = [{"arrival_s": t, "input_toks": 160, "output_toks": 8,
             "hash_ids": [0] + [100 * k + j for j in range(1, 10)]}
            for k, t in enumerate((0.0, 300.0, 600.0))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scenario = make_scenario("easy", 0, trace_path=str(path))
    (request,) = scenario.trace.requests
    assert request.system_toks == 16
    alone = Trace((TraceRequest(0.0, 160, 8, hash_ids=request.hash_ids),), 16)
    assert infer_sessions(alone).requests[0].system_toks == 160  # what the window would say


def test_arguments_of_any_numeric_type_share_one_scenario():
    import numpy as np

    a = make_scenario("easy", np.int64(5), steps=np.int64(20), step_s=3, warmup_s=30)
    assert make_scenario("easy", 5) is a
    assert type(a.seed) is int and type(a.step_s) is float
    json.dumps(Episode(a).state_dict())  # plain JSON types
    with pytest.raises(TypeError):
        make_scenario("easy", 1.5)
