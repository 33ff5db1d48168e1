"""One iteration's scheduling, vLLM V1 style: running requests first (decodes, chunked
prefills, recompute preemption of the most recently admitted when blocks run out), then
swapped-out requests, then FCFS admission with prefix-cache hits; and the update after the
forward pass (sampled tokens, finished requests, newly shareable prompt blocks).
"""

from __future__ import annotations

from collections.abc import Hashable
from itertools import compress as select  # not the quantizing action
from operator import not_
from typing import NamedTuple

from kv_cache_rl.engine.block_pool import UNITS_PER_BLOCK, gather
from kv_cache_rl.engine.sequence import Sequence, State, remember_units

LOOKUP_CHUNK = 64  # prefix keys looked up at once at first (the chunk doubles while all hit)


class PrefixHits(NamedTuple):
    """A request's cached prefix (vLLM ``get_computed_blocks``) and what admitting it takes."""

    blocks: list[int]  # the longest run of cached full blocks at the start of the prompt
    cost_units: int  # the units touching them takes from the allocatable space (free ones)
    smallest_units: int  # the smallest hit's units past the system prefix (sets the tier)
    units_past_system: int  # the hits' units past the system prefix (for the size memo)


NO_HITS = PrefixHits([], 0, UNITS_PER_BLOCK, 0)


class PrefixLookup(NamedTuple):
    """The last lookup, remembered for a blocked queue head that is asked again."""

    seq: Sequence
    version: int  # pool.version then: no hit left the cache or changed reference or size
    num_tokens: int
    after: Hashable | None  # the key after the hits: once published, the hits may grow
    found: PrefixHits
    refs: tuple | None  # the hits' reference counts; None once the LRU watch is set up
    evicted_blocks: int  # pool.evicted_blocks then


