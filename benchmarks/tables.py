"""Every table the documentation shows, generated from the recorded results.

    .venv/bin/python benchmarks/tables.py            # print every table
    .venv/bin/python benchmarks/tables.py --write    # rewrite the marked regions of the docs
    .venv/bin/python benchmarks/tables.py --check    # exit 1 if a marked region differs

A generated table sits in a document between two markers::

    <!-- table:leaderboard -->
    | policy | ... |
    <!-- /table -->

The documents are ``README.md``, ``docs/*.md`` and ``environments/kv_cache_eviction/README.md``.
Sources: the JSON and text files in ``benchmarks/results`` (each names the command that made
it) and, for the calibration table, the shipped profiles in ``kv_cache_rl/data/calibration``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from leaderboard import table as leaderboard_table

TIERS = ("easy", "medium", "hard")
MARKER = re.compile(r"(<!-- table:([a-z0-9_]+) -->\n)(.*?)(<!-- /table -->)", re.DOTALL)


def _json(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _json_in_text(name: str) -> dict:
    """The JSON object in a text file that may hold other output around it (progress bars
    before it, the command after it)."""
    text = (RESULTS / name).read_text()
    start = 0 if text.startswith("{") else text.index("\n{") + 1
    return json.JSONDecoder().raw_decode(text, start)[0]


def _heuristics() -> tuple[str, ...]:
    from kv_cache_rl.policies import HEURISTICS

    return HEURISTICS


def _md(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# --- the leaderboards ---------------------------------------------------------------------

def leaderboard() -> str:
    """``kv-cache-rl bench --episodes 20`` (seeds 0-19 of every tier): ``bench.json``."""
    return leaderboard_table(_json("bench.json"))


def leaderboard_heldout() -> str:
    """``kv-cache-rl bench --seed 100 --episodes 10`` (held-out seeds): ``bench_seed100.json``."""
    return leaderboard_table(_json("bench_seed100.json"))


def _task_check(name: str) -> str:
    data = _json(name)
    rows = []
    for tier in TIERS:
        t = data["tiers"][tier]
        best = t["best_heuristic"]
        rule = max(t["blind"], key=t["blind"].get)
        margin = t["normalized"][best] - t["blind"][rule]
        rows.append([tier, f"{t['oracle_minus_keep_mean']:+.3f}, {t['oracle_minus_keep_min']:+.3f}",
                     f"`{best}` {t['normalized'][best]:+.2f}", f"`{rule}` {t['blind'][rule]:+.2f}",
                     f"{margin:+.2f}"])
    return _md(["tier", "oracle − keep (mean, smallest)", "best heuristic",
                "best state-blind rule", "margin"], rows)


def task_check() -> str:
    """The task's acceptance figures on the bench seeds: ``task_check.json``."""
    return _task_check("task_check.json")


def task_check_heldout() -> str:
    """The same on the held-out seeds: ``task_check_seed100.json``."""
    return _task_check("task_check_seed100.json")


TRACES = {  # result file stem -> label
    "trace_azure_llm_2023_code": "Azure code",
    "trace_azure_llm_2023_conv": "Azure conversation",
    "trace_mooncake_conversation": "Mooncake conversation",
    "trace_mooncake_synthetic": "Mooncake synthetic",
}
TRACE_POLICIES = ("keep", "lru", "t_lru", "type_aware", "lookahead", "oracle")


def trace_bench() -> str:
    """Hard-tier episodes cut from raw traces (``bench --trace``): ``trace_*.json``."""
    heuristics = _heuristics()
    rows = []
    for stem, label in TRACES.items():
        cells = {r["policy"]: r for r in _json(stem + ".json")["results"]}
        best = max((p for p in cells if p in heuristics),
                   key=lambda p: cells[p]["normalized_score"])
        rows.append([label] + [f"{cells[p]['reward_mean']:+.3f}" for p in TRACE_POLICIES]
                    + [f"`{best}` {cells[best]['normalized_score']:+.2f}"])
    return _md(["trace"] + [f"`{p}`" for p in TRACE_POLICIES] + ["best heuristic (normalised)"],
               rows)


WORKLOAD_LABELS = {"azure_conv": "Azure conversation", "azure_code": "Azure code",
                   "mooncake_conversation": "Mooncake conversation",
                   "mooncake_synthetic": "Mooncake synthetic", "sharegpt": "ShareGPT"}


