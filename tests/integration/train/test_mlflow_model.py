"""A registered version of `nsarm` is a real MLflow model (issue #20), on the session's real MLflow server, offline:
`mlflow.pyfunc.load_model("models:/nsarm@champion").predict(...)` gives the same pixels as `nsarm upscale` (with
`--checkpoint` and with `--model`), the version has a signature, an input example, metrics and a description in
words; its weights stay at the export URI (not copied) and a missing or changed file fails the load naming it;
`mlflow models serve` answers a loopback request with the upscaled image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.support.services import free_port

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def registered(mlflow_server, tmp_path_factory):
    """A tiny model (seeded, untrained: pixels, not quality, are compared) exported locally and registered as
    `nsarm` with the alias `champion`, exactly as training registers a stage export."""
    import torch

    from nsarm import tracking
    from nsarm.model import build_model
    from nsarm.text import build_tiny_text_encoder
    from nsarm.train.export import export_model
    from nsarm.train.registry import EXPERIMENT, register_export

    torch.manual_seed(0)
    export = export_model(build_model("tiny"), str(tmp_path_factory.mktemp("export") / "step000006-test"),
                          text_encoder=build_tiny_text_encoder(64), extra={"step": 6})
    run_id = tracking.create_run(EXPERIMENT, run_name="pyfunc-test", tracking_uri=mlflow_server)
    version = register_export(export, run_id, 2, mlflow_server, aliases=("champion",), preset="tiny",
                              dataset="photos@abc (/data)")
    return {"export": export, "run_id": run_id, "version": version, "uri": mlflow_server}


@pytest.fixture(scope="module")
def lr_photo(sample_photos, tmp_path_factory):
    """A real photo shrunk to 40x48 (one tile of the tiny model, padded), as PNG and as a uint8 array."""
    path = tmp_path_factory.mktemp("lr") / "lr.png"
    Image.open(sample_photos[0].path).convert("RGB").resize((48, 40), Image.BICUBIC).save(path)
    return path, np.asarray(Image.open(path).convert("RGB"))


def _upscale_cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "nsarm"), "upscale", *args, "--device", "cpu"], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_pyfunc_predict_equals_nsarm_upscale(registered, lr_photo, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered["uri"])
    path, lr = lr_photo
    model = mlflow.pyfunc.load_model("models:/nsarm@champion")
    sr = model.predict(lr[None], params={"seed": 3})
    assert sr.shape == (1, 160, 192, 3) and sr.dtype == np.uint8
    env = {"MLFLOW_TRACKING_URI": registered["uri"], "NSARM_MODEL_CACHE": str(tmp_path / "cache")}
    for how in (["--checkpoint", registered["export"]["uri"]], ["--model", "models:/nsarm@champion"]):
        out = tmp_path / f"sr-{how[0].strip('-')}.png"
        done = _upscale_cli([str(path), str(out), *how, "--seed", "3"], env)
        assert done.returncode == 0, done.stderr
        assert np.array_equal(np.asarray(Image.open(out)), sr[0]), how
    # the params reach the sampler: another seed samples other pixels
    assert not np.array_equal(model.predict(lr[None], params={"seed": 4}), sr)

    meta = model.metadata
    for schema in (meta.get_input_schema(), meta.get_output_schema()):
        assert schema.to_dict() == [{"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": (-1, -1, -1, 3)}}]
    assert {p.name for p in meta.get_params_schema().params} == {"seed", "cfg", "tau", "tiles", "caption"}
    assert meta.saved_input_example_info is not None


def test_version_references_weights_and_reads_well(registered):
    import mlflow

    from nsarm import tracking
    from nsarm.train.registry import record_scores

    uri, export = registered["uri"], registered["export"]
    mv = tracking.get_model_version("nsarm", alias="champion", tracking_uri=uri)
    assert mv["source"] == f"models:/{mv['model_id']}" and mv["run_id"] == registered["run_id"]
    files = mlflow.artifacts.download_artifacts(f"models:/{mv['model_id']}")
    sizes = {p.name: p.stat().st_size for p in Path(files).rglob("*") if p.is_file()}
    assert "model.safetensors" not in sizes and max(sizes.values()) < 100_000, sizes  # referenced, not copied
    ref = json.loads(next(Path(files).rglob("reference.json")).read_text())
    assert ref["uri"] == export["uri"] and ref["files"]["model.safetensors"] == export["sha256"]
    assert "text_encoder/config.json" in ref["files"]

    scores = {"model": {"psnr": 24.123456789, "ssim": 0.712345678}, "bicubic": {"psnr": 23.5, "ssim": 0.7},
              "keys": ["a", "b"]}
    for _ in range(2):  # a rerun records nothing twice
        record_scores(registered["version"], scores, uri)
    history = mlflow.MlflowClient(uri).get_logged_model(mv["model_id"]).metrics
    assert sorted((m.key, m.value) for m in history) == [
        ("eval.bicubic_psnr", 23.5), ("eval.bicubic_ssim", 0.7), ("eval.psnr", 24.123456789),
        ("eval.ssim", 0.712345678)]
    text = tracking.get_model_version("nsarm", version=registered["version"], tracking_uri=uri)["description"]
    assert "PSNR-Y 24.12 dB vs bicubic 23.50 dB" in text and "SSIM-Y 0.7123" in text and "24.1234" not in text
    assert "stage 2 of preset `tiny`" in text and "6 steps on dataset `photos@abc (/data)`" in text


def test_registering_again_reuses_the_version(registered):
    import mlflow

    from nsarm.train.registry import register_export

    client = mlflow.MlflowClient(registered["uri"])
    before = client.search_model_versions("name='nsarm'")
    again = register_export(registered["export"], registered["run_id"], 2, registered["uri"], aliases=("champion",))
    assert again == registered["version"]
    assert len(client.search_model_versions("name='nsarm'")) == len(before)
    assert len(client.search_logged_models(experiment_ids=[client.get_run(registered["run_id"]).info.experiment_id],
                                           filter_string=f"source_run_id='{registered['run_id']}'")) == 1


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_missing_or_changed_weights_fail_the_load_naming_the_file(registered, tmp_path, monkeypatch, damage):
    import mlflow

    from nsarm import tracking
    from nsarm.train.export import ExportError
    from nsarm.train.registry import register_export

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered["uri"])
    src = Path(registered["export"]["uri"])
    copy = tmp_path / "export"
    shutil.copytree(src, copy)
    export = {**registered["export"], "uri": str(copy)}
    run_id = tracking.create_run("nsarm-train", run_name=f"damaged-{damage}", tracking_uri=registered["uri"])
    version = register_export(export, run_id, 2, registered["uri"], aliases=(f"damaged-{damage}",))
    target = copy / "text_encoder" / "config.json"
    if damage == "changed":
        target.write_text(target.read_text().replace("}", ', "x": 1}', 1))
    else:
        target.unlink()
    with pytest.raises(ExportError, match=f"{target}: {'sha256' if damage == 'changed' else 'missing'}"):
        mlflow.pyfunc.load_model(f"models:/nsarm/{version}")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    done = _upscale_cli([str(tmp_path / "x.png"), str(tmp_path / "y.png"), "--model", f"models:/nsarm/{version}"],
                        {"MLFLOW_TRACKING_URI": registered["uri"]})
    assert done.returncode == 2 and str(target) in done.stderr and len(done.stderr.strip().splitlines()) == 1, \
        done.stderr
    assert not (tmp_path / "y.png").exists()


@pytest.mark.timeout(420)
def test_mlflow_models_serve_answers_with_the_upscaled_image(registered, lr_photo, tmp_path):
    """`mlflow models serve --env-manager local` on a free loopback port: /invocations returns predict's pixels."""
    import mlflow

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered["uri"], "NSARM_MODEL_CACHE": str(tmp_path / "cache"),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # the server runs `uvicorn` from PATH
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", "models:/nsarm@champion", "-h", "127.0.0.1",
                             "-p", str(port), "--env-manager", "local", "-w", "1"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(2)
        lr = lr_photo[1]
        resp = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=120,
                             json={"inputs": lr[None].tolist(), "params": {"seed": 3}})
        assert resp.status_code == 200, resp.text[:2000]
        served = np.asarray(resp.json()["predictions"], dtype=np.uint8)
        mlflow.set_tracking_uri(registered["uri"])
        expected = mlflow.pyfunc.load_model("models:/nsarm@champion").predict(lr[None], params={"seed": 3})
        assert served.shape == (1, 160, 192, 3) and np.array_equal(served, expected)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
        log.close()
