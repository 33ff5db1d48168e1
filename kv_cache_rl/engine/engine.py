"""An iteration-level serving engine that schedules like vLLM V1.

Each call to :meth:`Engine.step` is one engine iteration (one forward pass):

1. arrivals up to ``now`` join the FCFS waiting queue; retained KV past its TTL is released;
2. running requests are scheduled in order, each with the tokens it still needs (1 for a decode,
   the rest of its prompt for a chunked prefill), under the ``max_num_batched_tokens`` budget;
   when one cannot get a block, the most recently admitted running request is preempted by
   recompute (blocks freed into the prefix cache, back to the front of the waiting queue);
3. if nothing was preempted, swapped-out requests come back, then waiting requests are admitted
   in FCFS order (prefix-cache hits first, then a prefill chunk) while the budget,
   ``max_num_seqs`` and free blocks allow; the queue head blocks everyone behind it;
4. the iteration lasts what the calibrated cost model says for that batch, plus any host-link
   stall from swaps; every request whose computed tokens reach its length samples one token.

Agent actions (``evict``, ``compress``, ``swap_to_cpu``) live in :mod:`.actions`.
"""

from __future__ import annotations

import heapq
from collections import deque

from kv_cache_rl.config import EngineConfig, Trace, TraceRequest
from kv_cache_rl.engine.actions import ActionsMixin
from kv_cache_rl.engine.block_pool import UNITS_PER_BLOCK, Block, BlockPool
from kv_cache_rl.engine.metrics import EngineStats, Timeseries
from kv_cache_rl.engine.sequence import Sequence, State


