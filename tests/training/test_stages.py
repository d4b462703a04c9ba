"""The training stages' typed results: the metrics object keeps the manifest's and
``report/metrics.json``'s keys, and ``train()`` cleans up after a failing stage."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from daemon.errors import ParityError
from training.export import ParityReport, Selection
from training.finetune import EpochRecord
from training.metrics import (
    BaselineScores,
    ClassificationMetrics,
    ClassScores,
    EmailScores,
    Examples,
    Headline,
    Quantisation,
    TrainMetrics,
    WiseFT,
)
from training.report import CardFacts, classification_metrics, model_card
from training.robustness import SetScores

#: The manifest's metric keys and their order before the stages existed (the bundle
#: format: `cleaninbox models list`, retrain's promotion and dashboards read them).
MANIFEST_KEYS = [
    "test_accuracy",
    "test_macro_f1",
    "test_coverage",
    "test_selective_accuracy",
    "val_accuracy",
    "per_class_f1",
    "torch_fp32_test_accuracy",
    "onnx_fp32_test_accuracy",
    "int8_vs_fp32_agreement",
    "int8_vs_fp32_accuracy_drop",
    "int8_vs_torch_agreement",
    "train_seconds",
]
ROBUSTNESS_SETS = ["banking77_test", "perturbed", "other_words", "long_emails", "out_of_scope"]


def _set_scores(name: str, accuracy: float) -> SetScores:
    return SetScores(name, 10, name != "out_of_scope", accuracy, 0.5, 0.1, 0.3, 0.1, [(1.0, 0.2)])


def _metrics(*, full: bool) -> TrainMetrics:
    test = ClassificationMetrics(
        examples=4,
        accuracy=0.75,
        macro_f1=0.6,
        ece_uncalibrated=0.2,
        ece_calibrated=0.1,
        abstain_threshold=0.4,
        coverage=0.5,
        selective_accuracy=1.0,
        per_class={"a": ClassScores(1.0, 0.5, 0.67, 2), "b": ClassScores(0.5, 1.0, 0.25, 2)},
    )
    return TrainMetrics(
        examples=Examples(100, 10, 4),
        probe_val_accuracy=0.5,
        best_epoch=1,
        val_accuracy=0.7,
        test=test,
        torch_fp32=Headline(0.8, 0.7),
        onnx_fp32=Headline(0.79, 0.69),
        parity_val=ParityReport(10, 1.0, 0.7, 0.7),
        parity_test=ParityReport(4, 0.95, 0.8, 0.75),
        int8_vs_fp32_test=ParityReport(4, 0.9, 0.79, 0.75),
        history=[EpochRecord(1, 1.5, 0.7, 3.0)],
        quantisation=Quantisation(True, [], 1.0, {}),
        fit_seconds=12.0,
        wise_ft=WiseFT(0.9, {1.0: [0.6], 0.9: [0.7]}) if full else WiseFT(),
        baseline=BaselineScores(0.6, 0.55, 0.5, 2.0) if full else None,
        email=EmailScores(0.7, 0.65, 5.0) if full else None,
        robustness={n: _set_scores(n, 0.5) for n in ROBUSTNESS_SETS} if full else None,
        train_seconds=60.0,
    )


def test_manifest_metrics_keep_the_keys_and_order_of_the_bundle_format() -> None:
    plain = _metrics(full=False).manifest_metrics()
    assert list(plain) == MANIFEST_KEYS
    assert plain["per_class_f1"] == {"a": 0.67, "b": 0.25}
    assert plain["int8_vs_fp32_accuracy_drop"] == pytest.approx(0.04)
    assert plain["int8_vs_torch_agreement"] == 0.95
    full = _metrics(full=True).manifest_metrics()
    robustness = [
        f"{s}_{k}" for s in ROBUSTNESS_SETS for k in ("accuracy", "acted_right", "acted_wrong")
    ]
    extras = ["baseline_test_accuracy", "baseline_test_macro_f1", "email_test_accuracy"]
    assert list(full) == MANIFEST_KEYS + extras + robustness
    assert (full["baseline_test_macro_f1"], full["email_test_accuracy"]) == (0.5, 0.7)
    assert full["out_of_scope_acted_wrong"] == 0.1


def test_metrics_json_has_optional_sections_only_when_measured() -> None:
    plain = dataclasses.replace(_metrics(full=False), train_seconds=None)
    before_timing = json.loads(json.dumps(plain.to_json()))
    assert "train_seconds" not in before_timing  # report/metrics.json is written before it
    assert not {"baseline", "email", "robustness"} & set(before_timing)
    assert before_timing["wise_ft"] == {}
    assert before_timing["history"] == [
        {"epoch": 1, "train_loss": 1.5, "val_accuracy": 0.7, "seconds": 3.0}
    ]
    assert before_timing["parity_test"]["accuracy_drop"] == pytest.approx(0.05)
    full = json.loads(json.dumps(_metrics(full=True).to_json()))
    assert full["wise_ft"] == {"alpha": 0.9, "scores": {"1.0": [0.6], "0.9": [0.7]}}
    assert full["email"] == {"accuracy": 0.7, "macro_f1": 0.65, "gap_points": 5.0}
    assert "curve" not in full["robustness"]["perturbed"]
    assert full["test"]["per_class"]["b"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": 0.25,
        "support": 2,
    }


def test_quantisation_without_a_selection_records_the_configured_list() -> None:
    assert Quantisation.of(None, False, ("a",)).to_json() == {
        "per_channel": False,
        "kept_fp32": ["a"],
        "val_agreement_all_int8": None,
        "sensitivity_kl": {},
    }
    chosen = Selection(kept=["m"], agreement_all_int8=0.98, sensitivity={"m": 0.1})
    assert Quantisation.of(chosen, True, ()).to_json()["kept_fp32"] == ["m"]


def test_classification_metrics_are_typed_and_serialise_like_before() -> None:
    logits = np.array([[3.0, 0.0], [0.0, 3.0], [2.0, 1.9], [0.0, 1.0]], dtype=np.float32)
    scores = classification_metrics(logits, [0, 1, 1, 1], ["a", "b"], 1.0, 0.6)
    assert scores.accuracy == 0.75
    assert scores.coverage == 0.75  # the near-tie (row 3) is abstained on
    assert scores.selective_accuracy == 1.0
    assert set(scores.to_json()) == {
        "examples",
        "accuracy",
        "macro_f1",
        "ece_uncalibrated",
        "ece_calibrated",
        "abstain_threshold",
        "coverage",
        "selective_accuracy",
        "per_class",
    }


def test_model_card_reads_the_typed_metrics() -> None:
    card = CardFacts(
        version="20260101-000000-abcdef0",
        base_model="tiny",
        onnx="int8, 1.0 MB",
        max_length=64,
        text_recipe="v1",
        temperature=1.5,
        threshold=0.4,
        target_accuracy=0.97,
        out_of_scope=None,
        data_sha256={"train.csv": "0" * 64},
        train_seconds=90.0,
        hardware="x86_64 CPU, 2 threads",
    )
    text = model_card(card, _metrics(full=True))
    assert "| TF-IDF + logistic regression (baseline) | 55.00% | 50.00% |" in text
    assert "| **served bundle (int8, 1.0 MB)** | **75.00%** | **60.00%** |" in text
    assert "Training time 1.5 min" in text
    assert "Worst classes (test F1): `b` 0.25, `a` 0.67." in text
    assert "## Robustness" in text
    assert "## Robustness" not in model_card(card, _metrics(full=False))


def test_tiny_bundle_manifest_and_report_come_from_the_typed_metrics(tiny_bundle: Path) -> None:
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    keys = list(manifest["metrics"])
    assert keys[: len(MANIFEST_KEYS)] == MANIFEST_KEYS
    # configs/train-tiny.yaml: no baseline, email evaluation on, the robustness sets
    robustness = [
        f"{s}_{k}" for s in ROBUSTNESS_SETS for k in ("accuracy", "acted_right", "acted_wrong")
    ]
    assert keys[len(MANIFEST_KEYS) :] == ["email_test_accuracy", *robustness]
    report = json.loads((tiny_bundle / "report" / "metrics.json").read_text())
    assert set(report) == {
        "examples",
        "probe_val_accuracy",
        "best_epoch",
        "val_accuracy",
        "test",
        "torch_fp32",
        "onnx_fp32",
        "parity_val",
        "parity_test",
        "int8_vs_fp32_test",
        "history",
        "quantisation",
        "fit_seconds",
        "wise_ft",
        "email",
        "robustness",
    }
    assert report["test"]["accuracy"] == manifest["metrics"]["test_accuracy"]


def test_a_failing_stage_leaves_no_staging_and_closes_the_tracker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything after fitting runs in the staging directory: a failure (here the parity
    gate) removes it and ends the tracking run without a version."""
    from training import pipeline
    from training.config import TrainConfig

    finished: list[tuple[Any, ...]] = []

    class Tracker:
        def epoch(self, step: int, metrics: Any) -> None:
            pass

        def finish(self, summary: Any, figures: Any, version: Any) -> None:
            finished.append((summary, figures, version))

    def fail(*_args: Any) -> None:
        raise ParityError("served ONNX vs PyTorch (validation) parity check failed")

    def staging(*_args: Any) -> SimpleNamespace:
        directory = tmp_path / "models" / ".staging-x"
        directory.mkdir(parents=True)
        return SimpleNamespace(directory=directory)

    fitted = SimpleNamespace(model=None, checkpoint=None)
    monkeypatch.setattr(pipeline, "prepare_data", lambda *a, **k: SimpleNamespace(data=None))
    monkeypatch.setattr(pipeline, "load_base_model", lambda *a: SimpleNamespace(name="b"))
    monkeypatch.setattr(pipeline, "start_tracking", lambda *a: Tracker())
    monkeypatch.setattr(pipeline, "fit_or_resume", lambda *a: fitted)
    monkeypatch.setattr(pipeline, "open_staging", staging)
    monkeypatch.setattr(pipeline, "export_and_verify", fail)
    config = TrainConfig(output_dir=tmp_path / "models")
    with pytest.raises(ParityError):
        pipeline.train(config, log=lambda _line: None)
    assert list((tmp_path / "models").iterdir()) == []
    assert finished == [({}, [], None)]
