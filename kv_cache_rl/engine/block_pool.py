"""The GPU KV pool: paged blocks, a prefix cache keyed by block hash, and an LRU free queue.

Follows vLLM V1's ``BlockPool``: a block whose reference count drops to zero stays in the prefix
cache and joins the tail of the free queue; allocation takes truly free space first, then evicts
cached free blocks from the head (least recently freed). Misuse (double free) raises;
"does not fit" is a soft failure the scheduler acts on (``allocate`` returns ``None``).

Blocks are integer ids, as in vLLM; their state lives in three parallel lists indexed by id
(``ref``, ``units``, ``key``) rather than in one object per block. A hard scenario holds 20-40k
blocks, and lookahead copies the engine dozens of times per step: copying three lists is a
C-level memcpy, copying 40k objects is not.

One extension: blocks can hold quantized KV. Space is counted in *units*, a quarter of an fp16
block, so an int8 block costs 2 units and an int4 block 1. With fp16 only, this is exactly vLLM's
block accounting (every block 4 units). A block whose KV sits in host memory keeps its id (and
its size) with no reference on the GPU; :meth:`BlockPool.discard` returns such ids.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from operator import itemgetter

UNITS_PER_BLOCK = 4  # fp16 block = 4 units; tier t (fp16, int8, int4) costs 4 >> t units


def gather(values: list, ids: list[int]) -> tuple:
    """``values[b]`` for each ``b`` of ``ids``, as a tuple. ``itemgetter`` indexes in C: a
    request's prefix runs to thousands of blocks, and a comprehension costs twice as much."""
    if len(ids) > 1:
        return itemgetter(*ids)(values)
    return (values[ids[0]],) if ids else ()


class BlockPoolError(RuntimeError):
    """A block was freed or referenced in a way that breaks the pool's invariants."""


