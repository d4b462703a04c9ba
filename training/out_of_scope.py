"""The "none of these" class: its training data, and the thresholds the daemon serves.

With ``model.out_of_scope_class`` the classifier has one output more than banking77 has
intents, trained on the out-of-scope training part of ``data.robustness_dir`` (a share of
it, ``train.oos_calibration_fraction``, is kept out to choose thresholds on). The served
decision then abstains for one of two reasons: the best intent is not confident enough
(``low_confidence``), or "none of these" is likely enough (``out_of_scope``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from daemon.model.bundle import OutOfScope
from daemon.model.classifier import softmax
from training.calibration import OperatingPoint, choose_operating_point, fit_temperature
from training.config import TrainConfig
from training.data import Banking77, Split
from training.robustness import RobustnessData

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TrainingSets:
    """banking77 with the robustness data folded in as the config says."""

    data: Banking77  # train extended (paraphrases, out-of-scope examples labelled num_labels)
    num_outputs: int  # intents, plus one for "none of these"
    oos_calibration: list[str]  # out-of-scope messages kept out of training
    other_words: Split | None  # the development set (never trained on)


def _in_calibration(text: str, fraction: float) -> bool:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def training_sets(
    config: TrainConfig, data: Banking77, robust: RobustnessData | None
) -> TrainingSets:
    """Fold the robustness data into training as ``config`` says."""
    num_labels = len(data.label_names)
    if robust is None:
        return TrainingSets(data, num_labels, [], None)
    texts = list(data.train.texts)
    labels = list(data.train.labels)
    if config.train.paraphrases:
        texts += robust.paraphrases.texts
        labels += robust.paraphrases.labels
    fraction = config.train.oos_calibration_fraction
    calibration = [t for t in robust.oos_train if _in_calibration(t, fraction)]
    outputs = num_labels
    if config.model.out_of_scope_class:
        trainable = [t for t in robust.oos_train if not _in_calibration(t, fraction)]
        texts += trainable * config.train.oos_weight
        labels += [num_labels] * (len(trainable) * config.train.oos_weight)
        outputs += 1
    else:  # without the class nothing is trained on: every out-of-scope message calibrates
        calibration = list(robust.oos_train)
    data = dataclasses.replace(data, train=Split(texts, labels))
    return TrainingSets(data, outputs, calibration, robust.other_words)


@dataclass(frozen=True)
class Calibrated:
    temperature: float
    point: OperatingPoint
    out_of_scope: OutOfScope | None


def calibrate(
    config: TrainConfig,
    num_labels: int,
    val: tuple[FloatArray, Sequence[int]],
    dev: tuple[FloatArray, Sequence[int]],
    oos_logits: FloatArray,
) -> Calibrated:
    """Temperature on validation (and the out-of-scope calibration messages, labelled "none
    of these", when the class exists), then the thresholds (see
    :func:`~training.calibration.choose_operating_point`)."""
    val_logits, val_labels = val
    has_class = val_logits.shape[1] > num_labels
    fit_logits, fit_labels = val_logits, list(val_labels)
    if has_class and len(oos_logits):
        fit_logits = np.concatenate([val_logits, oos_logits])
        fit_labels += [num_labels] * len(oos_logits)
    temperature = fit_temperature(fit_logits, fit_labels)
    c = config.calibration
    point = choose_operating_point(
        (softmax(val_logits, temperature), val_labels),
        (softmax(dev[0], temperature), dev[1]),
        softmax(oos_logits, temperature)
        if len(oos_logits)
        else np.zeros((0, val_logits.shape[1]), np.float32),
        num_labels,
        max_acted_wrong=c.max_acted_wrong,
        max_oos_acted=c.max_oos_acted,
        min_val_selective_accuracy=c.target_accuracy,
        min_coverage=c.min_coverage,
    )
    oos = None
    if has_class:
        oos = OutOfScope(
            threshold=min(1.0, point.out_of_scope or 1.0),
            targets={
                "max_acted_wrong": c.max_acted_wrong,
                "max_oos_acted": c.max_oos_acted,
                "target_accuracy": c.target_accuracy,
                "min_coverage": c.min_coverage,
            },
            chosen_on=point.chosen_on,
        )
    return Calibrated(temperature, point, oos)
