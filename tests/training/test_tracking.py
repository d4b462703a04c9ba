"""Experiment tracking on the tiny config: the run files hold the config, the data
sha256, per-epoch and final metrics, the report figures and the bundle version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import load_train_config
from training.pipeline import train

REPO = Path(__file__).resolve().parents[2]


def tiny(tmp_path: Path, banking77_dir: Path, backend: str):  # type: ignore[no-untyped-def]
    return load_train_config(
        REPO / "configs/train-tiny.yaml",
        [
            f"data.dir={banking77_dir}",
            f"output_dir={tmp_path / 'models'}",
            f"tracking={backend}",
            f"tracking_dir={tmp_path / 'runs'}",
            "report.email_eval=false",
        ],
    )


def test_tensorboard_run_holds_the_metrics(tmp_path: Path, banking77_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    bundle = train(tiny(tmp_path, banking77_dir, "tensorboard"), log=lambda _: None)
    (run,) = (tmp_path / "runs").iterdir()
    events = EventAccumulator(str(run), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    steps = [e.step for e in events.Scalars("epoch/val_accuracy")]
    assert steps == [0, 1]  # the probe, then the one epoch of configs/train-tiny.yaml
    assert [e.step for e in events.Scalars("epoch/train_loss")] == [1]
    manifest = json.loads((bundle / "manifest.json").read_text())
    final = events.Scalars("final/test_accuracy")[0].value
    assert final == pytest.approx(manifest["metrics"]["test_accuracy"], abs=1e-6)
    assert {"report/confusion_matrix", "report/reliability"} <= set(tags["images"])
    texts = {t: events.Tensors(t)[0].tensor_proto.string_val[0].decode() for t in tags["tensors"]}
    assert bundle.name in texts["bundle_version/text_summary"]
    assert manifest["dataset"]["files"]["train.csv"] in texts["data_sha256/text_summary"]
    assert '"epochs": 1' in texts["config/text_summary"]


def test_wandb_offline_run_holds_the_metrics(
    tmp_path: Path, banking77_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")  # no account, no network: synced later
    monkeypatch.setenv("WANDB_SILENT", "true")
    bundle = train(tiny(tmp_path, banking77_dir, "wandb"), log=lambda _: None)
    (run,) = (tmp_path / "runs/wandb").glob("offline-run-*/run-*.wandb")
    # The offline run file is wandb's record log (protobuf records, strings stored as they
    # are), what `wandb sync` uploads later; wandb ships no offline reader, so the test
    # looks for the values themselves.
    raw = run.read_bytes()
    manifest = json.loads((bundle / "manifest.json").read_text())
    for must in (
        bundle.name,  # the bundle version
        json.dumps(manifest["metrics"]["test_accuracy"]),  # a final metric's exact value
        "epoch/val_accuracy",  # the per-epoch history
        "report/confusion_matrix",  # a report figure
        manifest["dataset"]["files"]["train.csv"],  # the data sha256
        "train_subset",  # the config
    ):
        assert must.encode() in raw, must


def test_mlflow_local_store_holds_the_metrics(tmp_path: Path, banking77_dir: Path) -> None:
    import mlflow

    bundle = train(tiny(tmp_path, banking77_dir, "mlflow"), log=lambda _: None)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs/mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "cleaninbox"]
    (run,) = client.search_runs([experiment.experiment_id])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert run.data.tags["bundle_version"] == bundle.name
    assert run.data.metrics["test_accuracy"] == pytest.approx(manifest["metrics"]["test_accuracy"])
    history = client.get_metric_history(run.info.run_id, "epoch.val_accuracy")
    assert [m.step for m in history] == [0, 1]
    assert run.data.params["train.epochs"] == "1"
    assert run.data.params["data_sha256.train.csv"] == manifest["dataset"]["files"]["train.csv"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert "report/confusion_matrix.png" in artifacts


def test_a_missing_tracking_package_is_a_clear_error(
    tmp_path: Path, banking77_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from daemon.errors import DependencyError

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    with pytest.raises(DependencyError, match=r"pip install 'cleaninbox\[mlflow\]'"):
        train(tiny(tmp_path, banking77_dir, "mlflow"), log=lambda _: None)
