"""BlockPool: units accounting, prefix cache, LRU eviction, misuse."""

from __future__ import annotations

import random

import pytest

from kv_cache_rl.engine import UNITS_PER_BLOCK, BlockPool, BlockPoolError


def state(pool: BlockPool) -> tuple:
    return (pool.free_units, pool.evictable_units, pool.used_units, dict(pool.cached),
            list(pool._evictable), pool.evicted_blocks)


def conserved(pool: BlockPool) -> None:
    pool.check()
    assert pool.free_units + pool.evictable_units + pool.used_units == pool.total_units
    assert 0 <= pool.used_units <= pool.total_units


def test_new_pool_is_empty():
    pool = BlockPool(10)
    assert UNITS_PER_BLOCK == 4
    assert pool.total_units == 40 and pool.free_units == 40
    assert pool.used_units == 0 and pool.evictable_units == 0 and pool.usage == 0.0
    assert pool.num_free_blocks == 10.0
    conserved(pool)


@pytest.mark.parametrize("n", [0, -3])
def test_pool_size_must_be_positive(n):
    with pytest.raises(ValueError):
        BlockPool(n)


def test_allocate_takes_units_and_free_returns_them():
    pool = BlockPool(10)
    blocks = pool.allocate(3)
    assert len(blocks) == 3 and len(set(blocks)) == 3
    assert all(pool.ref[b] == 1 and pool.units[b] == 4 and pool.key[b] is None for b in blocks)
    assert pool.used_units == 12 and pool.free_units == 28 and pool.usage == pytest.approx(0.3)
    conserved(pool)
    half = pool.allocate(2, units_each=2)
    assert [pool.units[b] for b in half] == [2, 2]
    assert pool.used_units == 16 and pool.num_free_blocks == 6.0
    pool.free(reversed(blocks))
    pool.free(half)
    assert pool.free_units == 40 and pool.used_units == 0
    assert all(pool.ref[b] == 0 for b in blocks + half)
    conserved(pool)


def test_allocate_that_does_not_fit_returns_none_and_changes_nothing():
    pool = BlockPool(4)
    a = pool.allocate(2)
    pool.cache(a[0], "k0")
    pool.free([a[0]])  # one evictable cached block, one referenced block, two free
    assert pool.evictable_units == 4 and pool.free_units == 8
    before = state(pool)
    assert pool.allocate(4) is None  # needs 16 units, 12 allocatable
    assert pool.allocate(7, units_each=2) is None
    assert not pool.reserve(13)
    assert state(pool) == before
    assert pool.lookup("k0") == a[0]  # nothing was evicted for the failed attempt
    # exactly what is allocatable still fits (evicting the cached block)
    got = pool.allocate(3)
    assert got is not None and pool.free_units == 0 and pool.evictable_units == 0
    assert pool.lookup("k0") is None and pool.evicted_blocks == 1
    conserved(pool)


def test_allocate_zero_blocks():
    pool = BlockPool(2)
    assert pool.allocate(0) == []
    assert pool.free_units == 8


def test_double_free_raises():
    pool = BlockPool(4)
    (b,) = pool.allocate(1)
    pool.free([b])
    with pytest.raises(BlockPoolError):
        pool.free([b])
    assert pool.ref[b] == 0 and pool.free_units == 16
    conserved(pool)
    # a cached block too: freeing it twice must not count its units twice
    (c,) = pool.allocate(1)
    pool.cache(c, "c")
    pool.free([c])
    with pytest.raises(BlockPoolError):
        pool.free([c])
    assert pool.evictable_units == 4 and pool.free_units == 12
    conserved(pool)


def test_shared_block_is_freed_once_per_reference():
    pool = BlockPool(4)
    (b,) = pool.allocate(1)
    pool.cache(b, "shared")
    pool.touch(b)  # a second request hits it
    assert pool.ref[b] == 2 and pool.used_units == 4
    pool.free([b])
    assert pool.ref[b] == 1 and pool.used_units == 4 and pool.evictable_units == 0
    pool.free([b])
    assert pool.ref[b] == 0 and pool.used_units == 0 and pool.evictable_units == 4
    conserved(pool)


