"""``kv-cache-rl bench``: every policy on the same episodes, a leaderboard per difficulty.

Episode ``i`` of a run with ``--seed S`` is scenario ``(difficulty, S + i)`` for every policy,
so policies are compared on identical episodes. The JSON holds no timings except under
``"timing"``, so two runs with the same arguments give identical ``"results"``.

The normalised score puts ``keep`` (vLLM with no agent) at 0 and the hindsight ``oracle`` at 1:
per tier the ratio of means ``(mean R - mean R_keep) / (mean R_oracle - mean R_keep)``, and
per episode ``(R - R_keep) / max(R_oracle - R_keep, 0.02)`` (the verifiers metric). Every
episode a policy plays is memoised on its scenario, so the oracle, which takes the best of
every policy's episode and its own search, does not play them again (its ms/ep counts only
its own search).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from kv_cache_rl.errors import ConfigError
from kv_cache_rl.task.episode import Episode
from kv_cache_rl.policies import POLICIES, make_policy
from kv_cache_rl.task.rubric import REWARD_RANGE, RUBRIC
from kv_cache_rl.task.runner import play
from kv_cache_rl.policies.oracle import remember
from kv_cache_rl.task.scenario import DIFFICULTIES, TASK_VERSION, make_scenario, memory_fraction_for

DEFAULT_POLICIES = tuple(POLICIES)
COMPONENTS = tuple(fn.__name__ for fn, _ in RUBRIC)


@dataclass
class Cell:
    """One policy on one difficulty: per-episode scores."""

    policy: str
    difficulty: str
    scores: list[dict] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    usage_trace: list[float] = field(default_factory=list)  # memory usage per step, episode 0

    def mean(self, key: str) -> float:
        return sum(s[key] for s in self.scores) / len(self.scores)

    def std(self, key: str) -> float:
        n = len(self.scores)
        if n < 2:
            return 0.0
        m = self.mean(key)
        return math.sqrt(sum((s[key] - m) ** 2 for s in self.scores) / (n - 1))

    def ci95(self, key: str = "reward") -> float:
        """Half-width of the normal-approximation 95% interval of the mean."""
        return 1.96 * self.std(key) / math.sqrt(len(self.scores)) if self.scores else 0.0


def run(difficulties=DIFFICULTIES, episodes: int = 5, seed: int = 0,
        policies=DEFAULT_POLICIES, *, steps: int = 20, memory_fraction=None,
        trace_path: str | None = None, progress=None, jobs: int = 1,
        hardware: dict | None = None) -> list[Cell]:
    """Play every policy on ``episodes`` scenarios of each difficulty.

    ``memory_fraction`` (a fraction, or a ``(lo, hi)`` range drawn per seed) replaces the
    tiers' KV budgets, as a fraction of each window's peak demand. ``trace_path`` cuts every
    episode from a window of that raw trace instead of generating it (see ``make_scenario``).
    ``hardware`` (``model``, ``gpu``, ``tensor_parallel_size``: see ``make_scenario``) picks
    the server; the default is Llama-3.1-8B on one RTX PRO 6000.
    ``jobs`` > 1 plays the scenarios on that many processes: each plays every policy on its
    scenarios, exactly as a serial run does (episodes are deterministic and share nothing
    but the scenario's memo of plays), so the scores are identical; only timings differ.
    """
    for name in policies:
        if name not in POLICIES:
            raise ConfigError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    policies = tuple(policies)
    hardware = dict(hardware or {})
    tasks = [(d, seed + i, policies, steps, memory_fraction_for(seed + i, memory_fraction),
              trace_path, hardware) for d in difficulties for i in range(episodes)]
    cells = {(d, name): Cell(name, d) for d in difficulties for name in policies}
    for (difficulty, _, *_rest), played in zip(tasks, _map(_play_scenario, tasks, jobs)):
        for name, (score, seconds, usage) in zip(policies, played):
            cell = cells[difficulty, name]
            if not cell.scores:
                cell.usage_trace = usage
            cell.scores.append(score)
            cell.seconds.append(seconds)
            if progress is not None:
                progress()
    return list(cells.values())


def _play_scenario(task: tuple) -> list[tuple[dict, float, list[float]]]:
    """Every policy of ``task`` on its scenario, in order: (scores, seconds, step usage)."""
    difficulty, seed, policies, steps, fraction, trace_path, hardware = task
    scenario = make_scenario(difficulty, seed, steps=steps, trace_path=trace_path,
                             memory_fraction=fraction, **hardware)
    _ = scenario.first_observation  # warm-up: the scenario's cost, not the policy's
    out = []
    for name in policies:
        start = time.perf_counter()
        episode: Episode = play(scenario, make_policy(name))
        seconds = time.perf_counter() - start
        scenario.plays.setdefault((name, episode.max_calls_per_step), remember(episode))
        out.append((episode.score(), seconds, list(episode.record.step_usage)))
    return out


def _map(fn, tasks: list, jobs: int):
    """``map(fn, tasks)`` in order, on ``jobs`` processes. Workers start from a clean server
    process (``forkserver``, where there is one), not a fork of this one: a progress bar's
    thread may hold a lock at the moment of a fork."""
    if jobs == 1 or len(tasks) < 2:
        yield from map(fn, tasks)
        return
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ctx.Pool(min(jobs, len(tasks))) as pool:
        yield from pool.imap(fn, tasks)


EPISODE_FLOOR = 0.02  # per-episode normalisation: oracle - keep is at least this much


def normalized(cells: list[Cell], cell: Cell) -> float | None:
    """(policy - keep) / (oracle - keep), ratio of means on the same difficulty, when both
    were run."""
    ref = {c.policy: c.mean("reward") for c in cells if c.difficulty == cell.difficulty}
    if "keep" not in ref or "oracle" not in ref or ref["oracle"] - ref["keep"] <= 1e-9:
        return None
    return (cell.mean("reward") - ref["keep"]) / (ref["oracle"] - ref["keep"])


def normalized_episodes(cells: list[Cell], cell: Cell) -> list[float] | None:
    """Per episode (R - R_keep) / max(R_oracle - R_keep, 0.02), when keep and oracle ran."""
    ref = {c.policy: c for c in cells if c.difficulty == cell.difficulty}
    if "keep" not in ref or "oracle" not in ref:
        return None
    return [normalize(s["reward"], k["reward"], o["reward"]) for s, k, o in
            zip(cell.scores, ref["keep"].scores, ref["oracle"].scores)]


def normalize(reward: float, keep: float, oracle: float) -> float:
    """One episode's normalised score: keep 0, oracle 1."""
    return (reward - keep) / max(oracle - keep, EPISODE_FLOOR)


def to_json(cells: list[Cell], *, seed: int, episodes: int, memory_fraction=None,
            trace_path: str | None = None) -> dict:
    results = []
    for c in cells:
        norm = normalized(cells, c)
        per_episode = normalized_episodes(cells, c)
        results.append({
            "policy": c.policy, "difficulty": c.difficulty, "episodes": len(c.scores),
            "reward_mean": round(c.mean("reward"), 6), "reward_std": round(c.std("reward"), 6),
            "reward_ci95": round(c.ci95(), 6),
            "normalized_score": None if norm is None else round(norm, 6),
            "components": {k: round(c.mean(k), 6) for k in COMPONENTS},
            "rewards": [round(x["reward"], 6) for x in c.scores],  # per episode, seed order
            "normalized_scores": None if per_episode is None
            else [round(x, 6) for x in per_episode],
        })
    timing = {f"{c.policy}/{c.difficulty}": {"ms_per_episode_mean":
                                             round(1000 * sum(c.seconds) / len(c.seconds), 3),
                                             "ms_per_episode_max": round(1000 * max(c.seconds), 3)}
              for c in cells}
    out = {"task_version": TASK_VERSION, "seed": seed, "episodes": episodes,
           "results": results, "timing": timing}
    if memory_fraction is not None:
        out["memory_fraction"] = memory_fraction
    if trace_path is not None:
        out["trace"] = str(trace_path)
    return out


def print_leaderboard(cells: list[Cell], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for difficulty in dict.fromkeys(c.difficulty for c in cells):
        rows = sorted((c for c in cells if c.difficulty == difficulty),
                      key=lambda c: -c.mean("reward"))
        table = Table(title=f"{difficulty} ({len(rows[0].scores)} episodes)", title_justify="left")
        for col in ("policy", "reward (95% CI)", "failures", "throughput", "headroom",
                    "swap s", "normalised", "ms/ep"):
            table.add_column(col, justify="left" if col == "policy" else "right")
        for c in rows:
            norm = normalized(cells, c)
            label = c.policy + (" (sees future)" if POLICIES[c.policy].sees_future else "")
            table.add_row(label, f"{c.mean('reward'):+.3f} ± {c.ci95():.3f}",
                          f"{c.mean('total_failures_metric'):.1f}",
                          f"{c.mean('throughput_reward'):.2f}",
                          f"{c.mean('headroom_bonus'):+.2f}",
                          f"{c.mean('total_latency_metric'):.3f}",
                          "-" if norm is None else f"{norm:+.2f}",
                          f"{1000 * sum(c.seconds) / len(c.seconds):.0f}")
        console.print(table)


def plot(cells: list[Cell], out_dir) -> list:
    """leaderboard.png (reward by policy and difficulty) and memory_<difficulty>.png."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    difficulties = list(dict.fromkeys(c.difficulty for c in cells))
    policies = list(dict.fromkeys(c.policy for c in cells))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(policies)), 4))
    width = 0.8 / len(difficulties)
    for k, d in enumerate(difficulties):
        cs = {c.policy: c for c in cells if c.difficulty == d}
        xs = [i + k * width for i in range(len(policies))]
        ax.bar(xs, [cs[p].mean("reward") for p in policies], width,
               yerr=[cs[p].ci95() for p in policies], label=d, capsize=2)
    ax.set_xticks([i + width * (len(difficulties) - 1) / 2 for i in range(len(policies))])
    ax.set_xticklabels(policies, rotation=30, ha="right")
    ax.set_ylabel("episode reward (mean, 95% CI)")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.axhline(REWARD_RANGE[1], color="grey", linestyle=":", linewidth=0.8,
               label=f"rubric maximum {REWARD_RANGE[1]:+.3f}")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(difficulties) + 1,
              frameon=False)
    fig.tight_layout()
    paths = [out / "leaderboard.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    # one colour per policy (tab20's dark shades, then its light ones): the default cycle has
    # 10 colours and a full run has 12 policies
    palette = plt.get_cmap("tab20").colors
    colours = {p: palette[(2 * i) % 20 + (2 * i) // 20] for i, p in enumerate(policies)}
    for d in difficulties:
        fig, ax = plt.subplots(figsize=(8.5, 4))
        for i, c in enumerate(c for c in cells if c.difficulty == d):
            ax.plot(range(1, len(c.usage_trace) + 1), c.usage_trace, color=colours[c.policy],
                    marker="o.s^vD"[i % 6], markersize=3, linewidth=1.2, label=c.policy)
        ax.axhline(0.95, color="red", linestyle="--", linewidth=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel("KV memory usage at step end")
        ax.set_title(f"{d}: memory usage over episode 0 (dashed: 0.95)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.tight_layout()
        paths.append(out / f"memory_{d}.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths
