"""Evaluation report: metrics, figures and the model card, written into a bundle."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import itertools

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from daemon.model.classifier import softmax
from training.calibration import coverage_curve, expected_calibration_error

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
) -> dict[str, Any]:
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
    return {
        "examples": len(truth),
        "accuracy": float(correct.mean()),
        "macro_f1": float(
            f1_score(
                truth, pred, labels=list(range(len(label_names))), average="macro", zero_division=0
            )
        ),
        "ece_uncalibrated": expected_calibration_error(raw_conf, correct),
        "ece_calibrated": expected_calibration_error(conf, correct),
        "abstain_threshold": threshold,
        "coverage": float(kept.mean()),
        "selective_accuracy": float(correct[kept].mean()) if kept.any() else 0.0,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
    }


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
    ax.set_xlabel("predicted intent")
    ax.set_ylabel("true intent")
    ax.set_title("Confusion matrix (test, rows normalised)")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram (test)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    ax.set_xlabel("coverage (share of messages not abstained)")
    ax.set_ylabel("accuracy on covered messages")
    ax.set_title("Coverage vs accuracy (test)")
    ax.set_ylim(max(0.0, float(np.nanmin(accuracy)) - 0.02), 1.001)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_risk_coverage(curves: dict[str, list[tuple[float, float]]], path: Path) -> None:
    """Risk (wrong share of what is acted on) against coverage, one line per set."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, curve in curves.items():
        if curve:
            ax.plot([c for c, _ in curve], [r for _, r in curve], label=name)
    ax.set_xlabel("coverage (share acted on, most confident first)")
    ax.set_ylabel("risk (share of those acted on that are wrong)")
    ax.set_title("Risk vs coverage by evaluation set")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def write_per_class(metrics: dict[str, Any], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["intent", "precision", "recall", "f1", "support"])
        for name, row in metrics["per_class"].items():
            writer.writerow(
                [
                    name,
                    f"{row['precision']:.4f}",
                    f"{row['recall']:.4f}",
                    f"{row['f1']:.4f}",
                    row["support"],
                ]
            )


def write_json(data: Any, path: Path) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def pct(value: float) -> str:
    return f"{value * 100:.2f}%"


def _robustness_section(metrics: dict[str, Any]) -> list[str]:
    from training.robustness import table

    scores = metrics.get("robustness")
    if not scores:
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
        *table(scores),
        "",
        "Risk against coverage for each set: `report/risk_coverage.png`.",
        "",
    ]


def model_card(summary: dict[str, Any]) -> str:
    """MODEL_CARD.md text from the run summary."""
    m = summary["metrics"]
    test = m["test"]
    lines = [
        f"# Model card: {summary['version']}",
        "",
        "Intent classifier for CleanInbox: 77 banking customer-service intents (banking77).",
        "",
        "## Model",
        f"- Base model: `{summary['base_model']}`; masked mean pooling, L2 norm, linear head "
        "initialised from a logistic-regression probe, then fine-tuned (LP-FT).",
        f"- Served as `model.onnx` ({summary['onnx']}), max_length {summary['max_length']} tokens, "
        f"input text recipe `{summary['text_recipe']}`.",
        f"- Calibration: temperature {summary['temperature']:.3f}; abstain below confidence "
        f"{summary['threshold']:.3f}"
        + (
            f', or as out of scope at a "none of these" probability of '
            f"{summary['out_of_scope']['threshold']:.3f}"
            if summary.get("out_of_scope")
            else ""
        )
        + (
            " (chosen on validation, the development set and out-of-scope calibration "
            "messages for: "
            + ", ".join(f"{k} {v:g}" for k, v in summary["out_of_scope"]["targets"].items())
            + ")."
            if summary.get("out_of_scope")
            else f" (chosen for {pct(summary['target_accuracy'])} accuracy on what is not "
            "abstained)."
        ),
        "",
        "## Data",
        "- banking77 (Casanueva et al. 2020, *Efficient Intent Detection with Dual Sentence "
        "Encoders*; CC BY 4.0): "
        f"{m['examples']['train']} training, {m['examples']['val']} validation (stratified "
        f"from train), {m['examples']['test']} test examples. Test is used only for this report.",
        *[f"- `{name}` sha256 `{sha}`" for name, sha in summary["data_sha256"].items()],
        "",
        "## Results (test)",
        "",
        "| model | accuracy | macro-F1 |",
        "|---|---|---|",
    ]
    if m.get("baseline"):
        b = m["baseline"]
        lines.append(
            f"| TF-IDF + logistic regression (baseline) | {pct(b['test_accuracy'])} "
            f"| {pct(b['test_macro_f1'])} |"
        )
    if m.get("torch_fp32"):
        lines.append(
            f"| PyTorch fp32 | {pct(m['torch_fp32']['accuracy'])} | "
            f"{pct(m['torch_fp32']['macro_f1'])} |"
        )
    if m.get("onnx_fp32"):
        lines.append(
            f"| ONNX fp32 | {pct(m['onnx_fp32']['accuracy'])} | {pct(m['onnx_fp32']['macro_f1'])} |"
        )
    lines.append(
        f"| **served bundle ({summary['onnx']})** | **{pct(test['accuracy'])}** | "
        f"**{pct(test['macro_f1'])}** |"
    )
    if m.get("email"):
        e = m["email"]
        lines.append(
            f"| served bundle on test queries rendered as emails | "
            f"{pct(e['accuracy'])} | {pct(e['macro_f1'])} |"
        )
    lines += [
        "",
        "- Parity (served vs PyTorch, test): top-1 agreement "
        f"{pct(m['parity_test']['agreement'])}, "
        f"accuracy drop {m['parity_test']['accuracy_drop'] * 100:.2f} points.",
        f"- Calibration: ECE {test['ece_uncalibrated']:.3f} before, {test['ece_calibrated']:.3f} "
        "after temperature scaling.",
        f"- At the abstain threshold: coverage {pct(test['coverage'])}, accuracy on covered "
        f"{pct(test['selective_accuracy'])}.",
        f"- Training time {summary['train_seconds'] / 60:.1f} min on {summary['hardware']}.",
        "",
        *_robustness_section(m),
        "Figures in `report/`: `confusion_matrix.png`, `reliability.png`, `coverage_accuracy.png`, "
        "`top5_samples.png` (and `risk_coverage.png` with the robustness sets); per-class "
        "scores in `report/per_class.csv`.",
        "",
        "## Intended use and limits",
        "- Triage of customer-service email for a banking team; English only. "
        + (
            'Mail that is none of the 77 intents is recognised by a "none of these" output '
            "trained on out-of-scope messages and left alone (`out_of_scope`); what it was "
            "not trained on can still slip through: keep rules conservative."
            if summary.get("out_of_scope")
            else "Intents outside the 77 (spam, newsletters, other topics) are forced into "
            "the nearest intent: rely on the abstain threshold and rules to leave such "
            "mail alone."
        ),
        "- Worst classes (test F1): "
        + ", ".join(
            f"`{name}` {row['f1']:.2f}"
            for name, row in sorted(test["per_class"].items(), key=lambda kv: kv[1]["f1"])[:5]
        )
        + ".",
        "",
    ]
    return "\n".join(lines)
