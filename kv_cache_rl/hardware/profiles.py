"""Registry of shipped (model, GPU, TP) profiles: specs, KV precision tiers and a cost model.

Everything comes from ``kv_cache_rl/data/calibration/*.json``, written by ``kv_cache_rl.hardware.calibrate``
from public measurements (each file names its source and licence):

* ``models.json``   -- ModelSpec shapes from the HF configs; num_params counted from the shapes.
* ``gpus.json``     -- device memory as CUDA reports it and the host-link bandwidth (one way).
* ``tiers.json``    -- fp16 / int8 / int4 KV tiers (bytes, quality cost, attention-time factor).
* ``capacity.json`` -- the activation reserve, calibrated on vLLM 0.19's 2,588 blocks for
  Llama-3.1-8B on an RTX 4090 at gpu_memory_utilization 0.9.
* ``cost_<model>_<gpu>_tp<N>.json`` -- the iteration-time tables (see ``costmodel``). A TP > 1
  file holds one GPU's shard of the compute and the all-reduce / all-gather costs its source
  leaves out (``communication``; see ``tensor_parallel``); its KV memory is per GPU (the KV
  heads split over the N GPUs) and so are its weights (1/N each).

Names are matched case-insensitively, ignoring separators and an ``org/`` prefix, so
``load_profile("meta-llama/llama-3.1-8b", "rtx 4090")`` works.
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache

from kv_cache_rl.errors import ConfigError
from kv_cache_rl import DATA_DIR
from kv_cache_rl.hardware.specs import GPUSpec, ModelSpec, PrecisionTier
from kv_cache_rl.hardware.costmodel import CostModel

CALIBRATION_DIR = DATA_DIR / "calibration"
# how people write the registry's GPU names (prompts, tables)
GPU_LABELS = {"RTX4090": "RTX 4090", "RTXPRO6000": "RTX PRO 6000", "H100": "H100 SXM",
              "A100": "A100 SXM"}
_MODEL_FIELDS = ("name", "num_layers", "hidden_size", "num_attention_heads", "num_kv_heads",
                 "head_dim", "intermediate_size", "vocab_size", "num_params", "dtype_bytes",
                 "source")


class UnknownProfileError(ConfigError):
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
    """(model, gpu) pairs that have a shipped single-GPU (TP 1) cost model; every TP degree is
    in :func:`known_tp_profiles`."""
    return sorted({(m, g) for (_, _, t), (m, g, _) in _index().items() if t == 1})


def known_tp_profiles() -> list[tuple[str, str, int]]:
    """(model, gpu, tp) of every shipped cost model."""
    return sorted((m, g, t) for (_, _, t), (m, g, _) in _index().items())


def tensor_parallel_sizes(model: str, gpu: str) -> list[int]:
    """The TP degrees shipped for (model, gpu); [] if the pair has none."""
    return sorted(t for (mk, gk, t) in _index() if (mk, gk) == (_key(model), _key(gpu)))


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
    """A model served on ``tp`` GPUs of one type (tensor parallel): specs, KV tiers (fp16, int8,
    int4) and the cost model (per-GPU compute + the collectives)."""

    model: ModelSpec
    gpu: GPUSpec  # one GPU of the group (memory per GPU; host_links = tp)
    cost: CostModel  # per-GPU compute + the tensor-parallel collectives
    tiers: tuple[PrecisionTier, ...]
    tp: int = 1

    @property
    def kv_heads_per_gpu(self) -> int:
        """KV heads each GPU holds: num_kv_heads / tp (vLLM replicates a head when tp exceeds
        them: at least one per GPU)."""
        return max(1, self.model.num_kv_heads // self.tp)

    @property
    def kv_bytes_per_token_per_gpu(self) -> int:
        """One token's KV bytes on one GPU (all layers, that GPU's KV heads)."""
        m = self.model
        return 2 * m.num_layers * self.kv_heads_per_gpu * m.head_dim * m.dtype_bytes

    @cached_property
    def compute_cost(self) -> CostModel:
        """The cost model without the TP collectives (the per-shard compute alone)."""
        if self.tp == 1:
            return self.cost
        return CostModel(self.cost.data, communication=False)

    def num_gpu_blocks(self, block_size: int = 16, gpu_memory_utilization: float = 0.9,
                       max_num_batched_tokens: int = 2048) -> int:
        """fp16 KV blocks vLLM would allocate (per GPU; a block holds ``block_size`` tokens of
        that GPU's KV heads): floor((memory x util - weights/tp - reserve) / (block_size x
        kv_bytes_per_token_per_gpu)). The CLI's --num-gpu-blocks overrides this."""
        if not 0 < gpu_memory_utilization <= 1 or block_size < 1:
            raise ConfigError("need 0 < gpu_memory_utilization <= 1 and block_size >= 1")
        free = (self.gpu.memory_bytes * gpu_memory_utilization
                - self.model.weight_bytes / self.tp
                - activation_reserve_bytes(self.model, max_num_batched_tokens))
        blocks = int(free // (block_size * self.kv_bytes_per_token_per_gpu))
        if blocks < 1:
            raise ConfigError(f"{self.model.name} does not fit on {self.gpu.name} (tp={self.tp}) "
                             f"at gpu_memory_utilization={gpu_memory_utilization}")
        return blocks


@lru_cache(maxsize=None)
def _load(model_key: str, gpu_key: str, tp: int) -> Profile:
    model_name, gpu_name, fname = _index()[(model_key, gpu_key, tp)]
    gpu = gpu_spec(gpu_name)
    if tp > 1:  # each GPU moves its shard of a block over its own host link
        gpu = replace(gpu, host_links=tp)
    return Profile(model=model_spec(model_name), gpu=gpu, cost=CostModel(_json(fname)),
                   tiers=precision_tiers(), tp=tp)


def load_profile(model: str, gpu: str, tp: int = 1) -> Profile:
    """The shipped profile for (model, gpu, tp); names are case-insensitive; ``tp`` is the
    tensor-parallel size (vLLM's ``--tensor-parallel-size``).

    Raises UnknownProfileError (a ConfigError, so a ValueError) listing the known models, GPUs
    and profiles, and the TP degrees shipped for the pair when only ``tp`` is missing.
    """
    try:
        tp = operator.index(tp)
    except TypeError:
        raise ConfigError(f"tensor-parallel size must be an integer, got {tp!r}") from None
    if tp < 1:
        raise ConfigError(f"tensor-parallel size must be >= 1, got {tp}")
    key = (_key(model), _key(gpu), tp)
    if key not in _index():
        pairs = ", ".join(f"{m}/{g} (tp{t})" for (_, _, t), (m, g, _) in sorted(_index().items()))
        models = sorted({m for m, _, _ in _index().values()})
        gpus = sorted({g for _, g, _ in _index().values()})
        sizes = tensor_parallel_sizes(model, gpu)
        first = (f"no tensor-parallel size {tp} profile for {model!r} on {gpu!r}: available "
                 f"tensor-parallel sizes for this pair: {', '.join(map(str, sizes))}" if sizes
                 else f"no profile for model={model!r}, gpu={gpu!r}, tp={tp}")
        raise UnknownProfileError(
            f"{first}. Known models: {', '.join(models)}; known GPUs: {', '.join(gpus)}; "
            f"known profiles: {pairs}")
    return _load(*key)
