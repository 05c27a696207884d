"""Robustness as in the NSARM paper (Sec. 4.1 "Third", Eq. 7, Fig. 4 and Table 1's variance columns).

Per image, the combined no-reference score is the mean of CLIPIQA, MUSIQ/100, MANIQA and TOPIQ. The Fig. 4
caption reads "MANIQA (divided by 100)", but MANIQA already lies in [0, 1] and MUSIQ in [0, 100]; only MUSIQ/100
reproduces the figure's dashed averages (0.67 RealSR, 0.74 RP60), so MUSIQ is the one divided.

Eq. 7 counts images whose score falls below 1.0 / 0.9 / 0.8 x mu_G (Deficient / Poor / Collapse), strict `<`.
mu_G is the paper's "global mean ... on a dataset": one dashed line per sub-figure, shared by all methods. So when
several methods (or checkpoints) are compared, mu_G is the mean over all their scores pooled; for one method alone
it is that method's own mean; a caller may also pass a fixed mu_G (e.g. the paper's 0.67 for RealSR).
Variance is the population variance over images (ddof=0), each metric on its own scale (MUSIQ in 0-100 units).
Pure computation except `plot_sorted_curves`, which writes one PNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

COMBINED_WEIGHTS = {"clipiqa": 1.0, "musiq": 0.01, "maniqa": 1.0, "topiq": 1.0}  # each brought to [0, 1]
LEVELS = {"deficient": 1.0, "poor": 0.9, "collapse": 0.8}  # Eq. 7: fraction of mu_G
VARIANCE_METRICS = ("maniqa", "musiq", "clipiqa", "topiq")  # Table 1's avg/var columns


def combined_score(per_image: pd.DataFrame) -> pd.Series:
    """The Fig. 4 per-image score: mean of CLIPIQA, MUSIQ/100, MANIQA and TOPIQ.

    Args:
        per_image: one row per image with columns clipiqa, musiq (0-100), maniqa, topiq.
    Returns:
        A float Series aligned with `per_image`; NaN where any component is NaN.
    Raises:
        KeyError naming the missing columns (e.g. a metric that was unavailable).
    """
    missing = [c for c in COMBINED_WEIGHTS if c not in per_image.columns]
    if missing:
        raise KeyError(f"combined score needs columns {list(COMBINED_WEIGHTS)}; missing {missing}")
    parts = [per_image[c].astype(float) * w for c, w in COMBINED_WEIGHTS.items()]
    return (sum(parts) / len(parts)).rename("combined")


def failure_counts(scores: Sequence[float] | np.ndarray, mu_g: float) -> dict[str, int]:
    """Eq. 7: how many scores fall strictly below 1.0 / 0.9 / 0.8 x `mu_g`.

    Returns:
        {"deficient": n, "poor": n, "collapse": n}; nested by construction (collapse <= poor <= deficient).
    """
    x = np.asarray(scores, dtype=float)
    if x.ndim != 1 or x.size == 0 or np.isnan(x).any():
        raise ValueError(f"scores must be a non-empty 1-D array without NaN, got shape {x.shape}")
    if not math.isfinite(mu_g) or mu_g <= 0:
        raise ValueError(f"mu_g must be a positive finite mean score, got {mu_g}")
    return {level: int((x < frac * mu_g).sum()) for level, frac in LEVELS.items()}


def global_mean(per_method: Mapping[str, Sequence[float]]) -> float:
    """mu_G: the mean over every image of every method, pooled (Fig. 4's one dashed line per data set)."""
    pooled = np.concatenate([np.asarray(v, dtype=float) for v in per_method.values()])
    if pooled.size == 0:
        raise ValueError("no scores to average")
    return float(pooled.mean())


def robustness_table(per_method: Mapping[str, Sequence[float]], mu_g: float | None = None) -> pd.DataFrame:
    """The Fig. 4 inset table: one row per method with mean, D/P/C counts, the mu_G used and N.

    Args:
        per_method: {method or checkpoint name: its per-image combined scores on ONE data set}.
        mu_g: fixed global mean; None -> `global_mean(per_method)`.
    """
    if not per_method:
        raise ValueError("per_method is empty")
    mu = global_mean(per_method) if mu_g is None else float(mu_g)
    rows = []
    for name, scores in per_method.items():
        x = np.asarray(scores, dtype=float)
        rows.append({"method": name, "n": int(x.size), "mean": float(x.mean()), "mu_g": mu, **failure_counts(x, mu)})
    return pd.DataFrame(rows)


def average_variance(per_image: pd.DataFrame, metrics: Sequence[str] = VARIANCE_METRICS) -> dict[str, float]:
    """Table 1's "avg/var" cells: {"<metric>_avg": mean, "<metric>_var": population variance} per metric present."""
    out: dict[str, float] = {}
    for m in metrics:
        if m in per_image.columns:
            x = per_image[m].astype(float).dropna().to_numpy()
            out[f"{m}_avg"] = float(x.mean()) if x.size else math.nan
            out[f"{m}_var"] = float(x.var(ddof=0)) if x.size else math.nan
    return out


def plot_sorted_curves(per_method: Mapping[str, Sequence[float]], path: str | Path, *, mu_g: float | None = None,
                       title: str = "", ylabel: str = "combined NR score") -> Path:
    """Fig. 4: each method's scores sorted high -> low, the dashed mu_G line and the D/P/C table in the legend.

    Writes a PNG with matplotlib's Agg backend (no display needed) and returns its path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)  # a no-op if a backend is already in use in this process
    import matplotlib.pyplot as plt

    table = robustness_table(per_method, mu_g)
    mu = float(table["mu_g"].iloc[0])
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    try:
        for (name, scores), (_, row) in zip(per_method.items(), table.iterrows(), strict=True):
            y = np.sort(np.asarray(scores, dtype=float))[::-1]
            label = f"{name}  D/P/C {row.deficient}/{row.poor}/{row.collapse}"
            ax.plot(np.arange(1, y.size + 1), y, label=label, linewidth=1.6)
        ax.axhline(mu, color="grey", linestyle="--", linewidth=1.0, label=f"Avg {mu:.3f}")
        ax.set_xlabel("image rank (sorted by score)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
