"""Arrival processes: measure burstiness, fit a model to it, sample from the model.

Two models, both stationary, both stored as plain dicts in the workload profiles:

* ``{"model": "mmpp2", "rates_rps": [hi, lo], "mean_dwell_s": [hi, lo]}`` -- a 2-state
  Markov-modulated Poisson process: Poisson arrivals at ``rates_rps[i]`` while in state ``i``,
  exponential dwell times. Used when the measured inter-arrival CV exceeds 1. Fitted by
  ``fit_mmpp2``: mean rate fixed to the data, then a grid search over (share of time in the
  busy state, lo/hi rate ratio, switching speed) minimising the squared log error on the
  inter-arrival CV^2 and the index of dispersion of counts at 1, 10 and 60 s. The CV pins the
  short-range clustering, the dispersion curve pins how long bursts last.
* ``{"model": "gamma", "rate_rps": r, "cv": c}`` -- a Gamma renewal process (vLLM's
  ``benchmark_serving --burstiness`` is its shape ``1/c^2``), for CV <= 1.

Closed forms (Fischer & Meier-Hellstern 1993, "The MMPP cookbook"): with generator rates
r_hi (leave hi), r_lo (leave lo), s = r_hi + r_lo, the inter-arrival time is phase-type
(phi, D0 = Q - Lambda), E[X^2] = 2 phi (-D0)^-2 1, and the counts in a window W have
IDC(W) = 1 + 2 (l_hi - l_lo)^2 r_hi r_lo / (l_mean s^3) * (1 - (1 - e^{-sW}) / (sW)).
"""

from __future__ import annotations

import numpy as np

from kv_cache_rl.errors import ConfigError

IDC_WINDOWS_S = (1.0, 10.0, 60.0)


