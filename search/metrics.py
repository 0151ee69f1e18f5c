"""Rank and error statistics for the search's measurements (proxy fidelity, latency predictor)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two paired samples (ties in either count as neither concordant nor
    discordant, with the tau-b normalisation); NaN when either has no two distinct values."""
    if len(a) != len(b):
        raise ValueError("kendall_tau needs paired samples of the same length")
    return float(_tau_rows(np.asarray([a], dtype=np.float64), np.asarray([b], dtype=np.float64))[0])


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error of ``predicted`` against ``measured`` (percent)."""
    if len(predicted) != len(measured) or not measured:
        raise ValueError("mape needs paired, non-empty samples")
    return 100.0 * sum(abs(p - m) / abs(m) for p, m in zip(predicted, measured, strict=True)) / len(measured)


def _tau_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair of ``a`` and ``b`` (shape (R, n)); NaN where a row has
    no two distinct values (sign products over ordered pairs: each pair counts twice, above
    and below, which cancels)."""
    sa = np.sign(a[:, :, None] - a[:, None, :])
    sb = np.sign(b[:, :, None] - b[:, None, :])
    num = (sa * sb).sum(axis=(1, 2))
    den = np.sqrt((sa * sa).sum(axis=(1, 2)) * (sb * sb).sum(axis=(1, 2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def kendall_tau_stats(a: Sequence[float], b: Sequence[float], *, level: float = 0.95,
                      resamples: int = 2000, seed: int = 0) -> dict[str, float | int | None]:
    """Kendall's tau-b of paired samples with what it is worth on ``n`` points.

    ``interval``: percentile bootstrap over the pairs (architectures resampled with
    replacement; replicates whose resample has no two distinct values are dropped) at
    confidence ``level``; ``p``: one-sided permutation p-value, the share of ``resamples``
    random pairings whose tau is at least the observed one, counting the observed pairing
    itself ((hits + 1) / (resamples + 1): how often chance alone ranks this well, never 0).  Fixed ``seed``: repeatable.  Fewer than 3 pairs: no interval and no p.
    """
    if len(a) != len(b):
        raise ValueError("kendall_tau_stats needs paired samples of the same length")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError("level must lie in (0, 1) and resamples be positive")
    tau = kendall_tau(a, b)
    out: dict[str, float | int | None] = {"tau": None if math.isnan(tau) else round(tau, 3), "n": len(a),
                                          "lo": None, "hi": None, "p": None, "level": level}
    if len(a) < 3 or math.isnan(tau):
        return out
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    boot = _tau_rows(x[idx], y[idx])
    boot = boot[np.isfinite(boot)]
    if boot.size:
        tail = (1 - level) / 2 * 100
        lo, hi = np.percentile(boot, [tail, 100 - tail])
        out["lo"], out["hi"] = round(float(lo), 3), round(float(hi), 3)
    perm = np.argsort(rng.random((resamples, x.size)), axis=1)
    null = _tau_rows(np.broadcast_to(x, (resamples, x.size)), y[perm])
    hits = int((np.nan_to_num(null, nan=-2.0) >= tau - 1e-12).sum())
    out["p"] = round((hits + 1) / (resamples + 1), 4)  # the observed pairing counts as one: never 0
    return out
