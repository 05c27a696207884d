"""Robustness (paper Eq. 7, Fig. 4, Table 1 variance): counts on a constructed distribution, combined score,
pooled mu_G, variance, and the sorted-curve PNG."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from nsarm.eval.robustness import (
    average_variance,
    combined_score,
    failure_counts,
    global_mean,
    plot_sorted_curves,
    robustness_table,
)


def test_counts_on_a_constructed_distribution():
    # mean = (6 + 0.95 + 0.85 + 0.75 + 0.5) / 10 = 0.905 -> thresholds 0.905, 0.8145, 0.724
    scores = [1.0] * 6 + [0.95, 0.85, 0.75, 0.5]
    mu = float(np.mean(scores))
    assert mu == pytest.approx(0.905)
    assert failure_counts(scores, mu) == {"deficient": 3, "poor": 2, "collapse": 1}
    # Strict "<": a score exactly at a threshold is not a failure.
    assert failure_counts([0.9, 0.8, 1.0], 1.0) == {"deficient": 2, "poor": 1, "collapse": 0}


def test_pooled_global_mean_is_shared_by_methods():
    steady = [0.75] * 10
    shaky = [1.0] * 5 + [0.625, 0.5, 0.5, 0.5, 0.375]  # dyadic values: exact float sums
    mu = global_mean({"steady": steady, "shaky": shaky})
    assert mu == 0.75  # (7.5 + 7.5) / 20
    table = robustness_table({"steady": steady, "shaky": shaky}).set_index("method")
    # steady sits exactly on mu_G -> no failures; shaky: 5 below 0.75, 5 below 0.675, 4 below 0.6
    assert table.loc["steady", ["deficient", "poor", "collapse"]].tolist() == [0, 0, 0]
    assert table.loc["shaky", ["deficient", "poor", "collapse"]].tolist() == [5, 5, 4]
    assert (table["mu_g"] == mu).all()
    fixed = robustness_table({"steady": steady}, mu_g=0.8).iloc[0]  # the paper's own mu_G can be imposed
    assert (fixed.deficient, fixed.poor, fixed.collapse, fixed.mu_g) == (10, 0, 0, 0.8)


def test_combined_score_divides_musiq_by_100():
    df = pd.DataFrame({"clipiqa": [0.8, 0.4], "musiq": [70.0, 30.0], "maniqa": [0.6, 0.2], "topiq": [0.7, 0.3],
                       "psnr": [20.0, 21.0]})
    got = combined_score(df)
    assert got.tolist() == pytest.approx([(0.8 + 0.7 + 0.6 + 0.7) / 4, (0.4 + 0.3 + 0.2 + 0.3) / 4])
    df.loc[1, "maniqa"] = math.nan
    assert math.isnan(combined_score(df)[1])
    with pytest.raises(KeyError, match="missing \\['topiq'\\]"):
        combined_score(df.drop(columns="topiq"))


def test_variance_is_population_variance_per_metric():
    df = pd.DataFrame({"musiq": [60.0, 70.0, 80.0], "clipiqa": [0.5, 0.5, 0.8]})
    got = average_variance(df)
    assert got["musiq_avg"] == pytest.approx(70.0) and got["musiq_var"] == pytest.approx(200.0 / 3)
    assert got["clipiqa_var"] == pytest.approx(np.var([0.5, 0.5, 0.8]))
    assert "maniqa_avg" not in got  # absent metric -> no column


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="without NaN"):
        failure_counts([0.5, math.nan], 0.5)
    with pytest.raises(ValueError, match="non-empty"):
        failure_counts([], 0.5)
    with pytest.raises(ValueError, match="positive finite"):
        failure_counts([0.5], 0.0)


def test_sorted_curve_png(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    curves = {"a": rng.uniform(0.6, 0.8, 50), "b": np.r_[rng.uniform(0.6, 0.9, 45), [0.3] * 5]}
    path = plot_sorted_curves(curves, tmp_path / "sub" / "curve.png", title="RealSR")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (640, 420)
        px = np.asarray(im.convert("RGB"))
    assert (px < 200).any(axis=2).mean() > 0.01  # something was drawn, not a blank canvas
