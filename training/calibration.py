"""Temperature scaling and the abstain threshold, both fitted on validation logits."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize_scalar

from daemon.classifier import softmax

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
