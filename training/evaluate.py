"""``cleaninbox evaluate``: score a bundle on the banking77 test set (plain and as emails)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from daemon.model.classifier import Classifier
from daemon.model.samples import render_email
from daemon.model.text import email_to_text
from training import report
from training.config import DataConfig
from training.data import load_banking77
from training.robustness import evaluate_sets, load_robustness


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
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "coverage": metrics["coverage"],
        "selective_accuracy": metrics["selective_accuracy"],
        "ece_calibrated": metrics["ece_calibrated"],
    }
    if emails:
        rng = random.Random(seed + 1)
        texts = [email_to_text(render_email(q, rng)).text for q in test.texts]
        email_metrics = report.classification_metrics(
            classifier.logits(texts),
            test.labels,
            dataset.label_names,
            temperature,
            threshold,
            classifier.out_of_scope_threshold,
        )
        out["email_accuracy"] = email_metrics["accuracy"]
        out["email_macro_f1"] = email_metrics["macro_f1"]
    scores = None
    if data.robustness_dir is not None:
        robust = load_robustness(data.robustness_dir, dataset.label_names)
        scores = evaluate_sets(classifier, test, dataset.label_names, robust)
        out["robustness"] = {name: s.to_json() for name, s in scores.items()}
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        if scores is not None:
            report.plot_risk_coverage(
                {k: v.curve for k, v in scores.items()}, report_dir / "risk_coverage.png"
            )
        names = dataset.label_names
        report.plot_confusion(logits, test.labels, names, report_dir / "confusion_matrix.png")
        report.plot_reliability(
            logits, test.labels, temperature, report_dir / "reliability.png", len(names)
        )
        report.plot_coverage(
            logits,
            test.labels,
            temperature,
            threshold,
            report_dir / "coverage_accuracy.png",
            len(names),
        )
        samples = sorted(random.Random(seed).sample(range(len(test)), min(6, len(test))))
        report.plot_top5(
            test.texts,
            logits,
            test.labels,
            names,
            temperature,
            samples,
            report_dir / "top5_samples.png",
        )
        report.write_per_class(metrics, report_dir / "per_class.csv")
        report.write_json(metrics, report_dir / "metrics.json")
    return out
