"""Evaluation reports: a Table-1-style summary (markdown + CSV), the per-image parquet and the Fig. 4 plots.

One report covers one test set and one or more methods/checkpoints scored on it, so their robustness counts share
one mu_G (see robustness.py). Files written under `out_dir`:
    summary.csv / summary.md   one row per method: metric means, avg/var columns, combined mean, D/P/C counts
    per_image.parquet          every per-image row of every method (column `method`)
    sorted_combined.png        Fig. 4 curve of the combined NR score; optional sorted_{metric}.png (Figs. B.5/B.6)
    unavailable.json           metrics that could not be computed, with the reason and expected weight paths
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nsarm.eval.evaluate import summarize
from nsarm.eval.metrics import PROTOCOLS, SPECS, Unavailable, variant
from nsarm.eval.robustness import VARIANCE_METRICS, average_variance, plot_sorted_curves, robustness_table


@dataclass(frozen=True)
class Report:
    """Paths of a written report plus its summary table (for logging)."""

    out_dir: Path
    summary: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)
    mu_g: float | None = None


def summary_table(per_method: Mapping[str, pd.DataFrame], metrics: Sequence[str],
                  mu_g: float | None = None) -> tuple[pd.DataFrame, float | None]:
    """One row per method: means of `metrics`, Table 1's avg/var for the NR metrics, combined mean and D/P/C.

    Returns:
        (table, mu_G used or None when no method has the combined score).
    """
    rows = {name: {"method": name, "n": len(df), **summarize(df, metrics),
                   **average_variance(df, [m for m in VARIANCE_METRICS if m in metrics])}
            for name, df in per_method.items()}
    combined = {n: df["combined"].to_numpy(float) for n, df in per_method.items() if "combined" in df.columns}
    combined = {n: x[np.isfinite(x)] for n, x in combined.items()}
    used_mu = None
    if combined and all(x.size for x in combined.values()):
        rob = robustness_table(combined, mu_g)
        used_mu = float(rob["mu_g"].iloc[0])
        for r in rob.itertuples():
            rows[r.method].update(deficient=r.deficient, poor=r.poor, collapse=r.collapse, mu_g=used_mu)
    return pd.DataFrame(list(rows.values())), used_mu


def to_markdown(table: pd.DataFrame, title: str = "", notes: Sequence[str] = ()) -> str:
    """A GitHub markdown table (4 significant decimals; MUSIQ/NIQE/PSNR keep 2), no tabulate dependency."""

    def fmt(col: str, v) -> str:
        if isinstance(v, float | np.floating):
            if math.isnan(v):
                return "-"
            digits = 2 if col.split("_")[0] in ("psnr", "niqe", "musiq") else 4
            return f"{v:.{digits}f}"
        return str(v)

    cols = list(table.columns)
    lines = [f"## {title}", ""] if title else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(c, v) for c, v in zip(cols, row, strict=True)) + " |"
              for row in table.itertuples(index=False)]
    lines += ["", *[f"- {n}" for n in notes]] if notes else []
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, testset: str, per_method: Mapping[str, pd.DataFrame], metrics: Sequence[str],
                 unavailable: Mapping[str, Unavailable] | None = None, mu_g: float | None = None,
                 per_metric_plots: bool = False, protocol: str = PROTOCOLS[0]) -> Report:
    """Write summary.csv/.md, per_image.parquet, the sorted-score PNG(s) and unavailable.json under `out_dir`.

    Args:
        protocol: the SSIM/NIQE protocol the numbers were computed with (`MetricConfig.protocol`); named in the notes.
        per_metric_plots: also draw one sorted curve per NR metric (the paper's Figs. B.5/B.6), ~2 s each on CPU.
    """
    if not per_method:
        raise ValueError("nothing to report: per_method is empty")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, used_mu = summary_table(per_method, metrics, mu_g)
    unavailable = dict(unavailable or {})
    notes = [f"test set `{testset}`; SSIM/NIQE protocol `{protocol}`; variants: "
             + "; ".join(f"{m} = {variant(m, protocol)}" for m in metrics)]
    if used_mu is not None:
        notes.append(f"combined = mean(CLIPIQA, MUSIQ/100, MANIQA, TOPIQ); D/P/C = count below 1.0/0.9/0.8 x "
                     f"mu_G = {used_mu:.4f}; var = population variance over images")
    notes += [u.message() for u in unavailable.values()]
    files = {"summary_csv": out_dir / "summary.csv", "summary_md": out_dir / "summary.md",
             "per_image": out_dir / "per_image.parquet", "unavailable": out_dir / "unavailable.json"}
    table.to_csv(files["summary_csv"], index=False)
    files["summary_md"].write_text(to_markdown(table, f"Evaluation on {testset}", notes), encoding="utf-8")
    pd.concat([df.assign(method=name) for name, df in per_method.items()], ignore_index=True).to_parquet(
        files["per_image"], index=False)
    files["unavailable"].write_text(json.dumps({k: asdict(v) for k, v in unavailable.items()}, indent=1))
    nr_metrics = [m for m in metrics if SPECS[m].mode == "NR" and SPECS[m].higher_better] if per_metric_plots else []
    for col in ["combined", *nr_metrics]:
        curves = {n: df[col].to_numpy(float) for n, df in per_method.items() if col in df.columns}
        curves = {n: x[np.isfinite(x)] for n, x in curves.items()}
        if curves and all(x.size for x in curves.values()):
            files[f"plot_{col}"] = plot_sorted_curves(
                curves, out_dir / f"sorted_{col}.png", mu_g=mu_g if col == "combined" else None,
                title=f"{testset}: sorted {col}", ylabel=col)
    return Report(out_dir, table, files, used_mu)