def tiers() -> str:
    """The difficulty tiers as the code defines them: ``kv_cache_rl.task.scenario.TIERS``."""
    from kv_cache_rl.task.scenario import TIERS as SCENARIO_TIERS
    from kv_cache_rl.workload.requests import REQUEST_TYPES

    def num(x: float) -> str:
        return f"{x:g}"

    rows = []
    for name, tier in SCENARIO_TIERS.items():
        lo, hi = tier.memory
        loads = ", ".join(f"{WORKLOAD_LABELS.get(w, w)} ({num(a)}–{num(b)})"
                          for w, (a, b) in tier.loads.items())
        mix = " / ".join(f"{tier.types.get(t, 0) * 100:.0f}" for t in REQUEST_TYPES) + "%"
        swap = f"{tier.swap_bytes / 2 ** 30:g} GiB"
        rows.append([name, f"{lo:.2f}–{hi:.2f}", mix, swap, loads])
    return _md(["tier", "KV memory / peak demand", "sessions " + " / ".join(REQUEST_TYPES),
                "host swap", "workloads (request rate, req/s)"], rows)


# --- the engine ---------------------------------------------------------------------------

def _makespan_row() -> list[str] | None:
    for line in (RESULTS / "fidelity.txt").read_text().splitlines():
        if line.startswith("| makespan_s |"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            err = cells[3].replace("-", "−")
            return ["makespan", f"{cells[1]} s", f"{cells[2]} s", err, ""]
    return None


FIDELITY_BARS = {"tpot_ms": "5% (3%)", "latency_ms": "10% (5%)", "ttft_ms": "15% (10%)"}
FIDELITY_LABELS = {"tpot_ms": "TPOT", "latency_ms": "end-to-end latency", "ttft_ms": "TTFT"}


def fidelity() -> str:
    """Replay of the ShareGPT trace against the real vLLM 0.19 run: ``fidelity.json``
    (the makespan row from ``fidelity.txt``)."""
    data = _json("fidelity.json")["fidelity"]
    rows = []
    for key, label in FIDELITY_LABELS.items():
        m = data[key]
        fmt = (lambda v: f"{v:.1f} ms") if key == "tpot_ms" else (lambda v: f"{v:,.0f} ms")
        rows.append([label, fmt(m["sim"]), fmt(m["real"]),
                     f"{m['rel_err'] * 100:+.1f}%".replace("-", "−"), FIDELITY_BARS[key]])
    makespan = _makespan_row()
    if makespan:
        rows.append(makespan)
    return _md(["metric (mean)", "simulated", "real vLLM", "error", "bar (aim)"], rows)


def _compute_bound_waiting() -> str:
    m = re.search(r"compute-bound run: (\d+)", (RESULTS / "fidelity.txt").read_text())
    return f" (compute-bound run: {m.group(1)})" if m else ""


def kv_bound() -> str:
    """The same trace with 10x fewer KV blocks than its peak demand: ``fidelity.json``."""
    k = _json("fidelity.json")["kv_bound"]
    rows = [
        ["KV blocks / peak demand", f"{k['num_gpu_blocks']:,} / {k['peak_demand_blocks']:,}"],
        ["preemptions", f"{k['preemptions']:,}"],
        ["recomputed tokens", f"{k['recomputed_tokens']:,}"],
        ["peak waiting requests", f"{k['peak_waiting']:,}" + _compute_bound_waiting()],
        ["seconds with KV ≥ 95%", f"{k['seconds_kv_ge_95']:.0f} of {k['makespan_s']:.0f} s"],
        ["mean KV usage", f"{k['kv_usage_mean']:.2f}"],
        ["mean TTFT", f"{k['ttft_ms_mean'] / 1000:.0f} s"],
    ]
    return _md(["KV-bound replay", "value"], rows)


def _percent(fraction: float) -> str:
    """A recorded fraction (4 decimals) as a percentage with one decimal, rounded half up."""
    value = (Decimal(str(fraction)) * 100).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    return f"{value}%"


def calibration() -> str:
    """The shipped hardware profiles: ``kv_cache_rl/data/calibration/cost_*.json`` (held-back
    errors, source) and ``load_profile(...).num_gpu_blocks()`` (KV blocks at 0.9 utilisation)."""
    from kv_cache_rl import DATA_DIR
    from kv_cache_rl.hardware.profiles import GPU_LABELS, load_profile

    rows = []
    for path in sorted((DATA_DIR / "calibration").glob("cost_*.json")):
        data = json.loads(path.read_text())
        prof = data["profile"]
        source = ("aiconfigurator vLLM 0.14 tables" if "aiconfigurator" in data["source"]
                  else "vLLM 0.19 per-layer profiles (LLMServingSim)")
        profile = load_profile(prof["model"], prof["gpu"], prof["tp"])
        err = data["holdout_median_abs_rel_err"]
        rows.append((0 if "LLMServingSim" in source else 1, prof["model"], [
            prof["model"], GPU_LABELS.get(prof["gpu"], prof["gpu"]), str(prof["tp"]), source,
            f"{profile.num_gpu_blocks():,}", f"{profile.gpu.pcie_gbps:g} GB/s",
            " / ".join(_percent(err[k]) for k in ("attention", "dense", "per_sequence"))]))
    rows.sort(key=lambda r: (r[0], r[1]))
    return _md(["model", "GPU", "TP", "source", "KV blocks at 0.9 util", "host link",
                "held-back median error (attention / dense / per-seq)"], [r[2] for r in rows])


# --- speed and cost -----------------------------------------------------------------------

def _command(name: str) -> str:
    for line in (RESULTS / name).read_text().splitlines():
        if line.startswith("command:"):
            return line.removeprefix("command:").strip().split(" (")[0]
    raise ValueError(f"{name} names no command")


def speed() -> str:
    """Speed bars: ``fidelity.json``, ``episode_speed.json``, ``gym_speed.json``,
    ``env_overhead_v*.txt``, ``env_tokens.txt``, ``observation_tokens.txt``."""
    fid = _json("fidelity.json")["speed"]
    ep = {r["policy"]: r for r in _json("episode_speed.json")["results"]}
    gym = _json("gym_speed.json")
    v1, v0 = _json_in_text("env_overhead_v1.txt"), _json_in_text("env_overhead_v0.txt")
    tok = _json_in_text("env_tokens.txt")
    obs = _observation_tokens()
    heur = [ep[p]["mean_fastest_ms"] for p in _heuristics() if p in ep]
    repeats = re.search(r"--repeats (\d+)", _command("fidelity.txt"))
    timing = _json("bench.json")["timing"]
    oracle_bench = [timing[f"oracle/{t}"]["ms_per_episode_mean"] for t in TIERS]
    fresh, warm = _make_bench_seconds()
    rows = [
        ["replay, whole process", f"`{_command('fidelity.txt').split(' --json')[0]}`",
         f"{fid['process_wall_s']:.3f} s for {fid['served_s']:.1f} s served = "
         f"**1/{fid['speedup']:.0f}** of served time"
         + (f" (median of {repeats.group(1)})" if repeats else ""), "≤ 1/200"],
        ["heuristic episode, hard (60 s served)",
         f"`{_command('episode_speed.txt').split(' --json')[0]}`",
         (f"mean over episodes of each episode's fastest run: **{min(heur):.1f}–{max(heur):.1f} "
         f"ms** for each of the {len(heur)} heuristics, {statistics.fmean(heur):.1f} ms averaged "
         f"over them; `random` {ep['random']['mean_fastest_ms']:.1f} ms, `learned` "
         f"{ep['learned']['mean_fastest_ms']:.1f} ms, `keep` {ep['keep']['mean_fastest_ms']:.1f}"
         " ms (the server with no agent thrashes)"), "≤ 50 ms"],
        ["`oracle` episode, hard, whole", "same run (it plays every other policy itself)",
         (f"**{ep['oracle']['mean_fastest_ms'] / 1000:.1f} s** mean, "
         f"{ep['oracle']['max_median_ms'] / 1000:.1f} s max"), "≤ 8 s"],
        ["`oracle` episode inside `bench`", "`kv-cache-rl bench --episodes 20` (`bench.json`)",
         (f"{min(oracle_bench) / 1000:.1f}–{max(oracle_bench) / 1000:.1f} s mean per tier: its "
         "own search only (the other policies' episodes are memoised)"), ""],
        ["`lookahead` episode, hard", "same run as the heuristics",
         (f"{ep['lookahead']['mean_fastest_ms'] / 1000:.1f} s mean, "
         f"{ep['lookahead']['max_median_ms'] / 1000:.1f} s max"), ""],
        [f"Gymnasium steps/s, {gym['difficulty']}, random actions",
         f"`{_command('gym_speed.txt').split(' --json')[0]}`",
         (f"single {gym['single_steps_per_s']:.0f}, `SyncVectorEnv`×4 "
         f"{gym['sync_x4_steps_per_s']:.0f}, "
         f"`AsyncVectorEnv`×4 {gym['async_x4_steps_per_s']:.0f}"),
         ""],
        ["verifiers per-turn overhead",
         ("`.venvs/vf04/bin/python benchmarks/env_overhead.py overhead --api v1` "
         "(and `vf031 ... --api v0`)"),
         (f"v1 {v1['later_turns']['overhead_ms']['mean']:.1f} ms mean "
         f"(p95 {v1['later_turns']['overhead_ms']['p95']:.1f} ms) on later turns; "
         f"v0 {v0['later_turns']['overhead_ms']['mean']:.2f} ms"), "≤ 5 ms"],
        [f"tokens per {tok['steps']}-step episode",
         f"`python benchmarks/env_overhead.py tokens` ({tok['encoding']})",
         (f"prompt {tok['prompt_tokens']:,.0f}; {tok['read_per_turn']:,.0f} read per turn; "
         f"conversation at the end {tok['conversation_tokens_at_end']:,.0f} "
         f"(max {tok['max_conversation_tokens']:,})"), ""],
        ["`make bench` (3 episodes per tier, every policy)", "`time make bench`",
         (f"{fresh:.0f} s in a fresh clone, set-up included; {warm:.0f} s once set up "
         "(`make_bench.txt`)"), ""],
        ["observation", f"`{_command('observation_tokens.txt')}`",
         f"max {obs['max']} tokens ({obs['encoding']}), p50 {obs['p50']}",
         f"≤ {obs['budget']}"],
    ]
    return _md(["what", "command", "result", "bar"], rows)


def _make_bench_seconds() -> tuple[float, float]:
    """``real`` of the fresh-clone and the set-up runs in ``make_bench.txt``."""
    text = (RESULTS / "make_bench.txt").read_text()
    found = re.findall(r"^real\s+(\d+)m([\d.]+)s", text, re.MULTILINE)
    fresh, warm = (int(m) * 60 + float(sec) for m, sec in found[:2])
    return fresh, warm


def episode_speed() -> str:
    """Per-policy episode wall time, hard tier: ``episode_speed.json``."""
    data = _json("episode_speed.json")
    rows = [[f"`{r['policy']}`", f"{r['mean_fastest_ms']:,.1f}", f"{r['mean_median_ms']:,.1f}",
             f"{r['p90_median_ms']:,.1f}", f"{r['max_median_ms']:,.1f}",
             f"{r['share_median_le_50ms'] * 100:.0f}%", str(r["runs_per_episode"])]
            for r in data["results"]]
    ref = data["reference_loop"]
    rows.append(["reference loop (10⁶ Python additions)", f"{ref['fastest_ms']:.0f}",
                 f"{ref['median_ms']:.0f}", "", "", "", str(data["repeats"])])
    return _md(["policy", "fastest (ms)", "median (ms)", "p90 of medians", "slowest median",
                "medians ≤ 50 ms", "runs per episode"], rows)


def _observation_tokens() -> dict:
    line = (RESULTS / "observation_tokens.txt").read_text().splitlines()[0]
    m = re.match(r"(\d+) observations \((\S+)\): min (\d+), p50 (\d+), p90 (\d+), p99 (\d+), "
                 r"max (\d+) tokens \(budget (\d+)\)", line)
    if not m:
        raise ValueError(f"observation_tokens.txt: unexpected line {line!r}")
    keys = ("count", "encoding", "min", "p50", "p90", "p99", "max", "budget")
    return {k: (v if k == "encoding" else int(v)) for k, v in zip(keys, m.groups())}


def episode_cost() -> str:
    """What one verifiers episode costs a model: ``env_tokens.txt`` and
    ``observation_tokens.txt``."""
    tok = _json_in_text("env_tokens.txt")
    obs = _observation_tokens()
    rows = [
        ["assistant turns (one simulator step each)", f"{tok['steps']}"],
        ["prompt (system + first observation)", f"{tok['prompt_tokens']:,.0f}"],
        ["read per turn (tool results + observation)", f"{tok['read_per_turn']:,.0f}"],
        ["one observation (p50 / max)", f"{obs['p50']} / {obs['max']}"],
        ["written per episode (tool calls)", f"{tok['reply_tokens_per_episode']:,.0f}"],
        ["conversation at the end (mean / max)",
         f"{tok['conversation_tokens_at_end']:,.0f} / {tok['max_conversation_tokens']:,}"],
        ["input tokens summed over the episode's requests (no prefix caching)",
         f"{tok['input_tokens_summed_over_requests']:,.0f}"],
    ]
    return _md([f"per episode ({tok['encoding']}, {tok['episodes']} `compress_first` episodes)",
                "tokens (turns)"], rows)


def env_overhead() -> str:
    """The verifiers adapters' time per turn: ``env_overhead_v1.txt``, ``env_overhead_v0.txt``."""
    rows = []
    for api in ("v1", "v0"):
        d = _json_in_text(f"env_overhead_{api}.txt")
        for part, label in (("later_turns", "later turns"), ("first_turn", "first turn")):
            t = d[part]
            o, c, e = t["overhead_ms"], t["core_ms"], t["env_ms"]
            rows.append([api, label, str(t["turns"]), f"{t['calls_per_turn']:.2f}",
                         f"{o['mean']:.2f} / {o['p50']:.2f} / {o['p95']:.2f}",
                         f"{c['mean']:.2f}", f"{e['mean']:.2f}"])
    return _md(["API", "turns", "timed", "calls per turn",
                "adapter overhead ms (mean / p50 / p95)", "core ms (mean)",
                "total ms (mean)"], rows)


TABLES = {
    "leaderboard": leaderboard,
    "leaderboard_heldout": leaderboard_heldout,
    "task_check": task_check,
    "task_check_heldout": task_check_heldout,
    "trace_bench": trace_bench,
    "tiers": tiers,
    "fidelity": fidelity,
    "kv_bound": kv_bound,
    "calibration": calibration,
    "speed": speed,
    "episode_speed": episode_speed,
    "episode_cost": episode_cost,
    "env_overhead": env_overhead,
}


def render_all() -> dict[str, str]:
    return {name: fn() for name, fn in TABLES.items()}


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            ROOT / "environments" / "kv_cache_eviction" / "README.md"]


