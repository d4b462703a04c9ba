"""Developer automation that cannot run here (GitHub Actions, Dependabot, pre-commit's own
hook runs) is checked for syntax by real validators: the vendored JSON schemas of
check-jsonschema, pre-commit's config validator; codespell and validate-pyproject run."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        ("vendor.github-workflows", ".github/workflows/ci.yml"),
        ("vendor.dependabot", ".github/dependabot.yml"),
        ("vendor.compose-spec", "deploy/compose.yaml"),
    ],
)
def test_files_match_their_published_schemas(schema: str, path: str) -> None:
    result = run(str(BIN / "check-jsonschema"), "--builtin-schema", schema, path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_runs_the_ci_script_and_known_markers() -> None:
    workflow = yaml.safe_load((REPO / ".github/workflows/ci.yml").read_text())
    linux_steps = [s.get("run", "") for s in workflow["jobs"]["linux"]["steps"]]
    assert any("./.ci/run" in step for step in linux_steps)  # .ci/run is the source of truth
    unit = workflow["jobs"]["unit"]
    assert set(unit["strategy"]["matrix"]["os"]) >= {"windows-2022", "macos-14"}
    selection = next(s["run"] for s in unit["steps"] if "pytest" in s.get("run", ""))
    pytest_options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]
    declared = {m.split(":")[0] for m in pytest_options["ini_options"]["markers"]}
    assert {"dovecot", "postgres", "posix"} <= declared
    assert '-m "not dovecot and not postgres and not posix"' in selection


def test_pre_commit_config_is_valid_and_its_tools_pass() -> None:
    result = run(str(BIN / "pre-commit"), "validate-config", ".pre-commit-config.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    hooks = {
        h["id"]
        for repo in yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())["repos"]
        for h in repo["hooks"]
    }
    assert hooks == {"ruff", "ruff-format", "mypy", "codespell", "validate-pyproject"}
    # ruff and mypy run in `make test` already; the other two run here.
    spelling = run(
        str(BIN / "codespell"),
        *("daemon", "training", "tests", "docs", "configs", "deploy", "scripts", "benchmarks"),
        *("README.md", "CHANGELOG.md", ".github"),
    )
    assert spelling.returncode == 0, spelling.stdout
    pyproject = run(str(BIN / "validate-pyproject"), "pyproject.toml")
    assert pyproject.returncode == 0, pyproject.stdout + pyproject.stderr
