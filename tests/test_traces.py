"""Trace loaders (every format, malformed inputs) and transforms (window, scale_rate, head)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kv_cache_rl.workload.requests import Trace, TraceRequest
from kv_cache_rl.workload.traces import (TraceFormatError, detect_format, dump_jsonl, head,
                                         load_trace, scale_rate, window)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "traces"
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# ---- formats ---------------------------------------------------------------------------------


def test_jsonl_sorted_stable_with_optional_fields(tmp_path):
    path = write(tmp_path, "t.jsonl", jsonl([
        {"arrival_s": 1.0, "input_toks": 10, "output_toks": 2, "request_id": "a"},
        {"arrival_s": 0.5, "input_toks": 40, "output_toks": 3, "hash_ids": [7, 8]},
        {"arrival_s": 1.0, "input_toks": 11, "output_toks": 4, "request_id": "c"},
    ]) + "\n")  # a trailing blank line is fine
    trace = load_trace(path)
    assert trace.meta["format"] == "jsonl" and trace.source == "t.jsonl"
    assert [r.arrival_s for r in trace.requests] == [0.5, 1.0, 1.0]
    assert [r.request_id for r in trace.requests] == ["1", "a", "c"]  # ties keep file order
    assert trace.requests[0].hash_ids == (7, 8)
    assert trace.hash_block_tokens == 16
    assert load_trace(path, hash_block_tokens=512).hash_block_tokens == 512


def test_azure_csv_seconds_since_first_row(tmp_path):
    path = write(tmp_path, "a.csv", AZURE_HEADER +
                 "2023-11-16 23:59:59.5000000,100,10\n"
                 "2023-11-17 00:00:01.2500000,200,20\n"  # crosses midnight
                 "2023-11-17 00:00:01.2500000,300,30\n")
    trace = load_trace(path)
    assert detect_format(path) == "azure" and trace.meta["format"] == "azure"
    assert [r.arrival_s for r in trace.requests] == pytest.approx([0.0, 1.75, 1.75])
    assert [(r.input_toks, r.output_toks) for r in trace.requests] == [(100, 10), (200, 20),
                                                                       (300, 30)]
    assert all(not r.hash_ids for r in trace.requests)


def test_mooncake_ms_and_hash_ids(tmp_path):
    path = write(tmp_path, "m.jsonl", jsonl([
        {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]},
        {"timestamp": 3000, "input_length": 1100, "output_length": 7, "hash_ids": [0, 1, 2]},
    ]))
    trace = load_trace(path)
    assert detect_format(path) == "mooncake"
    assert trace.hash_block_tokens == 512 and trace.meta["hash_partial_last_block"]
    assert [r.arrival_s for r in trace.requests] == [0.0, 3.0]
    assert trace.requests[1].hash_ids == (0, 1, 2)
    assert load_trace(path, fmt="mooncake") == trace


def test_explicit_format_and_unknown(tmp_path):
    path = write(tmp_path, "x.txt", jsonl([{"arrival_s": 0, "input_toks": 1, "output_toks": 1}]))
    assert len(load_trace(path, fmt="jsonl").requests) == 1
    with pytest.raises(ValueError, match="fmt"):
        load_trace(path, fmt="parquet")
    odd = write(tmp_path, "odd.jsonl", jsonl([{"t": 1}]))
    with pytest.raises(TraceFormatError, match=r"odd\.jsonl:1: unknown row format"):
        load_trace(odd)
    with pytest.raises(TraceFormatError, match="empty"):
        load_trace(write(tmp_path, "empty.jsonl", "\n"))


def test_dump_jsonl_round_trip(tmp_path):
    reqs = (TraceRequest(0.0, 40, 5, (1, 2), "a", session_id=3, system_toks=16,
                         reasoning_toks=2, priority=1, next_turn_s=4.5),
            TraceRequest(1.0, 20, 2, (1,), "b", ephemeral=True))
    trace = Trace(reqs, hash_block_tokens=16)
    dump_jsonl(trace, tmp_path / "g.jsonl")
    assert load_trace(tmp_path / "g.jsonl").requests == reqs


# ---- malformed input -------------------------------------------------------------------------


def test_bad_json_line_3_names_file_and_line(tmp_path):
    ok = {"arrival_s": 0, "input_toks": 5, "output_toks": 1}
    path = write(tmp_path, "broken.jsonl", jsonl([ok, ok]) + '{"arrival_s": 1,\n')
    with pytest.raises(TraceFormatError) as e:
        load_trace(path)
    assert "broken.jsonl" in str(e.value) and ":3:" in str(e.value)
    assert "invalid JSON" in str(e.value)


@pytest.mark.parametrize("row, what", [
    ({"arrival_s": 0, "input_toks": 5}, "missing key(s) output_toks"),
    ({"arrival_s": -1, "input_toks": 5, "output_toks": 1}, "arrival_s is negative"),
    ({"arrival_s": 0, "input_toks": -5, "output_toks": 1}, "input_toks is negative"),
    ({"arrival_s": 0, "input_toks": "many", "output_toks": 1}, "input_toks is not a number"),
    ({"arrival_s": 0, "input_toks": 2.5, "output_toks": 1}, "not an integer"),
    ({"arrival_s": 0, "input_toks": True, "output_toks": 1}, "not a finite number"),
    ({"arrival_s": 0, "input_toks": 0, "output_toks": 1}, "input length is 0"),
    ({"arrival_s": 0, "input_toks": 5, "output_toks": 1, "hash_ids": [1, "x"]}, "hash_ids"),
    ([1, 2, 3], "expected a JSON object"),
    ({"arrival_s": 1, "input_toks": 5, "output_toks": 1, "request_type": "poetry"},
     "request_type must be one of chat, code, reasoning"),
    ({"arrival_s": 1, "input_toks": 5, "output_toks": 1, "after": 1},
     "after=1 is not the index of an earlier request"),
])
def test_jsonl_row_errors(tmp_path, row, what):
    ok = {"arrival_s": 0, "input_toks": 5, "output_toks": 1}
    path = write(tmp_path, "bad.jsonl", jsonl([ok, row]))
    with pytest.raises(TraceFormatError) as e:
        load_trace(path, fmt="jsonl")
    assert "bad.jsonl:2: " in str(e.value) and what in str(e.value)
    assert isinstance(e.value, ValueError)


def test_mooncake_missing_hash_ids(tmp_path):
    path = write(tmp_path, "m.jsonl", jsonl([
        {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]},
        {"timestamp": 1, "input_length": 600, "output_length": 5}]))
    with pytest.raises(TraceFormatError, match=r"m\.jsonl:2: missing key\(s\) hash_ids"):
        load_trace(path)


@pytest.mark.parametrize("text, what", [
    ("TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.9,5\n", ":1: missing column(s) GeneratedTokens"),
    (AZURE_HEADER + "2023-11-16 18:17:03.9,5,1\n2023-11-16 18:17:04.0,-5,1\n",
     ":3: ContextTokens is negative"),
    (AZURE_HEADER + "2023-11-16 18:17:03.9,5,1\n2023-11-16 18:17:04.0,5,abc\n",
     ":3: GeneratedTokens is not a number"),
    (AZURE_HEADER + "yesterday,5,1\n", ":2: TIMESTAMP is not"),
    (AZURE_HEADER + "2023-11-16 18:17:03.9,5\n", ":2: expected 3 fields"),
])
def test_azure_errors(tmp_path, text, what):
    path = write(tmp_path, "az.csv", text)
    with pytest.raises(TraceFormatError) as e:
        load_trace(path)
    assert "az.csv" in str(e.value) and what in str(e.value)


def test_zero_output_policy(tmp_path):
    path = write(tmp_path, "z.csv", AZURE_HEADER +
                 "2023-11-16 18:00:00.0,5,0\n2023-11-16 18:00:01.0,6,3\n")
    clamped = load_trace(path)
    assert [r.output_toks for r in clamped.requests] == [1, 3]
    assert clamped.meta["zero_output_rows"] == 1
    skipped = load_trace(path, zero_output="skip")
    assert [r.input_toks for r in skipped.requests] == [6] and skipped.meta["zero_output_rows"] == 1
    with pytest.raises(TraceFormatError, match=r"z\.csv:2: output length is 0"):
        load_trace(path, zero_output="error")
    with pytest.raises(ValueError, match="zero_output"):
        load_trace(path, zero_output="ignore")


# ---- transforms ------------------------------------------------------------------------------


def session_trace() -> Trace:
    return Trace((
        TraceRequest(0.0, 32, 4, (0, 1), "s0t0", session_id=0, next_turn_s=2.0),
        TraceRequest(1.0, 16, 4, (0,), "x"),
        TraceRequest(3.0, 48, 4, (0, 1, 2), "s0t1", session_id=0, next_turn_s=5.0),
        TraceRequest(8.5, 64, 4, (0, 1, 2, 3), "s0t2", session_id=0),
        TraceRequest(9.0, 16, 4, (0,), "y"),
    ), hash_block_tokens=16, source="toy")


def test_window_rebases_and_closes_cut_sessions():
    cut = window(session_trace(), 0.5, 8.0)
    assert [r.request_id for r in cut.requests] == ["x", "s0t1"]
    assert [r.arrival_s for r in cut.requests] == [0.5, 2.5]
    assert cut.requests[1].next_turn_s == -1.0  # its next turn lies outside the window
    assert cut.source == "toy" and cut.hash_block_tokens == 16
    assert cut.meta["transforms"] == ["window(0.5, 8.0)"]
    full = window(session_trace(), 0.0, 100.0)
    assert full.requests == session_trace().requests
    with pytest.raises(ValueError):
        window(session_trace(), 5.0, 5.0)


def test_scale_rate_compresses_time():
    fast = scale_rate(session_trace(), 2.0)
    assert [r.arrival_s for r in fast.requests] == [0.0, 0.5, 1.5, 4.25, 4.5]
    assert [r.next_turn_s for r in fast.requests] == [1.0, -1.0, 2.5, -1.0, -1.0]
    assert fast.duration_s == pytest.approx(session_trace().duration_s / 2)
    with pytest.raises(ValueError):
        scale_rate(session_trace(), 0.0)


def test_head():
    h = head(session_trace(), 3)
    assert [r.request_id for r in h.requests] == ["s0t0", "x", "s0t1"]
    assert h.requests[2].next_turn_s == -1.0
    assert head(session_trace(), 0).requests == ()
    with pytest.raises(ValueError):
        head(session_trace(), -1)


# ---- the shared traces (skipped when ../shared/data is absent) ----------------------------------

# the raw traces the shipped workload statistics were derived from
SHARED = ["azure_llm_2023_code.csv", "azure_llm_2023_conv.csv", "mooncake_conversation.jsonl",
          "mooncake_synthetic.jsonl", "sharegpt_llama-3.1-8b_300req_10rps.jsonl"]


def statistics_of(name: str) -> dict:
    from kv_cache_rl.workload.generators import WORKLOADS, load_statistics

    (prof,) = [p for p in map(load_statistics, WORKLOADS) if p["file"] == name]
    return prof


@pytest.mark.parametrize("name", SHARED)
def test_shared_traces_load(name):
    if not (DATA / name).is_file():
        pytest.skip(f"{DATA / name} not present")
    trace = load_trace(DATA / name)
    with (DATA / name).open() as f:  # one request a row: every row but a CSV's header
        rows = sum(1 for line in f if line.strip()) - name.endswith(".csv")
    assert len(trace.requests) == rows and trace.meta["zero_output_rows"] == 0
    times = [r.arrival_s for r in trace.requests]
    assert times == sorted(times) and times[0] == 0.0
    # what the shipped statistics were derived from (seconds, not the file's unit; Mooncake's
    # coarse timestamps are spread over their bucket there)
    prof = statistics_of(name)
    assert len(trace.requests) == prof["num_requests"]
    bucket = prof["interarrival"]["timestamp_bucket_s"] or 0.0
    assert abs(trace.duration_s - prof["duration_s"]) <= bucket + 1e-3


def test_mooncake_ids_cover_every_512_token_block():
    path = DATA / "mooncake_conversation.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    trace = load_trace(path)  # its load time is a benchmark: benchmarks/hot_paths.py
    assert all(len(r.hash_ids) == -(-r.input_toks // 512) for r in trace.requests)


def test_unreadable_empty_and_non_file_traces_name_the_file(tmp_path):
    import gzip

    plain = b'{"arrival_s": 0, "input_toks": 10, "output_toks": 5}\n'
    (tmp_path / "z.jsonl").write_bytes(gzip.compress(plain * 3))
    with pytest.raises(TraceFormatError, match=r"z\.jsonl:1: not UTF-8"):
        load_trace(tmp_path / "z.jsonl")
    (tmp_path / "latin.jsonl").write_bytes(plain + b'{"request_id": "caf\xe9"}\n')
    with pytest.raises(TraceFormatError, match=r"latin\.jsonl:2: not UTF-8"):
        load_trace(tmp_path / "latin.jsonl")
    (tmp_path / "header.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    with pytest.raises(TraceFormatError, match=r"header\.csv:1: no requests"):
        load_trace(tmp_path / "header.csv")
    with pytest.raises(TraceFormatError, match="not a file"):
        load_trace(tmp_path)
