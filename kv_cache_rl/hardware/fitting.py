"""Shared by both calibrations: the hold-out split, table filling and extrapolation, the
hold-out error of a fitted ``CostModel``, and where the LLMServingSim profiles are."""

from __future__ import annotations

import zlib
from pathlib import Path

from kv_cache_rl.hardware.costmodel import CostModel

LSS_LICENCE = "MIT (profiles/llmservingsim/LICENSE.LLMServingSim.MIT, casys-kaist/LLMServingSim)"


def is_holdout(key: str) -> bool:
    """Deterministic ~20% split: the point is held back from fitting."""
    return zlib.crc32(key.encode()) % 5 == 0


# ---------------------------------------------------------------- table helpers (numpy)
def fill_grid(xs, ys, cells: dict) -> list[list[float]]:
    """Rectangular table from sparse cells {(x, y): v}: holes are filled by linear interpolation
    along y between measured cells, then along x with linear extrapolation at the ends (decode
    time is linear in batch size past saturation)."""
    import numpy as np
    xs_a, ys_a = np.asarray(xs, float), np.asarray(ys, float)
    g = np.full((len(xs), len(ys)), np.nan)
    for (x, y), v in cells.items():
        g[xs.index(x), ys.index(y)] = v
    for row in g:
        ok = np.flatnonzero(~np.isnan(row))
        if len(ok) >= 2:
            inner = np.arange(ok[0], ok[-1] + 1)
            row[inner] = np.interp(ys_a[inner], ys_a[ok], row[ok])
    for axis_vals, mat in ((xs_a, g.T), (ys_a, g)):  # columns first, then rows
        for line in mat:
            ok = np.flatnonzero(~np.isnan(line))
            if len(ok) == len(line) or len(ok) == 0:
                continue
            if len(ok) == 1:
                line[:] = line[ok[0]]
                continue
            line[:] = extrap(axis_vals, axis_vals[ok], line[ok])
    return [[round(float(v), 4) for v in row] for row in g]


def extrap(x, xp, fp):
    """np.interp with linear (not constant) extension past both ends."""
    import numpy as np
    x, xp, fp = (np.asarray(a, float) for a in (x, xp, fp))
    y = np.interp(x, xp, fp)
    lo, hi = x < xp[0], x > xp[-1]
    y[lo] = fp[0] + (fp[1] - fp[0]) / (xp[1] - xp[0]) * (x[lo] - xp[0])
    y[hi] = fp[-1] + (fp[-1] - fp[-2]) / (xp[-1] - xp[-2]) * (x[hi] - xp[-1])
    return y


def predict(cost: CostModel, component: str, x) -> float:
    """The shipped model's value (us) for one measured point of ``component``."""
    if component == "attention":
        c, kp, n, kd = x
        return cost.attention_layer_us([(c, kp)] if c else [], n, n * kd)
    return cost.dense_us(x) if component == "dense" else cost.per_sequence_us(x)


def holdout_errors(cost: CostModel, points: dict) -> dict:
    """Median |pred/measured - 1| over held-back points, per component."""
    import numpy as np
    out = {}
    for comp in ("attention", "dense", "per_sequence"):
        held = [(x, y) for key, x, y in points[comp] if is_holdout(key)]
        errs = [abs(predict(cost, comp, x) / y - 1.0) for x, y in held]
        out[comp] = {"median": round(float(np.median(errs)), 4),
                     "p90": round(float(np.quantile(errs, 0.9)), 4), "n": len(errs)}
    return out


def lss_dir(data_dir: Path, model: str, gpu: str, tp: int = 1) -> Path:
    return Path(data_dir) / "profiles" / "llmservingsim" / gpu / model / "bf16" / f"tp{tp}"
