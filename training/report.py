"""Evaluation report: metrics, figures and the model card, written into a bundle."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import itertools

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from daemon.model.bundle import OutOfScope
from daemon.model.classifier import softmax
from training.calibration import coverage_curve, expected_calibration_error
from training.data import Split
from training.metrics import ClassificationMetrics, ClassScores, TrainMetrics

FloatArray = npt.NDArray[np.float32]


def intent_probs(logits: FloatArray, temperature: float, num_labels: int) -> FloatArray:
    """Calibrated probabilities of the intents: the softmax over every output (a "none of
    these" column included, as the daemon computes it), then the intent columns."""
    return softmax(logits, temperature)[:, :num_labels]


def classification_metrics(
    logits: FloatArray,
    labels: Sequence[int],
    label_names: Sequence[str],
    temperature: float,
    threshold: float,
    oos_threshold: float | None = None,
) -> ClassificationMetrics:
    """Intent-level scores (the best intent is what the daemon serves) and, at the
    thresholds, coverage and accuracy of what is acted on."""
    truth = np.asarray(labels)
    n = len(label_names)
    probs = intent_probs(logits, temperature, n)
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    correct = pred == truth
    raw_conf = intent_probs(logits, 1.0, n).max(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, pred, labels=list(range(n)), zero_division=0
    )
    kept = conf >= threshold
    if oos_threshold is not None and logits.shape[1] > n:
        kept &= softmax(logits, temperature)[:, n] < oos_threshold
    return ClassificationMetrics(
        examples=len(truth),
        accuracy=float(correct.mean()),
        macro_f1=float(
            f1_score(
                truth, pred, labels=list(range(len(label_names))), average="macro", zero_division=0
            )
        ),
        ece_uncalibrated=expected_calibration_error(raw_conf, correct),
        ece_calibrated=expected_calibration_error(conf, correct),
        abstain_threshold=threshold,
        coverage=float(kept.mean()),
        selective_accuracy=float(correct[kept].mean()) if kept.any() else 0.0,
        per_class={
            name: ClassScores(
                precision=float(precision[i]),
                recall=float(recall[i]),
                f1=float(f1[i]),
                support=int(support[i]),
            )
            for i, name in enumerate(label_names)
        },
    )


def _finish(
    fig: Any, ax: Any, path: Path, axes: tuple[str, str], title: str, legend: str | None = None
) -> None:
    """Label, save and close a one-panel figure: every report figure ends the same way."""
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title)
    if legend is not None:
        ax.legend(loc=legend)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(
    logits: FloatArray, labels: Sequence[int], names: Sequence[str], path: Path
) -> None:
    predicted = logits[:, : len(names)].argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, labels=list(range(len(names))))
    norm = matrix / np.clip(matrix.sum(axis=1, keepdims=True), 1, None)
    fig, ax = plt.subplots(figsize=(16, 15))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=5)
    ax.set_yticks(range(len(names)), names, fontsize=5)
    fig.colorbar(image, ax=ax, fraction=0.03)
    _finish(
        fig,
        ax,
        path,
        ("predicted intent", "true intent"),
        "Confusion matrix (test, rows normalised)",
    )


