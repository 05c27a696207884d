"""The `train-nsarm` flow through its real deployment on the embedded stack (Prefect + MLflow + Ray + the
deployments server): tokenizer warm-up → stage 1 → stage 2 → held-out evaluation → registry, ending with a
`champion` version of `nsarm` whose checkpoint loads, and a markdown artifact linking the run and version."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def stack_client(embedded_stack, monkeypatch):
    """This process as a client of the stack. Besides the environment, Prefect's settings are set in a settings
    context: Prefect freezes its settings when it is first imported, which in a full test run happens in an
    earlier test, before these variables exist (the client then looks for an ephemeral server)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    env = embedded_stack.client_env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"],
                                     PREFECT_API_AUTH_STRING: env.get("PREFECT_API_AUTH_STRING")}):
        yield env


def held_out_references(root: str, deg_hash: str, holdout: int) -> dict[str, float]:
    """Mean PSNR-Y (BasicSR, BT.601) over the held-out images (the last `holdout` samples of the last HR shard) of
    two references computed here, independently of the evaluate step: PIL bicubic ×4 of the LR, and a flat mid-grey
    image (what a model that learned nothing outputs)."""
    import io

    import numpy as np
    from basicsr.metrics.psnr_ssim import calculate_psnr
    from PIL import Image

    from dataset import contract

    shard = contract.list_shards(root, "hr")[-1]
    hrs = [(k, f["jpg"]) for k, f, err in contract.iter_tar_samples(contract.hr_tar(root, shard)) if not err]
    lrs = {k: f["png"] for k, f, err in contract.iter_tar_samples(contract.lr_tar(root, deg_hash, shard)) if not err}
    bicubic, flat = [], []
    for key, jpg in hrs[-holdout:]:
        hr = Image.open(io.BytesIO(jpg)).convert("RGB")
        up = Image.open(io.BytesIO(lrs[key])).convert("RGB").resize(hr.size, Image.BICUBIC)
        hr_a = np.asarray(hr)[..., ::-1]  # BasicSR takes BGR
        bicubic.append(calculate_psnr(np.asarray(up)[..., ::-1], hr_a, 0, test_y_channel=True))
        flat.append(calculate_psnr(np.full_like(hr_a, 128), hr_a, 0, test_y_channel=True))
    return {"bicubic": float(np.mean(bicubic)), "flat": float(np.mean(flat))}


def test_train_flow_registers_champion(embedded_stack, stack_client, train_root, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from nsarm import tracking
    from nsarm.checkpoints import load_checkpoint
    from nsarm.train.export import verify_export

    small = {"steps": 6, "checkpoint_every": 3, "image_every": 6}
    params = {"root": train_root["root"], "preset": "tiny", "num_workers": 2, "use_gpu": False,
              "stage1": small, "stage2": small, "holdout": 2, "tokenizer_steps": 10,
              "storage_path": str(tmp_path / "runs")}
    run = run_deployment("train-nsarm/default", parameters=params, timeout=1800, poll_interval=5)
    assert run.state.is_completed(), run.state.message
    assert (tmp_path / "runs" / "tokenizer" / "tiny.safetensors").is_file()  # the tiny preset's tokenizer_warm_up

    uri = embedded_stack.mlflow_url
    champ = tracking.get_model_version("nsarm", alias="champion", tracking_uri=uri)
    assert champ["tags"]["checkpoint_uri"].startswith(str(tmp_path / "runs"))
    assert champ["tags"]["stage"] == "2" and "stage2" in champ["aliases"]
    scores = tracking.logged_model_metrics(champ["model_id"], uri)  # model-version metrics, not tags
    # The evaluate step scored the held-out images: its bicubic score is the one computed here from the same files,
    # and the 12-step model lies between a flat grey image and bicubic of the (clean) LR (measured with the same
    # steps in one process: model 23.4 dB, bicubic 31.5 dB; a flat grey image scores ~17 dB on these photos).
    ref = held_out_references(train_root["root"], train_root["deg_hash"], params["holdout"])
    assert scores["eval.bicubic_psnr"] == pytest.approx(ref["bicubic"], abs=1e-3), (scores, ref)
    assert ref["flat"] < scores["eval.psnr"] < ref["bicubic"], (scores, ref)
    assert f"PSNR-Y {scores['eval.psnr']:.2f} dB vs bicubic {scores['eval.bicubic_psnr']:.2f} dB" in champ["description"]
    assert verify_export(champ["tags"]["checkpoint_uri"])["sha256"] == champ["tags"]["sha256"]
    from nsarm.train.registry import resolve_checkpoint

    assert resolve_checkpoint("champion", uri) == champ["tags"]["checkpoint_uri"]
    model = load_checkpoint(champ["tags"]["checkpoint_uri"])
    assert model.cfg.name == "tiny" and model.tokenizer is not None and model.map_transformer is not None
    import mlflow
    import numpy as np

    mlflow.set_tracking_uri(uri)
    sr = mlflow.pyfunc.load_model("models:/nsarm@champion").predict(np.zeros((1, 16, 24, 3), np.uint8))
    assert sr.shape == (1, 64, 96, 3) and sr.dtype == np.uint8
    stage1 = tracking.get_model_version("nsarm", alias="stage1", tracking_uri=uri)
    assert stage1["version"] != champ["version"]

    async def artifact():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    md = [a for a in asyncio.run(artifact()) if a.key == "train-nsarm"]
    assert md and f"v{champ['version']}" in md[0].data and "PSNR-Y" in md[0].data
