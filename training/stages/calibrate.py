"""Stage 4, calibrate: temperature and abstain thresholds on the served logits, and the
correction memory's two similarity thresholds on the served embeddings and the decision
just calibrated, written into the staging bundle so that every later stage scores what
the daemon will serve."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from daemon.model.bundle import (
    Calibration,
    Manifest,
    MemoryCalibration,
    OutOfScope,
    write_manifest,
)
from daemon.model.classifier import Classifier, Outputs, softmax
from training.calibration import Threshold, choose_threshold, fit_temperature
from training.config import TrainConfig
from training.memory_calibration import Part, Serving, calibrate_memory
from training.out_of_scope import calibrate
from training.stages.export import Exported
from training.stages.prepare import Prepared

FloatArray = npt.NDArray[np.float32]
Log = Callable[[str], None]


@dataclass(frozen=True)
class Thresholds:
    """The calibration the bundle ships."""

    temperature: float
    threshold: Threshold  # abstain below this confidence (and what it gave on validation)
    out_of_scope: OutOfScope | None  # the "none of these" threshold, when the class exists
    calibration: Calibration  # the manifest's section
    memory: MemoryCalibration | None = None  # when the graph returns embeddings

    @property
    def oos_threshold(self) -> float | None:
        return self.out_of_scope.threshold if self.out_of_scope is not None else None


def _with_robustness(
    config: TrainConfig, prepared: Prepared, exported: Exported, dev: FloatArray, log: Log
) -> tuple[float, Threshold, OutOfScope | None]:
    """Thresholds chosen on validation, the development set (``dev``: its served logits)
    and the out-of-scope calibration messages together (see
    ``training.out_of_scope.calibrate``)."""
    sets, data, served = prepared.sets, prepared.data, exported.served
    assert sets.other_words is not None
    calibrated = calibrate(
        config,
        len(data.label_names),
        (exported.served_val, data.val.labels),
        (dev, sets.other_words.labels),
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


def memory_threshold(
    config: TrainConfig,
    prepared: Prepared,
    exported: Exported,
    serving: Serving,
    dev: Outputs | None,
    log: Log,
) -> MemoryCalibration | None:
    """The correction memory's thresholds, chosen on the served embeddings and decisions
    of the validation split and, when the run has it, the development set (``dev``: its
    served outputs); never on test (see ``training.memory_calibration``)."""
    found = exported.served_val_embeddings
    if found is None:
        return None
    data = prepared.data
    parts = [Part("validation", found, exported.served_val, data.val.labels)]
    other_words = prepared.sets.other_words
    if dev is not None and dev.embeddings is not None and other_words is not None:
        parts.append(Part("development", dev.embeddings, dev.logits, other_words.labels))
    choice = calibrate_memory(
        parts,
        data.label_names,
        serving,
        config.memory.max_flip_rate,
        config.memory.support,
        config.train.seed,
        remap_share=config.memory.remap_share,
        remap_follow=config.memory.remap_follow,
    )
    log(choice.line())
    return choice.calibration(int(found.shape[1]))


def calibrate_thresholds(
    config: TrainConfig, prepared: Prepared, exported: Exported, log: Log = print
) -> Thresholds:
    """Calibrate on the served graph's outputs: the abstain thresholds with the robustness
    sets when configured (on validation alone otherwise), then the memory's with the
    decision those thresholds serve."""
    other_words = prepared.sets.other_words
    dev = exported.served.outputs(other_words.texts) if other_words is not None else None
    if dev is not None:
        temperature, threshold, out_of_scope = _with_robustness(
            config, prepared, exported, dev.logits, log
        )
    else:
        temperature, threshold, out_of_scope = _validation_only(config, prepared, exported, log)
    serving = Serving(
        temperature, threshold.value, out_of_scope.threshold if out_of_scope else None
    )
    memory = memory_threshold(config, prepared, exported, serving, dev, log)
    calibration = Calibration(
        temperature=temperature,
        abstain_threshold=threshold.value,
        target_accuracy=config.calibration.target_accuracy,
        validation_coverage=threshold.coverage,
        validation_selective_accuracy=threshold.selective_accuracy,
    )
    return Thresholds(temperature, threshold, out_of_scope, calibration, memory)


def serve_calibrated(
    directory: Path, manifest: Manifest, thresholds: Thresholds
) -> tuple[Manifest, Classifier]:
    """Write the thresholds into the staging bundle's manifest; return it and the bundle
    served with them (files were verified at export)."""
    manifest = manifest.model_copy(
        update={
            "calibration": thresholds.calibration,
            "out_of_scope": thresholds.out_of_scope,
            "memory": thresholds.memory,
        }
    )
    write_manifest(directory, manifest)
    return manifest, Classifier(directory, batch_size=32, verify=False)
