"""The progress line every long stage logs (issue 21.2): counts, percentage, rate, elapsed time and an ETA that
leaves out work a resumed run found done."""

from __future__ import annotations

from dataset.progress import eta_seconds, format_seconds, progress_line


def test_eta_is_the_remaining_work_at_the_rate_so_far():
    assert eta_seconds(2, 8, 10.0) == 30.0  # 2 shards in 10 s → 6 more take 30 s
    assert eta_seconds(6, 8, 10.0, done_at_start=4) == 10.0  # only 2 were done here, in 10 s
    assert eta_seconds(0, 8, 10.0) is None and eta_seconds(4, 8, 0.0) is None


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 9.6, 65, 3725)] == ["0s", "10s", "1m05s", "1h02m"]


def test_progress_line_reads_like_the_readme():
    line = progress_line("degrade", 3, 8, "shards", 12.0, rate=4.2, rate_unit="images/s",
                         detail="shard 000002 ok, 6 images")
    assert line == "degrade: 3/8 shards (38%) | shard 000002 ok, 6 images | 4.20 images/s | elapsed 12s | ETA 20s"
    assert progress_line("train stage 1", 60, 60, "steps", 90.0).endswith("| elapsed 1m30s | done")


def test_progress_lines_have_one_formatter():
    """Every stage's line comes from progress_line (the shard stages' one reporter, the train and tokenizer stages and the
    flows' log forwarding): no other module spells the `| elapsed … | ETA …` parts itself."""
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    own = {"dataset/progress.py"}
    spelled = {}
    for top in ("nsarm", "dataset", "degradation", "captioning", "flows"):
        for path in sorted((repo / top).rglob("*.py")):
            rel = path.relative_to(repo).as_posix()
            tree = ast.parse(path.read_text())
            docs = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(
                n, ast.Module | ast.FunctionDef | ast.ClassDef) and n.body and isinstance(n.body[0], ast.Expr)}
            texts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in docs
                     and isinstance(n.value, str) and ("ETA " in n.value or "elapsed " in n.value)]
            if texts and rel not in own:
                spelled[rel] = texts
    assert spelled == {}
    uses = {p.relative_to(repo).as_posix() for top in ("nsarm", "dataset", "degradation", "captioning")
            for p in (repo / top).rglob("*.py") if "progress_line(" in p.read_text()} - own
    # the shard, degrade and caption stages report through dataset/stage.py's ProgressReporter
    assert {"dataset/stage.py", "nsarm/train/progress.py", "nsarm/tokenizer_train.py"} <= uses
    assert all("ProgressReporter(" in (repo / rel).read_text()
               for rel in ("dataset/build.py", "degradation/distributed.py", "captioning/worker.py"))
