"""Evaluation reports logged to a real MLflow server and read back; `nsarm eval` in comparison mode; a pyiqa
metric (MUSIQ) computed from a local weight file exactly as pyiqa computes it."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from nsarm.eval.metrics import MetricConfig
from nsarm.eval.report import write_report
from nsarm.eval.run import MlflowTarget, log_report

pytestmark = pytest.mark.integration


def constructed_method(seed: int, n: int, tail: int) -> pd.DataFrame:
    """Per-image NR scores of a fake method: mostly good, `tail` images collapsed (scores divided by 2)."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"key": [f"im{i:03d}" for i in range(n)], "clipiqa": rng.uniform(0.65, 0.8, n),
                       "musiq": rng.uniform(65, 75, n), "maniqa": rng.uniform(0.6, 0.7, n),
                       "topiq": rng.uniform(0.65, 0.75, n)})
    df.loc[: tail - 1, ["clipiqa", "musiq", "maniqa", "topiq"]] /= 2
    from nsarm.eval.robustness import combined_score

    df["combined"] = combined_score(df)
    return df


def test_report_logged_to_mlflow_and_read_back(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    metrics = ("clipiqa", "musiq", "maniqa", "topiq")
    per_method = {"steady": constructed_method(0, 40, 0), "shaky": constructed_method(1, 40, 6)}
    report = write_report(tmp_path / "report", "realsr", per_method, metrics, per_metric_plots=True)
    summary = report.summary.set_index("method")
    assert summary.loc["shaky", "collapse"] >= 6 and summary.loc["steady", "collapse"] == 0
    assert summary.loc["shaky", "musiq_var"] > summary.loc["steady", "musiq_var"]
    for name in ("summary.csv", "summary.md", "per_image.parquet", "sorted_combined.png", "sorted_musiq.png"):
        assert (tmp_path / "report" / name).is_file(), name
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "| shaky |" in md and f"mu_G = {report.mu_g:.4f}" in md

    cfg = MetricConfig(metrics=metrics)
    run_id = log_report(report, "realsr", cfg, MlflowTarget("eval-test", mlflow_server, "cmp"))
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["eval.realsr.metric.crop_border"] == "0"
    assert run.data.tags["nsarm.eval.testset"] == "realsr"
    arts = {a.path for a in client.list_artifacts(run_id, "eval/realsr")}
    assert {"eval/realsr/sorted_combined.png", "eval/realsr/summary.csv", "eval/realsr/per_image.parquet"} <= arts
    local = client.download_artifacts(run_id, "eval/realsr/summary.csv", str(tmp_path / "dl"))
    back = pd.read_csv(local).set_index("method")
    assert back.loc["shaky", "collapse"] == summary.loc["shaky", "collapse"]
    assert back.loc["steady", "combined"] == pytest.approx(summary.loc["steady", "combined"])
    table = json.loads(open(client.download_artifacts(run_id, "eval/realsr/summary.json", str(tmp_path / "t"))).read())
    assert table["columns"][0] == "method" and len(table["data"]) == 2

    # One method (a checkpoint's evaluation) -> its summary cells become comparable run metrics.
    single = write_report(tmp_path / "single", "realsr", {"ckpt-40k": per_method["shaky"]}, metrics)
    run_id = log_report(single, "realsr", cfg, MlflowTarget("eval-test", mlflow_server, "ckpt-40k"))
    got = client.get_run(run_id).data.metrics
    assert got["realsr.musiq"] == pytest.approx(per_method["shaky"]["musiq"].mean())
    assert got["realsr.collapse"] == single.summary["collapse"].iloc[0]


def test_cli_comparison_mode_logs_to_mlflow(tmp_path, mlflow_server, sample_photos):
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from nsarm.cli import main
    from nsarm.eval.testsets import read_rgb, write_png

    rng = np.random.default_rng(3)
    for p in sorted(sample_photos, key=lambda p: p.photo_id)[:3]:
        hr = read_rgb(p.path)[:192, :192]
        write_png(hr, tmp_path / "hr" / f"{p.photo_id}_HR.png")
        noisy = np.clip(hr.astype(int) + rng.integers(-10, 11, hr.shape), 0, 255).astype(np.uint8)
        write_png(np.asarray(Image.fromarray(noisy).resize((384, 384), Image.BICUBIC)),
                  tmp_path / "a" / f"{p.photo_id}.png")  # 2x larger: downsampled to the HR size
        write_png(hr, tmp_path / "b" / f"{p.photo_id}.png")
    rc = main(["eval", "--sr-dir", f"noisy={tmp_path / 'a'}", "--sr-dir", f"perfect={tmp_path / 'b'}",
               "--hr-dir", str(tmp_path / "hr"), "--name", "toy", "--out", str(tmp_path / "out"),
               "--weights-dir", str(tmp_path / "no-weights"), "--metrics", "psnr,ssim,niqe,musiq",
               "--mlflow-uri", mlflow_server, "--experiment", "eval-cli"])
    assert rc == 0
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("method")
    assert math.isnan(summary.loc["perfect", "psnr"])  # identical images: +inf per image, no finite mean
    assert summary.loc["perfect", "ssim"] == pytest.approx(1.0) and 20 < summary.loc["noisy", "psnr"] < 45
    unavailable = json.loads((tmp_path / "out" / "unavailable.json").read_text())
    assert "musiq_koniq_ckpt-e95806b9.pth" in unavailable["musiq"]["expected"][0]
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("eval-cli")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].data.params["eval.toy.metric.metrics"] == "('psnr', 'ssim', 'niqe', 'musiq')"
    arts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "eval/toy")}
    assert "eval/toy/unavailable.json" in arts


def test_musiq_from_a_local_weight_file_matches_pyiqa(tmp_path, sample_photos):
    """Random MUSIQ weights written where the suite expects the KonIQ checkpoint: the suite's score equals
    pyiqa's own metric loaded from that file, so the offline cache redirection loads exactly this file."""
    pytest.importorskip("pyiqa")
    import torch

    from nsarm.eval.metrics import SPECS, MetricSuite, _ensure_pkg_resources
    from nsarm.eval.testsets import read_rgb

    _ensure_pkg_resources()
    import pyiqa
    from pyiqa.archs.musiq_arch import MUSIQ

    torch.manual_seed(0)
    path = tmp_path / SPECS["musiq"].weights[0].filename
    torch.save({k: v.half() for k, v in MUSIQ(pretrained=False).state_dict().items()}, path)  # fp16: half size
    suite = MetricSuite(MetricConfig(metrics=("musiq",), weights_dir=str(tmp_path)))
    assert suite.available == ("musiq",), suite.unavailable
    img = read_rgb(sample_photos[0].path)[:96, :96]
    got = suite.score(img)["musiq"]
    ref = pyiqa.create_metric("musiq", device=torch.device("cpu"), pretrained_model_path=str(path))
    with torch.inference_mode():
        want = ref(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255).item()
    assert got == pytest.approx(want, rel=1e-5) and math.isfinite(got)
