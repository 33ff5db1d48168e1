"""Baseline policies, one per module, in a plain registry."""

from kv_cache_rl.policies.base import Policy, PressurePolicy
from kv_cache_rl.policies.compress_first import CompressFirstPolicy
from kv_cache_rl.policies.continuum import ContinuumPolicy
from kv_cache_rl.policies.hybrid import HybridPolicy
from kv_cache_rl.policies.keep import KeepPolicy
from kv_cache_rl.policies.largest_first import LargestFirstPolicy
from kv_cache_rl.policies.learned import LearnedPolicy
from kv_cache_rl.policies.lfu import LFUPolicy
from kv_cache_rl.policies.lookahead import LookaheadPolicy
from kv_cache_rl.policies.lru import LRUPolicy
from kv_cache_rl.policies.marconi import MarconiPolicy
from kv_cache_rl.policies.oracle import OraclePolicy
from kv_cache_rl.policies.random_policy import RandomPolicy
from kv_cache_rl.policies.registry import POLICIES, make_policy
from kv_cache_rl.policies.sliding_window import SlidingWindowPolicy
from kv_cache_rl.policies.swap_first import SwapFirstPolicy
from kv_cache_rl.policies.t_lru import TLRUPolicy
from kv_cache_rl.policies.type_aware import TypeAwarePolicy
from kv_cache_rl.policies.value_greedy import ValueGreedyPolicy

POLICIES.update({
    cls.name: cls
    for cls in (KeepPolicy, RandomPolicy, LRUPolicy, LFUPolicy, TLRUPolicy, MarconiPolicy,
                ContinuumPolicy, LargestFirstPolicy, ValueGreedyPolicy, CompressFirstPolicy,
                SwapFirstPolicy, HybridPolicy, SlidingWindowPolicy, TypeAwarePolicy,
                LearnedPolicy, LookaheadPolicy, OraclePolicy)
})

# the hand-written rules: not the planners (they see the future), not the trained policy, not
# the references without a rule (no agent, random actions)
HEURISTICS = tuple(name for name, cls in POLICIES.items()
                   if not cls.sees_future and name not in ("keep", "random", "learned"))


__all__ = ["HEURISTICS", "POLICIES", "Policy", "PressurePolicy", "make_policy"]