def test_cache_lookup_and_hit_of_a_freed_block():
    pool = BlockPool(4)
    (b,) = pool.allocate(1)
    assert pool.lookup("x") is None
    pool.cache(b, "x")
    assert pool.lookup("x") == b and pool.key[b] == "x"
    pool.free([b])
    # freed but cached: evictable, counted as allocatable, still hit-able
    assert pool.evictable_units == 4 and pool.used_units == 0 and pool.allocatable_units == 16
    assert pool.hit_cost_units([b]) == 4
    pool.touch(b)
    assert pool.ref[b] == 1 and pool.evictable_units == 0 and pool.used_units == 4
    assert pool.hit_cost_units([b]) == 0
    assert list(pool._evictable) == []
    conserved(pool)


def test_cache_first_publisher_wins_and_rehash_is_ignored():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    pool.cache(a, "k")
    pool.cache(b, "k")  # same content computed twice: the first copy stays the cached one
    assert pool.lookup("k") == a and pool.key[b] is None
    pool.cache(a, "other")  # a block has one hash for life
    assert pool.key[a] == "k" and pool.lookup("other") is None
    conserved(pool)


def test_cache_disabled_keeps_nothing():
    pool = BlockPool(4, enable_caching=False)
    (b,) = pool.allocate(1)
    pool.cache(b, "k")
    assert pool.lookup("k") is None and pool.key[b] is None
    pool.free([b])
    assert pool.free_units == 16 and pool.evictable_units == 0


def test_reserve_prefers_free_space_over_eviction():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    pool.cache(a, "a")
    pool.free([a])
    assert pool.reserve(8)  # exactly the truly free units
    assert pool.lookup("a") == a and pool.evicted_blocks == 0
    assert pool.free_units == 0
    conserved(pool)


def test_lru_eviction_takes_tail_blocks_first_when_freed_in_reverse():
    pool = BlockPool(4)
    blocks = pool.allocate(4)
    for j, b in enumerate(blocks):
        pool.cache(b, ("seq", j))
    pool.free(reversed(blocks))  # as the engine does: the tail is least valuable
    assert list(pool._evictable) == [("seq", 3), ("seq", 2), ("seq", 1), ("seq", 0)]
    assert pool.free_units == 0 and pool.evictable_units == 16
    pool.allocate(1)
    assert pool.lookup(("seq", 3)) is None and pool.key[blocks[3]] is None
    assert all(pool.lookup(("seq", j)) == blocks[j] for j in range(3))
    pool.allocate(2)
    assert pool.lookup(("seq", 2)) is None and pool.lookup(("seq", 1)) is None
    assert pool.lookup(("seq", 0)) == blocks[0]  # the prefix survives longest
    assert pool.evicted_blocks == 3
    conserved(pool)


def test_lru_order_follows_free_time_and_touch():
    pool = BlockPool(3)
    a, b, c = pool.allocate(3)
    for blk, key in ((a, "a"), (b, "b"), (c, "c")):
        pool.cache(blk, key)
    pool.free([a])
    pool.free([b])
    pool.free([c])
    pool.touch(a)  # a hit: a leaves the free queue ...
    pool.free([a])  # ... and rejoins at the most recently used end
    assert list(pool._evictable) == ["b", "c", "a"]
    pool.allocate(1)
    assert pool.lookup("b") is None and pool.lookup("a") == a and pool.lookup("c") == c
    conserved(pool)


def test_uncache():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    pool.cache(a, "a")
    pool.uncache(a)
    assert pool.key[a] is None and pool.lookup("a") is None
    pool.uncache(b)  # not cached: nothing to do
    pool.free([a, b])
    assert pool.free_units == 16 and pool.evictable_units == 0  # no longer evictable, just free
    (c,) = pool.allocate(1)
    pool.cache(c, "c")
    pool.free([c])
    with pytest.raises(BlockPoolError):
        pool.uncache(c)  # a free cached block belongs to the LRU queue
    assert pool.lookup("c") == c and pool.evictable_units == 4
    conserved(pool)


