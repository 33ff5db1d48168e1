"""The command line's error contract and ``train``'s outputs."""

from __future__ import annotations

import pytest

from kv_cache_rl.apps import cli
from kv_cache_rl.apps import train as train_module
from kv_cache_rl.errors import ConfigError, KVCacheRLError, MissingFileError


def test_project_errors_are_one_line(capsys):
    assert cli.main(["bench", "--policies", "no_such_policy", "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kv-cache-rl bench: error: unknown policy 'no_such_policy'")
    assert "\n" not in err and "Traceback" not in err


def test_missing_trace_file_is_a_project_error(tmp_path, capsys):
    assert cli.main(["replay", str(tmp_path / "absent.jsonl")]) == 2
    assert "no such trace file" in capsys.readouterr().err
    with pytest.raises(MissingFileError):
        from kv_cache_rl.workload.traces import load_trace
        load_trace(tmp_path / "absent.jsonl")


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only the project's own error types become a usage line; a ValueError from a bug
    propagates."""
    def broken(args):
        raise ValueError("a bug, not a bad argument")

    monkeypatch.setattr(cli, "_cmd_bench", broken)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["bench"])


def test_errors_keep_their_builtin_bases():
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, KVCacheRLError)
    assert issubclass(MissingFileError, FileNotFoundError)
    with pytest.raises(ConfigError):
        from kv_cache_rl.scenario import make_scenario
        make_scenario("impossible", 0)


def test_train_never_overwrites_the_shipped_weights_unless_asked(tmp_path, monkeypatch):
    shipped = train_module.SHIPPED_WEIGHTS
    before = shipped.read_bytes()
    with pytest.raises(ConfigError, match="--install"):
        train_module.train(out=shipped, log=lambda *_: None)
    assert shipped.read_bytes() == before

    seen = {}
    monkeypatch.setattr(train_module, "train", lambda **kw: seen.update(kw))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--seed", "7"]) == 0
    assert str(seen["out"]) == "runs/learned_seed7.json" and seen["install"] is False
    assert "--install" not in seen["command"]
    assert cli.main(["train", "--install", "--out", "w.json"]) == 0
    assert str(seen["out"]) == "w.json" and seen["install"] is True
    assert seen["command"].endswith("--install")


def test_bench_on_several_processes_scores_exactly_as_serial():
    """Workers share nothing but what each scenario's memo of plays holds in its own process:
    every score equals the serial run's."""
    from kv_cache_rl.apps import bench

    args = (("easy", "hard"), 2, 7, ("keep", "lru", "type_aware", "oracle"))
    serial = bench.to_json(bench.run(*args, steps=3, jobs=1), seed=7, episodes=2)
    parallel = bench.to_json(bench.run(*args, steps=3, jobs=2), seed=7, episodes=2)
    assert parallel["results"] == serial["results"]
    with pytest.raises(ConfigError):
        bench.run(*args, steps=3, jobs=0)
