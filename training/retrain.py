"""``cleaninbox retrain``: a challenger trained on banking77 plus the user's corrections,
promoted only if it proves better (champion/challenger with a gate).

1. Corrections are de-duplicated (same text: the latest wins) and split, by a hash of the
   text so the split is stable across runs, into a training part and a held-out part.
2. The challenger is trained with the usual pipeline on banking77's training split plus the
   training corrections, each repeated ``correction_weight`` times; a banking77 training
   example with the same text as any correction is dropped (the user's label wins, and a
   held-out correction is never trained on under another label).
3. Champion (``models/current``) and challenger are scored by the daemon's own classifier
   on the same banking77 test split and the same held-out corrections.
4. Promotion only when the challenger loses at most ``tolerance_points`` on banking77 and
   gets at least ``min_holdout_gain`` more held-out corrections right; otherwise the
   champion stays and the report says why. Every run writes
   ``models/retrain-reports/<time>.json`` and ``.md``.

The run's outcome is a :class:`RetrainResult`, which also travels as one JSON object
(``cleaninbox retrain --json``) to the daemon's scheduled job in another process.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from daemon.errors import ConfigError, DataError
from daemon.model.bundle import load_manifest
from daemon.model.classifier import Classifier
from daemon.model.promotion import RetrainResult, Scores
from daemon.model.registry import current_version, promote
from daemon.store.corrections_csv import Example, read_corrections_csv
from daemon.store.state import StateStore
from training.config import RetrainConfig, TrainConfig
from training.data import Split, load_banking77, same_text_key

Log = Callable[[str], None]
REPORTS = "retrain-reports"


def load_corrections(
    csv_path: Path | None, state: Path | str | None, password: str | None = None
) -> list[Example]:
    """The corrections to learn from: the CSV when one is given (``cleaninbox feedback
    export``, or a hand-made file), else those in the daemon's state database, read
    without taking its lock so a running daemon is never in the way (``state``: a SQLite
    file or a PostgreSQL URL)."""
    if csv_path is not None:
        return read_corrections_csv(csv_path)
    if state is None:
        raise ConfigError("no corrections to read: give a corrections CSV or a state database")
    with StateStore(state, password=password, read_only=True, lock=False) as store:
        return [Example(c.text, c.corrected) for c in store.corrections()]


def prepare(
    examples: Sequence[Example], labels: Sequence[str], holdout_fraction: float, min_holdout: int
) -> tuple[list[Example], list[Example]]:
    """De-duplicate and split into (train, holdout); every problem is a clear error."""
    known = set(labels)
    latest: dict[str, Example] = {}
    for n, example in enumerate(examples, start=1):
        if example.label not in known:
            raise DataError(f"correction {n}: unknown intent {example.label!r}")
        if not example.text.strip():
            raise DataError(f"correction {n}: empty text")
        latest[same_text_key(example.text)] = example
    unique = list(latest.values())
    cut = int(holdout_fraction * 1000)

    def bucket(e: Example) -> int:
        return int(hashlib.sha256(same_text_key(e.text).encode()).hexdigest()[:8], 16) % 1000

    holdout = [e for e in unique if bucket(e) < cut]
    train = [e for e in unique if bucket(e) >= cut]
    if len(holdout) < min_holdout or not train:
        raise ConfigError(
            f"{len(unique)} distinct correction(s) give {len(holdout)} held out and "
            f"{len(train)} to train on; retraining needs at least {min_holdout} held out "
            f"(retrain.min_holdout) and one to train on; collect more corrections first"
        )
    return train, holdout


def _accuracy(bundle: Path, texts: Sequence[str], labels: Sequence[str]) -> float:
    classifier = Classifier(bundle, batch_size=64)
    predicted = [p.intent for p in classifier.predict(list(texts))]  # the best intent
    return float(np.mean([p == gold for p, gold in zip(predicted, labels, strict=True)]))


def gate(old: Scores, new: Scores, holdout: int, options: RetrainConfig) -> tuple[bool, str]:
    """Promote only within tolerance on banking77 and with at least ``min_holdout_gain``
    more of the ``holdout`` held-out corrections right; returns (promoted, reason)."""
    loss = (old.banking77_accuracy - new.banking77_accuracy) * 100
    gained = round((new.holdout_accuracy - old.holdout_accuracy) * holdout)
    if loss > options.tolerance_points:
        promoted, reason = (
            False,
            (
                f"kept the champion: the challenger loses {loss:.2f} points on banking77 "
                f"(tolerance {options.tolerance_points:g})"
            ),
        )
    elif gained < options.min_holdout_gain:
        promoted, reason = (
            False,
            (
                f"kept the champion: the challenger is not better on the held-out corrections "
                f"({new.holdout_accuracy:.1%} vs {old.holdout_accuracy:.1%} of {holdout}: "
                f"{gained:+d} right; it needs {options.min_holdout_gain:+d})"
            ),
        )
    else:
        promoted, reason = (
            True,
            (
                f"promoted: held-out corrections {old.holdout_accuracy:.1%} -> "
                f"{new.holdout_accuracy:.1%}, banking77 {old.banking77_accuracy:.2%} -> "
                f"{new.banking77_accuracy:.2%}"
            ),
        )
    return promoted, reason


def _train_challenger(
    config: TrainConfig,
    models_dir: Path,
    champion: str,
    labels: Sequence[str],
    train_part: Sequence[Example],
    holdout: Sequence[Example],
    log: Log,
    train: Callable[..., Path],
) -> tuple[Path, str]:
    """The challenger bundle, trained on banking77 plus the weighted training corrections
    (any banking77 text equal to a correction's dropped), and the sha256 of those
    corrections (recorded in its manifest and the report)."""
    weight = config.retrain.correction_weight
    extra = Split(
        [e.text for e in train_part] * weight,
        [labels.index(e.label) for e in train_part] * weight,
    )
    digest = hashlib.sha256(
        json.dumps([[e.text, e.label] for e in train_part]).encode()
    ).hexdigest()
    challenger_dir = train(
        config,
        models_dir,
        log,
        extra_train=extra,
        replace_texts=[e.text for e in (*train_part, *holdout)],
        parent_version=champion,
        extra_metrics={
            "corrections_train": len(train_part),
            "corrections_weight": weight,
            "corrections_sha256": digest,
        },
    )
    return challenger_dir, digest


def _score(
    config: TrainConfig,
    labels: Sequence[str],
    holdout: Sequence[Example],
    bundles: dict[str, Path],
) -> tuple[dict[str, Scores], int]:
    """Each bundle's scores on the same banking77 test split and the same held-out
    corrections, and the size of that test split."""
    test = load_banking77(config.data, config.train.seed).test
    test_labels = [labels[i] for i in test.labels]
    holdout_texts, holdout_labels = [e.text for e in holdout], [e.label for e in holdout]
    scores = {
        name: Scores(
            _accuracy(path, test.texts, test_labels),
            _accuracy(path, holdout_texts, holdout_labels),
        )
        for name, path in bundles.items()
    }
    return scores, len(test)


def retrain(
    config: TrainConfig,
    examples: Sequence[Example],
    models_dir: Path,
    *,
    log: Log = print,
    train: Callable[..., Path] | None = None,
) -> RetrainResult:
    """One champion/challenger round (see the module docstring). Promoted or kept, the
    result says why; a problem before the decision is raised as a ``CleanInboxError``."""
    from training.pipeline import train as pipeline_train

    train = train or pipeline_train
    champion = current_version(models_dir)
    if champion is None:
        raise ConfigError(f"no champion: {models_dir}/current does not point at a bundle")
    champion_dir = models_dir / champion
    labels = load_manifest(champion_dir).labels
    options = config.retrain
    train_part, holdout = prepare(examples, labels, options.holdout_fraction, options.min_holdout)
    log(
        f"retrain: champion {champion}; {len(train_part)} corrections to train on "
        f"(x{options.correction_weight}), {len(holdout)} held out"
    )
    challenger_dir, digest = _train_challenger(
        config, models_dir, champion, labels, train_part, holdout, log, train
    )
    scores, test_size = _score(
        config, labels, holdout, {"champion": champion_dir, "challenger": challenger_dir}
    )
    old, new = scores["champion"], scores["challenger"]
    promoted, reason = gate(old, new, len(holdout), options)
    if promoted:
        promote(models_dir, challenger_dir.name, reason=f"retrain: {reason}")
    log(f"retrain: {reason}")
    report = _write_report(
        models_dir,
        {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "promoted": promoted,
            "reason": reason,
            "champion": champion,
            "challenger": challenger_dir.name,
            "scores": {k: asdict(v) for k, v in scores.items()},
            "banking77_test_size": test_size,
            "corrections": {
                "distinct": len(train_part) + len(holdout),
                "train": len(train_part),
                "holdout": len(holdout),
                "weight": options.correction_weight,
                "train_sha256": digest,
            },
            "gate": {
                "tolerance_points": options.tolerance_points,
                "min_holdout_gain": options.min_holdout_gain,
                "rule": "banking77 loss <= tolerance and at least min_holdout_gain more "
                "held-out corrections right",
            },
        },
    )
    return RetrainResult(
        "promoted" if promoted else "kept",
        reason,
        champion,
        challenger_dir.name,
        old,
        new,
        len(train_part),
        len(holdout),
        report,
    )


def _write_report(models_dir: Path, data: dict[str, Any]) -> Path:
    directory = models_dir / REPORTS
    directory.mkdir(parents=True, exist_ok=True)
    stem = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = directory / f"{stem}.json"
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    s = data["scores"]
    lines = [
        f"# Retrain {stem}: {'promoted' if data['promoted'] else 'champion kept'}",
        "",
        data["reason"],
        "",
        "| model | version | banking77 test accuracy | held-out corrections accuracy |",
        "|---|---|---|---|",
        f"| champion | {data['champion']} | {s['champion']['banking77_accuracy']:.2%} | "
        f"{s['champion']['holdout_accuracy']:.1%} |",
        f"| challenger | {data['challenger']} | {s['challenger']['banking77_accuracy']:.2%} | "
        f"{s['challenger']['holdout_accuracy']:.1%} |",
        "",
        f"Corrections: {data['corrections']['distinct']} distinct, "
        f"{data['corrections']['train']} trained on (x{data['corrections']['weight']}), "
        f"{data['corrections']['holdout']} held out. banking77 test: "
        f"{data['banking77_test_size']} queries. Gate: {data['gate']['rule']} "
        f"(tolerance {data['gate']['tolerance_points']:g} points).",
    ]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