def test_resize_shrinks_and_frees_the_difference():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    pool.resize(a, 2)
    assert pool.units[a] == 2 and pool.used_units == 6 and pool.free_units == 10
    pool.resize(a, 1)
    assert pool.used_units == 5
    with pytest.raises(BlockPoolError):
        pool.resize(a, 2)  # cannot grow
    assert pool.units[a] == 1 and pool.used_units == 5
    pool.cache(b, "b")
    pool.resize(b, 2)
    pool.free([a, b])
    assert pool.evictable_units == 2 and pool.free_units == 14
    with pytest.raises(BlockPoolError):
        pool.resize(b, 1)  # free block
    assert pool.units[b] == 2
    conserved(pool)


def test_take_needs_a_reservation():
    pool = BlockPool(4)
    with pytest.raises(BlockPoolError, match="reserved"):
        pool.take(1, 4)
    assert pool.reserve(6)
    assert pool.used_units == 6  # reserved units are used until handed out
    pool.take(1, 4)
    with pytest.raises(BlockPoolError, match="reserved"):
        pool.take(1, 4)  # only 2 units left reserved
    pool.take(1, 2)
    assert pool.reserved_units == 0
    conserved(pool)


def test_swap_out_and_back_in():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    shared = pool.allocate(1)[0]
    pool.touch(shared)  # held twice: it cannot leave the GPU with one holder
    pool.cache(a, "a")
    with pytest.raises(BlockPoolError, match="not held once"):
        pool.swap_out([a, shared])
    assert pool.ref[a] == 1 and pool.lookup("a") == a  # refused: nothing changed
    assert pool.swap_out([a, b]) == 8
    assert pool.ref[a] == pool.ref[b] == 0 and pool.lookup("a") is None
    assert pool.free_units == 12 and a not in pool.spare  # the host copy keeps the ids
    with pytest.raises(BlockPoolError, match="reserved"):
        pool.swap_in([a, b, shared])
    assert pool.reserve(8)
    assert pool.swap_in([a, b, shared]) == 8  # the shared block was never swapped
    assert pool.ref[a] == pool.ref[b] == 1 and pool.ref[shared] == 2
    conserved(pool)


def test_check_detects_corruption():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    pool.cache(a, "a")
    pool.free([a])
    pool.check()
    pool.evictable_units += 4
    with pytest.raises(BlockPoolError):
        pool.check()
    pool.evictable_units -= 4
    pool.cached["zzz"] = b  # key does not match the block's hash
    with pytest.raises(BlockPoolError):
        pool.check()
    del pool.cached["zzz"]
    pool.free_units = -1
    with pytest.raises(BlockPoolError):
        pool.check()


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_conserve_units(seed):
    """Random allocate/cache/touch/free/resize/uncache against a reference model."""
    rng = random.Random(seed)
    pool = BlockPool(rng.randint(1, 40), enable_caching=rng.random() < 0.8)
    held: list[int] = []  # one entry per reference we own
    next_key = 0
    for _ in range(600):
        op = rng.random()
        if op < 0.3:
            units = rng.choice((1, 2, 4))
            count = rng.randint(0, 6)
            before = state(pool)
            got = pool.allocate(count, units)
            if got is None:
                assert count * units > before[0] + before[1]
                assert state(pool) == before
            else:
                assert count * units <= before[0] + before[1]
                held += got
        elif op < 0.45 and held:
            blk = rng.choice(held)
            pool.cache(blk, next_key)
            next_key += 1
        elif op < 0.6 and pool.cached:
            blk = pool.lookup(rng.choice(list(pool.cached)))
            cost = pool.hit_cost_units([blk])
            free_before = pool.allocatable_units
            pool.touch(blk)
            assert pool.allocatable_units == free_before - cost
            held.append(blk)
        elif op < 0.85 and held:
            k = rng.randint(1, min(4, len(held)))
            rng.shuffle(held)
            victims, held = held[:k], held[k:]
            pool.free(victims)
        elif op < 0.92 and held:
            blk = rng.choice(held)
            target = rng.choice([u for u in (1, 2, 4) if u <= pool.units[blk]])
            pool.resize(blk, target)
        elif held:
            blk = rng.choice(held)
            if pool.ref[blk] > 0:
                pool.uncache(blk)
        conserved(pool)
        # the model: referenced blocks are exactly the ones we hold, with matching refcounts
        unique = {b: b for b in held}
        assert sum(pool.units[b] for b in unique.values()) == pool.used_units
        for b in unique.values():
            assert pool.ref[b] == held.count(b)
        assert all(pool.ref[b] == 0 for b in pool._evictable.values())
        # every id is exactly one of: held, cached and evictable, spare (no id leaks)
        held_ids, evictable, spare = set(held), set(pool._evictable.values()), set(pool.spare)
        assert not (held_ids & evictable or held_ids & spare or evictable & spare)
        assert held_ids | evictable | spare == set(range(len(pool.ref)))
    pool.free(held)
    assert pool.used_units == 0
    conserved(pool)


