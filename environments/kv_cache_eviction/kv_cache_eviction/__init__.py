"""kv-cache-eviction: the kv-cache-rl simulator as a verifiers environment.

One package, both verifiers APIs, one turn protocol (:mod:`kv_cache_eviction.common`):

* v1 (verifiers 0.4; ``vf-eval kv-cache-eviction``, prime-rl, hosted evals): the loader picks
  the ``Taskset`` and ``Env`` subclasses named in ``__all__`` (imported on first use, so the v0
  path never pays for ``verifiers.v1``).
* v0 (verifiers 0.3.1's classic ``vf-eval``): :func:`load_environment`.
"""

from __future__ import annotations

_V1 = ("KVCacheEvictionTaskset", "KVCacheEvictionEnv")

__all__ = [*_V1, "load_environment"]


def __getattr__(name: str):
    if name in _V1:
        from kv_cache_eviction import v1

        return getattr(v1, name)
    raise AttributeError(f"module 'kv_cache_eviction' has no attribute {name!r}")


def load_environment(difficulty: str = "all", num_examples: int = -1, seed: int = 42,
                     **kwargs):
    """The v0 environment (a ``vf.StatefulToolEnv``): needs verifiers>=0.3.1,<0.4. Extra
    arguments: ``steps`` (20), ``max_calls_per_step`` (8), ``trace_path`` (None: generated
    episodes); the rest go to the env. Under
    verifiers 0.4 it raises an error naming the v1 entry point."""
    from kv_cache_eviction.v0 import load_environment as load

    return load(difficulty=difficulty, num_examples=num_examples, seed=seed, **kwargs)
