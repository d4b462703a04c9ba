"""``cleaninbox train``: data -> fine-tune -> export -> parity -> calibrate -> report -> bundle."""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import platform
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from daemon import __version__
from daemon.errors import ConfigError
from daemon.model.bundle import (
    MODEL_NAME,
    SCHEMA_VERSION,
    TOKENIZER_NAME,
    Calibration,
    DatasetInfo,
    Manifest,
    OutOfScope,
    hash_bundle_files,
    sha256_file,
    write_manifest,
)
from daemon.model.classifier import Classifier
from daemon.model.samples import render_email
from daemon.model.text import TEXT_RECIPE, email_to_text
from training import report, tracking
from training.augment import Augmenter
from training.baseline import run_baseline
from training.calibration import Threshold, choose_threshold, fit_temperature
from training.config import TrainConfig
from training.data import Banking77, Split, load_banking77, same_text_key
from training.export import build_onnx, check_parity, parity
from training.finetune import (
    EpochRecord,
    FitResult,
    choose_wise_alpha,
    encode,
    fit,
    interpolate,
    predict_logits,
    seed_everything,
)
from training.model import IntentClassifier, LoadedBase, load_base_model, resolve_base_model
from training.out_of_scope import TrainingSets, calibrate, training_sets
from training.robustness import evaluate_sets, load_robustness
from training.robustness import table as robustness_table

Log = Callable[[str], None]


