"""Stage 6, report: the figures, per-class scores, metrics and config in ``report/``."""

from __future__ import annotations

from pathlib import Path

import yaml

from training.config import TrainConfig
from training.data import Banking77
from training.metrics import TrainMetrics
from training.report import write_report
from training.stages.calibrate import Thresholds
from training.stages.export import Exported


def write_run_report(
    report_dir: Path,
    config: TrainConfig,
    data: Banking77,
    exported: Exported,
    thresholds: Thresholds,
    metrics: TrainMetrics,
) -> None:
    """``report/`` of the bundle, from the served graph's test logits (``metrics.json``
    is written before the run's total time is known, so it never holds it)."""
    report_dir.mkdir()
    write_report(
        report_dir,
        data.test,
        exported.served_test,
        data.label_names,
        (thresholds.temperature, thresholds.threshold.value),
        metrics.test,
        metrics.to_json(),
        samples=config.report.sample_plots,
        seed=config.train.seed,
        curves=None
        if metrics.robustness is None
        else {k: v.curve for k, v in metrics.robustness.items()},
    )
    (report_dir / "train_config.yaml").write_text(
        yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
    )
