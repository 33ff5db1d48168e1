"""kv-cache-rl: a calibrated, vLLM-faithful KV-cache serving simulator for agents."""

import sys
from pathlib import Path

__version__ = "0.2.0"
DATA_DIR = Path(__file__).resolve().parent / "data"  # derived calibration, workloads, weights

GYM_ENV_ID = "KVCacheEviction-v1"  # task version 2 (normalised score, closed-loop sessions)
GYM_ENV_IDS = (GYM_ENV_ID, "KVCacheEviction-v0")  # v0 still made: the same, current task
GYM_ENTRY_POINT = "kv_cache_rl.task.gym_env:KVCacheEvictionEnv"


def register_gym_env() -> bool:
    """Register ``KVCacheEviction-v1`` (and the old id ``-v0``, which makes the same env) by
    entry-point string (the env module is imported only by ``gymnasium.make``). Imports
    gymnasium; returns False when it is not installed."""
    try:
        from gymnasium.envs.registration import register, registry
    except ImportError:
        return False
    for env_id in GYM_ENV_IDS:
        if env_id not in registry:
            register(id=env_id, entry_point=GYM_ENTRY_POINT)
    return True


class _RegisterWhenGymnasiumLoads:
    """A ``sys.meta_path`` finder that registers the env right after ``gymnasium`` is first
    imported, so ``import kv_cache_rl`` never pays gymnasium's ~0.25 s import (and works without
    it installed). A plain class: importing ``importlib.abc`` would cost ~30 ms at start-up."""

    def find_spec(self, name, path=None, target=None):
        if name != "gymnasium":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_then_register(module):
                exec_module(module)
                register_gym_env()

            spec.loader.exec_module = exec_then_register
        return spec


if "gymnasium" in sys.modules:
    register_gym_env()
elif not any(isinstance(f, _RegisterWhenGymnasiumLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenGymnasiumLoads())
