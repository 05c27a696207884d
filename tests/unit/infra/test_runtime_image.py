"""infra/docker/Dockerfile builds the image the manifests name, with the dependencies pyproject.toml asks for, pinned.

Nothing is built here (no Docker in CI); the Dockerfile, constraints.txt, pyproject.toml and the Makefile are read
and checked against each other.
"""

from __future__ import annotations

import re

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support.infra_files import CONSTRAINTS, DOCKERFILE, REPO

DOCKER = DOCKERFILE.read_text()
# Comments dropped and continuation lines joined: one instruction per line.
INSTRUCTIONS = re.sub(r"\\\n\s*", " ", "\n".join(ln for ln in DOCKER.splitlines() if not ln.startswith("#")))
MAKEFILE = (REPO / "Makefile").read_text()
# Installed into the image only (the MLflow server's PostgreSQL driver and S3 artifact store), never imported by us.
IMAGE_ONLY = ("psycopg2-binary", "boto3")


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version and not version.endswith("+cpu"), f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def _pip_installs() -> list[str]:
    return [cmd for cmd in re.split(r"&&|\n", INSTRUCTIONS) if re.search(r"\bpip install\b", cmd)]


def test_build_command_tags_the_cluster_image(cluster_env):
    (tag,) = re.findall(r"docker build -f infra/docker/Dockerfile -t (\S+) \.", DOCKER)
    assert tag == cluster_env["NSARM_IMAGE"]


def test_cuda_base_matches_the_tag(cluster_env):
    (base,) = re.findall(r"^FROM (\S+)", DOCKER, re.M)
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base)
    assert m, f"expected an nvidia/cuda cudnn runtime base, got {base}"
    assert cluster_env["NSARM_IMAGE"].endswith(f"-cuda{m.group(1)}.{m.group(2)}")


def test_python_of_the_image_satisfies_requires_python(pyproject):
    (version,) = set(re.findall(r"python(3\.\d+) -m venv", DOCKER))
    assert Version(version) in SpecifierSet(pyproject["project"]["requires-python"])


def test_every_pip_install_is_constrained():
    installs = _pip_installs()
    assert len(installs) >= 5
    (target,) = re.findall(r"^COPY infra/docker/constraints\.txt (\S+)$", DOCKER, re.M)
    for cmd in installs:
        assert f"-c {target}" in cmd, f"unpinned install: {cmd.strip()}"


def test_pyproject_dependencies_are_pinned_within_their_ranges(pyproject):
    pins = _pins()
    reqs = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    reqs += [Requirement(r) for r in pyproject["project"]["optional-dependencies"]["dev"]
             if canonicalize_name(Requirement(r).name) in IMAGE_ONLY]
    problems = []
    for req in reqs:
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req.name}: not pinned in {CONSTRAINTS.name}")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req.name}: pinned {pins[name]} outside pyproject's {req.specifier}")
    assert not problems, "regenerate infra/docker/constraints.txt (command in its header):\n" + "\n".join(problems)
    # The project itself and the image-only packages are what the Dockerfile installs.
    assert re.search(r"pip install -c \S+ -e \. " + " ".join(IMAGE_ONLY), INSTRUCTIONS)


def test_torch_is_the_makefiles_torch():
    (spec,) = re.findall(r"^TORCH_SPEC\s*\?=\s*(.+)$", MAKEFILE, re.M)
    pins = _pins()
    for req in map(Requirement, spec.split()):
        assert str(req.specifier) == f"=={pins[canonicalize_name(req.name)]}", f"{req} vs constraints"


def test_makefile_no_deps_installs_are_in_the_image():
    # e.g. basicsr-fixed==1.4.2 without its opencv-python/tb-nightly requirements (see the Makefile).
    no_deps = re.findall(r"pip install --no-deps[^\n]*?((?:\s+[A-Za-z0-9_.-]+==\S+)+)\s*$", MAKEFILE, re.M)
    make_pins = [p for group in no_deps for p in group.split()]
    assert make_pins, "the Makefile's --no-deps install was not found"
    image_no_deps = " ".join(c for c in _pip_installs() if "--no-deps" in c)
    pins = _pins()
    for pin in make_pins:
        assert pin in image_no_deps.split(), f"{pin} (Makefile, --no-deps) missing from the Dockerfile"
        name, version = pin.split("==")
        assert pins[canonicalize_name(name)] == version
    # …and the small helpers the Makefile installs for them.
    (helpers,) = re.findall(r"pip install ((?:[a-z]+ ){2,}[a-z]+)\s*$", MAKEFILE, re.M)
    assert any(helpers in c for c in _pip_installs()), f"`pip install {helpers}` missing from the Dockerfile"


def test_import_check_covers_the_projects_packages():
    (code,) = re.findall(r'RUN python -c "([^"]+)"', INSTRUCTIONS)
    statements = [st.strip() for st in code.split(";")]
    imported = {m.strip().split(".")[0] for st in statements if st.startswith("import ")
                for m in st.removeprefix("import ").split(",")}
    imported |= {st.split()[1].split(".")[0] for st in statements if st.startswith("from ")}
    assert {"nsarm", "torch", "ray", "prefect", "mlflow", "basicsr", "psycopg2", "boto3"} <= imported
    # the torchvision shim runs before anything imports torchvision or BasicSR (nsarm/compat.py)
    assert statements[0].startswith("from nsarm.compat import ensure_torchvision_importable")


def test_build_context_leaves_out_the_venv_and_secrets():
    ignored = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git", "infra/cluster.env", ".nsarm"} <= set(ignored)


def test_constraints_do_not_pin_the_project_itself(pyproject):
    # An editable install shows up in `pip freeze` without --exclude-editable and would break `pip install -e .`.
    assert canonicalize_name(pyproject["project"]["name"]) not in _pins()
