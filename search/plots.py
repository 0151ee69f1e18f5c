"""``search.png``: reward of every sampled architecture and its moving average (paper Fig. 8)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasfcos.io import atomic_write_bytes, figure_bytes
from nasfcos.search.archive import ArchiveRow, sort_rows


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (shorter at the start)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def default_window(n: int) -> int:
    """Moving-average window for ``n`` samples: 10 % of them, between 8 and 100."""
    return max(8, min(100, n // 10))


def plot_rewards(rows: Sequence[ArchiveRow], path: str | os.PathLike[str], *,
                 window: int | None = None, title: str | None = None) -> Path:
    """Plot reward against sample number (and step) with its moving average; write a PNG atomically.

    Samples are taken in archive order (step, index); failed ones are skipped and counted in
    the title; reused rewards are plotted like evaluated ones (hollow markers).
    """
    from matplotlib.figure import Figure

    rows = sort_rows(rows)
    pts = [(i if r.trial is None else r.trial, r.reward, r.status == "reused")
           for i, r in enumerate(rows) if r.reward is not None]
    failed = sum(r.status == "failed" for r in rows)
    fig = Figure(figsize=(7.0, 4.0), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    if pts:
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        w = window or default_window(len(ys))
        ev = [(x, y) for x, y, reused in pts if not reused]
        ru = [(x, y) for x, y, reused in pts if reused]
        if ev:
            ax.scatter([p[0] for p in ev], [p[1] for p in ev], s=8, alpha=0.45, color="#4C72B0",
                       label="evaluated")
        if ru:
            ax.scatter([p[0] for p in ru], [p[1] for p in ru], s=10, alpha=0.5, facecolors="none",
                       edgecolors="#4C72B0", linewidths=0.6, label="reused (seen before)")
        ax.plot(xs, moving_average(ys, w), color="#C44E52", lw=2.0, label=f"moving average ({w})")
        best = max(ys)
        ax.axhline(best, color="#55A868", lw=0.8, ls="--", label=f"best {best:.4g}")
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no rewards yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("sampled architecture (trial)")
    ax.set_ylabel("reward")
    n_steps = len({r.step for r in rows})
    ax.set_title(title or f"search: {len(rows)} samples, {n_steps} steps"
                 + (f", {failed} failed" if failed else ""), fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return atomic_write_bytes(path, figure_bytes(fig))


def plot_pareto(points: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]], path: str | os.PathLike[str],
                *, target_ms: float | None = None, title: str | None = None) -> Path:
    """``pareto.png``: proxy reward against predicted latency (ms) of every distinct evaluated
    genotype, the Pareto front (higher reward, lower latency) joined, the target as a line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.2), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    if points:
        ax.scatter([p["latency_ms"] for p in points], [p["proxy_reward"] for p in points], s=10, alpha=0.4,
                   color="#4C72B0", label=f"evaluated ({len(points)})")
        ax.plot([p["latency_ms"] for p in front], [p["proxy_reward"] for p in front], "-o", ms=4,
                color="#C44E52", label=f"Pareto front ({len(front)})")
        if target_ms is not None:
            ax.axvline(target_ms, color="#55A868", ls="--", lw=1.0, label=f"target {target_ms:g} ms")
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no rewards yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("predicted decoder latency (ms)")
    ax.set_ylabel("proxy reward")
    ax.set_title(title or "reward vs predicted latency", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return atomic_write_bytes(path, figure_bytes(fig))
