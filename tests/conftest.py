"""Shared fixtures: the banking77 directory and a tiny model bundle trained once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Dovecot, mail users and daemon working directories for integration and reliability tests.
pytest_plugins = ["tests.mail_fixtures", "tests.postgres"]


def banking77_path() -> Path:
    env = os.environ.get("BANKING77_DIR")
    return Path(env) if env else REPO / "data" / "banking77"


@pytest.fixture(scope="session")
def banking77_dir() -> Path:
    path = banking77_path()
    if not (path / "train.csv").is_file():
        pytest.fail(f"banking77 not found at {path}; set BANKING77_DIR")
    return path


@pytest.fixture(scope="session")
def tiny_bundle(
    tmp_path_factory: pytest.TempPathFactory, banking77_dir: Path, worker_id: str
) -> Path:
    """A bundle from configs/train-tiny.yaml: the whole training path, end to end.

    Under pytest-xdist (`make test` runs two workers) the first worker to need it trains it
    into the run's shared temporary directory while the others wait on a file lock.
    """
    from filelock import FileLock

    if worker_id == "master":
        return _train_tiny(tmp_path_factory.mktemp("models"), banking77_dir)
    shared = tmp_path_factory.getbasetemp().parent / "tiny-bundle"
    with FileLock(f"{shared}.lock"):
        done = shared / "path"
        if not done.is_file():
            bundle = _train_tiny(shared / "models", banking77_dir)
            done.write_text(str(bundle))
        return Path(done.read_text())


def _train_tiny(out: Path, banking77_dir: Path) -> Path:
    from training.config import load_train_config
    from training.pipeline import train

    out.mkdir(parents=True, exist_ok=True)
    config = load_train_config(
        REPO / "configs" / "train-tiny.yaml",
        [
            f"data.dir={banking77_dir}",
            f"data.robustness_dir={REPO / 'data' / 'robustness'}",
            f"output_dir={out}",
        ],
    )
    return train(config, log=lambda _line: None)


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle that a test may corrupt."""
    target = tmp_path / tiny_bundle.name
    shutil.copytree(tiny_bundle, target)
    return target


# Markers the GitHub workflow selects on (`.ci/run` runs everything): "dovecot" for tests
# that need a mail server process (Dovecot, or the scripted Gmail peer), "posix" for tests
# that need POSIX-only facilities (signals, tmpfs mounts, systemd/promtool, a shell).
_MAIL_SERVER_DIRS = ("integration", "reliability")
_POSIX_FILES = {
    "test_state.py",
    "test_deploy.py",
    "test_service_retrain.py",
    "test_cli.py",
    "test_dvc_pipeline.py",
}


# "trains" marks tests that run a training: those that need the tiny bundle (directly or
# through another fixture; the first of them in a session pays for the run) and the modules
# that train models themselves (sweeps, tracking back ends, `dvc repro`). `make test-fast`
# deselects them.
_TRAINING_FIXTURES = {"tiny_bundle", "bundle_copy"}
_TRAINING_FILES = {"test_sweep.py", "test_tracking.py", "test_dvc_pipeline.py"}


#: Fixtures whose "postgresql" parameter puts the test on the session's PostgreSQL.
_ENGINE_PARAMS = ("state_location", "state_dir", "engine")


def _uses_postgres(item: pytest.Item) -> bool:
    if {"pg_server", "pg_url"} & set(getattr(item, "fixturenames", ())):
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any(params.get(name) == "postgresql" for name in _ENGINE_PARAMS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The image builds (tests/test_images.py, minutes) go first: under xdist one worker
    # takes them while the other runs the rest, rather than both waiting on them at the end.
    items.sort(key=lambda item: item.get_closest_marker("containers") is None)
    for item in items:
        if _uses_postgres(item):
            item.add_marker(pytest.mark.postgres)
            item.add_marker(pytest.mark.posix)
        path = Path(str(item.fspath))
        if path.name in _TRAINING_FILES or _TRAINING_FIXTURES & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.trains)
        if any(part in _MAIL_SERVER_DIRS for part in path.parts):
            item.add_marker(pytest.mark.dovecot)
            item.add_marker(pytest.mark.posix)
        elif path.name in _POSIX_FILES:
            item.add_marker(pytest.mark.posix)


@pytest.fixture(params=["sqlite", "postgresql"])
def state_location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """A fresh state location on each engine: a SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "state.db"
    return str(request.getfixturevalue("pg_url"))
