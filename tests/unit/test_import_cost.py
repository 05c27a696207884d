"""Imports cost what they should (issue 18.6): `nsarm --help`, `import dataset` (and the other libraries) and
`import flows.build_dataset` load no torch, and a command module that fails to import stops `nsarm` with its own
error instead of silently losing the subcommand. Each case runs in a fresh interpreter: import state is per process.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "torchvision", "ray", "mlflow", "prefect")
SUBCOMMANDS = ("stack", "screenshots", "serve-photos", "shard", "degrade", "caption", "upscale", "eval")

# One interpreter, three steps in the order a user meets them; after each, which heavy modules are loaded.
_STEPS = """
import contextlib, io, json, sys
loaded = lambda: [m for m in {heavy!r} if m in sys.modules]
out, help_text = {{}}, io.StringIO()
with contextlib.redirect_stdout(help_text):
    from nsarm.cli import main
    try:
        main(["--help"])
    except SystemExit as e:
        out["help_exit"] = e.code
out["help"], out["after_help"] = help_text.getvalue(), loaded()
import captioning, dataset, degradation, nsarm, nsarm.compat
out["after_libraries"], out["shim_ran"] = loaded(), bool(nsarm.compat._state)
import flows.build_dataset, flows.train_nsarm
out["after_flows"] = loaded()
print(json.dumps(out))
"""


def _py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_help_libraries_and_flows_load_no_torch():
    proc = _py(_STEPS.format(heavy=HEAVY))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["help_exit"] == 0 and all(c in out["help"] for c in SUBCOMMANDS), out["help"]
    assert out["after_help"] == []
    assert out["after_libraries"] == [] and out["shim_ran"] is False  # importing a library has no side effects
    assert out["after_flows"] == ["prefect"]  # the flows need Prefect itself, and nothing heavier


def test_a_command_module_that_fails_to_import_stops_nsarm():
    # `None` in sys.modules makes `import degradation.cli` raise ModuleNotFoundError, as a missing file would
    proc = _py("import sys\nsys.modules['degradation.cli'] = None\nfrom nsarm.cli import main\nmain(['--help'])\n")
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "ModuleNotFoundError" in proc.stderr and "degradation.cli" in proc.stderr, proc.stderr[-2000:]