def regions(text: str) -> list[tuple[str, str]]:
    """``(name, content)`` of every marked table in ``text`` (content without the markers)."""
    return [(m.group(2), m.group(3)) for m in MARKER.finditer(text)]


def block(table: str) -> str:
    """What a marked region holds for ``table``: a blank line, the table, a blank line."""
    return "\n" + table.strip("\n") + "\n\n"


def rewrite(text: str, tables: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(2)
        if name not in tables:
            raise KeyError(f"unknown table {name!r} (known: {', '.join(tables)})")
        return m.group(1) + block(tables[name]) + m.group(4)

    return MARKER.sub(sub, text)


def differences(tables: dict[str, str] | None = None) -> list[str]:
    """``file: table`` for every marked region that is not what the script generates."""
    tables = render_all() if tables is None else tables
    out = []
    for path in doc_files():
        for name, content in regions(path.read_text()):
            if name not in tables:
                out.append(f"{path.relative_to(ROOT)}: unknown table {name!r}")
            elif content != block(tables[name]):
                out.append(f"{path.relative_to(ROOT)}: {name}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the marked regions")
    mode.add_argument("--check", action="store_true", help="exit 1 if a marked region differs")
    args = ap.parse_args(argv)
    tables = render_all()
    if args.write:
        for path in doc_files():
            text = path.read_text()
            new = rewrite(text, tables)
            if new != text:
                path.write_text(new)
                print(f"rewrote {path.relative_to(ROOT)}")
        return 0
    if args.check:
        diff = differences(tables)
        for d in diff:
            print(f"out of date: {d}", file=sys.stderr)
        return 1 if diff else 0
    for name, table in tables.items():
        print(f"## {name}: {' '.join(TABLES[name].__doc__.split())}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
