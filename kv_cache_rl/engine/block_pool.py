"""The GPU KV pool: paged blocks, a prefix cache keyed by block hash, and an LRU free queue.

Follows vLLM V1's ``BlockPool``: a block whose reference count drops to zero stays in the prefix
cache and joins the tail of the free queue; allocation takes truly free space first, then evicts
cached free blocks from the head (least recently freed). Misuse (double free) raises;
"does not fit" is a soft failure the scheduler acts on (``allocate`` returns ``None``).

One extension: blocks can hold quantized KV. Space is counted in *units*, a quarter of an fp16
block, so an int8 block costs 2 units and an int4 block 1. With fp16 only, this is exactly vLLM's
block accounting (every block 4 units).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable

UNITS_PER_BLOCK = 4  # fp16 block = 4 units; tier t (fp16, int8, int4) costs 4 >> t units


class BlockPoolError(RuntimeError):
    """A block was freed or referenced in a way that breaks the pool's invariants."""


class Block:
    """One logical KV block (``block_size`` tokens) at some precision tier."""

    __slots__ = ("hash", "ref", "units")

    def __init__(self, units: int) -> None:
        self.hash: Hashable | None = None
        self.ref = 1
        self.units = units

    def __repr__(self) -> str:
        return f"Block(hash={self.hash!r}, ref={self.ref}, units={self.units})"


class BlockPool:
    """Fixed-capacity pool of ``num_blocks`` fp16 blocks with prefix caching."""

    def __init__(self, num_blocks: int, *, enable_caching: bool = True) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be > 0, got {num_blocks}")
        self.num_blocks = num_blocks
        self.total_units = num_blocks * UNITS_PER_BLOCK
        self.enable_caching = enable_caching
        self.free_units = self.total_units  # held by no block at all
        self.cached: dict[Hashable, Block] = {}  # hash -> block, referenced or not
        self._evictable: OrderedDict[Hashable, Block] = OrderedDict()  # ref == 0, LRU first
        self.evictable_units = 0
        self.evicted_blocks = 0  # cached blocks reclaimed for new allocations
        # bumped whenever a prefix-cache lookup could answer differently (membership or a
        # 0 <-> 1 reference change), so the scheduler can reuse a blocked head's hits
        self.version = 0

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
        evictable = self._evictable
        if self.free_units < units:
            self.version += 1
        while self.free_units < units:
            key, block = evictable.popitem(last=False)
            del self.cached[key]
            block.hash = None
            self.evictable_units -= block.units
            self.free_units += block.units
            self.evicted_blocks += 1
        self.free_units -= units
        return True

    def allocate(self, count: int, units_each: int = UNITS_PER_BLOCK) -> list[Block] | None:
        """``count`` new blocks with a reference each, or ``None`` if they do not fit."""
        if not self.reserve(count * units_each):
            return None
        return [Block(units_each) for _ in range(count)]

    def lookup(self, key: Hashable) -> Block | None:
        return self.cached.get(key)

    def touch(self, block: Block) -> None:
        """Take a reference to a cached block (a prefix-cache hit)."""
        if block.ref == 0:
            del self._evictable[block.hash]
            self.evictable_units -= block.units
            self.version += 1
        block.ref += 1

    def hit_cost_units(self, blocks: Iterable[Block]) -> int:
        """Units that touching ``blocks`` would take out of the allocatable space."""
        return sum(b.units for b in blocks if b.ref == 0)

    def cache(self, block: Block, key: Hashable) -> None:
        """Publish a full block under ``key`` so later requests can hit it."""
        if not self.enable_caching or block.hash is not None or key in self.cached:
            return
        block.hash = key
        self.cached[key] = block
        self.version += 1

    def cache_many(self, blocks: list[Block], keys: list, start: int, stop: int) -> None:
        """``cache(blocks[j], keys[j])`` for ``j`` in ``[start, stop)``, in one pass."""
        if not self.enable_caching:
            return
        cached = self.cached
        for j in range(start, stop):
            block, key = blocks[j], keys[j]
            if block.hash is None and key not in cached:
                block.hash = key
                cached[key] = block
        self.version += 1

    def uncache(self, block: Block) -> None:
        """Withdraw a block from the prefix cache (its KV is being dropped or moved)."""
        if block.hash is None:
            return
        if block.ref == 0:
            raise BlockPoolError(f"uncache of a free block {block!r}")
        del self.cached[block.hash]
        block.hash = None
        self.version += 1

    def free(self, blocks: Iterable[Block]) -> None:
        """Drop one reference from each block; unreferenced cached blocks become evictable.

        Pass blocks tail first (as vLLM does) so a sequence's last blocks are evicted first.
        """
        for block in blocks:
            if block.ref <= 0:
                raise BlockPoolError(f"double free of {block!r}")
            block.ref -= 1
            if block.ref:
                continue
            if block.hash is not None:
                self._evictable[block.hash] = block
                self.evictable_units += block.units
                self.version += 1
            else:
                self.free_units += block.units

    def resize(self, block: Block, units: int) -> None:
        """Change a referenced block's size in place (quantization); frees the difference."""
        if block.ref <= 0:
            raise BlockPoolError(f"resize of a free block {block!r}")
        if units > block.units:
            raise BlockPoolError("resize can only shrink a block")
        self.free_units += block.units - units
        block.units = units

    def release_units(self, units: int) -> None:
        """Return units taken with ``reserve`` that no block holds (blocks moved off the GPU)."""
        self.free_units += units
        if self.free_units > self.total_units:
            raise BlockPoolError("more units returned than the pool holds")

    def check(self) -> None:
        """Verify the conservation invariants (for tests)."""
        evictable = sum(b.units for b in self._evictable.values())
        if evictable != self.evictable_units:
            raise BlockPoolError(f"evictable units {self.evictable_units} != {evictable}")
        if not 0 <= self.free_units <= self.total_units or self.used_units < 0:
            raise BlockPoolError(f"free {self.free_units} / used {self.used_units} out of range")
        for key, block in self.cached.items():
            if block.hash != key:
                raise BlockPoolError(f"cache key {key!r} maps to {block!r}")
