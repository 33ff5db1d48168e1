"""Pure-decode fast path: many identical-shape iterations in one pass, exactly.

When every running request is decoding, no request can be admitted (empty queue,
``max_num_seqs`` reached, or a queue head that does not fit: ``Engine.decode_room``), nothing is swapped or stalled, and no arrival or TTL falls before
the limit, the next iterations differ only in KV length: each adds one token per request and
a block whenever a request crosses a block boundary. Until the first request finishes, and
while the pool can cover every boundary without preempting, stepping them one by one changes
nothing but time, so this runs them in one pass: the same iteration times (the cost model is
called per iteration), the same usage per iteration, the same blocks reserved in the same LRU
order. ``Engine.fast_forward = False`` turns it off (tests compare both). With compressed
sequences the KV sum is accumulated in another order, so times may differ in the last bits.
"""

from __future__ import annotations

from kv_cache_rl.engine.block_pool import UNITS_PER_BLOCK

BACKOFF = 8  # iterations to wait after a scan that found no run (the scan costs a step)


def decode_run(engine, until: float) -> float:
    """Run pure-decode iterations up to ``until``; return the time served (0.0: not applicable)."""
    running = engine.running
    n = len(running)
    config = engine.config
    if engine.swapped or engine._stall_s or n > config.max_num_batched_tokens:
        return 0.0
    limit = until
    nxt = engine.next_event_s()
    if nxt is not None and nxt < limit:
        limit = nxt
    if engine.now >= limit:
        return 0.0
    bs = config.block_size
    attention = engine._attention_factor
    quality = engine._quality_cost
    first_finish = 1 << 62
    kv = 0.0  # decode KV sum of the first iteration (attention-weighted)
    growth = 0.0  # how much it grows per iteration
    loss = 0.0
    add = [0] * bs  # units reserved at iteration offsets congruent to each residue
    for seq in running:
        computed = seq.num_computed
        if computed + 1 != seq.num_tokens or not seq.num_output:
            engine._decode_run_after = engine.iterations + BACKOFF
            return 0.0  # a prefill chunk is in the batch
        left = seq.max_output - seq.num_output
        if left < first_finish:
            first_finish = left
        factor = attention[seq.tier]
        kv += (computed + 1) * factor
        growth += factor
        add[-computed % bs] += UNITS_PER_BLOCK >> seq.tier
        if seq.tier:
            loss += quality[seq.rtype][seq.tier]
    max_k = first_finish - 1  # the finishing iteration goes through the normal path
    if max_k < 2:
        engine._decode_run_after = engine.iterations + BACKOFF
        return 0.0
    room = engine.decode_room()  # after the scan: it may look up the queue head's prefix hits
    if not room:
        return 0.0
    pool, stats, series = engine.pool, engine.stats, engine.timeseries
    cost = engine._iteration_time_s
    used, total = pool.used_units, pool.total_units
    waiting = len(engine.waiting)
    t = engine.now
    need = 0
    k = 0
    no_chunks: list = []
    while k < max_k and t < limit:
        units = add[k % bs]
        if need + units > room:
            break  # a boundary that might preempt or admit: leave it to the normal path
        need += units
        dt = cost(no_chunks, n, kv + k * growth)
        stats.observe(dt, (used + need) / total, n, waiting)
        stats.quality_loss += loss  # per iteration, as the scheduler adds it: the same float
        t += dt
        k += 1
        if series is not None:
            series.record(engine, t, 0, n, usage=(used + need) / total)
    if k == 0:
        return 0.0
    if need:
        pool.reserve(need)
    for seq in running:
        computed = seq.num_computed
        first = -computed % bs
        if first < k:
            units = UNITS_PER_BLOCK >> seq.tier
            seq.blocks += pool.take((k - first + bs - 1) // bs, units)
        seq.num_computed = computed + k
        seq.num_tokens += k
        seq.num_output += k
    stats.generated_tokens += k * n
    engine.iterations += k
    served = t - engine.now
    if engine._memory_blocked:  # set by decode_room: the queue head waits for KV memory
        stats.memory_blocked_s += served
    engine.now = t
    return served