def code_version() -> str:
    """Package version plus the git commit (and ``-dirty``) when run from a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"


def _hardware() -> str:
    return f"{platform.machine()} CPU, {os.cpu_count()} threads"


def _write_bundle(
    directory: Path, model_file: Path, tokenizer_json: str, manifest: Manifest
) -> Manifest:
    directory.mkdir(parents=True, exist_ok=True)
    if model_file != directory / MODEL_NAME:
        shutil.copyfile(model_file, directory / MODEL_NAME)
    (directory / TOKENIZER_NAME).write_text(tokenizer_json, encoding="utf-8")
    manifest = manifest.model_copy(update={"files": hash_bundle_files(directory)})
    write_manifest(directory, manifest)
    return manifest


def _email_texts(queries: Sequence[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    return [email_to_text(render_email(q, rng)).text for q in queries]


def _summary_metrics(logits: Any, labels: Sequence[int], names: Sequence[str]) -> dict[str, Any]:
    full = report.classification_metrics(logits, labels, names, 1.0, 0.0)
    return {"accuracy": full["accuracy"], "macro_f1": full["macro_f1"]}


def train(
    config: TrainConfig,
    output_dir: Path | None = None,
    log: Log = print,
    *,
    extra_train: Split | None = None,
    replace_texts: Collection[str] = (),
    parent_version: str | None = None,
    extra_metrics: dict[str, Any] | None = None,
) -> Path:
    """Run the whole pipeline; return the new bundle directory (``models/<version>``).

    ``extra_train``: examples added to banking77's training split (never to validation or
    test), e.g. the user's corrections for ``cleaninbox retrain``; ``replace_texts``:
    training examples whose text (case and spacing aside) is one of these are dropped
    first, so a correction overrides banking77's label for the same text and a held-out
    correction is never trained on under another label; ``parent_version`` and
    ``extra_metrics`` are recorded in the manifest (lineage).
    """
    started = time.perf_counter()
    seed = config.train.seed
    out_root = output_dir or config.output_dir
    out_root.mkdir(parents=True, exist_ok=True)

    seed_everything(seed)
    if config.model.init == "pretrained":
        resolve_base_model(config.model.base_model)  # a wrong path fails before any work
    data: Banking77 = load_banking77(config.data, seed)
    if replace_texts:
        drop = {same_text_key(t) for t in replace_texts}
        keep = [i for i, t in enumerate(data.train.texts) if same_text_key(t) not in drop]
        if len(keep) < len(data.train):
            log(f"data: {len(data.train) - len(keep)} training examples replaced by corrections")
            data = dataclasses.replace(
                data,
                train=Split(
                    [data.train.texts[i] for i in keep], [data.train.labels[i] for i in keep]
                ),
            )
    if extra_train is not None and len(extra_train):
        data = dataclasses.replace(
            data,
            train=Split(
                data.train.texts + extra_train.texts, data.train.labels + extra_train.labels
            ),
        )
        log(f"data: {len(extra_train)} extra training examples (corrections)")
    robust = (
        load_robustness(config.data.robustness_dir, data.label_names)
        if config.data.robustness_dir is not None
        else None
    )
    sets = training_sets(config, data, robust)
    log(
        f"data: {len(sets.data.train)} train, {len(data.val)} validation, {len(data.test)} test "
        f"({data.source}, {config.data.dir})"
        + (
            f"; robustness sets from {config.data.robustness_dir}: "
            f"{len(robust.other_words)} development, {len(robust.oos_eval)} out-of-scope "
            f"evaluation, {len(sets.oos_calibration)} out-of-scope calibration"
            if robust is not None
            else ""
        )
    )
    base = load_base_model(config.model)
    log(f"base model: {base.name}")
    tracker = tracking.start(
        config.tracking,
        config.tracking_dir,
        f"{config.name}-{datetime.now(UTC):%Y%m%d-%H%M%S}",
        config.model_dump(mode="json"),
        data.sha256,
    )

    def on_epoch(record: EpochRecord) -> None:
        metrics = {"val_accuracy": record.val_accuracy, "seconds": record.seconds}
        if not math.isnan(record.train_loss):
            metrics["train_loss"] = record.train_loss
        tracker.epoch(record.epoch, metrics)

    if config.train.resume_from is not None:
        model = IntentClassifier(base.encoder, sets.num_outputs, config.model.pooling)
        fitted = _resume(model, config.train.resume_from, log)
    else:
        fitted = fit_model(config, sets.data, base, log, on_epoch, num_outputs=sets.num_outputs)
    model = fitted.model
    wise = _wise_ft(config, fitted, base, data, sets, log)
    checkpoint: Path | None = None
    if config.train.save_checkpoint:
        checkpoints = out_root / ".checkpoints"
        checkpoints.mkdir(exist_ok=True)
        checkpoint = checkpoints / f"unexported-{datetime.now(UTC):%Y%m%d-%H%M%S}.pt"
        fit_info = {
            "probe_val_accuracy": fitted.probe_val_accuracy,
            "best_epoch": fitted.best_epoch,
            "best_val_accuracy": fitted.best_val_accuracy,
            "history": [vars(r) for r in fitted.history],
            "seconds": fitted.seconds,
            "wise_alpha": wise.get("alpha"),
        }
        torch.save({"state_dict": model.state_dict(), "fit": fit_info}, checkpoint)
        log(f"checkpoint saved: {checkpoint}")
    max_len = config.model.max_length
    torch_val = predict_logits(
        model, encode(base.tokenizer, data.val.texts, max_len), base.pad_token_id
    )
    torch_test = predict_logits(
        model, encode(base.tokenizer, data.test.texts, max_len), base.pad_token_id
    )

    created = datetime.now(UTC).replace(microsecond=0)
    stamp = created.strftime("%Y%m%d-%H%M%S")
    staging = out_root / f".staging-{stamp}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    tokenizer_json = base.tokenizer.to_str()
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        out_of_scope=OutOfScope(threshold=1.0)
        if sets.num_outputs > len(data.label_names)
        else None,
        version="staging",
        created_at=created,
        code_version=code_version(),
        labels=data.label_names,
        max_length=max_len,
        text_recipe=TEXT_RECIPE,
        inputs=["input_ids", "attention_mask"],
        pad_token_id=base.pad_token_id,
        calibration=Calibration(temperature=1.0, abstain_threshold=0.0),
        base_model=base.name,
        dataset=DatasetInfo(name="banking77", source=data.source, files=data.sha256),
        training_config=config.model_dump(mode="json"),
        metrics={},
        files={MODEL_NAME: "", TOKENIZER_NAME: ""},
    )
    try:
        with tempfile.TemporaryDirectory(prefix="cleaninbox-export-") as tmp:
            work = Path(tmp)

            def evaluate(graph: Path) -> Any:
                """Logits of the validation texts for an ONNX graph, served as the daemon would."""
                probe = work / "probe-bundle"
                shutil.rmtree(probe, ignore_errors=True)
                _write_bundle(probe, graph, tokenizer_json, manifest)
                return Classifier(probe, batch_size=32).logits(data.val.texts)

            artifacts = build_onnx(model, staging, work, config.export, evaluate, log)
            manifest = _write_bundle(staging, artifacts.model_path, tokenizer_json, manifest)
            fp32_dir = work / "fp32"
            _write_bundle(fp32_dir, artifacts.fp32_path, tokenizer_json, manifest)
            served = Classifier(staging, batch_size=32)
            fp32 = Classifier(fp32_dir, batch_size=32)
            served_val = served.logits(data.val.texts)
            served_test = served.logits(data.test.texts)
            fp32_test = fp32.logits(data.test.texts)
            onnx_mb = artifacts.model_path.stat().st_size / 1e6
            log(f"exported {'int8' if artifacts.quantised else 'fp32'} ONNX: {onnx_mb:.1f} MB")
            selection = artifacts.selection

            parity_val = parity(torch_val, served_val, data.val.labels)
            parity_test = parity(torch_test, served_test, data.test.labels)
            quant_test = parity(fp32_test, served_test, data.test.labels)
            log(
                f"parity (validation): agreement {parity_val.agreement:.4f}, accuracy drop "
                f"{parity_val.accuracy_drop * 100:.2f} points"
            )
            check_parity(
                parity_val,
                config.export.min_agreement,
                config.export.max_accuracy_drop,
                "served ONNX vs PyTorch (validation)",
            )

            names = data.label_names
            if sets.other_words is not None:
                calibrated = calibrate(
                    config,
                    len(names),
                    (served_val, data.val.labels),
                    (served.logits(sets.other_words.texts), sets.other_words.labels),
                    served.logits(sets.oos_calibration),
                )
                temperature = calibrated.temperature
                point = calibrated.point
                out_of_scope = calibrated.out_of_scope
                threshold = Threshold(
                    point.confidence,
                    point.chosen_on["val_coverage"],
                    point.chosen_on["val_selective_accuracy"],
                )
                log(
                    f"calibration: temperature {temperature:.3f}, abstain below confidence "
                    f"{point.confidence:.3f}"
                    + (
                        f" or at none-of-these {out_of_scope.threshold:.3f}"
                        if out_of_scope is not None
                        else ""
                    )
                    + ("" if point.feasible else " (NOT every target met)")
                    + ": "
                    + ", ".join(f"{k} {v:.4f}" for k, v in point.chosen_on.items())
                )
            else:
                out_of_scope = None
                temperature = fit_temperature(served_val, data.val.labels)
                threshold = choose_threshold(
                    _confidence(served_val, temperature),
                    served_val.argmax(axis=1) == np.asarray(data.val.labels),
                    config.calibration.target_accuracy,
                    config.calibration.min_coverage,
                )
                log(
                    f"calibration: temperature {temperature:.3f}, abstain below "
                    f"{threshold.value:.3f} (validation coverage {threshold.coverage:.3f}, "
                    f"accuracy on covered {threshold.selective_accuracy:.4f})"
                )
            calibration = Calibration(
                temperature=temperature,
                abstain_threshold=threshold.value,
                target_accuracy=config.calibration.target_accuracy,
                validation_coverage=threshold.coverage,
                validation_selective_accuracy=threshold.selective_accuracy,
            )
            # From here on the staging bundle serves the chosen thresholds.
            manifest = manifest.model_copy(
                update={"calibration": calibration, "out_of_scope": out_of_scope}
            )
            write_manifest(staging, manifest)
            served = Classifier(staging, batch_size=32, verify=False)
            oos_t = out_of_scope.threshold if out_of_scope is not None else None
            test_metrics = report.classification_metrics(
                served_test, data.test.labels, names, temperature, threshold.value, oos_t
            )
            metrics: dict[str, Any] = {
                "examples": {
                    "train": len(data.train),
                    "val": len(data.val),
                    "test": len(data.test),
                },
                "probe_val_accuracy": fitted.probe_val_accuracy,
                "best_epoch": fitted.best_epoch,
                "val_accuracy": float(
                    (served_val.argmax(axis=1) == np.asarray(data.val.labels)).mean()
                ),
                "test": test_metrics,
                "torch_fp32": _summary_metrics(torch_test, data.test.labels, names),
                "onnx_fp32": _summary_metrics(fp32_test, data.test.labels, names),
                "parity_val": parity_val.to_json(),
                "parity_test": parity_test.to_json(),
                "int8_vs_fp32_test": quant_test.to_json(),
                "history": [vars(r) for r in fitted.history],
                "quantisation": {
                    "per_channel": config.export.per_channel,
                    "kept_fp32": selection.kept if selection else list(config.export.keep_fp32),
                    "val_agreement_all_int8": selection.agreement_all_int8 if selection else None,
                    "sensitivity_kl": selection.sensitivity if selection else {},
                },
                "fit_seconds": fitted.seconds,
                "wise_ft": wise,
            }
            if config.report.baseline:
                log("baseline: TF-IDF + logistic regression")
                base_result = run_baseline(
                    (data.train.texts, data.train.labels),
                    (data.val.texts, data.val.labels),
                    (data.test.texts, data.test.labels),
                    seed,
                )
                metrics["baseline"] = {
                    "val_accuracy": base_result.val_accuracy,
                    "test_accuracy": base_result.test_accuracy,
                    "test_macro_f1": base_result.test_macro_f1,
                    "seconds": base_result.seconds,
                }
            if config.report.email_eval:
                email_texts = _email_texts(data.test.texts, seed + 1)
                email_logits = served.logits(email_texts)
                metrics["email"] = _summary_metrics(email_logits, data.test.labels, names)
                metrics["email"]["gap_points"] = (
                    test_metrics["accuracy"] - metrics["email"]["accuracy"]
                ) * 100

            report_dir = staging / "report"
            report_dir.mkdir()
            if robust is not None:
                log("robustness: other people's words, perturbations, long emails, out of scope")
                scores = evaluate_sets(served, data.test, names, robust)
                metrics["robustness"] = {k: v.to_json() for k, v in scores.items()}
                report.plot_risk_coverage(
                    {k: v.curve for k, v in scores.items()}, report_dir / "risk_coverage.png"
                )
                for line in robustness_table(metrics["robustness"]):
                    log(line)
            report.plot_confusion(
                served_test, data.test.labels, names, report_dir / "confusion_matrix.png"
            )
            report.plot_reliability(
                served_test,
                data.test.labels,
                temperature,
                report_dir / "reliability.png",
                len(names),
            )
            report.plot_coverage(
                served_test,
                data.test.labels,
                temperature,
                threshold.value,
                report_dir / "coverage_accuracy.png",
                len(names),
            )
            sample_rng = random.Random(seed)
            samples = sorted(
                sample_rng.sample(
                    range(len(data.test)), min(config.report.sample_plots, len(data.test))
                )
            )
            report.plot_top5(
                data.test.texts,
                served_test,
                data.test.labels,
                names,
                temperature,
                samples,
                report_dir / "top5_samples.png",
            )
            report.write_per_class(test_metrics, report_dir / "per_class.csv")
            report.write_json(metrics, report_dir / "metrics.json")
            (report_dir / "train_config.yaml").write_text(
                yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
            )
            elapsed = time.perf_counter() - started
            metrics["train_seconds"] = elapsed
            model_sha = sha256_file(staging / MODEL_NAME)
            version = f"{stamp}-{model_sha[:7]}"
            summary = {
                "version": version,
                "base_model": base.name,
                "onnx": (
                    f"int8, {config.export.activations.replace('_', '-')} activation scales"
                    if artifacts.quantised
                    else "fp32"
                )
                + f", {onnx_mb:.1f} MB",
                "max_length": max_len,
                "text_recipe": TEXT_RECIPE,
                "temperature": temperature,
                "threshold": threshold.value,
                "target_accuracy": config.calibration.target_accuracy,
                "out_of_scope": out_of_scope.model_dump() if out_of_scope else None,
                "metrics": metrics,
                "data_sha256": data.sha256,
                "train_seconds": elapsed,
                "hardware": _hardware(),
            }
            (staging / "MODEL_CARD.md").write_text(report.model_card(summary), encoding="utf-8")
            manifest = manifest.model_copy(
                update={
                    "version": version,
                    "calibration": calibration,
                    "out_of_scope": out_of_scope,
                    "metrics": {**_manifest_metrics(metrics), **(extra_metrics or {})},
                    "parent_version": parent_version,
                }
            )
            manifest = _write_bundle(staging, staging / MODEL_NAME, tokenizer_json, manifest)
        final = out_root / version
        staging.rename(final)
        if checkpoint is not None:
            # Named after the bundle, so benchmarks can find the PyTorch weights it came from.
            checkpoint.rename(checkpoint.with_name(f"{version}.pt"))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        tracker.finish({}, [], None)
        raise
    tracker.finish(
        {k: float(v) for k, v in manifest.metrics.items() if isinstance(v, int | float)},
        sorted((final / "report").glob("*.png")),
        final.name,
    )
    log(
        f"bundle written: {final} (test accuracy {test_metrics['accuracy']:.4f}, "
        f"macro-F1 {test_metrics['macro_f1']:.4f}, {elapsed / 60:.1f} min)"
    )
    return final


def fit_model(
    config: TrainConfig,
    data: Banking77,
    base: LoadedBase,
    log: Log = print,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    *,
    num_outputs: int | None = None,
) -> FitResult:
    """A fresh classifier on ``base`` (a loaded base model), fitted as ``config`` says:
    the training half of :func:`train`, also what a sweep trial runs."""
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


def _wise_ft(
    config: TrainConfig,
    fitted: FitResult,
    base: LoadedBase,
    data: Banking77,
    sets: TrainingSets,
    log: Log,
) -> dict[str, Any]:
    """Weight-space ensembling of the fine-tuned and the probe-initialised weights."""
    setting = config.train.wise_alpha
    if setting is None:
        return {}
    if fitted.initial_state is None:
        log("WiSE-FT: no probe-initialised weights (resumed from a checkpoint); skipped")
        return {}
    n = len(data.label_names)
    max_len = config.model.max_length
    if setting != "auto":
        end = {k: v.clone() for k, v in fitted.model.state_dict().items()}
        interpolate(fitted.model, fitted.initial_state, end, setting)
        log(f"WiSE-FT: alpha {setting}")
        return {"alpha": setting}
    chosen_on = [(encode(base.tokenizer, data.val.texts, max_len), data.val.labels)]
    if sets.other_words is not None:
        chosen_on.append(
            (encode(base.tokenizer, sets.other_words.texts, max_len), sets.other_words.labels)
        )
    alpha, scores = choose_wise_alpha(
        fitted.model, fitted.initial_state, chosen_on, base.pad_token_id, n
    )
    log(
        f"WiSE-FT: alpha {alpha} (accuracy on validation"
        + (", development" if len(chosen_on) > 1 else "")
        + " by alpha: "
        + "; ".join(f"{a}: " + "/".join(f"{x:.4f}" for x in s) for a, s in scores.items())
        + ")"
    )
    return {"alpha": alpha, "scores": {str(a): s for a, s in scores.items()}}


def _resume(model: IntentClassifier, path: Path, log: Log) -> FitResult:
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


def _confidence(logits: Any, temperature: float) -> Any:
    from daemon.model.classifier import softmax

    return softmax(logits, temperature).max(axis=1)


def _manifest_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The manifest keeps headline figures and per-class F1; report/metrics.json has the rest."""
    test = metrics["test"]
    out: dict[str, Any] = {
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "test_coverage": test["coverage"],
        "test_selective_accuracy": test["selective_accuracy"],
        "val_accuracy": metrics["val_accuracy"],
        "per_class_f1": {name: row["f1"] for name, row in test["per_class"].items()},
        "torch_fp32_test_accuracy": metrics["torch_fp32"]["accuracy"],
        "onnx_fp32_test_accuracy": metrics["onnx_fp32"]["accuracy"],
        "int8_vs_fp32_agreement": metrics["int8_vs_fp32_test"]["agreement"],
        "int8_vs_fp32_accuracy_drop": metrics["int8_vs_fp32_test"]["accuracy_drop"],
        "int8_vs_torch_agreement": metrics["parity_test"]["agreement"],
        "train_seconds": metrics["train_seconds"],
    }
    if "baseline" in metrics:
        out["baseline_test_accuracy"] = metrics["baseline"]["test_accuracy"]
        out["baseline_test_macro_f1"] = metrics["baseline"]["test_macro_f1"]
    if "email" in metrics:
        out["email_test_accuracy"] = metrics["email"]["accuracy"]
    for name, scores in metrics.get("robustness", {}).items():
        for key in ("accuracy", "acted_right", "acted_wrong"):
            out[f"{name}_{key}"] = scores[key]
    return out
