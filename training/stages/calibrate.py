"""Stage 4, calibrate: temperature and abstain thresholds on the served logits, written
into the staging bundle so that every later stage scores what the daemon will serve."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.model.bundle import Calibration, Manifest, OutOfScope, write_manifest
from daemon.model.classifier import Classifier, softmax
from training.calibration import Threshold, choose_threshold, fit_temperature
from training.config import TrainConfig
from training.out_of_scope import calibrate
from training.stages.export import Exported
from training.stages.prepare import Prepared

Log = Callable[[str], None]


@dataclass(frozen=True)
class Thresholds:
    """The calibration the bundle ships."""

    temperature: float
    threshold: Threshold  # abstain below this confidence (and what it gave on validation)
    out_of_scope: OutOfScope | None  # the "none of these" threshold, when the class exists
    calibration: Calibration  # the manifest's section

    @property
    def oos_threshold(self) -> float | None:
        return self.out_of_scope.threshold if self.out_of_scope is not None else None


def _with_robustness(
    config: TrainConfig, prepared: Prepared, exported: Exported, log: Log
) -> tuple[float, Threshold, OutOfScope | None]:
    """Thresholds chosen on validation, the development set and the out-of-scope
    calibration messages together (see ``training.out_of_scope.calibrate``)."""
    sets, data, served = prepared.sets, prepared.data, exported.served
    assert sets.other_words is not None
    calibrated = calibrate(
        config,
        len(data.label_names),
        (exported.served_val, data.val.labels),
        (served.logits(sets.other_words.texts), sets.other_words.labels),
        served.logits(sets.oos_calibration),
    )
    point, out_of_scope = calibrated.point, calibrated.out_of_scope
    threshold = Threshold(
        point.confidence,
        point.chosen_on["val_coverage"],
        point.chosen_on["val_selective_accuracy"],
    )
    log(
        f"calibration: temperature {calibrated.temperature:.3f}, abstain below confidence "
        f"{point.confidence:.3f}"
        + (f" or at none-of-these {out_of_scope.threshold:.3f}" if out_of_scope is not None else "")
        + ("" if point.feasible else " (NOT every target met)")
        + ": "
        + ", ".join(f"{k} {v:.4f}" for k, v in point.chosen_on.items())
    )
    return calibrated.temperature, threshold, out_of_scope


def _validation_only(
    config: TrainConfig, prepared: Prepared, exported: Exported, log: Log
) -> tuple[float, Threshold, OutOfScope | None]:
    """Temperature and the lowest threshold reaching the target accuracy on validation."""
    served_val, labels = exported.served_val, prepared.data.val.labels
    temperature = fit_temperature(served_val, labels)
    threshold = choose_threshold(
        softmax(served_val, temperature).max(axis=1),
        served_val.argmax(axis=1) == np.asarray(labels),
        config.calibration.target_accuracy,
        config.calibration.min_coverage,
    )
    log(
        f"calibration: temperature {temperature:.3f}, abstain below "
        f"{threshold.value:.3f} (validation coverage {threshold.coverage:.3f}, "
        f"accuracy on covered {threshold.selective_accuracy:.4f})"
    )
    return temperature, threshold, None


def calibrate_thresholds(
    config: TrainConfig, prepared: Prepared, exported: Exported, log: Log = print
) -> Thresholds:
    """Calibrate on the served graph's logits: with the robustness sets when configured,
    on validation alone otherwise."""
    choose = _with_robustness if prepared.sets.other_words is not None else _validation_only
    temperature, threshold, out_of_scope = choose(config, prepared, exported, log)
    calibration = Calibration(
        temperature=temperature,
        abstain_threshold=threshold.value,
        target_accuracy=config.calibration.target_accuracy,
        validation_coverage=threshold.coverage,
        validation_selective_accuracy=threshold.selective_accuracy,
    )
    return Thresholds(temperature, threshold, out_of_scope, calibration)


def serve_calibrated(
    directory: Path, manifest: Manifest, thresholds: Thresholds
) -> tuple[Manifest, Classifier]:
    """Write the thresholds into the staging bundle's manifest; return it and the bundle
    served with them (files were verified at export)."""
    manifest = manifest.model_copy(
        update={"calibration": thresholds.calibration, "out_of_scope": thresholds.out_of_scope}
    )
    write_manifest(directory, manifest)
    return manifest, Classifier(directory, batch_size=32, verify=False)
