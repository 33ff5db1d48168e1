"""What the engine keeps of a finished request's KV (retention), and how a holder ends.

With ``EngineConfig.retention_s > 0`` a finished session turn keeps its prompt KV pinned
(``context``) for the session's next turn, its thinking tokens (``reasoning``) and a
sub-agent's KV (``ephemeral``) until the TTL runs out, as NVIDIA Dynamo's KVBM does; the shared
system prefix (``system``) stays pinned. Pinned KV counts as used: it is what agents manage.
With ``retention_s == 0`` (vLLM) a finished request's blocks are freed at once and stay in the
prefix cache as evictable.
"""

from __future__ import annotations

import heapq

from kv_cache_rl.engine.block_pool import gather
from kv_cache_rl.engine.sequence import (FinishedRequest, Sequence, State, count_units,
                                         remember_units)


class RetentionMixin:
    """Finishing requests and the pinned holders of their KV, for
    :class:`~kv_cache_rl.engine.engine.Engine`."""

    def _forget(self, seq: Sequence) -> None:
        seq.state = State.FINISHED
        self.live.pop(seq.seq_id, None)
        if self._session_context.get(seq.session_id) is seq:
            del self._session_context[seq.session_id]
        if self._system is seq:
            self._system = None

    def _release(self, holder: Sequence) -> None:
        """End a retention: the blocks stay in the prefix cache as evictable (vLLM's free)."""
        if holder.state == State.SWAPPED:
            self._drop_kv(holder)
        else:
            self.pool.free(reversed(holder.blocks))
            holder.blocks = []
        self._forget(holder)

    def _expire(self) -> None:
        heap = self._expiry
        while heap and heap[0][0] <= self.now:
            expires_s, seq_id = heapq.heappop(heap)
            holder = self.live.get(seq_id)
            if holder is not None and holder.expires_s == expires_s:
                self._release(holder)

    def _finish(self, seq: Sequence) -> None:
        if seq.tier:
            self.stats.wrong_answers += self._quality_cost[seq.rtype][seq.tier]
        if self._children:
            self.release_children(seq)
        retain = self.config.retention_s > 0 and seq.req is not None
        known = count_units(seq, self.pool.units, self.config.block_size) if retain else 0
        seq.state = State.FINISHED
        seq.finish_s = self.now
        self.finished.append(FinishedRequest.of(seq))
        self.live.pop(seq.seq_id, None)
        blocks, seq.blocks = seq.blocks, []
        if retain:
            self._retain(seq, blocks, known)
        else:
            self.pool.free(reversed(blocks))

    def _retain(self, seq: Sequence, blocks: list, known: int) -> None:
        """Split a finished turn's blocks into pinned holders by what they are worth.

        ``known``: the units of ``blocks`` past the system prefix; the holders past it start
        with their sizes known (a context is most of a long prompt, see ``count_units``).
        """
        req = seq.req
        bs = self.config.block_size
        n_sys = min(req.system_toks // bs, len(blocks))
        n_prompt = min(seq.prompt_len // bs, len(blocks))
        free = []
        if n_sys:
            if self._system is None:
                self._system = self._hold(seq, "system", blocks[:n_sys], expires=False)
            else:
                free += blocks[:n_sys]
        rest = blocks[n_sys:]
        if req.ephemeral:
            if rest:  # nothing but the system prefix: no holder of its own
                remember_units(self._hold(seq, "ephemeral", rest), known)
        else:
            context, output = blocks[n_sys:n_prompt], blocks[max(n_sys, n_prompt):]
            if seq.session_id >= 0 and context:
                old = self._session_context.get(seq.session_id)
                if old is not None:
                    self._release(old)
                holder = self._session_context[seq.session_id] = \
                    self._hold(seq, "context", context)
                # the turn's own blocks less its output
                remember_units(holder, known - sum(gather(self.pool.units, output)))
            else:
                free += context
            if req.reasoning_toks > 0 and output:
                self._hold(seq, "reasoning", output)
            else:
                free += output
        self.pool.free(reversed(free))

    def _hold(self, seq: Sequence, kind: str, blocks: list, *, expires: bool = True) -> Sequence:
        holder = Sequence(self._next_seq_id, seq.req, kind, 0, 0, self.now)
        self._next_seq_id += 1
        holder.state = State.RETAINED
        holder.blocks = blocks
        holder.tier = seq.tier
        holder.num_kv_tokens = len(blocks) * self.config.block_size
        holder.last_active_s = self.now
        if expires:
            holder.expires_s = self.now + self.config.retention_s
            heapq.heappush(self._expiry, (holder.expires_s, holder.seq_id))
        self.live[holder.seq_id] = holder
        return holder