class Engine(ActionsMixin):
    """Serve ``trace`` on one GPU described by ``profile`` under ``config``.

    The constructor only builds state; nothing runs until :meth:`step` / :meth:`run_until`.
    """

    def __init__(self, config: EngineConfig, profile, trace: Trace, *,
                 record_timeseries: bool = False) -> None:
        self.config = config
        self.profile = profile
        self.trace = trace
        self._iteration_time_s = profile.cost.iteration_time_s
        self._attention_factor = tuple(t.attention_factor for t in profile.tiers)
        self._quality_cost = tuple(t.quality_cost for t in profile.tiers)
        # bytes of one pool unit (a quarter of an fp16 block), for host-link transfer times
        self.unit_bytes = profile.model.kv_bytes_per_token * config.block_size // UNITS_PER_BLOCK
        self.pool = BlockPool(config.num_gpu_blocks, enable_caching=config.enable_prefix_caching)
        self.cpu_total_units = config.num_cpu_blocks * UNITS_PER_BLOCK
        self.cpu_free_units = self.cpu_total_units
        self.now = 0.0
        self.iterations = 0
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.swapped: deque[Sequence] = deque()  # preempted-by-swap requests, FIFO
        self.live: dict[int, Sequence] = {}  # every sequence holding or awaiting KV
        self.finished: list[Sequence] = []  # completed requests, in completion order
        self.stats = EngineStats()
        self.timeseries = Timeseries() if record_timeseries else None
        self._next_arrival = 0
        self._next_seq_id = 0  # per-instance counter: ids are stable and deterministic
        self._stall_s = 0.0
        self._preempted = False
        self._expiry: list[tuple[float, int]] = []  # (expires_s, seq_id) heap of retained KV
        self._session_context: dict[int, Sequence] = {}
        self._system: Sequence | None = None

    # ---- time ---------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return (self._next_arrival >= len(self.trace.requests) and not self.waiting
                and not self.running and not self.swapped)

    def next_event_s(self) -> float | None:
        """When something happens if the engine is idle: an arrival or a retention expiry."""
        times = []
        if self._next_arrival < len(self.trace.requests):
            times.append(self.trace.requests[self._next_arrival].arrival_s)
        if self._expiry:
            times.append(self._expiry[0][0])
        return min(times) if times else None

    def run_until(self, t_end: float) -> None:
        """Iterate until ``now >= t_end`` (idling through gaps) or the trace is served."""
        while self.now < t_end:
            if self.step() == 0.0:
                nxt = self.next_event_s()
                self._idle_until(t_end if nxt is None else min(max(nxt, self.now), t_end))

    def run(self) -> None:
        """Serve the whole trace."""
        while True:
            if self.step() == 0.0:
                nxt = self.next_event_s()
                if nxt is None:
                    return
                self._idle_until(max(nxt, self.now))

    def _idle_until(self, t: float) -> None:
        if t > self.now:
            self.stats.observe(t - self.now, self.pool.usage, len(self.running), len(self.waiting))
            if self.timeseries is not None:
                self.timeseries.record(self, t, 0, 0)
            self.now = t

    # ---- one iteration ------------------------------------------------------------------
    def step(self) -> float:
        """Run one iteration and return its duration.

        0.0 means nothing can run before the next event (:meth:`next_event_s`): the engine is
        idle, or the queue head waits for pinned KV to be released.
        """
        self._arrive()
        if self._expiry and self._expiry[0][0] <= self.now:
            self._expire()
        while True:
            if not (self.running or self.waiting or self.swapped):
                return 0.0
            scheduled, chunks, num_decodes, kv_sum = self._schedule()
            if scheduled or self._stall_s > 0.0:
                break
            if self._preempted:
                continue  # every running request was preempted: admit again at once
            if self.next_event_s() is not None:
                return 0.0
            self._reject_head()  # nothing will ever free room for it
        dt = self._stall_s
        if scheduled:
            dt += self._iteration_time_s(chunks, num_decodes, kv_sum)
        self._stall_s = 0.0
        self.stats.observe(dt, self.pool.usage, len(self.running), len(self.waiting))
        self.now += dt
        self.iterations += 1
        prompt_toks = sum(c[0] for c in chunks)
        generated = self._update(scheduled)
        self.stats.prompt_tokens += prompt_toks
        self.stats.generated_tokens += generated
        if self.timeseries is not None:
            self.timeseries.record(self, self.now, prompt_toks, generated)
        return dt

    def _arrive(self) -> None:
        requests = self.trace.requests
        i = self._next_arrival
        now = self.now
        limit = min(self.config.max_model_len, self.config.num_gpu_tokens)
        while i < len(requests) and requests[i].arrival_s <= now:
            req = requests[i]
            i += 1
            if req.input_toks + req.output_toks > limit:
                # vLLM rejects a request that can never fit (longer than max_model_len / cache)
                self.stats.rejected += 1
                continue
            self.waiting.append(self._new_sequence(req))
        self._next_arrival = i

    def _new_sequence(self, req: TraceRequest) -> Sequence:
        seq = Sequence(self._next_seq_id, req, "ephemeral" if req.ephemeral else "generation",
                       req.input_toks, req.output_toks, req.arrival_s)
        self._next_seq_id += 1
        if req.hash_ids and self.config.enable_prefix_caching:
            seq.shared_keys = self._shared_keys(req)
        self.live[seq.seq_id] = seq
        return seq

    def _shared_keys(self, req: TraceRequest) -> list[int]:
        """Cache keys of the prompt's full blocks that a hash id covers.

        A hash id covers ``hash_block_tokens`` tokens, i.e. ``per`` engine blocks; block ``j``
        under hash id ``h`` gets key ``h * per + j % per``: equal ids give equal keys.
        """
        bs = self.config.block_size
        per = max(1, self.trace.hash_block_tokens // bs)
        n_full = min(req.input_toks // bs, len(req.hash_ids) * per)
        ids = req.hash_ids
        return [ids[j // per] * per + j % per for j in range(n_full)]

    def _schedule(self):
        bs = self.config.block_size
        pool = self.pool
        running = self.running
        attention = self._attention_factor
        budget = self.config.max_num_batched_tokens
        scheduled: list[tuple[Sequence, int]] = []
        chunks: list[tuple[int, int]] = []
        num_decodes = 0
        kv_sum = 0.0
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            computed = seq.num_computed
            n = seq.prompt_len + seq.num_output - computed
            if n > budget:
                n = budget
            need = (computed + n + bs - 1) // bs - len(seq.blocks)
            if need > 0:
                units = UNITS_PER_BLOCK >> seq.tier
                while not pool.reserve(need * units):
                    victim = running.pop()
                    self._preempt(victim)
                    preempted = True
                    if victim is seq:
                        break
                else:
                    seq.blocks.extend([Block(units) for _ in range(need)])
                if seq.state != State.RUNNING:
                    break
            scheduled.append((seq, n))
            if n == 1 and seq.num_output:
                num_decodes += 1
                kv_sum += (computed + 1) * attention[seq.tier]
            else:
                chunks.append((n, computed))
            budget -= n
            i += 1
        self._preempted = preempted
        if not preempted:
            if self.swapped:
                self._swap_in_requests()
            if self.waiting and budget > 0:
                budget = self._admit(scheduled, chunks, budget)
        return scheduled, chunks, num_decodes, kv_sum

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
                    break  # its context is coming back from host memory first
            hits = self._prefix_hits(seq)
            computed = len(hits) * bs
            n = min(seq.num_tokens - computed, budget)
            need = (computed + n + bs - 1) // bs - len(hits)
            units = UNITS_PER_BLOCK >> seq.tier
            if need * units + pool.hit_cost_units(hits) > pool.allocatable_units:
                break
            for block in hits:
                pool.touch(block)
                if block.units < units:  # a quantized shared prefix lowers this request's tier
                    seq.tier = max(seq.tier, 3 - block.units.bit_length())
            pool.reserve(need * units)
            seq.blocks = hits + [Block(units) for _ in range(need)]
            seq.num_computed = computed
            seq.num_registered = min(len(hits), len(seq.shared_keys))
            seq.state = State.RUNNING
            waiting.popleft()
            running.append(seq)
            if context is not None:
                self._release(context)  # the new turn now holds the context's blocks
            scheduled.append((seq, n))
            chunks.append((n, computed))
            budget -= n
        return budget

    def _prefix_hits(self, seq: Sequence) -> list[Block]:
        """Longest run of cached full blocks at the start of ``seq`` (vLLM get_computed_blocks)."""
        if not self.config.enable_prefix_caching or not (seq.shared_keys or seq.num_preemptions):
            return []
        lookup = self.pool.lookup
        keys = seq.shared_keys
        hits = []
        # at least the last token is always recomputed, so its logits can be sampled
        for j in range((seq.num_tokens - 1) // self.config.block_size):
            block = lookup(keys[j] if j < len(keys) else (seq.seq_id, j))
            if block is None:
                break
            hits.append(block)
        return hits

    def _update(self, scheduled) -> int:
        """Advance computed tokens, sample tokens, finish requests; return tokens generated."""
        now = self.now
        quality = self._quality_cost
        generated = 0
        any_finished = False
        for seq, n in scheduled:
            computed = seq.num_computed + n
            if computed <= seq.high_water:
                self.stats.recomputed_tokens += n
            elif seq.num_computed < seq.high_water:
                self.stats.recomputed_tokens += seq.high_water - seq.num_computed
            seq.num_computed = computed
            if computed > seq.high_water:
                seq.high_water = computed
            seq.last_active_s = now
            if seq.num_registered < len(seq.shared_keys):
                self._register(seq)
            if computed >= seq.prompt_len + seq.num_output:
                seq.num_output += 1
                generated += 1
                if seq.tier:
                    self.stats.quality_loss += quality[seq.tier]
                if seq.first_token_s < 0:
                    seq.first_token_s = now
                if seq.num_output >= seq.max_output:
                    self._finish(seq)
                    any_finished = True
        if any_finished:
            self.running = [s for s in self.running if s.state == State.RUNNING]
        return generated

    def _register(self, seq: Sequence) -> None:
        """Publish newly completed shareable prompt blocks in the prefix cache."""
        limit = min(len(seq.shared_keys), seq.num_computed // self.config.block_size)
        cache, blocks, keys = self.pool.cache, seq.blocks, seq.shared_keys
        for j in range(seq.num_registered, limit):
            cache(blocks[j], keys[j])
        seq.num_registered = max(seq.num_registered, limit)

    def _preempt(self, seq: Sequence) -> None:
        """vLLM V1 recompute preemption: free the KV into the prefix cache, requeue first."""
        full = seq.num_computed // self.config.block_size
        cache = self.pool.cache
        for j, block in enumerate(seq.blocks[:full]):
            if block.hash is None and block.ref == 1:
                cache(block, (seq.seq_id, j))  # its own blocks stay hit-able until evicted
        self.pool.free(reversed(seq.blocks))
        seq.blocks = []
        seq.num_computed = 0
        seq.num_registered = 0
        seq.num_preemptions += 1
        seq.state = State.WAITING
        self.waiting.appendleft(seq)
        self.stats.preemptions += 1

    def _reject_head(self) -> None:
        """Drop a queue head that can never be admitted (pinned KV fills the pool for good)."""
        seq = self.waiting.popleft()
        self.stats.rejected += 1
        seq.state = State.FINISHED
        self.live.pop(seq.seq_id, None)
