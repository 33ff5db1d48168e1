"""Shared fixtures for the engine tests: a stand-in hardware profile, random traces, and a
driver that steps an engine to completion while checking its invariants after every step.

The real cost model (``kv_cache_rl.profiles``) is not needed here: the engine only calls
``profile.cost.iteration_time_s`` and reads ``profile.tiers``, ``profile.model`` and
``profile.gpu``.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from kv_cache_rl.config import EngineConfig, GPUSpec, ModelSpec, PrecisionTier, Trace, TraceRequest
from kv_cache_rl.engine import KINDS, ActionError, Engine, State

# ---- stand-in profile ------------------------------------------------------------------------

LLAMA_8B = ModelSpec(name="Llama-3.1-8B", num_layers=32, hidden_size=4096, num_attention_heads=32,
                     num_kv_heads=8, head_dim=128, intermediate_size=14336, vocab_size=128256,
                     num_params=8_030_261_248)
TEST_GPU = GPUSpec(name="test", memory_bytes=96 << 30, pcie_gbps=50)
TIERS = (
    PrecisionTier(name="fp16", bytes_factor=1.0, quality_cost=0.0, attention_factor=1.0),
    PrecisionTier(name="int8", bytes_factor=0.5, quality_cost=0.01, attention_factor=0.8),
    PrecisionTier(name="int4", bytes_factor=0.25, quality_cost=0.04, attention_factor=0.8),
)


class StandInCost:
    """A linear-ish iteration time: fixed overhead, per token, per decode KV token, causal."""

    def iteration_time_s(self, prefill_chunks, num_decodes: int, decode_kv_sum: float) -> float:
        tokens = num_decodes
        causal = 0.0
        for n, computed in prefill_chunks:
            tokens += n
            causal += n * (computed + n / 2)
        return 0.01 + 2e-6 * tokens + 1e-9 * decode_kv_sum + 1e-10 * causal


@dataclass(frozen=True, eq=False)
class StandInProfile:
    cost: StandInCost
    tiers: tuple
    model: ModelSpec
    gpu: GPUSpec


PROFILE = StandInProfile(cost=StandInCost(), tiers=TIERS, model=LLAMA_8B, gpu=TEST_GPU)


@pytest.fixture(scope="session")
def profile() -> StandInProfile:
    return PROFILE


# ---- traces ----------------------------------------------------------------------------------


def build_trace(rows, *, hash_block_tokens: int = 16, system_toks: int = 0) -> Trace:
    """A trace from ``(gap_s, input, output, chain, shared, session, reasoning, ephemeral)``
    rows (hypothesis draws them). ``chain`` >= 0 shares the first ``shared`` full blocks of a
    common prefix chain; ``session`` >= 0 makes the row a turn of that session, whose prompt
    extends the session's previous turn and starts with the shared system prompt."""
    hbt = hash_block_tokens
    system_ids = [900_000 + j for j in range(system_toks // hbt)]
    sessions: dict[int, list[int]] = {}
    next_id = 10**6
    t = 0.0
    reqs = []
    for i, (gap, inp, out, chain, shared, session, reasoning, ephemeral) in enumerate(rows):
        t += gap
        fields: dict = {}
        if session >= 0:
            prev = sessions.get(session, system_ids)
            inp = max(inp, system_toks, len(prev) * hbt + 1)
            n_full = inp // hbt
            ids = list(prev[:n_full]) + list(range(next_id, next_id + n_full - len(prev)))
            next_id += n_full
            sessions[session] = ids
            fields.update(session_id=session, system_toks=system_toks, hash_ids=tuple(ids),
                          reasoning_toks=min(reasoning, out), ephemeral=ephemeral)
        elif chain >= 0:
            n_full = inp // hbt
            k = min(shared, n_full)
            ids = [1000 * (chain + 1) + j for j in range(k)]
            ids += range(next_id, next_id + n_full - k)
            next_id += n_full
            fields["hash_ids"] = tuple(ids)
        reqs.append(TraceRequest(round(t, 6), inp, out, request_id=f"r{i}", **fields))
    return Trace(tuple(reqs), hash_block_tokens=hbt, source="hypothesis")


def random_trace(seed: int, n: int = 20, *, max_input: int = 600, max_output: int = 64,
                 rate: float = 20.0, shared_prefix: bool = False, hash_block_tokens: int = 16,
                 sessions: int = 0, system_toks: int = 0, reasoning: bool = False,
                 ephemeral: bool = False, min_input: int = 1) -> Trace:
    """``n`` requests with Poisson arrivals at ``rate``/s and uniform lengths.

    ``shared_prefix``: prompts draw hash ids from a few shared prefix chains, so equal ids mean
    an equal leading run of ``hash_block_tokens``-token blocks (one id per full block).
    ``sessions``: requests are spread over that many sessions; a session's turns extend each
    other's prompts (same hash ids first, then new ones), start with ``system_toks`` shared
    tokens, and may carry reasoning tokens and ephemeral sub-agent turns.
    """
    rng = random.Random(seed)
    t = 0.0
    chains = [[1000 * (c + 1) + j for j in range(64)] for c in range(3)]
    system_ids = [900_000 + j for j in range(system_toks // hash_block_tokens)]
    session_ids: dict[int, list[int]] = {}
    next_id = 10**6
    reqs = []
    for i in range(n):
        t += rng.expovariate(rate)
        inp = rng.randint(min_input, max_input)
        out = rng.randint(1, max_output)
        fields: dict = {}
        n_full = inp // hash_block_tokens
        if sessions:
            sid = rng.randrange(sessions)
            prev = session_ids.get(sid, system_ids)  # every session shares the system ids
            inp = max(inp, system_toks, len(prev) * hash_block_tokens + 1)
            n_full = inp // hash_block_tokens
            ids = list(prev[:n_full])
            while len(ids) < n_full:
                ids.append(next_id)
                next_id += 1
            session_ids[sid] = ids
            fields.update(session_id=sid, system_toks=system_toks,
                          hash_ids=tuple(ids), next_turn_s=1.0)
            if reasoning and rng.random() < 0.5:
                fields["reasoning_toks"] = rng.randint(1, out)
            if ephemeral and rng.random() < 0.25:
                fields["ephemeral"] = True
        elif shared_prefix and n_full:
            chain = chains[rng.randrange(len(chains))]
            k = rng.randint(0, min(n_full, len(chain)))
            ids = chain[:k] + [next_id + j for j in range(n_full - k)]
            next_id += n_full
            fields["hash_ids"] = tuple(ids)
        reqs.append(TraceRequest(round(t, 6), inp, out, request_id=f"r{i}", **fields))
    return Trace(tuple(reqs), hash_block_tokens=hash_block_tokens, source=f"random:{seed}")


@pytest.fixture(scope="session")
def make_trace():
    return random_trace


CHAT_SYSTEM_IDS = [0, 1]  # every prompt of the chat trace opens with the same 2 blocks


def chat_trace_rows(sessions: int = 260, duration_s: float = 300.0) -> list[dict]:
    """A Mooncake-like chat load in the JSONL format (one hash id per 16 tokens): sessions of
    1-4 turns, each turn's prompt the previous prompt, its answer and a new message, so the
    hash ids of a turn start with all of the previous turn's. About 2.5 req/s of 1.5-6k-token
    prompts: enough to fill a hard tier's KV budget."""
    import numpy as np

    rng = np.random.default_rng(7)
    rows, next_id = [], 10
    for start in np.sort(rng.uniform(0.0, duration_s, sessions)):
        ids, t = list(CHAT_SYSTEM_IDS), float(start)
        for _ in range(int(rng.integers(1, 5))):
            new = int(rng.integers(80, 250))  # blocks: the new message (and the last answer)
            ids += range(next_id, next_id + new)
            next_id += new
            rows.append({"arrival_s": round(t, 4), "input_toks": 16 * len(ids),
                         "output_toks": int(rng.integers(16, 200)), "hash_ids": list(ids)})
            t += float(rng.uniform(5.0, 40.0))
    return sorted(rows, key=lambda r: r["arrival_s"])


@pytest.fixture(scope="session")
def chat_trace(tmp_path_factory):
    """:func:`chat_trace_rows` written to a JSONL file: a raw trace to cut episodes from."""
    import json

    path = tmp_path_factory.mktemp("raw") / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_trace_rows()))
    return path


# ---- invariants --------------------------------------------------------------------------------


def snapshot(engine: Engine, *, identity: bool = True) -> tuple:
    """Everything an action could change, as plain values (to compare before/after).
    ``identity=False`` leaves out which block objects are held (to compare with a clone)."""
    pool = engine.pool
    seqs = tuple(sorted(
        (s.seq_id, s.kind, int(s.state), s.num_computed, s.num_output, s.tier, s.cpu_units,
         tuple((b if identity else 0, pool.ref[b], pool.units[b], pool.key[b]) for b in s.blocks),
         s.high_water, s.evicted)
        for s in engine.live.values()))
    return (pool.free_units, pool.evictable_units, pool.used_units, tuple(pool.cached),
            tuple(pool._evictable), engine.cpu_free_units, seqs,
            tuple(s.seq_id for s in engine.running), tuple(s.seq_id for s in engine.waiting),
            tuple(s.seq_id for s in engine.swapped), engine._stall_s,
            tuple(sorted(engine._session_context)),
            None if engine._system is None else engine._system.seq_id,
            engine.stats.evicted_active, engine.stats.swap_latency_s, engine.stats.swap_out_bytes)


def check_invariants(engine: Engine) -> None:
    """The engine's conservation and bookkeeping invariants; raises AssertionError."""
    pool, cfg = engine.pool, engine.config
    bs = cfg.block_size
    pool.check()
    assert pool.free_units + pool.evictable_units + pool.used_units == pool.total_units
    assert 0 <= pool.used_units <= pool.total_units
    assert 0 <= pool.free_units and 0 <= pool.evictable_units
    assert pool.total_units == cfg.num_gpu_blocks * 4

    running, waiting, swapped = engine.running, list(engine.waiting), list(engine.swapped)
    ids = [s.seq_id for s in running + waiting + swapped]
    assert len(ids) == len(set(ids)), "a sequence is queued twice"
    assert len(running) <= cfg.max_num_seqs
    for s in running:
        assert s.state == State.RUNNING and engine.live.get(s.seq_id) is s
    for s in waiting:
        assert s.state == State.WAITING and engine.live.get(s.seq_id) is s
        assert s.blocks == [] and s.num_computed == 0
    for s in swapped:
        assert s.state == State.SWAPPED and s.swapped_from == State.RUNNING
        assert engine.live.get(s.seq_id) is s
    queued = set(ids)

    held: list = []  # GPU blocks referenced by live sequences, once per reference
    host_held: list = []  # blocks whose KV is in host memory
    cpu_used = 0
    retained_states = (State.RETAINED, State.SWAPPED)
    for sid, s in engine.live.items():
        state = s.state
        assert s.seq_id == sid and s.kind in KINDS
        if s.max_output == 0:  # a retained holder (on the GPU or swapped out)
            assert state in retained_states and s.kind != "generation"
            assert sid not in queued
            if state == State.RETAINED:
                assert s.blocks and s.num_kv_tokens == len(s.blocks) * bs
            else:
                assert s.swapped_from == State.RETAINED
        else:  # a request
            assert s.req is not None and sid in queued
            assert state in (State.WAITING, State.RUNNING, State.SWAPPED)
            assert s.num_tokens == s.prompt_len + s.num_output
            assert 0 <= s.num_output < s.max_output
            assert s.num_computed <= s.num_tokens - 1 or s.num_computed == 0
            if state != State.WAITING:
                assert len(s.blocks) == -(-s.num_computed // bs), s
                # blocks still to be published hold no key (BlockPool.cache_many relies on it)
                start, stop = s.num_registered, min(len(s.shared_keys), len(s.blocks))
                assert all(pool.key[b] is None for b in s.blocks[start:stop]), s
        if state == State.SWAPPED:
            moved = [b for b in s.blocks if pool.ref[b] == 0]
            assert moved and s.cpu_units == sum(pool.units[b] for b in moved)
            assert all(pool.key[b] is None for b in moved)
            cpu_used += s.cpu_units
            host_held += moved
            held += [b for b in s.blocks if pool.ref[b]]
        else:
            assert s.cpu_units == 0
            held += s.blocks
    # every referenced block is held by live sequences exactly ``ref`` times (so none of them
    # is free), and they are all the used space: no leak, no double count
    counts = Counter(held)
    wrong = [(pool.describe(b), n) for b, n in counts.items() if pool.ref[b] != n]
    assert not wrong, f"blocks held a different number of times than referenced: {wrong[:3]}"
    assert {pool.units[b] for b in counts} <= {1, 2, 4}
    assert sum(pool.units[b] for b in counts) == pool.used_units
    evictable = set(pool._evictable.values())
    assert counts.keys().isdisjoint(evictable)
    for key, b in pool._evictable.items():
        assert pool.ref[b] == 0 and pool.key[b] == key and pool.cached.get(key) == b
    for key, b in pool.cached.items():
        assert pool.ref[b] > 0 or key in pool._evictable
    # every block id is exactly one of: referenced, in host memory, evictable, spare (no leak)
    host, spare = set(host_held), set(pool.spare)
    assert len(host) == len(host_held), "a host block is held twice"
    groups = (set(counts), host, evictable, spare)
    assert sum(map(len, groups)) == len(pool.ref) == len(set().union(*groups)), \
        "a block id leaked or is in two places at once"
    assert cpu_used == engine.cpu_total_units - engine.cpu_free_units
    assert 0 <= engine.cpu_free_units <= engine.cpu_total_units
    # retained holders
    if engine._system is not None:
        assert engine._system.kind == "system" and engine._system.seq_id in engine.live
    for sid, ctx in engine._session_context.items():
        assert ctx.kind == "context" and ctx.session_id == sid and ctx.seq_id in engine.live


class Tracker:
    """Steps an engine, checks invariants after every step and keeps the accounting the
    engine's own counters must agree with."""

    def __init__(self, engine: Engine, *, fast: bool = False) -> None:
        self.engine = engine
        # fast: advance like run()/run_until() do, a run of pure decodes at once when possible
        self.fast = fast and hasattr(engine, "_advance")
        self.seen: dict[int, object] = {}  # request sequences (generation/ephemeral) by id
        self.max_output: dict[int, int] = {}
        self.computed = 0  # tokens the cost model was asked to compute (chunks + decodes)
        self.prefill_tokens = 0
        self.lost = 0  # computed tokens dropped by preemption or eviction
        self.new_hits = 0  # prefix-hit tokens a sequence had never computed itself
        self.steps = 0
        self.batches: list[tuple[tuple, int]] = []  # (prefill chunks, decodes) per iteration
        self._pending_hits: dict[int, tuple] = {}
        self._finished_seen = 0
        bs = engine.config.block_size
        budget = engine.config.max_num_batched_tokens
        max_seqs = engine.config.max_num_seqs
        orig_time = engine._iteration_time_s
        orig_hits = engine._prefix_hits

        def timed(chunks, num_decodes, kv_sum):
            tokens = sum(n for n, _ in chunks)
            assert all(n >= 1 and c >= 0 for n, c in chunks)
            assert tokens + num_decodes <= budget, "token budget exceeded"
            assert len(chunks) + num_decodes <= max_seqs
            self.computed += tokens + num_decodes
            self.batches.append((tuple(chunks), num_decodes))
            self.prefill_tokens += tokens
            return orig_time(chunks, num_decodes, kv_sum)

        def hits(seq):
            result = orig_hits(seq)  # (hits, their touch's units, smallest's units, units past prefix)
            found = result[0]
            assert found == engine._lookup_hits(seq), "stale prefix hits"
            assert result[1] == engine.pool.hit_cost_units(found), "stale hit cost"
            assert result[2] == min((engine.pool.units[b] for b in found), default=4), \
                "stale hit size"
            cut = seq.system_blocks(bs)
            assert result[3] == sum(engine.pool.units[b] for b in found[cut:]), "stale hit units"
            self._pending_hits[seq.seq_id] = (seq, len(found) * bs, seq.high_water)
            return result

        engine._iteration_time_s = timed
        engine._prefix_hits = hits
        self._observe()

    def _observe(self) -> None:
        for s in self.engine.finished[self._finished_seen:]:  # some finish in their first step
            self.seen.setdefault(s.seq_id, s)
        self._finished_seen = len(self.engine.finished)
        for s in self.engine.live.values():
            if s.max_output > 0:  # a request, not a retained holder
                self.seen.setdefault(s.seq_id, s)

    def record_drop(self, seq) -> None:
        """Call before an agent evicts ``seq`` (its computed tokens will be recomputed)."""
        if seq.max_output > 0:  # a request, not a retained holder
            self.lost += seq.num_computed

    def step(self) -> float:
        engine = self.engine
        before = {sid: (s.num_computed, s.num_preemptions, s.num_output)
                  for sid, s in engine.live.items()}
        now, stats = engine.now, engine.stats
        counters = (stats.prompt_tokens, stats.generated_tokens, stats.recomputed_tokens,
                    stats.preemptions, stats.rejected, len(engine.finished))
        self._pending_hits.clear()
        dt = engine._advance(float("inf")) if self.fast else engine.step()
        self.steps += 1
        assert dt >= 0.0 and engine.now == pytest.approx(now + dt)
        after = (stats.prompt_tokens, stats.generated_tokens, stats.recomputed_tokens,
                 stats.preemptions, stats.rejected, len(engine.finished))
        assert all(a >= b for a, b in zip(after, counters)), "a counter went down"
        for sid, (computed, preemptions, _) in before.items():
            s = self.seen.get(sid)
            if s is not None and s.num_preemptions > preemptions:
                assert s.num_preemptions == preemptions + 1
                self.lost += computed
        for s, hit_toks, high_water in self._pending_hits.values():
            if s.state == State.RUNNING or s.finish_s >= 0:  # it was admitted with these hits
                self.new_hits += max(0, hit_toks - high_water)
        self._observe()
        for sid, s in self.seen.items():
            assert s.num_output >= self.max_output.get(sid, 0), "tokens went down"
            self.max_output[sid] = s.num_output
        check_invariants(engine)
        return dt

    def idle(self) -> bool:
        """After a 0.0 step: jump to the next event; False when there is none."""
        nxt = self.engine.next_event_s()
        if nxt is None:
            return False
        assert nxt > self.engine.now or not self.engine.done
        self.engine._idle_until(max(nxt, self.engine.now))
        check_invariants(self.engine)
        return True

    def advance(self, t_end: float, *, max_steps: int = 20_000) -> "Tracker":
        """Like ``Engine.run_until``: iterate (idling through gaps) until ``now >= t_end``."""
        engine = self.engine
        for _ in range(max_steps):
            if engine.now >= t_end:
                return self
            if self.step() == 0.0:
                nxt = engine.next_event_s()
                engine._idle_until(t_end if nxt is None else min(max(nxt, engine.now), t_end))
                check_invariants(engine)
        raise AssertionError(f"did not reach t={t_end}")

    def step_until(self, cond, *, max_steps: int = 20_000) -> "Tracker":
        """Step (idling through gaps) until ``cond(engine)`` holds."""
        for _ in range(max_steps):
            if cond(self.engine):
                return self
            if self.step() == 0.0 and not self.idle():
                break
        if not cond(self.engine):
            raise AssertionError("condition never held")
        return self

    def run(self, *, max_steps: int = 20_000, between=None,
            stall_steps: int = 3_000) -> "Tracker":
        """Step to the end (retention TTLs included); ``between(tracker)`` runs before every
        step (agent actions). Fails fast on a livelock: ``stall_steps`` steps in a row in
        which no token is generated and no request finishes or is rejected."""
        stats = self.engine.stats
        progress, stalled = None, 0
        for _ in range(max_steps):
            if between is not None:
                between(self)
                check_invariants(self.engine)
            if self.step() == 0.0 and not self.idle():
                self.check_final()
                return self
            now = (stats.generated_tokens, len(self.engine.finished), stats.rejected)
            stalled = stalled + 1 if now == progress and not self.engine.done else 0
            progress = now
            if stalled >= stall_steps:
                raise AssertionError(f"livelock: no progress in {stall_steps} steps")
        raise AssertionError(f"engine did not finish in {max_steps} steps")

    # ---- end-of-run checks ------------------------------------------------------------------
    @property
    def rejected_seen(self) -> list:
        return [s for s in self.seen.values() if s.state == State.FINISHED and s.finish_s < 0]

    def check_final(self) -> None:
        engine, stats = self.engine, self.engine.stats
        n = len(engine.trace.requests)
        assert engine.done
        assert not engine.running and not engine.waiting and not engine.swapped
        finished = engine.finished
        assert len(finished) + stats.rejected == n
        assert len({s.seq_id for s in finished}) == len(finished)
        assert len({id(s.req) for s in finished}) == len(finished)
        for s in finished:
            assert s.state == State.FINISHED and s.seq_id not in engine.live
            assert s.num_output == s.max_output == s.req.output_toks
            assert s.first_token_s >= s.arrival_s >= 0.0
            assert s.finish_s >= s.first_token_s
            assert s.finish_s <= engine.now
        # only pinned holders may remain
        for s in engine.live.values():
            assert s.state in (State.RETAINED, State.SWAPPED) and s.kind != "generation"
        # token accounting
        assert stats.prompt_tokens == self.prefill_tokens
        assert stats.generated_tokens == sum(s.num_output for s in self.seen.values())
        reached = sum(s.prompt_len + s.max_output - 1 for s in finished)
        # a rejected request may have made progress (preempted or swapped out, then stuck)
        rejected_reached = sum(max(s.high_water, s.num_computed) for s in self.rejected_seen)
        never_recomputed = sum(max(s.high_water, s.num_computed) - s.num_computed
                               for s in self.rejected_seen)
        # every token computed is either a first computation, or a recomputation of
        # something a preemption/eviction dropped; prefix hits supply the rest
        assert (self.computed + self.new_hits
                == reached + rejected_reached + stats.recomputed_tokens)
        assert stats.recomputed_tokens + never_recomputed <= self.lost
        if not engine.config.enable_prefix_caching:
            assert self.new_hits == 0
            assert stats.recomputed_tokens + never_recomputed == self.lost
        if stats.preemptions == 0 and self.lost == 0:
            assert stats.recomputed_tokens == 0


def drive(engine: Engine, *, between=None, max_steps: int = 20_000,
          fast: bool = False) -> Tracker:
    """Run ``engine`` to the end with invariant checks after every step."""
    return Tracker(engine, fast=fast).run(between=between, max_steps=max_steps)


@pytest.fixture(scope="session")
def run_checked():
    return drive


@pytest.fixture(scope="session")
def new_engine(profile):
    def make(trace: Trace, **config) -> Engine:
        config.setdefault("num_gpu_blocks", 400)
        return Engine(EngineConfig(**config), profile, trace)
    return make


__all__ = ["ActionError", "PROFILE", "Tracker", "build_trace", "check_invariants", "drive",
           "random_trace", "snapshot"]
