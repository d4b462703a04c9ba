"""The daemon image's build stage, run for real outside Docker (no engine here): its COPY
and RUN steps from deploy/docker/Dockerfile in a scratch directory and a fresh venv. The
base install must work and must not bring torch."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_stage(dockerfile: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(COPY src, dst) pairs and RUN commands of the first stage."""
    lines = dockerfile.read_text().replace("\\\n", " ").splitlines()
    copies: list[tuple[str, str]] = []
    runs: list[str] = []
    stages = 0
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        if word == "FROM":
            stages += 1
            if stages > 1:
                break
        elif word == "COPY":
            *sources, destination = shlex.split(rest)
            copies.extend((s, destination) for s in sources)
        elif word == "RUN":
            runs.append(rest)
    return copies, runs


def test_dockerfile_build_stage_installs_the_daemon_without_torch(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    copies, runs = build_stage(REPO / "deploy/docker/Dockerfile")
    assert runs, "no RUN step found"
    src, prefix = tmp_path / "src", tmp_path / "opt"
    src.mkdir()
    for source, destination in copies:
        target = src / destination if destination not in ("./", ".") else src
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / source, target)
    python_dir = str(Path(sys.executable).parent)
    for step in runs:
        command = step.replace("/opt/cleaninbox", str(prefix))
        result = subprocess.run(
            command,
            shell=True,
            cwd=src,
            capture_output=True,
            text=True,
            env={"PATH": f"{python_dir}:/usr/bin:/bin", "HOME": str(tmp_path)},
            timeout=900,
        )
        assert result.returncode == 0, (
            f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    cleaninbox = prefix / "bin/cleaninbox"
    out = subprocess.run(
        [str(cleaninbox), "classify", "--model", str(tiny_bundle), "my card was stolen"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert '"intent"' in out.stdout
    torch = subprocess.run(
        [str(prefix / "bin/python"), "-c", "import torch"], capture_output=True, text=True
    )
    assert torch.returncode != 0  # the base install does not bring torch
