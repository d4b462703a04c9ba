"""Temperature scaling and the abstain threshold."""

from __future__ import annotations

import numpy as np

from daemon.model.classifier import softmax
from training.calibration import (
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
)


def _synthetic(true_temperature: float, n: int = 4000, k: int = 10, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / true_temperature)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, k)).astype(np.float32)
    probs = softmax(logits, true_temperature)
    labels = np.array([rng.choice(k, p=p / p.sum()) for p in probs.astype(np.float64)])
    return logits, labels


def test_fit_temperature_recovers_the_generating_temperature() -> None:
    logits, labels = _synthetic(2.5)
    assert abs(fit_temperature(logits, labels) - 2.5) < 0.25
    logits, labels = _synthetic(0.5, seed=1)
    assert abs(fit_temperature(logits, labels) - 0.5) < 0.08


def test_temperature_scaling_reduces_calibration_error() -> None:
    logits, labels = _synthetic(3.0)
    t = fit_temperature(logits, labels)
    raw = softmax(logits, 1.0)
    cal = softmax(logits, t)
    ece_raw = expected_calibration_error(raw.max(1), raw.argmax(1) == labels)
    ece_cal = expected_calibration_error(cal.max(1), cal.argmax(1) == labels)
    assert ece_cal < ece_raw / 2


def test_threshold_meets_target_on_the_data_it_was_chosen_on() -> None:
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 5000).astype(np.float32)
    correct = rng.uniform(0, 1, 5000) < conf  # accuracy rises with confidence
    chosen = choose_threshold(conf, correct, target_accuracy=0.9, min_coverage=0.1)
    kept = conf >= chosen.value
    assert correct[kept].mean() >= 0.9
    assert abs(kept.mean() - chosen.coverage) < 1e-6
    # The lowest such threshold: one step lower misses the target or is the same point.
    assert 0.5 < chosen.value < 0.95


def test_threshold_is_zero_when_everything_already_meets_the_target() -> None:
    conf = np.linspace(0.5, 1, 100).astype(np.float32)
    correct = np.ones(100, dtype=bool)
    assert choose_threshold(conf, correct, 0.97, 0.5).value == 0.0


def test_threshold_respects_minimum_coverage() -> None:
    rng = np.random.default_rng(1)
    conf = rng.uniform(0, 1, 1000).astype(np.float32)
    correct = rng.uniform(0, 1, 1000) < 0.3  # never reaches 0.99
    chosen = choose_threshold(conf, correct, target_accuracy=0.99, min_coverage=0.6)
    assert chosen.coverage >= 0.6
