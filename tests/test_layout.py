"""The package's shape: by architecture, small modules, no import cycles, stable public names."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kv_cache_rl"
SUBPACKAGES = {"engine", "hardware", "workload", "task", "policies", "apps"}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p
            for p in PACKAGE.rglob("*.py")}


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every project module that ``module`` imports, at any depth of its code (a function-level
    import is a dependency too)."""
    out = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                base = parts[: len(parts) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target in known:
                out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known)
    out.discard(module)
    return out


def test_top_level_is_small_and_by_architecture():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 10, top
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == SUBPACKAGES


def test_no_module_over_450_lines():
    sizes = {name: len(p.read_text().splitlines()) for name, p in _modules().items()}
    assert max(sizes.values()) <= 450, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _imports(m, p, set(modules)) for m, p in modules.items()}
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, stack + [dep])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_one_name_per_meaning():
    """``load_profile`` is the hardware profile only; workloads have statistics."""
    defined = {m for m, p in _modules().items()
               if any(isinstance(n, ast.FunctionDef) and n.name == "load_profile"
                      for n in ast.parse(p.read_text()).body)}
    assert defined == {"kv_cache_rl.hardware.profiles"}


def test_pinned_names_stay_importable():
    """Users' scripts and notebooks import these paths; they stay (re-exports are fine)."""
    import kv_cache_rl
    from kv_cache_rl.episode import Action, Episode
    from kv_cache_rl.policies import POLICIES, Policy, make_policy
    from kv_cache_rl.runner import play
    from kv_cache_rl.scenario import make_scenario
    from kv_cache_rl.task.observation import Entry, Observation

    assert list(inspect.signature(Policy.act).parameters) == ["self", "obs", "episode"]
    assert inspect.signature(Policy.act).parameters["episode"].default is None
    assert {"seq_id", "kind", "blocks", "tier", "on_cpu"} <= set(Entry._fields)
    assert isinstance(Observation.visible, property)
    assert "memory_usage" in {f.name for f in dataclasses.fields(Observation)}
    assert callable(Observation.from_text)
    assert Action("keep").kind == "keep" and set(POLICIES) >= {"keep", "oracle", "learned"}
    episode = play(make_scenario("easy", 0, steps=2), make_policy("keep"))
    assert isinstance(episode, Episode) and isinstance(episode.score()["reward"], float)
    assert episode.record.invalid_actions == 0
    assert "KVCacheEviction-v0" in kv_cache_rl.GYM_ENV_IDS


@pytest.mark.parametrize("env_id", ["KVCacheEviction-v1", "KVCacheEviction-v0"])
def test_gym_make_module_form_in_a_fresh_interpreter(env_id):
    """Gymnasium 1.x has no plugin entry points: ``gym.make("kv_cache_rl:<id>")`` imports the
    package, which registers its ids."""
    pytest.importorskip("gymnasium")
    code = ("import warnings, gymnasium as gym\n"
            "warnings.simplefilter('ignore')\n"
            f"env = gym.make('kv_cache_rl:{env_id}')\n"
            "obs, info = env.reset(seed=0)\n"
            "print(type(env.unwrapped).__name__, sorted(obs))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    assert out.startswith("KVCacheEvictionEnv ")
