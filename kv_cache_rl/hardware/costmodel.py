"""Runtime iteration-time model, loaded from the shipped calibration JSON.

One engine iteration (one forward pass of the whole model plus sampling) costs

    dense(T) + L x attention(batch) + per_sequence(S)

with T the batched tokens, L the number of decoder layers and S the sequences scheduled.

* ``dense`` is piecewise-linear in T: ``L x dense_layer(T) + dense_once(T)`` (the per-layer
  projections, norms, rotary and activation, plus embedding and final norm once per pass).
* ``per_sequence`` is piecewise-linear in S (lm_head + sampler).
* ``attention`` is one layer's attention, from three bilinear tables (see ``attention_layer_us``).

All tables are in microseconds and were derived by ``kv_cache_rl.hardware.calibrate`` from
measured profiles named in each JSON's ``source``. Between knots the model interpolates linearly;
beyond the last knot it extends the last segment (decode attention is linear in KV length and
batch; dense time is linear in tokens once the GPU is saturated).

A tensor-parallel profile (``tp`` > 1) holds one GPU's shard of the compute plus a
``communication`` block (``kv_cache_rl.hardware.tensor_parallel``): the all-reduces and the
logits all-gather, affine in tokens and sequences, added to the dense and per-sequence tables at
load time (``communication=False`` leaves them out).

The hot path, ``iteration_time_s``, is pure Python: a few ``bisect`` calls and float ops, no
numpy and no allocation, because the engine calls it once per simulated iteration.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Callable, Sequence
from pathlib import Path


def _curve(xs: Sequence[float], ys: Sequence[float]) -> Callable[[float], float]:
    """Piecewise-linear y(x) with linear extrapolation past both ends.

    Returned as a closure: free-variable reads are cheaper than attribute lookups, and this sits
    on the per-iteration hot path.
    """
    if len(xs) < 2 or len(xs) != len(ys) or any(b <= a for a, b in zip(xs, xs[1:])):
        raise ValueError("a curve needs >= 2 strictly increasing knots")
    xs = [float(x) for x in xs]
    ys = [float(y) for y in ys]
    slopes = [(y1 - y0) / (x1 - x0) for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:])]
    last = len(xs) - 2

    def curve(x: float) -> float:
        i = bisect_right(xs, x) - 1
        if i < 0:
            i = 0
        elif i > last:
            i = last
        return ys[i] + slopes[i] * (x - xs[i])
    return curve


def _grid(xs: Sequence[float], ys: Sequence[float],
          z: Sequence[Sequence[float]]) -> Callable[[float, float], float]:
    """Bilinear z(x, y) on a rectangular grid, extending the edge cells past the grid."""
    if len(z) != len(xs) or any(len(row) != len(ys) for row in z):
        raise ValueError("grid shape does not match its axes")
    if any(b <= a for a, b in zip(xs, xs[1:])) or any(b <= a for a, b in zip(ys, ys[1:])):
        raise ValueError("grid axes must be strictly increasing")
    xs = [float(v) for v in xs]
    ys = [float(v) for v in ys]
    z = [[float(v) for v in row] for row in z]
    inv_dx = [1.0 / (b - a) for a, b in zip(xs, xs[1:])]
    inv_dy = [1.0 / (b - a) for a, b in zip(ys, ys[1:])]
    xlast, ylast = len(xs) - 2, len(ys) - 2

    def grid(x: float, y: float) -> float:
        i = bisect_right(xs, x) - 1
        if i < 0:
            i = 0
        elif i > xlast:
            i = xlast
        j = bisect_right(ys, y) - 1
        if j < 0:
            j = 0
        elif j > ylast:
            j = ylast
        ty = (y - ys[j]) * inv_dy[j]
        r0 = z[i]
        r1 = z[i + 1]
        a = r0[j] + (r0[j + 1] - r0[j]) * ty
        return a + (r1[j] + (r1[j + 1] - r1[j]) * ty - a) * (x - xs[i]) * inv_dx[i]
    return grid


class CostModel:
    """Seconds per engine iteration for one (model, GPU, TP) profile; see the module docstring."""

    def __init__(self, data: dict, *, communication: bool = True) -> None:
        self.data = data  # the parsed JSON, kept for provenance (source, method, errors)
        self.num_layers = int(data["num_layers"])
        d_layer, d_once = data["dense_layer"], data["dense_once"]
        if d_layer["tokens"] != d_once["tokens"]:
            raise ValueError("dense_layer and dense_once must share token knots")
        L = self.num_layers
        ps = data["per_sequence"]
        layer_us, once_us, seq_us = d_layer["time_us"], d_once["time_us"], ps["time_us"]
        comm = data.get("communication") if communication else None
        if comm:  # affine terms: adding them at the knots is exact between and past them
            def add(xs, ys, block, per):
                return [y + block["fixed_us"] + block[per] * x for x, y in zip(xs, ys)]
            layer_us = add(d_layer["tokens"], layer_us, comm["dense_layer"], "per_token_us")
            once_us = add(d_once["tokens"], once_us, comm["dense_once"], "per_token_us")
            seq_us = add(ps["sequences"], seq_us, comm["per_sequence"], "per_sequence_us")
        self.dense_layer = _curve(d_layer["tokens"], layer_us)
        self.dense_once = _curve(d_once["tokens"], once_us)
        # Whole-model dense time folded into one curve so the hot path does one lookup.
        self.dense = _curve(d_layer["tokens"], [L * a + b for a, b in zip(layer_us, once_us)])
        self.per_sequence = _curve(ps["sequences"], seq_us)
        att = data["attention"]
        self.prefill = _grid(att["prefill"]["chunk"], att["prefill"]["kv_prefill"],
                             att["prefill"]["time_us"])
        self.decode = _grid(att["decode"]["n_decode"], att["decode"]["kv_decode"],
                            att["decode"]["time_us"])
        self.mixed_decode = _grid(att["mixed_decode"]["n_decode"],
                                  att["mixed_decode"]["kv_decode"],
                                  att["mixed_decode"]["time_us"])
        self.mixed_coupling = float(att["mixed_coupling_us"])
        self.launch_floor = float(att["launch_floor_us"])
        # Integer token / sequence counts up to the last knot are pre-tabulated: a list index is
        # ~10x cheaper than a bisect, and these two lookups run every iteration.
        self._dense_tab = [self.dense(t) for t in range(int(d_layer["tokens"][-1]) + 1)]
        self._seq_tab = [self.per_sequence(s) for s in range(int(ps["sequences"][-1]) + 1)]

    @classmethod
    def from_json(cls, path: Path | str) -> "CostModel":
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    # ---- components (microseconds), used by tests and diagnostics ----
    def attention_layer_us(self, prefill_chunks: Sequence[tuple[int, int]], num_decodes: int,
                           decode_kv_sum: float) -> float:
        """One layer's attention for a batch, in microseconds.

        Pure decode: the measured decode table at (n, mean KV) -- bilinear, so at fixed n it is
        linear in KV and the mean stands in for the sum. A prefill chunk (c, kv) costs the
        single-chunk table value; several chunks add up, less one shared launch floor per extra
        chunk (one varlen kernel launch serves them all). Decodes riding along a prefill cost the
        *mixed* decode table (measured mixed time minus the prefill part: 1.5-4x the pure-decode
        time on the RTX profiles, consistent with split-KV being off when a prefill is present)
        plus the fitted ``mixed_coupling_us x n x max_chunk`` (consistent with the varlen grid
        being sized by the longest query, so each decode row launches that many mostly-empty
        query tiles). The aiconfigurator (H100/A100) tables have no mixed batches: there the mixed
        table is the decode table and the coupling is 0.
        """
        n = num_decodes
        if not prefill_chunks:
            return self.decode(n, decode_kv_sum / n) if n > 0 else 0.0
        total = 0.0
        cmax = 0
        for c, kv in prefill_chunks:
            total += self.prefill(c, kv)
            if c > cmax:
                cmax = c
        total -= (len(prefill_chunks) - 1) * self.launch_floor
        if n > 0:
            total += self.mixed_decode(n, decode_kv_sum / n) + self.mixed_coupling * n * cmax
        return total if total > self.launch_floor else self.launch_floor

    def dense_us(self, tokens: float) -> float:
        """All non-attention ops of a forward pass over ``tokens`` batched tokens."""
        return self.dense(tokens)

    def per_sequence_us(self, num_seqs: float) -> float:
        """lm_head + sampler for ``num_seqs`` sequences."""
        return self.per_sequence(num_seqs)

    # ---- hot path ----
    def iteration_time_s(self, prefill_chunks: Sequence[tuple[int, int]], num_decodes: int,
                         decode_kv_sum: float) -> float:
        """Seconds for one engine iteration (one forward pass of the whole model + sampling).

        prefill_chunks: (chunk_tokens, kv_tokens_already_cached_before_this_chunk) per prefilling
        request scheduled this iteration. num_decodes: requests decoding one token each;
        decode_kv_sum: sum of their KV lengths (already weighted by precision attention factors,
        so a float).
        """
        n = num_decodes
        m = len(prefill_chunks)
        if m == 0:
            if n <= 0:
                return 0.0
            attn = self.decode(n, decode_kv_sum / n)
            tokens = n
        else:
            prefill = self.prefill
            attn = 0.0
            cmax = 0
            tokens = n
            for c, kv in prefill_chunks:
                attn += prefill(c, kv)
                tokens += c
                if c > cmax:
                    cmax = c
            attn -= (m - 1) * self.launch_floor
            if n > 0:
                attn += self.mixed_decode(n, decode_kv_sum / n) + self.mixed_coupling * n * cmax
            if attn < self.launch_floor:
                attn = self.launch_floor
        try:  # ints within the tabulated range (the normal case); else interpolate
            us = self._dense_tab[tokens] + self._seq_tab[m + n]
        except (IndexError, TypeError):
            us = self.dense(tokens) + self.per_sequence(m + n)
        return (us + self.num_layers * attn) * 1e-6