class SchedulerMixin:
    """Scheduling methods of :class:`~kv_cache_rl.engine.engine.Engine`."""

    def _schedule(self):
        """Schedule the running requests, then swapped and waiting ones (vLLM V1 order).

        Decodes are the hot path: their token is accounted here (a decode always samples one
        token), and only prefill chunks and finished requests are left to :meth:`_update`.
        """
        bs = self.config.block_size
        reserve, take = self.pool.reserve, self.pool.take
        running = self.running
        attention = self._attention_factor
        quality = self._quality_cost
        budget = self.config.max_num_batched_tokens
        scheduled: list[tuple[Sequence, int]] = []  # prefill chunks, for _update
        chunks: list[tuple[int, int]] = []
        finished: list[Sequence] = []
        kv_sum = 0.0
        loss = 0.0
        preempted = False
        n_running = len(running)
        i = 0
        while i < n_running and budget > 0:
            seq = running[i]
            computed = seq.num_computed
            out = seq.num_output
            if out and seq.num_tokens - computed == 1:  # a decode: one token, one new KV
                if not computed % bs:  # its last block is full: it needs another first
                    units = UNITS_PER_BLOCK >> seq.tier
                    if not reserve(units):
                        fits = self._preempt_for(seq, units)
                        preempted, n_running = True, len(running)
                        if not fits:
                            break
                    seq.blocks += take(1, units)
                # the decode's accounting, the one place it is written (decode_run repeats
                # exactly this for k iterations at once)
                i += 1
                budget -= 1
                tier = seq.tier
                if tier:
                    kv_sum += (computed + 1) * attention[tier]
                    loss += quality[seq.rtype][tier]
                else:
                    kv_sum += computed + 1  # fp16's attention factor is 1 by definition
                seq.num_computed = computed + 1
                seq.num_tokens += 1
                out += 1
                seq.num_output = out
                if out >= seq.max_output:
                    finished.append(seq)
                continue
            # a prefill chunk (a new prompt, or recomputing what a preemption dropped)
            n = seq.num_tokens - computed
            if n > budget:
                n = budget
            if n == 1:  # blocks always cover exactly the computed tokens
                need = 0 if computed % bs else 1
            else:
                need = (computed + n + bs - 1) // bs - len(seq.blocks)
            if need > 0:
                units = UNITS_PER_BLOCK >> seq.tier
                if not reserve(need * units):
                    fits = self._preempt_for(seq, need * units)
                    preempted, n_running = True, len(running)
                    if not fits:
                        break
                seq.blocks += take(need, units)
            budget -= n
            i += 1
            scheduled.append((seq, n))
            chunks.append((n, computed))
        num_decodes = i - len(scheduled)
        self.stats.quality_loss += loss
        self._preempted = preempted
        self._memory_blocked = preempted  # a preemption: the batch itself ran out of blocks
        if not preempted:
            if self.swapped:
                self._swap_in_requests()
            if self.waiting and budget > 0:
                budget = self._admit(scheduled, chunks, budget)
        return scheduled, chunks, num_decodes, kv_sum, finished

    def _preempt_for(self, seq: Sequence, units: int) -> bool:
        """vLLM V1: preempt the most recently admitted running requests until ``units`` can be
        reserved for ``seq`` (then reserved); False if ``seq`` itself had to go."""
        running, reserve = self.running, self.pool.reserve
        while True:
            victim = running.pop()
            self._preempt(victim)
            if victim is seq:
                return False
            if reserve(units):
                return True

    def _admit(self, scheduled, chunks, budget: int) -> int:
        """Admit waiting requests FCFS; the head that does not fit blocks the queue."""
        bs = self.config.block_size
        pool = self.pool
        waiting, running = self.waiting, self.running
        max_seqs = self.config.max_num_seqs
        while waiting and budget > 0 and len(running) < max_seqs:
            seq = waiting[0]
            context = self._session_context.get(seq.session_id) if seq.session_id >= 0 else None
            if context is not None and context.state == State.SWAPPED:
                if not self._swap_in(context):
                    self._memory_blocked = True
                    break  # its context is coming back from host memory first
            hits, hit_cost, n, need, tier, hit_units = self._admission(seq, budget)
            units = UNITS_PER_BLOCK >> tier
            if need * units + hit_cost > pool.allocatable_units:
                self._memory_blocked = True
                break
            computed = len(hits) * bs
            self.stats.cached_prompt_tokens += computed
            seq.tier = tier
            inherited = _held_within(context, hits) if context is not None else None
            if inherited is None:
                pool.touch_many(hits)
            else:  # the context's references pass to the new turn: touch only the rest
                pool.touch_many(hits[:inherited])
                pool.touch_many(hits[inherited + len(context.blocks):])
            pool.reserve(need * units)
            seq.blocks = hits + pool.take(need, units)
            seq.num_computed = computed
            seq.num_registered = min(len(hits), len(seq.shared_keys))
            seq.state = State.RUNNING
            past = need - max(seq.system_blocks(bs) - len(hits), 0)  # new blocks past the prefix
            remember_units(seq, hit_units + units * max(past, 0))
            waiting.popleft()
            running.append(seq)
            if inherited is not None:
                context.blocks = []
                self._forget(context)
            elif context is not None:
                self._release(context)  # the new turn now holds the context's blocks
            scheduled.append((seq, n))
            chunks.append((n, computed))
            budget -= n
        return budget

    def _admission(self, seq: Sequence, budget: int) -> tuple[list[int], int, int, int, int, int]:
        """What admitting ``seq`` with ``budget`` tokens left takes: its prefix hits, the units
        touching them takes, the tokens of its first chunk, the new blocks and their tier, and
        the hits' units past the system prefix (for the size memo)."""
        bs = self.config.block_size
        hits, hit_cost, smallest, hit_units = self._prefix_hits(seq)
        computed = len(hits) * bs
        n = min(seq.num_tokens - computed, budget)
        need = (computed + n + bs - 1) // bs - len(hits)
        tier = seq.tier
        if smallest < UNITS_PER_BLOCK >> tier:  # a quantized shared prefix lowers the tier
            tier = 3 - smallest.bit_length()
        if self.system_tier > tier and seq.system_blocks(bs):
            tier = self.system_tier  # every request reads the (compressed) system prompt
        return hits, hit_cost, n, need, tier, hit_units

    def _prefix_hits(self, seq: Sequence) -> PrefixHits:
        """Longest run of cached full blocks at the start of ``seq`` (vLLM get_computed_blocks),
        the units that touching them takes from the allocatable space, the smallest hit
        block's units and the hits' units past the system prefix.

        A blocked queue head is asked again every iteration, so the last answer is remembered.
        While no hit leaves the cache or changes reference state or size (the pool's version is
        unchanged and LRU eviction took none of them), the hits can only grow, and only if the
        key after them is published. Most heads are admitted at once, so the LRU watch on the
        unreferenced hits is only set up when the answer is asked for again, and only if
        nothing was evicted meanwhile.
        """
        if not self.config.enable_prefix_caching or not (seq.shared_keys or seq.num_preemptions):
            return NO_HITS
        memo = self._hits_memo
        pool = self.pool
        if memo is not None and memo.seq is seq and memo.version == pool.version \
                and memo.num_tokens == seq.num_tokens and memo.after not in pool.cached:
            found, refs = memo.found, memo.refs
            if refs is None:  # watched since the lookup
                if not pool.watch_hit:
                    return found
            elif pool.evicted_blocks == memo.evicted_blocks:  # asked again, nothing evicted
                pool.watch = frozenset(select(found.blocks, map(not_, refs))) if 0 in refs \
                    else frozenset()
                pool.watch_hit = False
                self._hits_memo = memo._replace(refs=None)
                return found
        hits = self._lookup_hits(seq)
        refs = gather(pool.ref, hits)
        if hits:
            sizes = gather(pool.units, hits)
            cost = sum(select(sizes, map(not_, refs))) if 0 in refs else 0  # cached but free
            cut = seq.system_blocks(self.config.block_size)
            # the system prefix's precision is the engine's system_tier (set when an agent
            # compresses it), not whichever traffic class computed it first
            smallest = min(sizes[cut:]) if len(sizes) > cut else UNITS_PER_BLOCK
            found = PrefixHits(hits, cost, smallest, sum(sizes[cut:]))
        else:
            found = PrefixHits(hits, 0, UNITS_PER_BLOCK, 0)
        j, keys = len(hits), seq.shared_keys
        limit = (seq.num_tokens - 1) // self.config.block_size
        after = None if j >= limit else keys[j] if j < len(keys) else (seq.seq_id, j)
        if memo is not None and memo.seq is seq:  # asked again: a blocked head, watch at once
            pool.watch = frozenset(select(hits, map(not_, refs))) if 0 in refs else frozenset()
            pool.watch_hit = False
            refs = None
        else:
            pool.watch = frozenset()
        self._hits_memo = PrefixLookup(seq, pool.version, seq.num_tokens, after, found, refs,
                                       pool.evicted_blocks)
        return found

    def _lookup_hits(self, seq: Sequence) -> list[int]:
        pool = self.pool
        get = pool.cached.get
        # at least the last token is always recomputed, so its logits can be sampled
        limit = (seq.num_tokens - 1) // self.config.block_size
        keys = seq.shared_keys
        # Prompts run to thousands of blocks and most of a new one misses: look up in chunks
        # that double (map, not a loop), so a lookup costs about its hits, not the prompt.
        hits: list[int] = []
        end = min(len(keys), limit)
        j, chunk = 0, LOOKUP_CHUNK
        while j < end:
            found = list(map(get, keys[j:min(j + chunk, end)]))
            if None in found:  # the first miss ends the prefix
                hits += found[:found.index(None)]
                return hits
            hits += found
            j += chunk
            chunk *= 2
        # every shared key hit: a preempted request's own blocks may follow
        for j in range(len(keys), limit):
            block = get((seq.seq_id, j))
            if block is None:
                break
            hits.append(block)
        return hits

    def _update(self, scheduled, finished: list[Sequence]) -> int:
        """Advance prefill chunks, sample their tokens, finish requests; return tokens made."""
        now = self.now
        quality = self._quality_cost
        generated = 0
        for seq, n in scheduled:
            start = seq.num_computed
            computed = start + n
            if start < seq.high_water:  # recomputing what a preemption or eviction dropped
                self.stats.recomputed_tokens += min(computed, seq.high_water) - start
            seq.num_computed = computed
            if seq.num_registered < len(seq.shared_keys):
                self._register(seq)
            if computed >= seq.num_tokens:
                seq.num_output += 1
                seq.num_tokens += 1
                generated += 1
                if seq.tier:
                    self.stats.quality_loss += quality[seq.rtype][seq.tier]
                if seq.first_token_s < 0:
                    seq.first_token_s = now
                if seq.num_output >= seq.max_output:
                    finished.append(seq)
        if finished:
            for seq in finished:
                self._finish(seq)
            self.running = [s for s in self.running if s.state == State.RUNNING]
        return generated

    def _register(self, seq: Sequence) -> None:
        """Publish newly completed shareable prompt blocks in the prefix cache."""
        limit = min(len(seq.shared_keys), seq.num_computed // self.config.block_size)
        if limit > seq.num_registered:
            self.pool.cache_many(seq.blocks, seq.shared_keys, seq.num_registered, limit)
            seq.num_registered = limit

    def _preempt(self, seq: Sequence) -> None:
        """vLLM V1 recompute preemption: free the KV into the prefix cache, requeue first."""
        full = seq.num_computed // self.config.block_size
        pool = self.pool
        ref, key = pool.ref, pool.key
        for j, block in enumerate(seq.blocks[:full]):
            if key[block] is None and ref[block] == 1:
                pool.cache(block, (seq.seq_id, j))  # its own blocks stay hit-able until evicted
        pool.free(reversed(seq.blocks))
        seq.blocks = []
        seq.high_water = max(seq.high_water, seq.num_computed)
        seq.num_computed = 0
        seq.num_registered = 0
        seq.num_preemptions += 1
        seq.state = State.WAITING
        self.waiting.appendleft(seq)
        self.stats.preemptions += 1


def _held_within(context: Sequence, hits: list[int]) -> int | None:
    """Where the session context's blocks sit, in order, within a new turn's prefix hits (or
    None). Then admitting the turn and ending the retention would add one reference to each
    and drop it again: handing the context's references over is the same, without the work
    (a context runs to thousands of blocks)."""
    blocks = context.blocks
    if not blocks or context.state != State.RETAINED:
        return None
    try:
        start = hits.index(blocks[0])
    except ValueError:
        return None
    return start if hits[start:start + len(blocks)] == blocks else None