def interarrival_stats(t: np.ndarray) -> dict:
    """Mean, CV and quantiles of gaps; index of dispersion of counts (full windows only)."""
    t = np.sort(np.asarray(t, dtype=float))
    gaps = np.diff(t)
    dur = float(t[-1] - t[0]) if len(t) > 1 else 0.0
    idc = {}
    for w in IDC_WINDOWS_S:
        n = int(dur // w)
        if n >= 10:  # fewer windows make the variance meaningless
            counts = np.bincount(((t - t[0]) // w).astype(int), minlength=n)[:n]
            idc[str(int(w))] = round(float(counts.var() / counts.mean()), 4)
    mean = float(gaps.mean()) if len(gaps) else 0.0
    return {"mean_s": round(mean, 6), "cv": round(float(gaps.std() / mean), 4) if mean else 0.0,
            "p50_s": round(float(np.median(gaps)), 6) if len(gaps) else 0.0,
            "p99_s": round(float(np.percentile(gaps, 99)), 6) if len(gaps) else 0.0,
            "idc": idc}


def mmpp2_cv2_idc(l_hi, l_lo, r_hi, r_lo, windows=IDC_WINDOWS_S):
    """Inter-arrival CV^2 and IDC at ``windows`` of an MMPP2 (numpy-broadcast)."""
    s = r_hi + r_lo
    p_hi, p_lo = r_lo / s, r_hi / s  # share of time in each state
    l_mean = p_hi * l_hi + p_lo * l_lo
    phi_hi, phi_lo = p_hi * l_hi / l_mean, p_lo * l_lo / l_mean  # state seen by an arrival
    # M = -D0 = [[r_hi + l_hi, -r_hi], [-r_lo, r_lo + l_lo]]
    # M^-1 = [[r_lo + l_lo, r_hi], [r_lo, r_hi + l_hi]] / det
    det = (r_hi + l_hi) * (r_lo + l_lo) - r_hi * r_lo
    v_hi, v_lo = (r_lo + l_lo + r_hi) / det, (r_lo + r_hi + l_hi) / det  # M^-1 1
    w_hi = ((r_lo + l_lo) * v_hi + r_hi * v_lo) / det  # M^-2 1
    w_lo = (r_lo * v_hi + (r_hi + l_hi) * v_lo) / det
    cv2 = l_mean ** 2 * 2 * (phi_hi * w_hi + phi_lo * w_lo) - 1
    amp = 2 * (l_hi - l_lo) ** 2 * r_hi * r_lo / (l_mean * s ** 3)
    idc = [1 + amp * (1 - (1 - np.exp(-s * w)) / (s * w)) for w in windows]
    return cv2, idc


def fit_mmpp2(mean_rate: float, cv: float, idc: dict, duration_s: float) -> dict:
    """Fit an MMPP2 to a mean rate, an inter-arrival CV and ``{window_s: IDC}``.

    Dwell times are capped at ``duration_s / 5`` so a sampled trace of the measured length
    sees several bursts (uncapped fits to a slow drift give a rate that depends on the seed).
    """
    windows = [float(w) for w in idc]
    target = np.log([cv ** 2, *[idc[w] for w in idc]])
    p_hi = 1 / (1 + np.exp(-np.linspace(-7, 7, 113)))  # share of time in the busy state
    rho = np.r_[0.0, np.logspace(-4, 0, 80)[:-1]]  # lo rate / hi rate
    speed = np.logspace(-4, 1.5, 90)  # switching rate s, 1/s
    P, R, S = np.meshgrid(p_hi, rho, speed, indexing="ij")
    l_hi = mean_rate / (P + (1 - P) * R)
    l_lo, r_hi, r_lo = R * l_hi, S * (1 - P), S * P
    cv2, idcs = mmpp2_cv2_idc(l_hi, l_lo, r_hi, r_lo, windows)
    pred = np.stack([np.log(np.maximum(cv2, 1e-12)), *[np.log(x) for x in idcs]])
    err = ((pred - target.reshape(-1, 1, 1, 1)) ** 2).sum(axis=0)
    err[1 / np.minimum(r_hi, r_lo) > duration_s / 5] = np.inf
    i = np.unravel_index(np.argmin(err), err.shape)
    fit_cv2, fit_idc = mmpp2_cv2_idc(l_hi[i], l_lo[i], r_hi[i], r_lo[i], windows)
    return {"model": "mmpp2",
            "rates_rps": [round(float(l_hi[i]), 6), round(float(l_lo[i]), 6)],
            "mean_dwell_s": [round(float(1 / r_hi[i]), 4), round(float(1 / r_lo[i]), 4)],
            "implied": {"rate_rps": round(mean_rate, 6), "cv": round(float(np.sqrt(fit_cv2)), 4),
                        "idc": {str(int(w)): round(float(x), 4)
                                for w, x in zip(windows, fit_idc, strict=True)}},
            "fit": "least squares on log CV^2 and log IDC(1, 10, 60 s), mean rate fixed, "
                   "dwell <= duration/5 (kv_cache_rl.workload.arrivals.fit_mmpp2)"}


def fit_arrival_model(t: np.ndarray) -> dict:
    """MMPP2 if the inter-arrival CV is above 1 (bursty), else a Gamma renewal process."""
    t = np.sort(np.asarray(t, dtype=float))
    st = interarrival_stats(t)
    rate = 1 / st["mean_s"]
    if st["cv"] > 1.0 and st["idc"]:
        return fit_mmpp2(rate, st["cv"], {float(k): v for k, v in st["idc"].items()},
                         float(t[-1] - t[0]))
    return {"model": "gamma", "rate_rps": round(rate, 6), "cv": round(max(st["cv"], 0.05), 4)}


def model_rate(model: dict) -> float:
    """Long-run mean arrival rate of a model, requests/s."""
    if model["model"] == "gamma":
        return float(model["rate_rps"])
    (l_hi, l_lo), (d_hi, d_lo) = model["rates_rps"], model["mean_dwell_s"]
    return (l_hi * d_hi + l_lo * d_lo) / (d_hi + d_lo)


def sample_arrivals(model: dict, duration_s: float, rng: np.random.Generator, *,
                    time_scale: float = 1.0, rate_factor: float = 1.0) -> np.ndarray:
    """Sorted arrival times in ``[0, duration_s)``.

    ``time_scale`` compresses time (rates x k, dwell times / k: what ``traces.scale_rate``
    does to a real trace, the CV is unchanged); ``rate_factor`` multiplies the rates but keeps
    the dwell times (bursts last as long, with more or fewer arrivals; < 1 is thinning). For
    the Gamma model both are the same.
    """
    if not (time_scale > 0 and rate_factor > 0 and duration_s > 0):
        raise ConfigError("need time_scale > 0, rate_factor > 0, duration_s > 0")
    if model["model"] == "gamma":
        rate, cv = model["rate_rps"] * time_scale * rate_factor, model["cv"]
        shape = 1 / cv ** 2
        n = int(duration_s * rate * 1.2 + 10 * np.sqrt(duration_s * rate + 1) + 10)
        t = np.cumsum(rng.gamma(shape, 1 / (shape * rate), n))
        while t[-1] < duration_s:  # rare: extend until past the horizon
            t = np.r_[t, t[-1] + np.cumsum(rng.gamma(shape, 1 / (shape * rate), n))]
        return t[t < duration_s]
    if model["model"] != "mmpp2":
        raise ConfigError(f"unknown arrival model {model['model']!r}")
    rates = np.asarray(model["rates_rps"], dtype=float) * time_scale * rate_factor
    dwell = np.asarray(model["mean_dwell_s"], dtype=float) / time_scale
    state = int(rng.random() >= dwell[0] / dwell.sum())  # stationary start; residual dwell ~ Exp
    n = int(2 * duration_s / dwell.sum()) + 8
    chunks, total = [], 0.0
    while total < duration_s:  # alternate hi/lo periods until past the horizon
        states = (state + np.arange(n)) % 2
        lengths = rng.exponential(1.0, n) * dwell[states]
        chunks.append((states, lengths))
        total, state = total + lengths.sum(), (state + n) % 2
    states = np.concatenate([c[0] for c in chunks])
    lengths = np.concatenate([c[1] for c in chunks])
    starts = np.cumsum(lengths) - lengths
    keep = starts < duration_s
    states, starts, lengths = states[keep], starts[keep], lengths[keep]
    counts = rng.poisson(rates[states] * lengths)
    # Poisson within a period: positions are uniform order statistics
    t = np.repeat(starts, counts) + rng.random(counts.sum()) * np.repeat(lengths, counts)
    return np.sort(t[t < duration_s])
