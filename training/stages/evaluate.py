"""Stage 5, evaluate: every figure of the run, as one typed :class:`TrainMetrics`.

The served bundle (calibrated thresholds included) is scored on banking77 test, as
emails, and on the robustness sets; PyTorch and the fp32 graph are scored beside it so
the report shows what export and quantisation cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from daemon.model.classifier import Classifier
from training.baseline import run_baseline
from training.config import TrainConfig
from training.data import Banking77
from training.evaluate import email_texts
from training.metrics import (
    BaselineScores,
    ClassificationMetrics,
    EmailScores,
    Examples,
    Headline,
    Quantisation,
    TrainMetrics,
)
from training.report import classification_metrics
from training.robustness import SetScores, evaluate_sets
from training.robustness import table as robustness_table
from training.stages.calibrate import Thresholds
from training.stages.export import Exported
from training.stages.fit import Fitted
from training.stages.prepare import Prepared

Log = Callable[[str], None]


def headline(logits: Any, labels: Sequence[int], names: Sequence[str]) -> Headline:
    """Accuracy and macro-F1 of the best intent (thresholds play no part)."""
    full = classification_metrics(logits, labels, names, 1.0, 0.0)
    return Headline(full.accuracy, full.macro_f1)


def _baseline(config: TrainConfig, data: Banking77, log: Log) -> BaselineScores | None:
    if not config.report.baseline:
        return None
    log("baseline: TF-IDF + logistic regression")
    result = run_baseline(
        (data.train.texts, data.train.labels),
        (data.val.texts, data.val.labels),
        (data.test.texts, data.test.labels),
        config.train.seed,
    )
    return BaselineScores(
        result.val_accuracy, result.test_accuracy, result.test_macro_f1, result.seconds
    )


def _email(
    config: TrainConfig, data: Banking77, served: Classifier, test: ClassificationMetrics
) -> EmailScores | None:
    """The test queries rendered as emails (drawn with seed + 1), through the daemon's
    text recipe: how much accuracy the email wrapping costs."""
    if not config.report.email_eval:
        return None
    logits = served.logits(email_texts(data.test.texts, config.train.seed + 1))
    scores = headline(logits, data.test.labels, data.label_names)
    return EmailScores(scores.accuracy, scores.macro_f1, (test.accuracy - scores.accuracy) * 100)


def _robustness(prepared: Prepared, served: Classifier, log: Log) -> dict[str, SetScores] | None:
    if prepared.robust is None:
        return None
    data = prepared.data
    log("robustness: other people's words, perturbations, long emails, out of scope")
    scores = evaluate_sets(served, data.test, data.label_names, prepared.robust)
    for line in robustness_table({k: v.to_json() for k, v in scores.items()}):
        log(line)
    return scores


def evaluate(
    config: TrainConfig,
    prepared: Prepared,
    fitted: Fitted,
    exported: Exported,
    thresholds: Thresholds,
    served: Classifier,
    log: Log = print,
) -> TrainMetrics:
    """Score the run; ``served`` is the staging bundle with ``thresholds`` applied."""
    data, fit = prepared.data, fitted.result
    names, test_labels = data.label_names, data.test.labels
    test = classification_metrics(
        exported.served_test,
        test_labels,
        names,
        thresholds.temperature,
        thresholds.threshold.value,
        thresholds.oos_threshold,
    )
    val_correct = exported.served_val.argmax(axis=1) == np.asarray(data.val.labels)
    export = config.export
    return TrainMetrics(
        examples=Examples(len(data.train), len(data.val), len(data.test)),
        probe_val_accuracy=fit.probe_val_accuracy,
        best_epoch=fit.best_epoch,
        val_accuracy=float(val_correct.mean()),
        test=test,
        torch_fp32=headline(exported.torch_test, test_labels, names),
        onnx_fp32=headline(exported.fp32_test, test_labels, names),
        parity_val=exported.parity_val,
        parity_test=exported.parity_test,
        int8_vs_fp32_test=exported.quant_test,
        history=list(fit.history),
        quantisation=Quantisation.of(exported.selection, export.per_channel, export.keep_fp32),
        fit_seconds=fit.seconds,
        wise_ft=fitted.wise,
        baseline=_baseline(config, data, log),
        email=_email(config, data, served, test),
        robustness=_robustness(prepared, served, log),
    )
