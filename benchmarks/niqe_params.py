"""Check: pyiqa's NIQE built from BasicSR's `niqe_pris_params.npz` reproduces MATLAB's NIQE and pyiqa's own
calibration, i.e. the npz holds the same pristine model as the `niqe_modelparameters.mat` pyiqa downloads.

    .venv/bin/python benchmarks/niqe_params.py --calib-dir IQA-PyTorch/ResultsCalibra

`--calib-dir` is the `ResultsCalibra` folder of a checkout of github.com/chaofengc/IQA-PyTorch: five distorted
images (`dist_dir/*.bmp`), MATLAB's official scores (`results_official.csv`, row `niqe`) and pyiqa's scores with
the downloaded .mat (`calibration_summary.csv`, row `niqe(ours)`). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from nsarm.compat import ensure_torchvision_importable

ensure_torchvision_importable()  # an entry point: the shim before anything imports torchvision


def read_row(path: Path, method: str) -> dict[str, float]:
    """{image file name: score} of one method row of pyiqa's calibration CSVs."""
    with path.open() as f:
        rows = list(csv.reader(f))
    header = rows[0]
    row = next(r for r in rows[1:] if r and r[0] == method)
    return {name: float(v) for name, v in zip(header[1:], row[1:], strict=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib-dir", required=True, type=Path)
    args = ap.parse_args()

    from nsarm.eval.metrics import MetricConfig, MetricSuite
    from nsarm.eval.testsets import read_rgb

    matlab = read_row(args.calib_dir / "results_official.csv", "niqe")
    pyiqa_mat = read_row(args.calib_dir / "calibration_summary.csv", "niqe(ours)")
    suite = MetricSuite(MetricConfig(metrics=("niqe",)))  # the default (pyiqa) protocol, params from the npz
    print("image | ours (npz) | pyiqa with its .mat | MATLAB official | Δ pyiqa | Δ MATLAB")
    for name in sorted(matlab):
        ours = suite.score(read_rgb(args.calib_dir / "dist_dir" / name))["niqe"]
        print(f"{name} | {ours:.4f} | {pyiqa_mat[name]:.4f} | {matlab[name]:.5f} | {ours - pyiqa_mat[name]:+.4f} | "
              f"{ours - matlab[name]:+.5f}")


if __name__ == "__main__":
    main()
