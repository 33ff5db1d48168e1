"""A driver that steps an engine to completion while checking its invariants after every step
and keeping the accounting the engine's own counters must agree with."""

from __future__ import annotations

import pytest

from kv_cache_rl.engine import Engine, State
from tests.support.invariants import check_invariants


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
            # (hits, their touch's units, smallest's units, units past the system prefix)
            result = orig_hits(seq)
            found = result[0]
            assert found == engine._lookup_hits(seq), "stale prefix hits"
            assert result[1] == engine.pool.hit_cost_units(found), "stale hit cost"
            cut = seq.system_blocks(bs)
            # the smallest hit past the system prefix (whose precision is the engine's
            # system_tier, whichever request computed it)
            assert result[2] == min((engine.pool.units[b] for b in found[cut:]), default=4), \
                "stale hit size"
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
