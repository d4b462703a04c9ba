"""`dvc repro` of dvc.yaml on the tiny config, offline, in a scratch copy of the project:
all four stages run, the exported bundle verifies, a second repro skips every stage but
the data check (banking77 unchanged), and the outputs push to the local remote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from daemon.model.bundle import load_manifest
from tests.processes import run_ok

REPO = Path(__file__).resolve().parent.parent


def dvc(workdir: Path, *args: str, env: dict[str, str]) -> str:
    command = [str(Path(sys.executable).parent / "dvc"), *args]
    result = run_ok(command, cwd=workdir, env=env, timeout=600, what=f"dvc {args}")
    return result.stdout + result.stderr


def test_dvc_repro_on_the_tiny_config(tmp_path: Path, banking77_dir: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", "pyproject.toml"):
        shutil.copy(REPO / name, project / name)
    for name in ("configs", "daemon", "training", ".dvc", "data/robustness"):
        shutil.copytree(
            REPO / name,
            project / name,
            ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"),
        )
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train_config"] = "configs/train-tiny.yaml"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "BANKING77_DIR": str(banking77_dir),
        "DVC_NO_ANALYTICS": "1",
    }
    first = dvc(project, "repro", env=env)
    for stage in ("data-check", "train", "evaluate", "export"):
        assert f"Running stage '{stage}'" in first, stage
    bundle = project / "runs/pipeline/bundle"
    manifest = load_manifest(bundle, verify=True)
    data = json.loads((project / "runs/pipeline/data/data.json").read_text())
    assert manifest.dataset.files == data["sha256"]  # trained on exactly the checked data
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"data-check", "train", "evaluate", "export"}
    metrics = json.loads((project / "runs/pipeline/metrics.json").read_text())
    assert 0 < metrics["accuracy"] <= 1

    second = dvc(project, "repro", env=env)
    for stage in ("train", "evaluate", "export"):
        assert f"Stage '{stage}' didn't change, skipping" in second, stage
    pushed = dvc(project, "push", env=env)
    assert "pushed" in pushed
    assert any((project / ".dvc-remote").rglob("*"))  # the local remote (.dvc/config)
