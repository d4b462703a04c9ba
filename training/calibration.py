"""Temperature scaling and the abstain threshold, both fitted on validation logits."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize_scalar

from daemon.model.classifier import softmax

FloatArray = npt.NDArray[np.float32]


def nll(logits: FloatArray, labels: npt.ArrayLike, temperature: float) -> float:
    probs = softmax(logits, temperature).astype(np.float64)
    picked = probs[np.arange(len(probs)), np.asarray(labels)]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def fit_temperature(logits: FloatArray, labels: npt.ArrayLike) -> float:
    """The temperature T minimising validation NLL of softmax(logits / T) (Guo et al. 2017)."""
    result = minimize_scalar(
        lambda log_t: nll(logits, labels, float(np.exp(log_t))),
        bounds=(np.log(0.01), np.log(100.0)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(result.x))


def expected_calibration_error(
    confidence: FloatArray, correct: npt.NDArray[np.bool_], bins: int = 15
) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


@dataclass(frozen=True)
class Threshold:
    value: float
    coverage: float
    selective_accuracy: float


def coverage_curve(
    confidence: FloatArray, correct: npt.NDArray[np.bool_]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(thresholds, coverage, accuracy of the kept) over every distinct confidence, descending."""
    order = np.argsort(-confidence, kind="stable")
    conf = confidence[order]
    hits = np.cumsum(correct[order].astype(np.float64))
    kept = np.arange(1, len(conf) + 1, dtype=np.float64)
    return conf, (kept / len(conf)).astype(np.float32), (hits / kept).astype(np.float32)


def choose_threshold(
    confidence: FloatArray,
    correct: npt.NDArray[np.bool_],
    target_accuracy: float,
    min_coverage: float,
) -> Threshold:
    """The lowest threshold whose kept predictions reach ``target_accuracy``.

    Never abstains on more than ``1 - min_coverage`` of the validation set: if the target
    needs more, the threshold at ``min_coverage`` is returned instead.
    """
    if len(confidence) == 0:
        return Threshold(0.0, 1.0, 0.0)
    thresholds, coverage, acc = coverage_curve(confidence, correct)
    if acc[-1] >= target_accuracy:
        return Threshold(0.0, 1.0, float(acc[-1]))
    ok = np.nonzero((acc >= target_accuracy) & (coverage >= min_coverage))[0]
    # The largest coverage that still meets the target, else the minimum coverage.
    i = int(ok[-1]) if len(ok) else max(0, int(np.ceil(min_coverage * len(confidence))) - 1)
    # Keep everything with confidence >= thresholds[i]; ties make coverage a little larger.
    value = float(thresholds[i])
    kept = confidence >= value
    return Threshold(value, float(kept.mean()), float(correct[kept].mean()))


@dataclass(frozen=True)
class OperatingPoint:
    """The served thresholds and what they gave on the data they were chosen on."""

    confidence: float  # abstain (low confidence) below this calibrated intent probability
    out_of_scope: float | None  # abstain (out of scope) at or above this "none of these" prob.
    feasible: bool  # every target met on the choosing data
    chosen_on: dict[str, float]


def _acted(
    probs: FloatArray, num_labels: int, confidence: float, out_of_scope: float | None
) -> npt.NDArray[np.bool_]:
    acted: npt.NDArray[np.bool_] = np.asarray(probs[:, :num_labels].max(axis=1) >= confidence)
    if out_of_scope is not None:
        acted &= probs[:, num_labels] < out_of_scope
    return acted


def choose_operating_point(
    val: tuple[FloatArray, npt.ArrayLike],
    dev: tuple[FloatArray, npt.ArrayLike],
    oos: FloatArray,
    num_labels: int,
    *,
    max_acted_wrong: float,
    max_oos_acted: float,
    min_val_selective_accuracy: float,
    min_coverage: float,
) -> OperatingPoint:
    """Thresholds (intent confidence, and "none of these" when ``probs`` have that column)
    that act on as many validation and development messages as possible while:

    - on the development set (other people's words) the share acted on with a wrong intent
      is at most ``max_acted_wrong``;
    - on the out-of-scope calibration messages the share acted on is at most
      ``max_oos_acted``;
    - on validation, the accuracy of what is acted on is at least
      ``min_val_selective_accuracy`` and coverage at least ``min_coverage``.

    Probabilities are calibrated softmax outputs (every column). When no pair meets every
    target, the pair that misses them by the least (the largest relative excess) is
    returned with ``feasible=False``.
    """
    val_probs, val_labels = val
    dev_probs, dev_labels = dev
    has_oos = val_probs.shape[1] > num_labels
    candidates_c = np.unique(np.concatenate([[0.0], np.linspace(0.05, 0.95, 91)]))
    candidates_o: list[float | None] = [None]
    if has_oos:
        candidates_o = [*(float(t) for t in np.linspace(0.05, 0.95, 37)), 1.01]
    val_right = val_probs[:, :num_labels].argmax(axis=1) == np.asarray(val_labels)
    dev_right = dev_probs[:, :num_labels].argmax(axis=1) == np.asarray(dev_labels)
    best: tuple[float, float, float, float | None, dict[str, float]] | None = None
    for t_o in candidates_o:
        for t_c in candidates_c:
            val_acted = _acted(val_probs, num_labels, float(t_c), t_o)
            dev_acted = _acted(dev_probs, num_labels, float(t_c), t_o)
            oos_acted = float(_acted(oos, num_labels, float(t_c), t_o).mean()) if len(oos) else 0.0
            coverage = float(val_acted.mean())
            selective = float(val_right[val_acted].mean()) if val_acted.any() else 1.0
            dev_wrong = float((dev_acted & ~dev_right).mean()) if len(dev_right) else 0.0
            dev_right_acted = float((dev_acted & dev_right).mean()) if len(dev_right) else 0.0
            excess = max(
                dev_wrong / max(max_acted_wrong, 1e-9) - 1,
                oos_acted / max(max_oos_acted, 1e-9) - 1,
                (min_val_selective_accuracy - selective)
                / max(1 - min_val_selective_accuracy, 1e-9),
                (min_coverage - coverage) / max(min_coverage, 1e-9),
                0.0,
            )
            gain = coverage + dev_right_acted
            stats = {
                "val_coverage": coverage,
                "val_selective_accuracy": selective,
                "dev_acted_right": dev_right_acted,
                "dev_acted_wrong": dev_wrong,
                "oos_acted": oos_acted,
            }
            key = (-excess, gain)
            if best is None or key > (best[0], best[1]):
                best = (-excess, gain, float(t_c), t_o, stats)
    assert best is not None
    neg_excess, _, t_c, t_o, stats = best
    return OperatingPoint(t_c, t_o, neg_excess == 0.0, stats)
