"""Stage 2, fit or resume: LP-FT fine-tuning (or a saved checkpoint), then WiSE-FT."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from daemon.errors import ConfigError
from training import tracking
from training.augment import Augmenter
from training.config import TrainConfig
from training.data import Banking77
from training.finetune import (
    EpochRecord,
    FitResult,
    choose_wise_alpha,
    encode,
    fit,
    interpolate,
)
from training.metrics import WiseFT
from training.model import IntentClassifier, LoadedBase
from training.stages.prepare import Prepared
from training.tracking import Tracker

Log = Callable[[str], None]
OnEpoch = Callable[[EpochRecord], None]


@dataclass(frozen=True)
class Fitted:
    """The fine-tuned model and how it came about."""

    result: FitResult
    wise: WiseFT
    checkpoint: Path | None  # the saved weights, renamed after the bundle once published

    @property
    def model(self) -> IntentClassifier:
        return self.result.model


def fit_model(
    config: TrainConfig,
    data: Banking77,
    base: LoadedBase,
    log: Log = print,
    on_epoch: OnEpoch | None = None,
    *,
    num_outputs: int | None = None,
) -> FitResult:
    """A fresh classifier on ``base`` (a loaded base model), fitted as ``config`` says:
    the training half of a run, also what a sweep trial runs."""
    outputs = num_outputs or len(data.label_names)
    model = IntentClassifier(base.encoder, outputs, config.model.pooling)
    return fit(
        model,
        base.tokenizer,
        base.pad_token_id,
        config.model.max_length,
        data.train.texts,
        data.train.labels,
        data.val.texts,
        data.val.labels,
        config.train,
        augment=Augmenter(
            config.train.email_augment_fraction,
            config.train.noise_augment_fraction,
            config.train.long_email_augment_fraction,
        ),
        log=log,
        on_epoch=on_epoch,
    )


def start_tracking(config: TrainConfig, prepared: Prepared) -> Tracker:
    """The run's experiment tracker (``tracking``), named after the config and the time;
    it hears of every epoch (:func:`track_epochs`) and, at publish, of the bundle."""
    return tracking.start(
        config.tracking,
        config.tracking_dir,
        f"{config.name}-{datetime.now(UTC):%Y%m%d-%H%M%S}",
        config.model_dump(mode="json"),
        prepared.data.sha256,
    )


def track_epochs(tracker: Tracker) -> OnEpoch:
    """The ``on_epoch`` callback that logs each epoch to the experiment tracker (the
    probe's step 0 has no training loss)."""

    def on_epoch(record: EpochRecord) -> None:
        metrics = {"val_accuracy": record.val_accuracy, "seconds": record.seconds}
        if not math.isnan(record.train_loss):
            metrics["train_loss"] = record.train_loss
        tracker.epoch(record.epoch, metrics)

    return on_epoch


def fit_or_resume(
    config: TrainConfig,
    prepared: Prepared,
    base: LoadedBase,
    out_root: Path,
    log: Log = print,
    on_epoch: OnEpoch | None = None,
) -> Fitted:
    """Fine-tune (or load ``train.resume_from``), apply WiSE-FT, and keep the weights in
    ``out_root/.checkpoints/`` when ``train.save_checkpoint`` says so."""
    sets = prepared.sets
    if config.train.resume_from is not None:
        model = IntentClassifier(base.encoder, sets.num_outputs, config.model.pooling)
        result = resume(model, config.train.resume_from, log)
    else:
        result = fit_model(config, sets.data, base, log, on_epoch, num_outputs=sets.num_outputs)
    wise = wise_ft(config, result, base, prepared, log)
    checkpoint = (
        save_checkpoint(out_root, result, wise, log) if config.train.save_checkpoint else None
    )
    return Fitted(result, wise, checkpoint)


def wise_ft(
    config: TrainConfig, fitted: FitResult, base: LoadedBase, prepared: Prepared, log: Log
) -> WiseFT:
    """Weight-space ensembling of the fine-tuned and the probe-initialised weights."""
    setting = config.train.wise_alpha
    if setting is None:
        return WiseFT()
    if fitted.initial_state is None:
        log("WiSE-FT: no probe-initialised weights (resumed from a checkpoint); skipped")
        return WiseFT()
    if setting != "auto":
        end = {k: v.clone() for k, v in fitted.model.state_dict().items()}
        interpolate(fitted.model, fitted.initial_state, end, setting)
        log(f"WiSE-FT: alpha {setting}")
        return WiseFT(setting)
    data, other_words = prepared.data, prepared.sets.other_words
    max_len = config.model.max_length
    chosen_on = [(encode(base.tokenizer, data.val.texts, max_len), data.val.labels)]
    if other_words is not None:
        chosen_on.append((encode(base.tokenizer, other_words.texts, max_len), other_words.labels))
    alpha, scores = choose_wise_alpha(
        fitted.model, fitted.initial_state, chosen_on, base.pad_token_id, len(data.label_names)
    )
    log(
        f"WiSE-FT: alpha {alpha} (accuracy on validation"
        + (", development" if len(chosen_on) > 1 else "")
        + " by alpha: "
        + "; ".join(f"{a}: " + "/".join(f"{x:.4f}" for x in s) for a, s in scores.items())
        + ")"
    )
    return WiseFT(alpha, scores)


def save_checkpoint(out_root: Path, fitted: FitResult, wise: WiseFT, log: Log) -> Path:
    """The fine-tuned weights and fit record, for ``train.resume_from`` and benchmarks."""
    checkpoints = out_root / ".checkpoints"
    checkpoints.mkdir(exist_ok=True)
    checkpoint = checkpoints / f"unexported-{datetime.now(UTC):%Y%m%d-%H%M%S}.pt"
    fit_info = {
        "probe_val_accuracy": fitted.probe_val_accuracy,
        "best_epoch": fitted.best_epoch,
        "best_val_accuracy": fitted.best_val_accuracy,
        "history": [vars(r) for r in fitted.history],
        "seconds": fitted.seconds,
        "wise_alpha": wise.alpha,
    }
    torch.save({"state_dict": fitted.model.state_dict(), "fit": fit_info}, checkpoint)
    log(f"checkpoint saved: {checkpoint}")
    return checkpoint


def resume(model: IntentClassifier, path: Path, log: Log) -> FitResult:
    """Load fine-tuned weights saved by ``train.save_checkpoint`` instead of training."""
    if not path.is_file():
        raise ConfigError(f"train.resume_from: {path} does not exist")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["state_dict"])
    except (OSError, RuntimeError, KeyError, pickle.UnpicklingError) as exc:
        raise ConfigError(f"train.resume_from: {path} is not a usable checkpoint: {exc}") from exc
    fit_info = saved.get("fit", {})
    log(f"resumed fine-tuned weights from {path}")
    return FitResult(
        model=model,
        probe_val_accuracy=float(fit_info.get("probe_val_accuracy", 0.0)),
        best_epoch=int(fit_info.get("best_epoch", 0)),
        best_val_accuracy=float(fit_info.get("best_val_accuracy", 0.0)),
        history=[EpochRecord(**r) for r in fit_info.get("history", [])],
        seconds=float(fit_info.get("seconds", 0.0)),
    )
