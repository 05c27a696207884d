"""Both flows resolve their presets first (issue 18.5): an unknown one (a run that bypassed the parameter schema)
fails with the libraries' one-line preset error before Ray, the bundled-photo export or any stage starts, and
train-nsarm reads the tokenizer warm-up from the preset instead of comparing the preset's name."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from dataset.config import PRESETS as SHARD_PRESETS
from degradation.config import PRESETS as DEG_PRESETS
from nsarm.train.config import TRAIN_PRESETS

REPO = Path(__file__).resolve().parents[3]

# Runs each flow's body (`.fn`, as a deployment run would after its parameters are accepted) in a fresh
# interpreter, so whether Ray was imported or started tells what the flow launched before failing.
_SCRIPT = """
import json, sys
from flows.build_dataset import build_dataset
from flows.train_nsarm import train_nsarm
root = sys.argv[1]
calls = {"shard": lambda: build_dataset.fn(root=root, preset="tyny"),
         "degradation": lambda: build_dataset.fn(root=root, degradation="nope"),
         "training": lambda: train_nsarm.fn(root=root, preset="huge")}
out = {}
for kind, call in calls.items():
    try:
        call()
        out[kind] = "no error"
    except Exception as e:
        out[kind] = f"{type(e).__name__}: {e}"
out["ray imported"] = "ray" in sys.modules
print(json.dumps(out))
"""


def test_an_unknown_preset_fails_before_anything_starts(tmp_path):
    state = tmp_path / "state"
    env = {"NSARM_STATE_DIR": str(state), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path),
           "PREFECT_HOME": str(tmp_path / "prefect")}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "data")], env=env, capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {
        "shard": f"ValueError: unknown shard preset 'tyny'; choose from {sorted(SHARD_PRESETS)}",
        "degradation": f"ValueError: unknown degradation preset 'nope'; choose from {sorted(DEG_PRESETS)}",
        "training": f"ValueError: unknown training preset 'huge'; choose from {sorted(TRAIN_PRESETS)}",
        "ray imported": False,
    }
    assert not (tmp_path / "data").exists() and not state.exists()  # no photos exported, no dataset root made


def test_the_train_flow_does_not_branch_on_a_preset_name():
    tree = ast.parse((REPO / "flows" / "train_nsarm.py").read_text())
    names = {ast.literal_eval(c) for n in ast.walk(tree) if isinstance(n, ast.Compare)
             for c in (n.left, *n.comparators) if isinstance(c, ast.Constant)}
    assert not names & set(TRAIN_PRESETS), "the flow compares the preset with a name; use a TrainPreset field"
