"""Engine: prefix caching (hits, sharing, hash ids finer or coarser than blocks, remembered
hits under LRU eviction, the key formula).

Every run goes through ``tests.support.tracker.Tracker``, which checks the engine's invariants
after every step (pool conservation, block/refcount bookkeeping, queue/state consistency, budget
and max_num_seqs per batch, tokens never going down) and the end-of-run accounting (every request
finished exactly once or rejected; computed + hit tokens == first computations + recomputed).
"""

from __future__ import annotations

import pytest

from kv_cache_rl.engine import Engine, State
from kv_cache_rl.engine.config import EngineConfig
from kv_cache_rl.workload.requests import Trace, TraceRequest
from tests.support.engines import IDS, R, make, seq_of, state_of
from tests.support.standin import PROFILE
from tests.support.tracker import Tracker, drive


# ---- prefix caching ---------------------------------------------------------------------------


@pytest.mark.parametrize("caching", [True, False])
def test_identical_prefix_hits(caching):
    eng = make([R(0.0, 512, 4, "a", hash_ids=IDS), R(5.0, 512, 4, "b", hash_ids=IDS)],
               enable_prefix_caching=caching)
    drive(eng)
    a, b = seq_of(eng, "a"), seq_of(eng, "b")
    if caching:
        # 31 full blocks hit; the last block is recomputed so its logits can be sampled
        assert eng.stats.prompt_tokens == 512 + 16
        assert b.first_token_s - b.arrival_s < a.first_token_s - a.arrival_s
        assert eng.pool.evictable_units == 32 * 4  # the prompt blocks stay cached after a
    else:
        assert eng.stats.prompt_tokens == 1024
        assert eng.pool.evictable_units == 0


def test_partial_prefix_hits():
    other = IDS[:10] + tuple(range(500, 522))
    eng = make([R(0.0, 512, 4, "a", hash_ids=IDS), R(5.0, 512, 4, "b", hash_ids=other)])
    drive(eng)
    assert eng.stats.prompt_tokens == 512 + (512 - 160)


def test_concurrent_requests_share_prefix_blocks():
    eng = make([R(0.0, 512, 50, "a", hash_ids=IDS), R(0.05, 512, 50, "b", hash_ids=IDS)])
    t = Tracker(eng)
    t.step_until(lambda e: state_of(e, "b") == State.RUNNING)
    a, b = seq_of(eng, "a"), seq_of(eng, "b")
    assert a.blocks[:31] == b.blocks[:31]  # the same blocks, shared
    assert all(eng.pool.ref[blk] == 2 for blk in b.blocks[:31])
    unique = len(a.blocks) + len(b.blocks) - 31
    assert eng.pool.used_units == 4 * unique
    t.run()
    assert eng.stats.prompt_tokens == 512 + 16


def test_hash_ids_finer_than_blocks():
    """8-token hash ids with 16-token blocks: a block is shared only if both of its ids are."""
    base = tuple(range(1, 9))  # 64 tokens
    reqs = [R(0.0, 64, 1, "a", hash_ids=base),
            R(1.0, 64, 1, "b", hash_ids=(1, 20, 21, 22, 23, 24, 25, 26)),  # 8 tokens shared
            R(2.0, 64, 1, "c", hash_ids=(1, 2, 30, 31, 32, 33, 34, 35)),  # 16 tokens shared
            R(3.0, 64, 1, "d", hash_ids=base)]  # all shared: 3 blocks hit (last recomputed)
    eng = make(reqs, hbt=8)
    drive(eng)
    assert eng.stats.prompt_tokens == 64 + 64 + (64 - 16) + (64 - 48)


def test_hash_ids_coarser_than_blocks():
    """Mooncake: one id per 512 tokens, the last one covering a partial block."""
    reqs = [R(0.0, 600, 1, "a", hash_ids=(7, 8)),
            R(1.0, 600, 1, "b", hash_ids=(7, 8)),  # 37 full blocks hit, 8 tokens left
            R(2.0, 600, 1, "c", hash_ids=(7, 9))]  # the first 512 tokens hit
    eng = make(reqs, hbt=512)
    drive(eng)
    assert eng.stats.prompt_tokens == 600 + 8 + 88


@pytest.mark.parametrize("tail_units", [2, 4])
def test_remembered_hits_after_lru_eviction_match_a_fresh_lookup(tail_units):
    """A blocked head's remembered prefix hits give the answer a fresh lookup gives (hits,
    their touch cost, the smallest hit, the units past the system prefix) while LRU eviction
    takes them from the tail, compressed or not: asked again, the head's unreferenced hits are
    watched, and evicting one of them forces a new lookup."""
    eng = make([R(0.0, 10 * 16, 4, "head", hash_ids=tuple(range(100, 110)), system_toks=32)],
               num_gpu_blocks=16)
    eng._arrive()
    (head,) = eng.waiting
    pool = eng.pool
    pool.allocate(8)  # held by others: the pool is full once the head's blocks are cached
    blocks = pool.allocate(8)
    pool.cache_many(blocks, head.shared_keys, 0, 8)
    for b in blocks[6:]:
        pool.resize(b, tail_units)  # a compressed tail
    pool.free(reversed(blocks))  # cached and unreferenced: the tail is evicted first

    def fresh():
        hits = eng._lookup_hits(head)
        sizes = [pool.units[b] for b in hits]
        return hits, pool.hit_cost_units(hits), min(sizes, default=4), sum(sizes[2:])

    assert eng._prefix_hits(head) == fresh() and len(fresh()[0]) == 8
    assert not pool.watch  # asked once: not watched yet
    pool.reserve(pool.free_units + 2 * tail_units)  # LRU takes the last two hits
    assert len(fresh()[0]) == 6 and eng._prefix_hits(head) == fresh()
    assert pool.watch == set(blocks[:6])  # asked again: watched from now on
    pool.reserve(pool.free_units)  # no eviction: still valid
    assert not pool.watch_hit and eng._prefix_hits(head) == fresh()
    pool.reserve(pool.free_units + 4 * 4)  # LRU takes four more
    assert pool.watch_hit and len(fresh()[0]) == 2
    assert eng._prefix_hits(head) == fresh()
    pool.reserve(pool.free_units + 2 * 4)  # all of them
    assert eng._prefix_hits(head) == fresh() == ([], 0, 4, 0)


@pytest.mark.parametrize("hbt", [16, 512, 7])
@pytest.mark.parametrize("ids", [(1, 2, 3, 4, 5) * 50, (2**63, 5, 7)])
def test_shared_keys_follow_the_hash_id_formula(hbt, ids):
    """The vectorised key derivation equals the documented per-block formula, 64-bit ids too."""
    trace = Trace((), hbt, "t")
    engine = Engine(EngineConfig(num_gpu_blocks=8), PROFILE, trace)
    for n in (1, 15, 16, 17, 600, 10_000):
        req = TraceRequest(arrival_s=0.0, input_toks=n, output_toks=1, hash_ids=ids)
        n_full = min(n, len(ids) * hbt) // 16
        want = tuple(ids[e // hbt] * hbt + e % hbt for e in range(15, n_full * 16, 16))
        got = engine._shared_keys(req)
        assert got == want and all(type(k) is int for k in got)
