"""Stage 7, publish: model card and final manifest, then the staging bundle becomes
``models/<version>`` in one rename (a reader never sees half a bundle)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.model.bundle import MODEL_NAME, Manifest, sha256_file
from daemon.model.text import TEXT_RECIPE
from training.config import TrainConfig
from training.metrics import TrainMetrics
from training.report import CardFacts, model_card
from training.stages.bundle import Staging, hardware, write_bundle
from training.stages.calibrate import Thresholds
from training.stages.export import Exported
from training.stages.prepare import Prepared
from training.tracking import Tracker


@dataclass(frozen=True)
class Lineage:
    """What the manifest records of where a bundle came from (``cleaninbox retrain``)."""

    parent_version: str | None = None
    extra_metrics: dict[str, Any] | None = None


def _onnx(config: TrainConfig, exported: Exported) -> str:
    kind = (
        f"int8, {config.export.activations.replace('_', '-')} activation scales"
        if exported.quantised
        else "fp32"
    )
    return f"{kind}, {exported.onnx_mb:.1f} MB"


def card_facts(
    version: str,
    config: TrainConfig,
    prepared: Prepared,
    exported: Exported,
    thresholds: Thresholds,
    train_seconds: float,
) -> CardFacts:
    return CardFacts(
        version=version,
        base_model=exported.manifest.base_model,
        onnx=_onnx(config, exported),
        max_length=config.model.max_length,
        text_recipe=TEXT_RECIPE,
        temperature=thresholds.temperature,
        threshold=thresholds.threshold.value,
        target_accuracy=config.calibration.target_accuracy,
        out_of_scope=thresholds.out_of_scope,
        data_sha256=prepared.data.sha256,
        train_seconds=train_seconds,
        hardware=hardware(),
    )


def publish(
    config: TrainConfig,
    prepared: Prepared,
    staging: Staging,
    exported: Exported,
    thresholds: Thresholds,
    manifest: Manifest,
    metrics: TrainMetrics,
    *,
    out_root: Path,
    checkpoint: Path | None = None,
    lineage: Lineage = Lineage(),
) -> tuple[Path, Manifest]:
    """Name the bundle ``<stamp>-<model sha256[:7]>``, write MODEL_CARD.md and the final
    manifest (``metrics`` must carry ``train_seconds``), rename staging to it and the
    checkpoint after it; return the bundle directory and its manifest."""
    assert metrics.train_seconds is not None
    directory = staging.directory
    version = f"{staging.stamp}-{sha256_file(directory / MODEL_NAME)[:7]}"
    facts = card_facts(version, config, prepared, exported, thresholds, metrics.train_seconds)
    (directory / "MODEL_CARD.md").write_text(model_card(facts, metrics), encoding="utf-8")
    manifest = manifest.model_copy(
        update={
            "version": version,
            "calibration": thresholds.calibration,
            "out_of_scope": thresholds.out_of_scope,
            "memory": thresholds.memory,
            "metrics": {**metrics.manifest_metrics(), **(lineage.extra_metrics or {})},
            "parent_version": lineage.parent_version,
        }
    )
    manifest = write_bundle(directory, directory / MODEL_NAME, exported.tokenizer_json, manifest)
    final = out_root / version
    directory.rename(final)
    if checkpoint is not None:
        # Named after the bundle, so benchmarks can find the PyTorch weights it came from.
        checkpoint.rename(checkpoint.with_name(f"{version}.pt"))
    return final, manifest


def finish_tracking(tracker: Tracker, manifest: Manifest, bundle: Path) -> None:
    """The final numeric metrics, the report figures and the bundle version."""
    tracker.finish(
        {k: float(v) for k, v in manifest.metrics.items() if isinstance(v, int | float)},
        sorted((bundle / "report").glob("*.png")),
        bundle.name,
    )
