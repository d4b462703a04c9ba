"""Export checks: the parity gate and its typed error, and evaluate on a bundle."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from daemon.cli import main
from daemon.errors import DataError, ParityError
from training.config import DataConfig
from training.data import load_banking77
from training.export import check_parity, parity


def test_parity_error_says_by_how_much() -> None:
    reference = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 50]
    candidate = reference.copy()
    candidate[:3] = np.eye(4, dtype=np.float32)[[1, 2, 3]]  # 3 flips, all of them wrong
    report = parity(reference, candidate, [0, 1, 2, 3] * 50)
    assert report.agreement == pytest.approx(197 / 200)
    assert report.accuracy_drop == pytest.approx(0.015)
    with pytest.raises(ParityError) as info:
        check_parity(report, 0.995, 0.005, "served vs PyTorch")
    message = str(info.value)
    assert "top-1 agreement 98.50% is below 99.50% (short by 1.00%)" in message
    assert "accuracy drops 1.50 points" in message
    check_parity(report, 0.98, 0.02, "loose")  # within budget: no error


def test_evaluate_prints_metrics(tiny_bundle: Path, banking77_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--model",
            str(tiny_bundle),
            "--data-dir",
            str(banking77_dir),
            "--report",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["examples"] == 3080
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["email_accuracy"] <= 1
    assert (tmp_path / "r" / "confusion_matrix.png").stat().st_size > 0


def test_hub_source_without_datasets_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Hugging Face hub cannot be reached here, so only the missing-extra path is
    # testable: the error must say what to install rather than fail inside an import.
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if [hub] were not installed
    with pytest.raises(DataError, match=r"pip install 'cleaninbox\[hub\]'"):
        load_banking77(DataConfig(dir=tmp_path / "b77", source="hub"), seed=0)