class BlockPool:
    """Fixed-capacity pool of ``num_blocks`` fp16 blocks with prefix caching.

    ``ref[b]``, ``units[b]`` and ``key[b]`` are block ``b``'s reference count, size in units and
    prefix-cache key (``None`` when unpublished). Read them freely; change them only through
    the methods, which keep the accounting.
    """

    def __init__(self, num_blocks: int, *, enable_caching: bool = True) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be > 0, got {num_blocks}")
        self.num_blocks = num_blocks
        self.total_units = num_blocks * UNITS_PER_BLOCK
        self.enable_caching = enable_caching
        self.free_units = self.total_units  # held by no block at all
        self.reserved_units = 0  # taken by ``reserve`` for blocks not handed out yet
        self.ref: list[int] = []
        self.units: list[int] = []
        self.key: list[Hashable | None] = []
        self.spare: list[int] = []  # ids in no use at all (popped from the end)
        self.cached: dict[Hashable, int] = {}  # key -> block, referenced or not
        self._evictable: OrderedDict[Hashable, int] = OrderedDict()  # ref == 0, LRU first
        self.evictable_units = 0
        self.evicted_blocks = 0  # cached blocks reclaimed for new allocations
        # What a remembered prefix lookup needs to stay valid (see SchedulerMixin._prefix_hits).
        # ``version`` is bumped when a block is withdrawn from the cache (uncache), its
        # reference count goes 0 <-> 1 or its size changes. LRU eviction does not bump it (it
        # happens on nearly every allocation under pressure); it sets ``watch_hit`` instead
        # when it evicts one of the ``watch`` blocks, the unreferenced hits of that lookup.
        self.version = 0
        self.watch: frozenset[int] = frozenset()
        self.watch_hit = False

    def copy(self) -> BlockPool:
        """An independent copy (block ids are the same in both). Every attribute is a number,
        a frozen set, or a list or dict of immutable values (ids, counts, keys), so a shallow
        copy of each container is a full copy; anything else raises rather than be shared."""
        new = BlockPool.__new__(BlockPool)
        for name, value in vars(self).items():
            if isinstance(value, (list, dict)):  # OrderedDict.copy keeps the LRU order
                value = value.copy()
            elif not isinstance(value, (int, float, bool, frozenset, type(None))):
                raise TypeError(f"BlockPool.copy: no copy rule for {name!r}")
            setattr(new, name, value)
        return new

    # ---- accounting -------------------------------------------------------------------
    @property
    def allocatable_units(self) -> int:
        return self.free_units + self.evictable_units

    @property
    def used_units(self) -> int:
        """Units held by referenced blocks (what vLLM reports as KV cache usage)."""
        return self.total_units - self.free_units - self.evictable_units

    @property
    def usage(self) -> float:
        return self.used_units / self.total_units

    @property
    def num_free_blocks(self) -> float:
        """Allocatable space in fp16 blocks (free plus evictable cached)."""
        return self.allocatable_units / UNITS_PER_BLOCK

    # ---- allocation -------------------------------------------------------------------
    def reserve(self, units: int) -> bool:
        """Make ``units`` truly free (evicting LRU cached blocks) and take them; False if short."""
        if units > self.free_units + self.evictable_units:
            return False
        if self.free_units < units:
            evictable, cached, key, size = self._evictable, self.cached, self.key, self.units
            spare, watch = self.spare, self.watch
            while self.free_units < units:
                k, b = evictable.popitem(last=False)
                del cached[k]
                key[b] = None
                spare.append(b)
                self.evictable_units -= size[b]
                self.free_units += size[b]
                self.evicted_blocks += 1
                if b in watch:
                    self.watch_hit = True
        self.free_units -= units
        self.reserved_units += units
        return True

    def take(self, count: int, units_each: int) -> list[int]:
        """``count`` new block ids with a reference each, for units already reserved (raises
        if fewer are reserved: space is only ever handed out through ``reserve``)."""
        units = count * units_each
        if units > self.reserved_units:
            raise BlockPoolError(f"take of {count} x {units_each} units with only "
                                 f"{self.reserved_units} reserved")
        self.reserved_units -= units
        spare = self.spare
        if len(spare) < count:
            grow = max(count, len(self.ref) // 2, 64)
            start = len(self.ref)
            self.ref += [0] * grow
            self.units += [0] * grow
            self.key += [None] * grow
            spare[:0] = range(start + grow - 1, start - 1, -1)  # lowest ids are taken first
        ids = spare[-count:] if count else []
        del spare[len(spare) - count:]
        ref, size = self.ref, self.units
        for b in ids:
            ref[b] = 1
            size[b] = units_each
        return ids

    def allocate(self, count: int, units_each: int = UNITS_PER_BLOCK) -> list[int] | None:
        """``count`` new blocks with a reference each, or ``None`` if they do not fit."""
        if not self.reserve(count * units_each):
            return None
        return self.take(count, units_each)

    def lookup(self, key: Hashable) -> int | None:
        return self.cached.get(key)

    def touch(self, block: int) -> None:
        """Take a reference to a cached block (a prefix-cache hit)."""
        self.touch_many([block])

    def touch_many(self, blocks: list[int]) -> None:
        """:meth:`touch` each of ``blocks`` (a request's prefix hits)."""
        ref, evictable = self.ref, self._evictable
        revived = 0
        for b in blocks:
            if ref[b] == 0:
                del evictable[self.key[b]]
                revived += self.units[b]
            ref[b] += 1
        if revived:
            self.evictable_units -= revived
            self.version += 1

    def hit_cost_units(self, blocks: Iterable[int]) -> int:
        """Units that touching ``blocks`` would take out of the allocatable space."""
        ref, units = self.ref, self.units
        return sum([units[b] for b in blocks if not ref[b]])

    def cache(self, block: int, key: Hashable) -> None:
        """Publish a full block under ``key`` so later requests can hit it."""
        if not self.enable_caching or self.key[block] is not None or key in self.cached:
            return
        self.key[block] = key
        self.cached[key] = block

    def cache_many(self, blocks: list[int], keys: list, start: int, stop: int) -> None:
        """``cache(blocks[j], keys[j])`` for ``j`` in ``[start, stop)``, in one pass, for
        blocks not published yet (a sequence's newly computed ones)."""
        if not self.enable_caching:
            return
        publish, own = self.cached.setdefault, self.key  # one hash probe per block
        for b, k in zip(blocks[start:stop], keys[start:stop]):
            if publish(k, b) == b:  # the first publisher of a key wins
                own[b] = k

    def uncache(self, block: int) -> None:
        """Withdraw a block from the prefix cache (its KV is being dropped or moved)."""
        k = self.key[block]
        if k is None:
            return
        if self.ref[block] == 0:
            raise BlockPoolError(f"uncache of a free block {self.describe(block)}")
        del self.cached[k]
        self.key[block] = None
        self.version += 1

    def uncache_private(self, blocks: list[int]) -> None:
        """:meth:`uncache` every block of ``blocks`` held once (a sequence's KV being dropped:
        its own blocks leave the cache, blocks other requests share stay)."""
        ref, key, cached = self.ref, self.key, self.cached
        dropped = False
        for b in blocks:
            k = key[b]
            if k is not None and ref[b] == 1:
                del cached[k]
                key[b] = None
                dropped = True
        if dropped:
            self.version += 1

    def free(self, blocks: Iterable[int]) -> None:
        """Drop one reference from each block; unreferenced cached blocks become evictable.

        Pass blocks tail first (as vLLM does) so a sequence's last blocks are evicted first.
        """
        ref, key, units, spare, evictable = self.ref, self.key, self.units, self.spare, \
            self._evictable
        freed = revived = 0
        for b in blocks:
            r = ref[b]
            if r <= 1:
                if r <= 0:
                    raise BlockPoolError(f"double free of {self.describe(b)}")
                ref[b] = 0
                k = key[b]
                if k is not None:
                    evictable[k] = b
                    revived += units[b]
                else:
                    freed += units[b]
                    spare.append(b)
            else:
                ref[b] = r - 1
        self.free_units += freed
        if revived:
            self.evictable_units += revived
            self.version += 1

    def resize(self, block: int, units: int) -> None:
        """Change a referenced block's size in place (quantization); frees the difference."""
        if self.ref[block] <= 0:
            raise BlockPoolError(f"resize of a free block {self.describe(block)}")
        if units > self.units[block]:
            raise BlockPoolError("resize can only shrink a block")
        self.free_units += self.units[block] - units
        self.units[block] = units
        self.version += 1

    def shrink_private(self, blocks: list[int], units: int, *, shared_too: bool = False) -> int:
        """Resize every block of ``blocks`` held only once (or all, ``shared_too``) to ``units``
        where larger; return the units freed (quantizing one sequence's KV)."""
        ref, size = self.ref, self.units
        if shared_too:  # a block listed twice (a prompt repeating a hash id) shrinks once
            shrink = list(dict.fromkeys(b for b in blocks if size[b] > units))
        else:
            shrink = [b for b in blocks if size[b] > units and ref[b] == 1]
        freed = sum(map(size.__getitem__, shrink)) - units * len(shrink)
        for b in shrink:
            size[b] = units
        if freed:
            self.free_units += freed
            self.version += 1  # a prefix hit's size can decide an admitted request's tier
        return freed

    def swap_out(self, blocks: list[int]) -> int:
        """Move blocks held once to host memory: they leave the prefix cache and the GPU space
        (their ids and sizes stay, held by the host copy with no GPU reference). Returns the
        units freed."""
        ref, units = self.ref, self.units
        if any(ref[b] != 1 for b in blocks):
            bad = next(b for b in blocks if ref[b] != 1)
            raise BlockPoolError(f"swap_out of a block not held once: {self.describe(bad)}")
        self.uncache_private(blocks)
        moved = sum(gather(units, blocks))
        for b in blocks:
            ref[b] = 0
        self.free_units += moved
        return moved

    def swap_in(self, blocks: list[int]) -> int:
        """Bring host-held blocks (no GPU reference, not cached) back with one reference each,
        into space already reserved for them; returns their units."""
        ref, units = self.ref, self.units
        back = [b for b in blocks if ref[b] == 0]
        if any(self.key[b] is not None for b in back):
            bad = next(b for b in back if self.key[b] is not None)
            raise BlockPoolError(f"swap_in of a cached free block {self.describe(bad)}")
        need = sum(gather(units, back))
        if need > self.reserved_units:
            raise BlockPoolError(f"swap_in of {need} units with only {self.reserved_units} "
                                 "reserved")
        self.reserved_units -= need
        for b in back:
            ref[b] = 1
        return need

    def discard(self, blocks: Iterable[int]) -> None:
        """Return ids that hold no GPU space (KV dropped from host memory) to the spare list."""
        for b in blocks:
            if self.ref[b] or self.key[b] is not None:
                raise BlockPoolError(f"discard of a block in use {self.describe(b)}")
            self.spare.append(b)

    def describe(self, block: int) -> str:
        return f"block {block} (key={self.key[block]!r}, ref={self.ref[block]}, " \
               f"units={self.units[block]})"

    def check(self) -> None:
        """Verify the conservation invariants (for tests)."""
        evictable = sum(self.units[b] for b in self._evictable.values())
        if evictable != self.evictable_units:
            raise BlockPoolError(f"evictable units {self.evictable_units} != {evictable}")
        if not 0 <= self.reserved_units <= self.total_units - self.free_units:
            raise BlockPoolError(f"reserved units {self.reserved_units} out of range")
        if not 0 <= self.free_units <= self.total_units or self.used_units < 0:
            raise BlockPoolError(f"free {self.free_units} / used {self.used_units} out of range")
        for k, b in self.cached.items():
            if self.key[b] != k:
                raise BlockPoolError(f"cache key {k!r} maps to {self.describe(b)}")
        spare = set(self.spare)
        if len(spare) != len(self.spare):
            raise BlockPoolError("a spare block id is listed twice")
        busy = [b for b in spare if self.ref[b] or self.key[b] is not None]
        if busy:
            raise BlockPoolError(f"spare {self.describe(busy[0])} is in use")
