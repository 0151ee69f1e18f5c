"""Rank and error statistics for the search's measurements (proxy fidelity, latency predictor)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two paired samples (ties in either count as neither concordant nor
    discordant, with the tau-b normalisation); NaN when either has no two distinct values."""
    if len(a) != len(b):
        raise ValueError("kendall_tau needs paired samples of the same length")
    conc = disc = ties_a = ties_b = 0
    n = len(a)
    for i in range(n):
        for j in range(i + 1, n):
            da = (a[i] > a[j]) - (a[i] < a[j])
            db = (b[i] > b[j]) - (b[i] < b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + ties_a) * (conc + disc + ties_b))
    return (conc - disc) / denom if denom else float("nan")


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error of ``predicted`` against ``measured`` (percent)."""
    if len(predicted) != len(measured) or not measured:
        raise ValueError("mape needs paired, non-empty samples")
    return 100.0 * sum(abs(p - m) / abs(m) for p, m in zip(predicted, measured, strict=True)) / len(measured)
