"""podman for the tests that build and run containers (tests/test_images.py, tests/cyrus.py).

The engine is Debian's podman with runc (crun refuses this machine's hybrid cgroups).
Without podman those tests skip, except where CLEANINBOX_REQUIRE_CONTAINERS=1 (.ci/run
sets it): there a missing engine fails them.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

PODMAN = shutil.which("podman")
#: The base both images and the test servers build on: `make base-image` (mmdebstrap).
BASE = "localhost/cleaninbox-base:bookworm"


def require_podman() -> None:
    """Skip the calling test without podman; fail it where containers are required."""
    if PODMAN is not None:
        return
    if os.environ.get("CLEANINBOX_REQUIRE_CONTAINERS") == "1":
        pytest.fail("CLEANINBOX_REQUIRE_CONTAINERS=1 but podman is not installed")
    pytest.skip("no container engine (podman) installed")


def podman(
    *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    assert PODMAN is not None
    result = subprocess.run(
        [PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
    return result


def run_flags() -> list[str]:
    """runc where installed, and explicit limits: runc may not raise them here (FACTS.md:
    nofile 20000 and nproc 4096 work), never above what this process has."""
    flags = ["--runtime", "runc"] if shutil.which("runc") else []
    for name, kind, wanted in (
        ("nofile", resource.RLIMIT_NOFILE, 20000),
        ("nproc", resource.RLIMIT_NPROC, 4096),
    ):
        value = min(v for v in (*resource.getrlimit(kind), wanted) if v != resource.RLIM_INFINITY)
        flags += ["--ulimit", f"{name}={value}:{value}"]
    return flags


def ensure_base_image(locks: Path) -> None:
    """`make base-image` unless the base exists; one pytest worker at a time (``locks``:
    a directory every worker of the run shares)."""
    from filelock import FileLock

    with FileLock(str(locks / "base-image.lock")):
        if podman("image", "exists", BASE, check=False).returncode != 0:
            env = {**os.environ, "IMAGE_ENGINE": "podman", "IMAGE_BASE": BASE}
            subprocess.run(["make", "-s", "base-image"], cwd=REPO, env=env, check=True, timeout=600)


def build(tag: str, dockerfile: Path, locks: Path) -> None:
    """Build a test image on the base (layers cached across runs), one worker at a time."""
    from filelock import FileLock

    ensure_base_image(locks)
    with FileLock(str(locks / "build.lock")):
        podman(
            "build", "--format", "docker", "--isolation", "chroot",
            "--build-arg", f"BASE={BASE}", "-t", tag, "-f", str(dockerfile),
            str(dockerfile.parent), timeout=900,
        )  # fmt: skip


def shared_dir(factory: pytest.TempPathFactory) -> Path:
    """A directory every pytest-xdist worker of this run shares (for locks)."""
    return factory.getbasetemp().parent
