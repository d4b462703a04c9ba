"""The daemon's scheduled retraining job runs `cleaninbox retrain --json` in another process
and reports the typed outcome it prints; a failed run is logged with the reason and
counted, never raised."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from daemon.config.settings import load_settings
from daemon.model.registry import promote
from daemon.service.supervisor import Service
from training.retrain import RetrainResult, Scores

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def service(tmp_path: Path, tiny_bundle: Path) -> Iterator[Service]:
    """A service over a registry with the tiny bundle in service and a retrain schedule."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(tiny_bundle, models / tiny_bundle.name)
    promote(models, tiny_bundle.name)
    (tmp_path / "rules.yaml").write_text(
        yaml.safe_dump(
            {"version": 1, "rules": [{"name": "all", "match": "*", "actions": ["flag"]}]}
        )
    )
    (tmp_path / "cleaninbox.yaml").write_text(
        yaml.safe_dump(
            {
                "model": "models/current",
                "rules": "rules.yaml",
                "state": "var/state.db",
                "http": {"enabled": False},
                "retrain": {"cron": "0 3 * * *", "config": str(REPO / "configs/train-tiny.yaml")},
            }
        )
    )
    service = Service(load_settings(tmp_path / "cleaninbox.yaml"), registry=CollectorRegistry())
    try:
        yield service
    finally:
        service.close()


def retrain_logged(service: Service) -> tuple[str, dict[str, object]]:
    """The job's return value and its one retrain_finished log event."""
    with capture_logs() as logs:
        outcome = service.retrain()
    (finished,) = [e for e in logs if e["event"] == "retrain_finished"]
    return outcome, finished


def test_retrain_without_enough_corrections_fails_cleanly(service: Service) -> None:
    outcome, finished = retrain_logged(service)
    assert outcome == "failed"
    assert "collect more corrections first" in str(finished["detail"])
    assert finished["log_level"] == "error"
    assert service.metrics.retrains.labels("failed")._value.get() == 1


def fake_child(
    monkeypatch: pytest.MonkeyPatch, returncode: int, stdout: str, stderr: str = ""
) -> list[list[str]]:
    """Replace the child process with one that ends as given; returns the commands run."""
    commands: list[list[str]] = []

    def run(command: list[str], **_kwargs: object) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        return subprocess.CompletedProcess(command, returncode, stdout, stderr)

    monkeypatch.setattr(subprocess, "run", run)
    return commands


def test_the_outcome_is_read_from_the_typed_result(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = RetrainResult(
        "kept",
        "kept the champion: the challenger is not better on the held-out corrections",
        champion="a",
        challenger="b",
        champion_scores=Scores(0.9, 0.5),
        challenger_scores=Scores(0.9, 0.5),
        corrections_train=30,
        corrections_holdout=10,
        report=Path("models/retrain-reports/x.json"),
    )
    # Log lines before the result do not confuse it; the result is the last stdout line.
    commands = fake_child(monkeypatch, 0, f"a stray line\n{kept.to_json()}\n")
    outcome, finished = retrain_logged(service)
    assert outcome == "kept"
    assert finished["detail"] == kept.reason
    assert finished["log_level"] == "info"
    assert service.metrics.retrains.labels("kept")._value.get() == 1
    (command,) = commands
    assert command[command.index("retrain") + 1] == "--json"


def test_a_child_that_dies_without_a_result_is_a_failure(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_child(monkeypatch, 1, "", "Traceback (most recent call last):\nMemoryError\n")
    outcome, finished = retrain_logged(service)
    assert (outcome, finished["detail"]) == ("failed", "MemoryError")


def test_a_result_that_contradicts_the_exit_status_is_a_failure(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    promoted = RetrainResult("promoted", "promoted: better")
    fake_child(monkeypatch, 1, promoted.to_json() + "\n", "killed after printing\n")
    outcome, finished = retrain_logged(service)
    assert (outcome, finished["detail"]) == ("failed", "killed after printing")
    assert service.metrics.retrains.labels("promoted")._value.get() == 0
