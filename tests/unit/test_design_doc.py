"""The repository carries its design document (issue 21.9): docs/DESIGN.md exists, every citation of it in code,
tests and README names it by that path and a section it has, and the files it names exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DESIGN = REPO / "docs" / "DESIGN.md"
CITATION = re.compile(r"(\S*)DESIGN(\.md)?(?: §(\d+))?")


def _tracked(*suffixes: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    return [REPO / f for f in out if f.endswith(suffixes) and (REPO / f).is_file() and REPO / f != DESIGN]


def _sections() -> set[str]:
    return set(re.findall(r"^## (\d+)\. ", DESIGN.read_text(), re.M))


def test_design_document_is_in_the_repository():
    assert DESIGN.is_file() and {"1", "2", "3", "5", "6", "8"} <= _sections()


def test_every_citation_names_docs_design_and_an_existing_section():
    sections, bad = _sections(), []
    for path in _tracked(".py", ".md", ".yaml", ".toml"):
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in CITATION.finditer(line):
                prefix, dotmd, section = m.groups()
                where = f"{path.relative_to(REPO)}:{n}: {m.group(0)}"
                if path.name == "test_design_doc.py":
                    continue
                if not (prefix.endswith("docs/") and dotmd):
                    bad.append(f"{where} (cite it as docs/DESIGN.md)")
                elif section and section not in sections:
                    bad.append(f"{where} (no section {section})")
    assert not bad, "\n".join(bad)


def test_files_the_design_names_exist():
    text = DESIGN.read_text()
    named = set(re.findall(r"`((?:flows|nsarm|dataset|degradation|captioning|tests|infra|docs)/[\w/.]+\.(?:py|md))`",
                           text))
    assert len(named) >= 8
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"docs/DESIGN.md names files that do not exist: {missing}"
