"""``cleaninbox evaluate``: score a bundle on the banking77 test set (plain and as emails)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon.model.classifier import Classifier
from daemon.model.samples import render_email
from daemon.model.text import email_to_text
from training import report
from training.config import DataConfig
from training.data import load_banking77
from training.robustness import evaluate_sets, load_robustness


def email_texts(queries: Sequence[str], seed: int) -> list[str]:
    """``queries`` rendered as emails (drawn with ``seed``), then through the daemon's
    text recipe: what the model sees of a real message asking the same."""
    rng = random.Random(seed)
    return [email_to_text(render_email(q, rng)).text for q in queries]


def evaluate_bundle(
    bundle: Path,
    data: DataConfig,
    *,
    emails: bool = True,
    report_dir: Path | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    classifier = Classifier(bundle, threads=threads)
    dataset = load_banking77(data, seed)
    if dataset.label_names != classifier.labels:
        from daemon.errors import DataError

        raise DataError(
            f"{data.dir}/categories.json does not match the labels of bundle {classifier.version}"
        )
    test = dataset.test
    logits = classifier.logits(test.texts)
    temperature = classifier.temperature
    threshold = classifier.threshold
    metrics = report.classification_metrics(
        logits,
        test.labels,
        dataset.label_names,
        temperature,
        threshold,
        classifier.out_of_scope_threshold,
    )
    out: dict[str, Any] = {
        "bundle": classifier.version,
        "examples": len(test),
        "accuracy": metrics.accuracy,
        "macro_f1": metrics.macro_f1,
        "coverage": metrics.coverage,
        "selective_accuracy": metrics.selective_accuracy,
        "ece_calibrated": metrics.ece_calibrated,
    }
    if emails:
        email_metrics = report.classification_metrics(
            classifier.logits(email_texts(test.texts, seed + 1)),
            test.labels,
            dataset.label_names,
            temperature,
            threshold,
            classifier.out_of_scope_threshold,
        )
        out["email_accuracy"] = email_metrics.accuracy
        out["email_macro_f1"] = email_metrics.macro_f1
    scores = None
    if data.robustness_dir is not None:
        robust = load_robustness(data.robustness_dir, dataset.label_names)
        scores = evaluate_sets(classifier, test, dataset.label_names, robust)
        out["robustness"] = {name: s.to_json() for name, s in scores.items()}
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        report.write_report(
            report_dir,
            test,
            logits,
            dataset.label_names,
            (temperature, threshold),
            metrics,
            metrics.to_json(),
            samples=6,
            seed=seed,
            curves=None if scores is None else {k: v.curve for k, v in scores.items()},
        )
    return out
