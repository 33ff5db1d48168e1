"""What an operator knows of the costs, from the shipped profile (the same numbers the system
prompt states): recompute time per prompt token, host-link time per block, the chance a
quantized answer is wrong per request type, and how long each tool call takes.

Policies may use these constants and the observation, nothing else (``sees_future`` False).
"""

from __future__ import annotations

import functools
import math

from kv_cache_rl.workload.requests import REQUEST_TYPES
from kv_cache_rl.task.scenario import GPU, MODEL
from kv_cache_rl.workload.generators import AGENTIC_DEFAULTS, TURN_STATS_WORKLOAD
from kv_cache_rl.workload.generators import load_statistics

def _log_uniform_mean(lo: float, hi: float) -> float:
    return (hi - lo) / math.log(hi / lo)


@functools.cache
def costs(model: str = MODEL, gpu: str = GPU, tensor_parallel_size: int = 1) -> dict:
    """Operator-known costs of the deployment (the episodes' default server unless named; the
    shipped heuristics use the default's: only the prefill and swap times depend on it)."""
    from kv_cache_rl.hardware.profiles import load_profile

    profile = load_profile(model, gpu, tensor_parallel_size)
    chunk = 2048  # a full prefill chunk (max_num_batched_tokens), as recompute runs
    prefill_s = profile.cost.iteration_time_s([(chunk, 0)], 0, 0.0) / chunk
    block_bytes = profile.model.kv_bytes_per_token * 16
    gaps = load_statistics(TURN_STATS_WORKLOAD)["sessions"]
    # the expected pause per call in flight (an operator measures these): the means of the
    # tools' log-uniform ranges, and for a user Mooncake conversation's median turn gap
    user_gap = gaps["turn_gap_s_percentiles_0_5_100"][10]
    expected_pause = {tool: _log_uniform_mean(*r)
                      for tool, r in AGENTIC_DEFAULTS["tool_pause_s"].items()}
    expected_pause["user"] = user_gap
    return {
        "prefill_s_per_token": prefill_s,
        "swap_s_per_block": profile.gpu.transfer_s(block_bytes),
        "wrong": {t: tuple(tier.wrong_answer_p(i) for tier in profile.tiers)
                  for i, t in enumerate(REQUEST_TYPES)},
        "expected_pause_s": expected_pause,
        "user_continue": gaps["turns_per_session"]["continue_prob_after_turn_1_to_10"],
    }


def p_wrong(request_type: str, tier: int) -> float:
    """P(wrong answer) for ``request_type`` decoded at precision ``tier``."""
    return costs()["wrong"][request_type][min(tier, 2)]


def p_return(entry) -> float:
    """The chance a context's session comes back: always after a tool call; after an answer,
    Mooncake's measured probability of continuing after that many turns."""
    if entry.tool not in ("user", "-"):
        return 1.0
    table = costs()["user_continue"]
    return table[min(max(entry.turns, 1), len(table)) - 1]


def expected_return_s(entry) -> float:
    """Seconds until a context's session is expected back, from the call it waits on and the
    session's own past pauses (its pace), less the time it has already waited."""
    base = costs()["expected_pause_s"].get(entry.tool, costs()["expected_pause_s"]["user"])
    if entry.pause_s > 0 and entry.tool != "user":
        base = 0.5 * base + 0.5 * entry.pause_s  # the session's pace
    return max(base - entry.idle_s, 0.0)
