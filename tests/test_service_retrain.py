"""The daemon's scheduled retraining job runs `cleaninbox retrain` in another process and
reports its outcome; a failed run is logged with the reason and counted, never raised."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from daemon.config.settings import load_settings
from daemon.model.registry import promote
from daemon.service.supervisor import Service

REPO = Path(__file__).resolve().parent.parent


def test_retrain_without_enough_corrections_fails_cleanly(
    tmp_path: Path, tiny_bundle: Path
) -> None:
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
        with capture_logs() as logs:
            assert service.retrain() == "failed"
    finally:
        service.close()
    finished = [e for e in logs if e["event"] == "retrain_finished"]
    assert len(finished) == 1
    assert "collect more corrections first" in finished[0]["detail"]
    assert finished[0]["log_level"] == "error"
    assert service.metrics.retrains.labels("failed")._value.get() == 1
