"""The kv-cache-rl command line: replay outputs, errors without tracebacks, bench JSON."""

import csv
import json
import subprocess
import sys

import pytest

from kv_cache_rl.apps.cli import main
from kv_cache_rl.apps.replay import SUMMARY_KEYS

ROWS = [{"arrival_s": 0.05 * i, "input_toks": 200 + 37 * i, "output_toks": 20 + i}
        for i in range(40)]


@pytest.fixture()
def trace(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_replay_writes_exact_json_keys_and_timeseries(trace, tmp_path, capsys):
    out, series = tmp_path / "s.json", tmp_path / "ts.csv"
    assert main(["replay", str(trace), "--model", "llama-3.1-8b", "--gpu", "rtx4090",
                 "--max-num-seqs", "8", "--json", str(out), "--timeseries", str(series)]) == 0
    summary = json.loads(out.read_text())
    assert tuple(summary) == SUMMARY_KEYS
    assert summary["num_requests"] == len(ROWS)
    for key in ("ttft_ms", "tpot_ms", "latency_ms"):
        assert set(summary[key]) == {"mean", "p50", "p90", "p99"}
        assert 0 < summary[key]["p50"] <= summary[key]["p99"]
    rows = list(csv.reader(series.open()))
    assert rows[0] == ["t", "running", "waiting", "kv_cache_pct", "prompt_throughput",
                       "gen_throughput"]
    assert len(rows) - 1 >= int(summary["makespan_s"])
    assert sum(float(r[5]) for r in rows[1:]) == sum(r["output_toks"] for r in ROWS)
    assert "ttft_ms" in capsys.readouterr().out


def test_replay_kv_bound_preempts(trace, tmp_path):
    out = tmp_path / "s.json"
    assert main(["replay", str(trace), "--num-gpu-blocks", "150", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["preemptions"] > 0 and summary["recomputed_tokens"] > 0
    assert summary["seconds_kv_ge_95"] > 0


def test_unknown_model_lists_known_ones(trace, capsys):
    assert main(["replay", str(trace), "--model", "gpt-5"]) == 2
    err = capsys.readouterr().err
    assert "Llama-3.1-8B" in err and "Traceback" not in err


def test_malformed_trace_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n{oops\n")
    assert main(["replay", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:3" in err and "Traceback" not in err


def test_bench_json(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "--difficulty", "easy", "--episodes", "1", "--policies",
                 "keep,compress_first", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["policy"] for r in data["results"]] == ["keep", "compress_first"]
    assert set(data["results"][0]["components"]) >= {"failure_penalty", "throughput_reward"}
    assert main(["bench", "--policies", "nope"]) == 2


def test_bench_memory_fraction(tmp_path, capsys):
    out = tmp_path / "b.json"
    args = ["bench", "--difficulty", "easy", "--episodes", "2", "--policies", "keep",
            "--memory-fraction", "0.4:0.5", "--json", str(out)]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert data["memory_fraction"] == [0.4, 0.5] and len(data["results"][0]["rewards"]) == 2
    assert "0.4-0.5 x each window's peak demand" in capsys.readouterr().out
    assert main(args[:-2]) == 0 and main(args[:-2]) == 0  # same seeds, same budgets: cached
    for bad in ("0:1", "0.5:0.3", "abc"):
        assert main(["bench", "--memory-fraction", bad]) == 2
        err = capsys.readouterr().err
        assert "--memory-fraction must be F or LO:HI" in err and "Traceback" not in err


def test_module_entry_point(trace):
    done = subprocess.run([sys.executable, "-m", "kv_cache_rl", "replay", str(trace)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "num_requests" in done.stdout


def test_bench_plot_writes_one_png_per_difficulty(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    assert main(["bench", "--difficulty", "hard", "--episodes", "1", "--policies",
                 "keep,lru,compress_first", "--plot", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["leaderboard.png", "memory_hard.png"]
    for name in written:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out / 'memory_hard.png'}" in capsys.readouterr().out


def test_bench_times_the_policy_not_the_warm_up(monkeypatch):
    """``ms/ep`` is the policy's episode: the scenario's 20 s warm-up is served before the
    clock starts, so the first policy played on a scenario is not charged for it."""
    from kv_cache_rl.apps import bench
    from kv_cache_rl.task.scenario import make_scenario

    make_scenario.cache_clear()
    played = []

    def play(scenario, policy):
        played.append("_warm" in scenario.__dict__)  # the cached warm engine already built
        return real_play(scenario, policy)

    real_play = bench.play
    monkeypatch.setattr(bench, "play", play)
    bench.run(("hard",), 2, 7, ("keep", "lru"))
    assert played == [True] * 4
