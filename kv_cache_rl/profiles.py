"""Registry of shipped (model, GPU, TP) profiles: specs, KV precision tiers and a cost model.

Everything comes from ``kv_cache_rl/data/calibration/*.json``, written by ``kv_cache_rl.calibrate``
from public measurements (each file names its source and licence):

* ``models.json``   -- ModelSpec shapes from the HF configs; num_params counted from the shapes.
* ``gpus.json``     -- device memory as CUDA reports it and the host-link bandwidth (one way).
* ``tiers.json``    -- fp16 / int8 / int4 KV tiers (bytes, quality cost, attention-time factor).
* ``capacity.json`` -- the activation reserve, calibrated on vLLM 0.19's 2,588 blocks for
  Llama-3.1-8B on an RTX 4090 at gpu_memory_utilization 0.9.
* ``cost_<model>_<gpu>_tp<N>.json`` -- the iteration-time tables (see ``costmodel``).

Names are matched case-insensitively, ignoring separators and an ``org/`` prefix, so
``load_profile("meta-llama/llama-3.1-8b", "rtx 4090")`` works.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from kv_cache_rl.config import GPUSpec, ModelSpec, PrecisionTier
from kv_cache_rl.costmodel import CostModel

CALIBRATION_DIR = Path(__file__).parent / "data" / "calibration"
_MODEL_FIELDS = ("name", "num_layers", "hidden_size", "num_attention_heads", "num_kv_heads",
                 "head_dim", "intermediate_size", "vocab_size", "num_params", "dtype_bytes",
                 "source")


class UnknownProfileError(ValueError):
    """No shipped profile for the requested model / GPU / TP; the message lists what exists."""


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", name.strip().lower().rsplit("/", 1)[-1])


@lru_cache(maxsize=None)
def _json(name: str) -> dict:
    return json.loads((CALIBRATION_DIR / name).read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def _index() -> dict[tuple[str, str, int], tuple[str, str, str]]:
    """(model key, gpu key, tp) -> (model name, gpu name, file name), from the shipped files."""
    out = {}
    for path in sorted(CALIBRATION_DIR.glob("cost_*.json")):
        p = _json(path.name)["profile"]
        out[(_key(p["model"]), _key(p["gpu"]), int(p["tp"]))] = (p["model"], p["gpu"], path.name)
    return out


def known_profiles() -> list[tuple[str, str]]:
    """(model, gpu) pairs that have a shipped cost model (all TP 1 today)."""
    return sorted({(m, g) for m, g, _ in _index().values()})


def model_spec(name: str) -> ModelSpec:
    """ModelSpec of a shipped model (case-insensitive name)."""
    models = {_key(k): v for k, v in _json("models.json")["models"].items()}
    if _key(name) not in models:
        raise UnknownProfileError(f"unknown model {name!r}; known models: "
                                  f"{', '.join(sorted(v['name'] for v in models.values()))}")
    return ModelSpec(**{f: models[_key(name)][f] for f in _MODEL_FIELDS})


def gpu_spec(name: str) -> GPUSpec:
    """GPUSpec of a shipped GPU (case-insensitive name)."""
    gpus = {_key(k): (k, v) for k, v in _json("gpus.json")["gpus"].items()}
    if _key(name) not in gpus:
        raise UnknownProfileError(f"unknown GPU {name!r}; known GPUs: "
                                  f"{', '.join(sorted(k for k, _ in gpus.values()))}")
    k, v = gpus[_key(name)]
    return GPUSpec(name=k, memory_bytes=v["memory_bytes"], pcie_gbps=v["pcie_gbps"],
                   source=v["source"])


def precision_tiers() -> tuple[PrecisionTier, ...]:
    """(fp16, int8, int4), in that order."""
    fields = ("name", "bytes_factor", "quality_cost", "attention_factor", "source")
    return tuple(PrecisionTier(**{f: t[f] for f in fields},
                               wrong_answer=tuple(t["wrong_answer"]) if "wrong_answer" in t
                               else None)
                 for t in _json("tiers.json")["tiers"])


def activation_reserve_bytes(model: ModelSpec, max_num_batched_tokens: int = 2048) -> float:
    """Memory vLLM keeps outside weights and KV (peak activations, non-torch, graphs).

    Calibrated once (capacity.json: Llama-3.1-8B / RTX 4090 / 0.9 -> 2,588 blocks, i.e. ~1.6 GiB
    at hidden 4096 x 2048 tokens) and scaled with hidden_size x max_num_batched_tokens, the size
    of the profiling forward pass's activations.
    """
    return _json("capacity.json")["reserve_bytes_per_hidden_token"] * model.hidden_size \
        * max_num_batched_tokens


@dataclass(frozen=True)
class Profile:
    """A model served on one GPU type: specs, KV tiers (fp16, int8, int4) and the cost model."""

    model: ModelSpec
    gpu: GPUSpec
    cost: CostModel
    tiers: tuple[PrecisionTier, ...]
    tp: int = 1

    def num_gpu_blocks(self, block_size: int = 16, gpu_memory_utilization: float = 0.9,
                       max_num_batched_tokens: int = 2048) -> int:
        """fp16 KV blocks vLLM would allocate: floor((memory x util - weights/tp - reserve) /
        (block_size x kv_bytes_per_token / tp)). The CLI's --num-gpu-blocks overrides this."""
        if not 0 < gpu_memory_utilization <= 1 or block_size < 1:
            raise ValueError("need 0 < gpu_memory_utilization <= 1 and block_size >= 1")
        free = (self.gpu.memory_bytes * gpu_memory_utilization
                - self.model.weight_bytes / self.tp
                - activation_reserve_bytes(self.model, max_num_batched_tokens))
        blocks = int(free // (block_size * self.model.kv_bytes_per_token / self.tp))
        if blocks < 1:
            raise ValueError(f"{self.model.name} does not fit on {self.gpu.name} (tp={self.tp}) "
                             f"at gpu_memory_utilization={gpu_memory_utilization}")
        return blocks


@lru_cache(maxsize=None)
def _load(model_key: str, gpu_key: str, tp: int) -> Profile:
    model_name, gpu_name, fname = _index()[(model_key, gpu_key, tp)]
    return Profile(model=model_spec(model_name), gpu=gpu_spec(gpu_name),
                   cost=CostModel(_json(fname)), tiers=precision_tiers(), tp=tp)


def load_profile(model: str, gpu: str, tp: int = 1) -> Profile:
    """The shipped profile for (model, gpu, tp); names are case-insensitive.

    Raises UnknownProfileError (a ValueError) listing the known models, GPUs and pairs.
    """
    key = (_key(model), _key(gpu), int(tp))
    if key not in _index():
        pairs = ", ".join(f"{m}/{g} (tp{t})" for (_, _, t), (m, g, _) in sorted(_index().items()))
        models = sorted({m for m, _, _ in _index().values()})
        gpus = sorted({g for _, g, _ in _index().values()})
        raise UnknownProfileError(
            f"no profile for model={model!r}, gpu={gpu!r}, tp={tp}. Known models: "
            f"{', '.join(models)}; known GPUs: {', '.join(gpus)}; known pairs: {pairs}")
    return _load(*key)
