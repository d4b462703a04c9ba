"""``cleaninbox train``: prepare data -> fit or resume -> export and verify -> calibrate ->
evaluate -> report -> publish, each a stage in ``training/stages/`` with a typed result;
:func:`train` composes them (and cleans up after a failure)."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from training.config import TrainConfig
from training.data import Split
from training.model import load_base_model
from training.stages.bundle import open_staging
from training.stages.calibrate import calibrate_thresholds, serve_calibrated
from training.stages.evaluate import evaluate
from training.stages.export import export_and_verify
from training.stages.fit import fit_or_resume, start_tracking, track_epochs
from training.stages.prepare import prepare_data
from training.stages.publish import Lineage, finish_tracking, publish
from training.stages.report import write_run_report

__all__ = ["train"]

Log = Callable[[str], None]


def train(
    config: TrainConfig,
    output_dir: Path | None = None,
    log: Log = print,
    *,
    extra_train: Split | None = None,
    replace_texts: Collection[str] = (),
    parent_version: str | None = None,
    extra_metrics: dict[str, Any] | None = None,
) -> Path:
    """Run the whole pipeline; return the new bundle directory (``models/<version>``).

    ``extra_train``: examples added to banking77's training split (never to validation or
    test), e.g. the user's corrections for ``cleaninbox retrain``; ``replace_texts``:
    training examples whose text (case and spacing aside) is one of these are dropped
    first, so a correction overrides banking77's label for the same text and a held-out
    correction is never trained on under another label; ``parent_version`` and
    ``extra_metrics`` are recorded in the manifest (lineage).
    """
    started = time.perf_counter()
    out_root = output_dir or config.output_dir
    out_root.mkdir(parents=True, exist_ok=True)
    prepared = prepare_data(config, log, extra_train=extra_train, replace_texts=replace_texts)
    base = load_base_model(config.model)
    log(f"base model: {base.name}")
    tracker = start_tracking(config, prepared)
    fitted = fit_or_resume(config, prepared, base, out_root, log, track_epochs(tracker))
    staging = open_staging(config, prepared, base, out_root)
    try:
        exported = export_and_verify(config, prepared.data, base, fitted.model, staging, log)
        thresholds = calibrate_thresholds(config, prepared, exported, log)
        manifest, served = serve_calibrated(staging.directory, exported.manifest, thresholds)
        metrics = evaluate(config, prepared, fitted, exported, thresholds, served, log)
        report_dir = staging.directory / "report"
        write_run_report(report_dir, config, prepared.data, exported, thresholds, metrics)
        elapsed = time.perf_counter() - started
        metrics = dataclasses.replace(metrics, train_seconds=elapsed)
        final, manifest = publish(
            config,
            prepared,
            staging,
            exported,
            thresholds,
            manifest,
            metrics,
            out_root=out_root,
            checkpoint=fitted.checkpoint,
            lineage=Lineage(parent_version, extra_metrics),
        )
    except BaseException:
        shutil.rmtree(staging.directory, ignore_errors=True)
        tracker.finish({}, [], None)
        raise
    finish_tracking(tracker, manifest, final)
    log(
        f"bundle written: {final} (test accuracy {metrics.test.accuracy:.4f}, "
        f"macro-F1 {metrics.test.macro_f1:.4f}, {elapsed / 60:.1f} min)"
    )
    return final
