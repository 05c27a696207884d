"""Each concept lives in one room (issue #18, items 2 and 3), checked on the source with ast: one model loader, the
stage module beside its losses, MLflow runs and versions in the registry, held-out evaluation in nsarm/eval, the
stack's process bookkeeping behind public names, one way to an MLflow client."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tree(rel: str) -> ast.AST:
    return ast.parse((REPO / rel).read_text(), filename=rel)


def defined(rel: str) -> set[str]:
    """Top-level classes and functions of a module."""
    return {n.name for n in tree(rel).body if isinstance(n, ast.ClassDef | ast.FunctionDef)}


def called(rel: str) -> set[str]:
    """Names called anywhere in a module: `f(…)` as "f", `m.f(…)` as "m.f"."""
    out = set()
    for node in ast.walk(tree(rel)):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                out.add(f.id)
            elif isinstance(f, ast.Attribute):
                out.add(f"{f.value.id}.{f.attr}" if isinstance(f.value, ast.Name) else f.attr)
    return out


def imported_names(rel: str) -> set[tuple[str, str]]:
    """(module, name) of every `from module import name` in a module, lazy imports included."""
    return {(n.module, a.name) for n in ast.walk(tree(rel)) if isinstance(n, ast.ImportFrom) for a in n.names}


LOADERS = {"load_checkpoint", "load_nsarm", "load_infinity", "load_text_encoder", "build_tiny_text_encoder",
           "text.load_text_encoder", "text.build_tiny_text_encoder"}


def test_one_model_loader():
    for rel in ("nsarm/train/loop.py", "nsarm/inference_cli.py", "nsarm/eval/holdout.py", "nsarm/pyfunc.py"):
        direct = sorted(called(rel) & LOADERS - {"loading.load_text_encoder"})
        assert direct == [], f"{rel} loads weights itself ({direct}); nsarm/loading.py is the one loader"
    assert {"load_model", "load_text_encoder", "load_for_upscaling"} <= defined("nsarm/loading.py")
    # build_upscale_fn / load_upscaler reached the CLI's loader by faking its parsed arguments
    assert "argparse.Namespace" not in called("nsarm/inference_cli.py")


def test_stage_module_sits_beside_the_losses():
    assert "StageModule" in defined("nsarm/train/steps.py")
    assert "StageModule" not in defined("nsarm/train/loop.py")


def test_mlflow_runs_and_versions_are_made_in_the_registry():
    made = {"tracking.create_run", "tracking.register_model_version", "pyfunc.log_export",
            "tracking.mark_model_training"}
    assert called("nsarm/train/ray_trainer.py") & made == set()
    assert made <= called("nsarm/train/registry.py")
    assert {"start_tracking", "register_export"} <= defined("nsarm/train/registry.py")


def test_held_out_evaluation_lives_in_eval():
    moved = {"evaluate_export", "tokenizer_ceiling", "holdout_samples", "bicubic_arrays"}
    assert moved <= defined("nsarm/eval/holdout.py")
    assert defined("nsarm/train/holdout.py") & moved == set()


def test_stack_nodes_uses_only_public_bookkeeping():
    private = sorted(f"{m}.{n}" for m, n in imported_names("nsarm/stack_nodes.py") if n.startswith("_"))
    assert private == []
    assert not any(m == "nsarm.stack_nodes" for m, _ in imported_names("nsarm/stack.py"))


def test_one_way_to_an_mlflow_client():
    places = [rel for rel in ("nsarm/tracking.py", "nsarm/pyfunc.py")
              for node in ast.walk(tree(rel)) if isinstance(node, ast.Call) and
              isinstance(node.func, ast.Attribute) and node.func.attr == "MlflowClient"]
    assert places == ["nsarm/tracking.py"]  # tracking.mlflow_client
