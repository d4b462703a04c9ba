"""`cleaninbox sweep` on the tiny config: two trials, results and best config written,
resumable from its SQLite study, bad trials pruned by the median rule."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import optuna
import yaml

from training.config import load_train_config
from training.sweep import load_sweep_config, sweep

REPO = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "sweep",
            "--config",
            str(REPO / "configs/sweep-tiny.yaml"),
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=os.environ,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_trial_sweep_writes_results_and_resumes(tmp_path: Path, banking77_dir: Path) -> None:
    first = run(tmp_path)
    assert "trial 0 is the base config" in first.stderr
    assert "0 trial(s) already finished, running 2" in first.stderr
    output = tmp_path / "runs/sweep-tiny"
    with (output / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["state"] for r in rows] == ["complete (base)", "complete"]
    # Trial 0 ran the base config's own values: the table says whether the search beat it.
    tiny = load_train_config(REPO / "configs/train-tiny.yaml")
    assert float(rows[0]["train.encoder_lr"]) == tiny.train.encoder_lr
    assert int(rows[0]["train.epochs"]) == tiny.train.epochs
    assert float(rows[0]["train.label_smoothing"]) == tiny.train.label_smoothing
    assert rows[1]["train.encoder_lr"] != rows[0]["train.encoder_lr"]
    assert (
        f"Base config (trial 0): {float(rows[0]['val_accuracy']):.4f}"
        in (output / "results.md").read_text()
    )
    best_row = max(rows, key=lambda r: float(r["val_accuracy"]))
    best = load_train_config(output / "best.yaml")  # a valid training config
    assert best.train.epochs == int(best_row["train.epochs"])
    assert best.train.batch_size == int(best_row["train.batch_size"])
    assert abs(best.train.encoder_lr - float(best_row["train.encoder_lr"])) < 1e-9
    table = [line for line in (output / "results.md").read_text().splitlines() if "|" in line]
    assert table[0].endswith("| minutes |")
    for line, row in zip(table[2:], rows, strict=True):  # each trial's cost, in minutes
        assert line.endswith(f"| {float(row['seconds']) / 60:.1f} |")
    # Stopped and started again with a larger budget: only the missing trial runs.
    second = run(tmp_path, "--set", "trials=3")
    assert "2 trial(s) already finished, running 1" in second.stderr
    with (output / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3


def test_a_bad_trial_is_pruned_early(tmp_path: Path, banking77_dir: Path) -> None:
    spec = {
        "base": str(REPO / "configs/train-tiny.yaml"),
        "study": "prune",
        "storage": str(tmp_path / "prune.db"),
        "output": str(tmp_path / "out"),
        "trials": 3,
        "prune_after_epochs": 0,
        "prune_after_trials": 1,
        "space": {
            "train.encoder_lr": {"choices": [1.0e-3, 1.0e-9]},
            "train.head_lr": {"choices": [1.0e-3, 1.0e-9]},
            "train.epochs": {"choices": [3]},
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    # Two good trials first, then one that cannot learn (learning rates of 1e-9).
    study = optuna.create_study(
        study_name="prune", storage=f"sqlite:///{tmp_path / 'prune.db'}", direction="maximize"
    )
    good = {"train.encoder_lr": 1.0e-3, "train.head_lr": 1.0e-3, "train.epochs": 3}
    bad = {"train.encoder_lr": 1.0e-9, "train.head_lr": 1.0e-9, "train.epochs": 3}
    for params in (good, good, bad):
        study.enqueue_trial(params)
    lines: list[str] = []
    sweep(load_sweep_config(path), data_dir=banking77_dir, log=lines.append)
    with (tmp_path / "out/results.csv").open() as f:
        states = [r["state"] for r in csv.DictReader(f)]
    assert states == ["complete", "complete", "pruned"]
    pruned = [line for line in lines if "pruned" in line]  # said as it happens
    assert len(pruned) == 1
    assert pruned[0].startswith("trial 2: pruned, validation accuracy 0.")
    assert "at epoch" in pruned[0]


def test_base_outside_the_space_is_not_a_trial_and_timeout_stops_new_trials(
    tmp_path: Path, banking77_dir: Path
) -> None:
    spec = {
        "base": str(REPO / "configs/train-tiny.yaml"),  # epochs: 1
        "study": "bounded",
        "storage": str(tmp_path / "bounded.db"),
        "output": str(tmp_path / "out"),
        "trials": 50,
        "timeout_minutes": 0.001,  # 60 ms: the first trial runs, no second one starts
        "space": {"train.epochs": {"choices": [2]}},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    lines: list[str] = []
    sweep(load_sweep_config(path), data_dir=banking77_dir, log=lines.append)
    assert "base config's train.epochs=1 lies outside the searched space: not a trial" in lines
    with (tmp_path / "out/results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["state"], r["train.epochs"]) for r in rows] == [("complete", "2")]
