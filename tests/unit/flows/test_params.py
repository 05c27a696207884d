"""The deployments' parameters (issue 21.5, 16.11, 20.4): enum-like ones are typed so Prefect offers choices and
refuses a typo before launch, every parameter has a description in the schema Prefect builds for the run form,
and with no parameters build-dataset builds the bundled photos into the root train-nsarm reads."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from flows import params
from flows.build_dataset import build_dataset
from flows.train_nsarm import train_nsarm

REPO = Path(__file__).resolve().parents[3]
FLOWS = {"build-dataset": build_dataset, "train-nsarm": train_nsarm}


def _schema(flow) -> dict:
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(flow).model_dump_for_openapi()


def _enum(schema: dict, name: str) -> list:
    """The choices of parameter `name` (Prefect puts Literal types under definitions or inline)."""
    prop = schema["properties"][name]
    if "enum" in prop:
        return prop["enum"]
    ref = (prop.get("allOf") or [prop])[0]["$ref"].rsplit("/", 1)[-1]
    return schema["definitions"][ref]["enum"]


def test_literal_choices_are_the_libraries_presets():
    from captioning.config import BACKENDS
    from dataset.config import PRESETS as SHARD
    from degradation.config import PRESETS as DEG
    from nsarm.train.config import TRAIN_PRESETS

    assert set(typing.get_args(params.ShardPreset)) == set(SHARD)
    assert set(typing.get_args(params.DegradationPreset)) == set(DEG)
    assert set(typing.get_args(params.Captioner)) == set(BACKENDS)
    assert set(typing.get_args(params.TrainPreset)) == set(TRAIN_PRESETS)


@pytest.mark.parametrize("flow_name", FLOWS)
def test_every_parameter_is_described_in_the_run_form(flow_name):
    schema = _schema(FLOWS[flow_name])
    undocumented = [n for n, p in schema["properties"].items() if not p.get("description", "").strip()]
    assert not undocumented, f"{flow_name}: no description for {undocumented}"


@pytest.mark.parametrize("flow_name, name, choices", [
    ("build-dataset", "preset", ["paper", "tiny"]),
    ("build-dataset", "degradation", ["nsarm-light", "pisasr", "realesrgan", "seesr"]),
    ("build-dataset", "captioner", ["fixed", "llava", "metadata"]),
    ("train-nsarm", "preset", ["nsarm-8b-16gpu", "tiny"]),
])
def test_enum_like_parameters_offer_their_choices(flow_name, name, choices):
    assert sorted(_enum(_schema(FLOWS[flow_name]), name)) == choices


@pytest.mark.parametrize("flow_name", FLOWS)
def test_a_mistyped_preset_is_refused_before_the_run(flow_name):
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError, match=r"preset: Input should be .*'tiny'"):
        FLOWS[flow_name].validate_parameters({"preset": "tyny"})
    FLOWS[flow_name].validate_parameters({"preset": "tiny"})  # a valid one passes


def test_default_roots_agree_and_follow_the_stack_state_dir(tmp_path):
    """Defaults are computed when the serving process imports the flows; NSARM_STATE_DIR is what the stack sets."""
    code = ("import json; from flows.build_dataset import build_dataset as b; from flows.train_nsarm import "
            "train_nsarm as t; from prefect.utilities.callables import parameter_schema as s; "
            "print(json.dumps([s(f).model_dump_for_openapi()['properties']['root']['default'] for f in (b, t)]))")
    env = {"NSARM_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
           "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    build_root, train_root = json.loads(out.stdout.strip().splitlines()[-1])
    assert build_root == train_root == str((tmp_path / "state" / "data").resolve())


def test_bundled_source_exports_the_photos_to_a_folder_source(tmp_path, monkeypatch):
    from dataset.config import PRESETS
    from dataset.sources import detect_kind, read_source

    monkeypatch.setenv("NSARM_STATE_DIR", str(tmp_path))
    schema = _schema(build_dataset)
    assert schema["properties"]["source"]["default"] == params.BUNDLED_SOURCE
    folder = params.resolve_source(params.BUNDLED_SOURCE)
    assert Path(folder).parent == tmp_path.resolve() and detect_kind(folder) == "folder"
    rows = read_source(folder, PRESETS["tiny"])
    assert len(rows) == 12 and all(Path(r.source).is_file() for r in rows)
    assert params.resolve_source("/data/photos.tsv") == "/data/photos.tsv"  # anything else is left alone
