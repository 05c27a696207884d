"""Fixtures of the infra consistency tests: the parsed env example, launcher config, prefect.yaml, pyproject."""

from __future__ import annotations

import pytest
import yaml

from tests.support.infra_files import ENV_EXAMPLE, LAUNCHER, PREFECT, REPO, parse_env_file


@pytest.fixture(scope="session")
def cluster_env() -> dict[str, str]:
    return parse_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="session")
def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


@pytest.fixture(scope="session")
def prefect_cfg() -> dict:
    return yaml.safe_load(PREFECT.read_text())


@pytest.fixture(scope="session")
def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pip's vendored copy of the same parser
        from pip._vendor import tomli as tomllib
    return tomllib.loads((REPO / "pyproject.toml").read_text())
