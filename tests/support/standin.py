"""A stand-in hardware profile for the engine tests.

The real cost model (``kv_cache_rl.hardware.profiles``) is not needed there: the engine only
calls ``profile.cost.iteration_time_s`` and reads ``profile.tiers``, ``profile.model`` and
``profile.gpu``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kv_cache_rl.hardware.specs import GPUSpec, ModelSpec, PrecisionTier

LLAMA_8B = ModelSpec(name="Llama-3.1-8B", num_layers=32, hidden_size=4096, num_attention_heads=32,
                     num_kv_heads=8, head_dim=128, intermediate_size=14336, vocab_size=128256,
                     num_params=8_030_261_248)
TEST_GPU = GPUSpec(name="test", memory_bytes=96 << 30, pcie_gbps=50)
TIERS = (
    PrecisionTier(name="fp16", bytes_factor=1.0, quality_cost=0.0, attention_factor=1.0),
    PrecisionTier(name="int8", bytes_factor=0.5, quality_cost=0.01, attention_factor=0.8),
    PrecisionTier(name="int4", bytes_factor=0.25, quality_cost=0.04, attention_factor=0.8),
)


class StandInCost:
    """A linear-ish iteration time: fixed overhead, per token, per decode KV token, causal."""

    def iteration_time_s(self, prefill_chunks, num_decodes: int, decode_kv_sum: float) -> float:
        tokens = num_decodes
        causal = 0.0
        for n, computed in prefill_chunks:
            tokens += n
            causal += n * (computed + n / 2)
        return 0.01 + 2e-6 * tokens + 1e-9 * decode_kv_sum + 1e-10 * causal


@dataclass(frozen=True, eq=False)
class StandInProfile:
    cost: StandInCost
    tiers: tuple
    model: ModelSpec
    gpu: GPUSpec


PROFILE = StandInProfile(cost=StandInCost(), tiers=TIERS, model=LLAMA_8B, gpu=TEST_GPU)