def test_touch_many_equals_touch_one_by_one():
    pools = []
    for _ in range(2):
        pool = BlockPool(8)
        blocks = pool.allocate(4)
        for j, b in enumerate(blocks):
            pool.cache(b, j)
        pool.free(blocks[:2])  # two evictable, two referenced
        pools.append((pool, blocks))
    (one, blocks), (many, _) = pools
    for b in blocks:
        one.touch(b)
    many.touch_many(blocks)
    assert state(one) == state(many) and one.ref == many.ref
    assert [many.ref[b] for b in blocks] == [1, 1, 2, 2]
    conserved(many)


def test_shrink_private_leaves_shared_blocks_alone():
    pool = BlockPool(8)
    a, b, c = pool.allocate(3)
    pool.cache(a, "a")
    pool.touch(a)  # shared by another request
    assert pool.shrink_private([a, b, c], 2) == 4
    assert [pool.units[x] for x in (a, b, c)] == [4, 2, 2] and pool.used_units == 8
    assert pool.shrink_private([a, b, c], 1, shared_too=True) == 5
    assert [pool.units[x] for x in (a, b, c)] == [1, 1, 1] and pool.used_units == 3
    assert pool.shrink_private([a, b, c], 2) == 0  # never grows
    conserved(pool)


def test_take_grows_and_reuses_ids():
    pool = BlockPool(1000)
    first = pool.allocate(100)
    assert sorted(first) == list(range(100)) and len(pool.ref) >= 100
    pool.free(first[:50])
    again = pool.allocate(50)
    assert set(again) == set(first[:50])  # freed ids come back before new ones are made
    conserved(pool)


def test_discard_returns_host_held_ids_and_refuses_used_ones():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    with pytest.raises(BlockPoolError):
        pool.discard([a])  # still referenced on the GPU
    pool.swap_out([a])  # the host copy holds it, its GPU units are returned
    pool.discard([a])
    assert a in pool.spare and pool.free_units == 12
    conserved(pool)


def test_copy_is_independent():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    pool.cache(a, "a")
    pool.free([a])
    twin = pool.copy()
    assert state(twin) == state(pool)
    twin.allocate(3)  # evicts "a" in the copy only
    assert pool.lookup("a") == a and twin.lookup("a") is None
    assert pool.ref[b] == 1 and pool.free_units == 8
    conserved(pool)
    conserved(twin)


def test_uncache_private_keeps_shared_blocks_published():
    pool = BlockPool(8)
    a, b, c = pool.allocate(3)
    for blk, key in ((a, "a"), (b, "b")):
        pool.cache(blk, key)
    pool.touch(a)  # another request shares a
    version = pool.version
    pool.uncache_private([a, b, c])
    assert pool.lookup("a") == a and pool.lookup("b") is None and pool.key[b] is None
    assert pool.version > version
    conserved(pool)


def test_shrink_shared_block_listed_twice_frees_once():
    pool = BlockPool(4)
    (a,) = pool.allocate(1)
    pool.touch(a)  # held twice by one holder (a prompt that repeats a hash id)
    assert pool.shrink_private([a, a], 1, shared_too=True) == 3
    assert pool.units[a] == 1 and pool.used_units == 1
    conserved(pool)
