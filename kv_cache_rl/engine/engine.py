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

Scheduling lives in :mod:`.scheduler`, agent actions (``evict``, ``compress``, ``swap_to_cpu``)
and retention in :mod:`.actions`, the pure-decode fast path in :mod:`.decode_run`.
"""

from __future__ import annotations

import heapq
from collections import deque
from types import MappingProxyType

from kv_cache_rl.engine.config import EngineConfig
from kv_cache_rl.workload.requests import REQUEST_TYPES, Trace, TraceRequest
from kv_cache_rl.engine.actions import ActionsMixin
from kv_cache_rl.engine.block_pool import UNITS_PER_BLOCK, BlockPool
from kv_cache_rl.engine.decode_run import decode_run
from kv_cache_rl.engine.metrics import EngineStats, Timeseries
from kv_cache_rl.engine.retention import RetentionMixin
from kv_cache_rl.engine.scheduler import SchedulerMixin
from kv_cache_rl.engine.sequence import FinishedRequest, Sequence, State


class Engine(SchedulerMixin, ActionsMixin, RetentionMixin):
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
        # per request type, per tier: the chance that a token decoded on that KV is wasted
        # (an expected wrong answer; PrecisionTier.wrong_answer)
        self._quality_cost = tuple(tuple(t.wrong_answer_p(r) for t in profile.tiers)
                                   for r in range(len(REQUEST_TYPES)))
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
        self.finished: list[FinishedRequest] = []  # completed requests, in completion order
        self.stats = EngineStats()
        self.timeseries = Timeseries() if record_timeseries else None
        self._next_arrival = 0
        self._keys_cache: dict[int, list] = {}  # id(TraceRequest) -> prompt block keys
        self._next_seq_id = 0  # per-instance counter: ids are stable and deterministic
        self._stall_s = 0.0
        self.fast_forward = True  # run_until/run batch pure-decode iterations (exact)
        self._decode_run_after = 0  # iteration before which no decode run is attempted
        self._preempted = False
        self._hits_memo = None  # the last prefix lookup (see SchedulerMixin._prefix_hits)
        self._expiry: list[tuple[float, int]] = []  # (expires_s, seq_id) heap of retained KV
        self._session_context: dict[int, Sequence] = {}
        self._system: Sequence | None = None
        # closed loop: id(request) -> the trace indices its finish releases (immutable, shared
        # by clones), and a heap of (release time, trace index) released but not yet arrived
        children: dict[int, list[int]] = {}
        if config.closed_loop:
            requests = trace.requests
            for i, req in enumerate(requests):
                if req.after >= 0:
                    children.setdefault(id(requests[req.after]), []).append(i)
        self._children = MappingProxyType({k: tuple(v) for k, v in children.items()})
        self._released: list[tuple[float, int]] = []
        self._memory_blocked = False  # this iteration, work waited for KV memory
        self.system_tier = 0  # precision of the shared system prompt (an agent may compress it)

    # ---- time ---------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return (self._next_arrival >= len(self.trace.requests) and not self.waiting
                and not self.running and not self.swapped and not self._released)

    def next_event_s(self) -> float | None:
        """When something happens if the engine is idle: an arrival or a retention expiry."""
        times = []
        if self._next_arrival < len(self.trace.requests):
            times.append(self.trace.requests[self._next_arrival].arrival_s)
        if self._expiry:
            times.append(self._expiry[0][0])
        if self._released:
            times.append(self._released[0][0])
        return min(times) if times else None

    def run_until(self, t_end: float) -> None:
        """Iterate until ``now >= t_end`` (idling through gaps) or the trace is served."""
        while self.now < t_end:
            if self._advance(t_end) == 0.0:
                nxt = self.next_event_s()
                self._idle_until(t_end if nxt is None else min(max(nxt, self.now), t_end))

    def run(self) -> None:
        """Serve the whole trace."""
        while True:
            if self._advance(float("inf")) == 0.0:
                nxt = self.next_event_s()
                if nxt is None:
                    return
                self._idle_until(max(nxt, self.now))

    def _idle_until(self, t: float) -> None:
        if t > self.now:
            if self.waiting or self.swapped:  # work waits and nothing runs: pinned KV holds it
                self.stats.memory_blocked_s += t - self.now
            self.stats.observe(t - self.now, self.pool.usage, len(self.running), len(self.waiting))
            if self.timeseries is not None:
                self.timeseries.record(self, t, 0, 0)
            self.now = t

    # ---- one iteration ------------------------------------------------------------------
    def _advance(self, until: float) -> float:
        """One iteration, or a run of pure-decode iterations at once (see :mod:`.decode_run`)."""
        if self.fast_forward and self.running and self.iterations >= self._decode_run_after:
            self._arrive()
            if self._expiry and self._expiry[0][0] <= self.now:
                self._expire()
            dt = decode_run(self, until)
            if dt:
                return dt
        return self.step()

    def decode_room(self) -> int:
        """Units a run of pure-decode iterations may reserve with no waiting request joining
        the batch (0: one can join now, so iterate normally).

        FCFS admission stops at the queue head. While decodes only take space, a head that does
        not fit still does not, unless taking space evicts its own prefix hits from the cache:
        with unreferenced (evictable) hits, the run may only use truly free space.
        """
        pool = self.pool
        budget = self.config.max_num_batched_tokens - len(self.running)
        self._memory_blocked = False
        if not self.waiting or len(self.running) >= self.config.max_num_seqs or budget <= 0:
            return pool.allocatable_units
        head = self.waiting[0]
        if head.session_id >= 0:
            context = self._session_context.get(head.session_id)
            if context is not None and context.state == State.SWAPPED:
                return 0  # admission would start bringing the context back
        _, hit_cost, _, need, tier, _ = self._admission(head, budget)
        if need * (UNITS_PER_BLOCK >> tier) + hit_cost <= pool.allocatable_units:
            return 0
        self._memory_blocked = True  # the head waits for KV memory while the run decodes
        return pool.free_units if hit_cost else pool.allocatable_units

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
            scheduled, chunks, num_decodes, kv_sum, finished = self._schedule()
            if scheduled or num_decodes or self._stall_s > 0.0:
                break
            if self._preempted:
                # every running request was preempted, the oldest too: even alone it cannot
                # grow past the pinned KV, and readmitting it as is would recompute its first
                # chunk and preempt it again forever; retention gives way first
                self._reclaim_pinned()
                continue  # admit again at once
            if self._reclaim_pinned():
                continue  # a stall: pinned KV gave way to the queue head
            if self.next_event_s() is not None:
                return 0.0
            self._reject_head()  # nothing will ever free room for it
        dt = self._stall_s
        if scheduled or num_decodes:
            dt += self._iteration_time_s(chunks, num_decodes, kv_sum)
        self._stall_s = 0.0
        if self._memory_blocked:
            self.stats.memory_blocked_s += dt
        self.stats.observe(dt, self.pool.usage, len(self.running), len(self.waiting))
        self.now += dt
        self.iterations += 1
        prompt_toks = sum(c[0] for c in chunks)
        generated = num_decodes + self._update(scheduled, finished)
        self.stats.prompt_tokens += prompt_toks
        self.stats.generated_tokens += generated
        if self.timeseries is not None:
            self.timeseries.record(self, self.now, prompt_toks, generated)
        return dt

    def _arrive(self) -> None:
        requests = self.trace.requests
        i = self._next_arrival
        now = self.now
        due: list[tuple[float, int]] = []
        held = self._children  # closed loop: requests with a parent wait for its release
        while i < len(requests) and requests[i].arrival_s <= now:
            if not (held and requests[i].after >= 0):
                due.append((requests[i].arrival_s, i))
            i += 1
        self._next_arrival = i
        released = self._released
        if released and released[0][0] <= now:
            while released and released[0][0] <= now:
                due.append(heapq.heappop(released))
            due.sort()  # FCFS across both sources
        limit = min(self.config.max_model_len, self.config.num_gpu_tokens)
        for arrival_s, j in due:
            req = requests[j]
            if req.input_toks + req.output_toks > limit:
                # vLLM rejects a request that can never fit (longer than max_model_len / cache)
                self.stats.rejected += 1
                continue
            self.waiting.append(self._new_sequence(req, arrival_s))

    def release_children(self, seq: Sequence) -> None:
        """Closed loop: a finished request releases its session's next turn (and sub-agent
        calls) their pause after now."""
        children = self._children.get(id(seq.req))
        if children:
            requests = self.trace.requests
            for j in children:
                heapq.heappush(self._released, (self.now + requests[j].after_s, j))

    def _new_sequence(self, req: TraceRequest, arrival_s: float | None = None) -> Sequence:
        seq = Sequence(self._next_seq_id, req, "generation", req.input_toks, req.output_toks,
                       req.arrival_s if arrival_s is None else arrival_s)
        seq.tier = self.config.default_tiers[seq.rtype]
        self._next_seq_id += 1
        if req.hash_ids and self.config.enable_prefix_caching:
            keys = self._keys_cache.get(id(req))
            if keys is None:  # derived from the immutable trace: shared by every clone
                keys = self._keys_cache[id(req)] = self._shared_keys(req)
            seq.shared_keys = keys
        self.live[seq.seq_id] = seq
        return seq

    def derive_prefix_keys(self) -> None:
        """Derive the prefix-cache keys of every request still to arrive now rather than on
        arrival (a scenario does it once; the episodes cloned from it share them)."""
        if not self.config.enable_prefix_caching:
            return
        for req in self.trace.requests[self._next_arrival:]:
            if req.hash_ids and id(req) not in self._keys_cache:
                self._keys_cache[id(req)] = self._shared_keys(req)

    def _shared_keys(self, req: TraceRequest) -> tuple[int, ...]:
        """Cache keys of the prompt's full blocks that hash ids cover.

        A hash id covers ``hash_block_tokens`` (``hbt``) tokens and, like vLLM's block hashes,
        names the whole prefix up to its end. Block ``j`` is named by the id covering its last
        token and where in that id's span the block ends: equal keys mean an equal prefix,
        whether one id spans several blocks or one block spans several ids.
        """
        bs = self.config.block_size
        hbt = self.trace.hash_block_tokens
        ids = req.hash_ids
        n_full = min(req.input_toks, len(ids) * hbt) // bs
        if hbt % bs == 0:  # every id spans whole blocks (16: generated, 512: Mooncake): per id
            offsets = range(bs - 1, hbt, bs)
            keys = [i * hbt + o for i in ids[:-(-n_full * bs // hbt)] for o in offsets]
            del keys[n_full:]
            return tuple(keys)  # immutable: sequences and engine clones share it
        return tuple(ids[e // hbt] * hbt + e % hbt for e in range(bs - 1, n_full * bs, bs))

    def _reclaim_pinned(self) -> bool:
        """Nothing runs and the queue head does not fit: release the least recently used
        retained KV (the system prefix last). Retention is best-effort, as in Dynamo's
        priority eviction; a server never idles on pinned memory with work waiting (queued,
        or swapped out and unable to come back)."""
        if not (self.waiting or self.swapped):
            return False
        holders = [s for s in self.live.values()
                   if s.state in (State.RETAINED, State.SWAPPED) and s.kind != "generation"]
        if not holders:
            return False
        victim = min(holders, key=lambda s: (s.kind == "system", s.last_active_s, s.seq_id))
        self._release(victim)
        self.stats.forced_releases += 1
        return True

    def _reject_head(self) -> None:
        """Drop a queue head that can never be admitted (pinned KV fills the pool for good)."""
        if self.waiting:
            seq = self.waiting.popleft()
        else:  # a swapped-out request that pinned KV keeps from ever coming back
            seq = self.swapped.popleft()
            self._drop_kv(seq)
        self.stats.rejected += 1
        seq.state = State.FINISHED
        self.live.pop(seq.seq_id, None)
