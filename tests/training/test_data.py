"""banking77 loading: validation errors name the file and the problem; splits are stratified."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from daemon.errors import DataError
from daemon.model.bundle import sha256_file
from training.config import DataConfig
from training.data import load_banking77, stratified_split


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_loads_and_records_sha256(banking77_dir: Path) -> None:
    data = load_banking77(DataConfig(dir=banking77_dir), seed=1)
    assert len(data.label_names) == 77
    assert len(data.train) + len(data.val) == 10003
    assert len(data.test) == 3080
    assert data.sha256["train.csv"] == sha256_file(banking77_dir / "train.csv")
    assert set(data.sha256) == {"train.csv", "test.csv", "categories.json"}


def test_validation_split_is_stratified(banking77_dir: Path) -> None:
    data = load_banking77(DataConfig(dir=banking77_dir, val_fraction=0.1), seed=3)
    train_counts = Counter(data.train.labels)
    val_counts = Counter(data.val.labels)
    assert set(val_counts) == set(range(77))
    for label, held in val_counts.items():
        total = held + train_counts[label]
        assert held == max(1, round(total * 0.1))
    combined = Counter(data.train.texts) + Counter(data.val.texts)
    assert sum(combined.values()) == 10003


def test_split_is_seeded() -> None:
    from training.data import Split

    split = Split([f"t{i}" for i in range(100)], [i % 4 for i in range(100)])
    a = stratified_split(split, 0.2, seed=7)
    b = stratified_split(split, 0.2, seed=7)
    c = stratified_split(split, 0.2, seed=8)
    assert a == b
    assert a[1].texts != c[1].texts
    assert len(a[1]) == 20


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_banking77(DataConfig(dir=tmp_path / "nope"), seed=0)


def test_missing_file_is_named(tmp_path: Path, banking77_dir: Path) -> None:
    data_dir = _copy(banking77_dir, tmp_path / "b77")
    (data_dir / "test.csv").unlink()
    with pytest.raises(DataError, match=r"lacks test\.csv"):
        load_banking77(DataConfig(dir=data_dir), seed=0)


def test_wrong_columns_are_named(tmp_path: Path, banking77_dir: Path) -> None:
    data_dir = _copy(banking77_dir, tmp_path / "b77")
    (data_dir / "train.csv").write_text("query,intent\nhello,card_arrival\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.csv: missing column\(s\) text, category"):
        load_banking77(DataConfig(dir=data_dir), seed=0)


def test_empty_text_names_the_line(tmp_path: Path, banking77_dir: Path) -> None:
    data_dir = _copy(banking77_dir, tmp_path / "b77")
    rows = (data_dir / "test.csv").read_text(encoding="utf-8").splitlines()
    rows[5] = '"  ",card_arrival'
    (data_dir / "test.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"test\.csv:6: empty text"):
        load_banking77(DataConfig(dir=data_dir), seed=0)


def test_unknown_category_is_named(tmp_path: Path, banking77_dir: Path) -> None:
    data_dir = _copy(banking77_dir, tmp_path / "b77")
    with (data_dir / "train.csv").open("a", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerow(["where is my llama", "llama_delivery"])
    with pytest.raises(DataError, match="unknown category 'llama_delivery'"):
        load_banking77(DataConfig(dir=data_dir), seed=0)


def test_wrong_label_count(tmp_path: Path, banking77_dir: Path) -> None:
    data_dir = _copy(banking77_dir, tmp_path / "b77")
    names = json.loads((data_dir / "categories.json").read_text())
    (data_dir / "categories.json").write_text(json.dumps(names[:76]))
    with pytest.raises(DataError, match="expected 77 intent names, found 76"):
        load_banking77(DataConfig(dir=data_dir), seed=0)


def test_subsets_keep_every_class(banking77_dir: Path) -> None:
    data = load_banking77(DataConfig(dir=banking77_dir, train_subset=1000, test_subset=300), seed=0)
    assert 900 <= len(data.train) + len(data.val) <= 1100
    assert len(set(data.train.labels)) == 77
    assert 250 <= len(data.test) <= 350
