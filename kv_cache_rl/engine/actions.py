"""What an agent can do to cached sequences, and what the engine does with finished KV.

``evict``, ``compress`` and ``swap_to_cpu`` act between iterations. Misuse (an unknown id, a
sequence in the wrong state, a full host pool) raises an :class:`ActionError` subclass and
changes nothing. Costs are real: an evicted request recomputes its prompt and output; a
compressed sequence loses quality on every later token; a swap stalls the next iteration for
the host-link transfer, and bringing the KV back costs the same again. What the engine keeps of
a finished request's KV is :mod:`~kv_cache_rl.engine.retention`'s.
"""

from __future__ import annotations

from kv_cache_rl.errors import KVCacheRLError
from kv_cache_rl.engine.block_pool import UNITS_PER_BLOCK, gather
from kv_cache_rl.engine.clone import clone_engine
from kv_cache_rl.engine.sequence import Sequence, State, count_units, remember_units


class ActionError(KVCacheRLError, ValueError):
    """An action that cannot be applied; the engine state is unchanged."""


class UnknownSequenceError(ActionError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class InvalidStateError(ActionError):
    pass


class CapacityError(ActionError):
    pass


VISIBLE = (State.RUNNING, State.SWAPPED, State.RETAINED)


class ActionsMixin:
    """Agent actions for :class:`~kv_cache_rl.engine.engine.Engine`."""

    # ---- queries ------------------------------------------------------------------------
    def sequence(self, seq_id: int) -> Sequence:
        seq = self.live.get(seq_id)
        if seq is None or seq.state not in VISIBLE:
            raise UnknownSequenceError(f"no cached sequence with id {seq_id}")
        return seq

    def cached_sequences(self) -> list[Sequence]:
        """Every sequence holding KV (GPU or host), in id order."""
        return [s for s in self.live.values() if s.state in VISIBLE]

    def pending_wrong_answers(self, last_turn: dict[int, int], later_requests: int) -> float:
        """Expected wrong answers that quantized KV held now will still cause: generations
        that will finish on it, retained contexts their session's next turn (``last_turn``:
        session -> its last turn in the trace) will read, and a compressed system prompt that
        ``later_requests`` more requests will read (counted at the chat rate, the lowest)."""
        wrong = self._quality_cost
        total = 0.0
        for seq in self.live.values():
            if not seq.tier or seq.req is None:
                continue
            if seq.kind == "generation":
                total += wrong[seq.rtype][seq.tier]
            elif seq.kind == "context" and last_turn.get(seq.session_id, -1) > seq.req.turn:
                total += wrong[seq.rtype][seq.tier]
        if self.system_tier:
            total += later_requests * wrong[0][self.system_tier]
        return total

    def clone(self):
        """An independent copy for lookahead search (shares the immutable profile and trace)."""
        return clone_engine(self)

    # ---- actions ------------------------------------------------------------------------
    def keep(self) -> None:
        """Do nothing."""

    def evict(self, seq_id: int) -> float:
        """Drop a sequence's KV; return the fp16-equivalent blocks freed on the GPU (the
        units of its blocks no other sequence holds, / 4).

        A running or swapped request goes back to the front of the queue and recomputes.
        """
        seq = self.sequence(seq_id)
        before = self.pool.allocatable_units
        was = seq.swapped_from if seq.state == State.SWAPPED else seq.state
        self._drop_kv(seq)
        if was == State.RETAINED:
            self._forget(seq)
        else:
            if seq in self.running:
                self.running.remove(seq)
            if seq in self.swapped:
                self.swapped.remove(seq)
            seq.high_water = max(seq.high_water, seq.num_computed)
            seq.num_computed = 0
            seq.num_registered = 0
            seq.state = State.WAITING
            seq.evicted += 1
            self.waiting.appendleft(seq)
            self.stats.evicted_active += 1
        return (self.pool.allocatable_units - before) / UNITS_PER_BLOCK

    def compress(self, seq_id: int) -> int:
        """Quantize a sequence one precision tier down; return the units freed.

        Only blocks this sequence holds alone shrink (a shared prefix is other requests' KV
        too), except for the ``system`` prefix, which every request reads by design.
        """
        seq = self.sequence(seq_id)
        if seq.state == State.SWAPPED:
            raise InvalidStateError(f"sequence {seq_id} is in host memory; it cannot be compressed")
        last = len(self.profile.tiers) - 1
        if seq.tier >= last:
            raise InvalidStateError(
                f"sequence {seq_id} is already at the lowest precision "
                f"({self.profile.tiers[last].name})")
        tier = seq.tier + 1
        units = UNITS_PER_BLOCK >> tier
        bs = self.config.block_size
        known = count_units(seq, self.pool.units, bs)
        cut = seq.system_blocks(bs)  # counted apart: the size memo leaves the prefix out
        shrink = self.pool.shrink_private
        freed_prefix = shrink(seq.blocks[:cut], units) if cut else 0
        freed = shrink(seq.blocks[cut:] if cut else seq.blocks, units,
                       shared_too=seq.kind == "system")
        seq.tier = tier
        if seq.kind == "system":
            self.system_tier = tier
        remember_units(seq, known - freed)
        return freed_prefix + freed

    def swap_to_cpu(self, seq_id: int) -> float:
        """Move a sequence's own blocks to host memory; return the transfer time in seconds."""
        seq = self.sequence(seq_id)
        if seq.state == State.SWAPPED:
            raise InvalidStateError(f"sequence {seq_id} is already in host memory")
        pool = self.pool
        ref, key = pool.ref, pool.key
        blocks = seq.blocks
        own = [j for j, r in enumerate(gather(ref, blocks)) if r == 1]
        if not own:
            raise InvalidStateError(f"sequence {seq_id} holds no blocks of its own to swap")
        moved = gather(blocks, own)
        units = sum(gather(pool.units, moved))
        if units > self.cpu_free_units:
            raise CapacityError(
                f"host swap space is full ({self.cpu_free_units // UNITS_PER_BLOCK} free blocks, "
                f"sequence {seq_id} needs {units / UNITS_PER_BLOCK:g})")
        seq.cpu_keys += [(j, k) for j, k in zip(own, gather(key, moved)) if k is not None]
        pool.swap_out(moved)  # held by the host copy now, not by the GPU pool
        self.cpu_free_units -= units
        seq.cpu_units = units
        seq.swapped_from = seq.state
        if seq.state == State.RUNNING:
            self.running.remove(seq)
            self.swapped.append(seq)
        seq.state = State.SWAPPED
        nbytes = units * self.unit_bytes
        self.stats.swap_out_bytes += nbytes
        return self._link(nbytes)

    # ---- mechanics ----------------------------------------------------------------------
    def _link(self, nbytes: int) -> float:
        """Host-link time for a transfer; the engine stalls for it in the next iteration."""
        seconds = self.profile.gpu.transfer_s(nbytes)
        self._stall_s += seconds
        self.stats.swap_latency_s += seconds
        return seconds

    def _swap_in(self, seq: Sequence) -> bool:
        if not self.pool.reserve(seq.cpu_units):
            return False
        self.pool.swap_in(seq.blocks)
        for j, key in seq.cpu_keys:
            self.pool.cache(seq.blocks[j], key)
        nbytes = seq.cpu_units * self.unit_bytes
        self.cpu_free_units += seq.cpu_units
        seq.cpu_units = 0
        seq.cpu_keys = []
        seq.state = seq.swapped_from
        self.stats.swap_in_bytes += nbytes
        self._link(nbytes)
        return True

    def _swap_in_requests(self) -> None:
        while self.swapped and len(self.running) < self.config.max_num_seqs:
            seq = self.swapped[0]
            if not self._swap_in(seq):
                self._memory_blocked = True
                return
            self.swapped.popleft()
            self.running.append(seq)

    def _drop_kv(self, seq: Sequence) -> None:
        """Discard a sequence's KV for good: its own blocks leave the prefix cache too."""
        pool = self.pool
        ref = pool.ref
        if seq.state == State.SWAPPED:
            self.cpu_free_units += seq.cpu_units
            seq.cpu_units = 0
            seq.cpu_keys = []
            pool.discard([b for b in seq.blocks if ref[b] == 0])
            on_gpu = [b for b in seq.blocks if ref[b] > 0]
        else:
            on_gpu = seq.blocks
        pool.uncache_private(on_gpu)
        pool.free(reversed(on_gpu))
        seq.blocks = []