def plot_reliability(
    logits: FloatArray,
    labels: Sequence[int],
    temperature: float,
    path: Path,
    num_labels: int,
    bins: int = 15,
) -> None:
    truth = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(6, 6))
    edges = np.linspace(0, 1, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    for t, name in ((1.0, "uncalibrated"), (temperature, f"temperature {temperature:.2f}")):
        probs = intent_probs(logits, t, num_labels)
        conf = probs.max(axis=1)
        correct = probs.argmax(axis=1) == truth
        accs = []
        for lo, hi in itertools.pairwise(edges):
            in_bin = (conf > lo) & (conf <= hi)
            accs.append(correct[in_bin].mean() if in_bin.any() else np.nan)
        ece = expected_calibration_error(conf, correct, bins)
        ax.plot(centres, accs, marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    _finish(fig, ax, path, ("confidence", "accuracy"), "Reliability diagram (test)", "upper left")


def plot_coverage(
    logits: FloatArray,
    labels: Sequence[int],
    temperature: float,
    threshold: float,
    path: Path,
    num_labels: int,
) -> None:
    probs = intent_probs(logits, temperature, num_labels)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    _, coverage, accuracy = coverage_curve(conf, correct)
    kept = conf >= threshold
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot(coverage, accuracy)
    ax.scatter(
        [kept.mean()],
        [correct[kept].mean() if kept.any() else 0],
        color="red",
        zorder=3,
        label=f"abstain threshold {threshold:.2f}",
    )
    ax.set_ylim(max(0.0, float(np.nanmin(accuracy)) - 0.02), 1.001)
    axes = ("coverage (share of messages not abstained)", "accuracy on covered messages")
    _finish(fig, ax, path, axes, "Coverage vs accuracy (test)", "lower left")


def plot_risk_coverage(curves: dict[str, list[tuple[float, float]]], path: Path) -> None:
    """Risk (wrong share of what is acted on) against coverage, one line per set."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, curve in curves.items():
        if curve:
            ax.plot([c for c, _ in curve], [r for _, r in curve], label=name)
    axes = (
        "coverage (share acted on, most confident first)",
        "risk (share of those acted on that are wrong)",
    )
    _finish(fig, ax, path, axes, "Risk vs coverage by evaluation set", "upper left")


def plot_top5(
    texts: Sequence[str],
    logits: FloatArray,
    labels: Sequence[int],
    names: Sequence[str],
    temperature: float,
    indices: Sequence[int],
    path: Path,
) -> None:
    if not indices:
        return
    probs = intent_probs(logits, temperature, len(names))
    cols = 2
    rows = (len(indices) + 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3.2 * rows), squeeze=False)
    for ax, i in zip(axes.flat, indices, strict=False):
        top = np.argsort(-probs[i])[:5][::-1]
        colours = ["tab:green" if t == labels[i] else "tab:blue" for t in top]
        ax.barh([names[t] for t in top], probs[i][top], color=colours)
        ax.set_xlim(0, 1)
        text = texts[i] if len(texts[i]) <= 70 else texts[i][:67] + "..."
        ax.set_title(f"{text}\ntrue: {names[labels[i]]}", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(indices) :]:
        ax.axis("off")
    fig.suptitle("Top-5 predicted intents (green: the true intent)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_per_class(metrics: ClassificationMetrics, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["intent", "precision", "recall", "f1", "support"])
        for name, row in metrics.per_class.items():
            writer.writerow(
                [name, f"{row.precision:.4f}", f"{row.recall:.4f}", f"{row.f1:.4f}", row.support]
            )


def write_json(data: Any, path: Path) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_report(
    report_dir: Path,
    test: Split,
    logits: FloatArray,
    names: Sequence[str],
    calibration: tuple[float, float],
    scores: ClassificationMetrics,
    metrics_json: Any,
    *,
    samples: int,
    seed: int,
    curves: Mapping[str, list[tuple[float, float]]] | None = None,
) -> None:
    """The figures, ``per_class.csv`` and ``metrics.json`` of a report directory: one
    writer for the training run's ``report/`` and ``cleaninbox evaluate --report``, so
    both always hold the same files. ``calibration`` is (temperature, abstain threshold);
    ``curves`` (risk against coverage per robustness set) adds ``risk_coverage.png``;
    ``samples`` test texts drawn with ``seed`` get a top-5 plot."""
    temperature, threshold = calibration
    if curves is not None:
        plot_risk_coverage(dict(curves), report_dir / "risk_coverage.png")
    plot_confusion(logits, test.labels, names, report_dir / "confusion_matrix.png")
    plot_reliability(logits, test.labels, temperature, report_dir / "reliability.png", len(names))
    plot_coverage(
        logits,
        test.labels,
        temperature,
        threshold,
        report_dir / "coverage_accuracy.png",
        len(names),
    )
    chosen = sorted(random.Random(seed).sample(range(len(test)), min(samples, len(test))))
    top5 = report_dir / "top5_samples.png"
    plot_top5(test.texts, logits, test.labels, names, temperature, chosen, top5)
    write_per_class(scores, report_dir / "per_class.csv")
    write_json(metrics_json, report_dir / "metrics.json")


def pct(value: float) -> str:
    return f"{value * 100:.2f}%"


@dataclass(frozen=True)
class CardFacts:
    """What MODEL_CARD.md says about the bundle beyond its metrics."""

    version: str
    base_model: str
    onnx: str  # e.g. "int8, per-token activation scales, 22.9 MB"
    max_length: int
    text_recipe: str
    temperature: float
    threshold: float
    target_accuracy: float
    out_of_scope: OutOfScope | None
    data_sha256: Mapping[str, str]
    train_seconds: float
    hardware: str


def _model_section(card: CardFacts) -> list[str]:
    oos = card.out_of_scope
    return [
        "## Model",
        f"- Base model: `{card.base_model}`; masked mean pooling, L2 norm, linear head "
        "initialised from a logistic-regression probe, then fine-tuned (LP-FT).",
        f"- Served as `model.onnx` ({card.onnx}), max_length {card.max_length} tokens, "
        f"input text recipe `{card.text_recipe}`.",
        f"- Calibration: temperature {card.temperature:.3f}; abstain below confidence "
        f"{card.threshold:.3f}"
        + (
            f', or as out of scope at a "none of these" probability of {oos.threshold:.3f}'
            if oos
            else ""
        )
        + (
            " (chosen on validation, the development set and out-of-scope calibration "
            "messages for: " + ", ".join(f"{k} {v:g}" for k, v in oos.targets.items()) + ")."
            if oos
            else f" (chosen for {pct(card.target_accuracy)} accuracy on what is not abstained)."
        ),
        "",
    ]


def _results_table(card: CardFacts, m: TrainMetrics) -> list[str]:
    rows = ["## Results (test)", "", "| model | accuracy | macro-F1 |", "|---|---|---|"]
    if m.baseline:
        rows.append(
            f"| TF-IDF + logistic regression (baseline) | {pct(m.baseline.test_accuracy)} "
            f"| {pct(m.baseline.test_macro_f1)} |"
        )
    for name, ref in (("PyTorch fp32", m.torch_fp32), ("ONNX fp32", m.onnx_fp32)):
        rows.append(f"| {name} | {pct(ref.accuracy)} | {pct(ref.macro_f1)} |")
    rows.append(
        f"| **served bundle ({card.onnx})** | **{pct(m.test.accuracy)}** | "
        f"**{pct(m.test.macro_f1)}** |"
    )
    if m.email:
        rows.append(
            f"| served bundle on test queries rendered as emails | "
            f"{pct(m.email.accuracy)} | {pct(m.email.macro_f1)} |"
        )
    return rows


def _robustness_section(m: TrainMetrics) -> list[str]:
    from training.robustness import table

    if not m.robustness:
        return []
    return [
        "## Robustness (the served decision at the shipped thresholds)",
        "",
        "Shares of each set's messages. `other_words`: banking questions written unlike "
        "banking77 (development set: it chose the recipe and thresholds); `long_emails`: "
        "the same questions inside longer emails; `perturbed`: banking77 test with typos, "
        "contractions, filler, reordering, no capitals or an email wrapper; `out_of_scope`: "
        "messages that are none of the intents (evaluation-only part). See "
        "`data/robustness/DATASHEET.md`.",
        "",
        *table(m.robustness_json()),
        "",
        "Risk against coverage for each set: `report/risk_coverage.png`.",
        "",
    ]


def _intended_use(card: CardFacts, m: TrainMetrics) -> list[str]:
    worst = sorted(m.test.per_class.items(), key=lambda kv: kv[1].f1)[:5]
    return [
        "## Intended use and limits",
        "- Triage of customer-service email for a banking team; English only. "
        + (
            'Mail that is none of the 77 intents is recognised by a "none of these" output '
            "trained on out-of-scope messages and left alone (`out_of_scope`); what it was "
            "not trained on can still slip through: keep rules conservative."
            if card.out_of_scope
            else "Intents outside the 77 (spam, newsletters, other topics) are forced into "
            "the nearest intent: rely on the abstain threshold and rules to leave such "
            "mail alone."
        ),
        "- Worst classes (test F1): "
        + ", ".join(f"`{name}` {row.f1:.2f}" for name, row in worst)
        + ".",
        "",
    ]


def model_card(card: CardFacts, m: TrainMetrics) -> str:
    """MODEL_CARD.md text from the run's facts and metrics."""
    test = m.test
    lines = [
        f"# Model card: {card.version}",
        "",
        "Intent classifier for CleanInbox: 77 banking customer-service intents (banking77).",
        "",
        *_model_section(card),
        "## Data",
        "- banking77 (Casanueva et al. 2020, *Efficient Intent Detection with Dual Sentence "
        "Encoders*; CC BY 4.0): "
        f"{m.examples.train} training, {m.examples.val} validation (stratified "
        f"from train), {m.examples.test} test examples. Test is used only for this report.",
        *[f"- `{name}` sha256 `{sha}`" for name, sha in card.data_sha256.items()],
        "",
        *_results_table(card, m),
        "",
        "- Parity (served vs PyTorch, test): top-1 agreement "
        f"{pct(m.parity_test.agreement)}, "
        f"accuracy drop {m.parity_test.accuracy_drop * 100:.2f} points.",
        f"- Calibration: ECE {test.ece_uncalibrated:.3f} before, {test.ece_calibrated:.3f} "
        "after temperature scaling.",
        f"- At the abstain threshold: coverage {pct(test.coverage)}, accuracy on covered "
        f"{pct(test.selective_accuracy)}.",
        f"- Training time {card.train_seconds / 60:.1f} min on {card.hardware}.",
        "",
        *_robustness_section(m),
        "Figures in `report/`: `confusion_matrix.png`, `reliability.png`, `coverage_accuracy.png`, "
        "`top5_samples.png` (and `risk_coverage.png` with the robustness sets); per-class "
        "scores in `report/per_class.csv`.",
        "",
        *_intended_use(card, m),
    ]
    return "\n".join(lines)
