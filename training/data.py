"""banking77: load from a CSV directory (or the Hugging Face hub), validate, split.

Casanueva et al. 2020, "Efficient Intent Detection with Dual Sentence Encoders";
CC BY 4.0. The data is read from a configurable directory and never committed.
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import DataError
from daemon.model.bundle import sha256_file
from training.config import DataConfig

FILES = ("train.csv", "test.csv", "categories.json")
NUM_LABELS = 77
TEXT_COLUMN = "text"
LABEL_COLUMN = "category"


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class Banking77:
    label_names: list[str]
    train: Split
    val: Split
    test: Split
    source: str
    sha256: dict[str, str]


def same_text_key(text: str) -> str:
    """Texts that differ only in case and spacing share this key (corrections replace
    banking77 examples, and are de-duplicated, by it)."""
    return " ".join(text.lower().split())


def read_categories(path: Path) -> list[str]:
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the category list: {exc}") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise DataError(f"{path}: expected a JSON list of intent names")
    if len(names) != NUM_LABELS:
        raise DataError(f"{path}: expected {NUM_LABELS} intent names, found {len(names)}")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: intent names are not unique")
    return names


def read_rows(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Every row of a CSV that must have ``columns`` (one of them ``text``, never empty):
    the one reader of banking77 and the robustness sets, so both refuse a bad file with
    the same DataError naming the file (and line)."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            found = reader.fieldnames or []
            missing = [c for c in columns if c not in found]
            if missing:
                raise DataError(
                    f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(found)}"
                    if found
                    else f"{path}: empty file, expected columns {','.join(columns)}"
                )
            rows = list(reader)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    for line, row in enumerate(rows, start=2):
        if not (row.get(TEXT_COLUMN) or "").strip():
            raise DataError(f"{path}:{line}: empty text")
    return rows


def read_labelled(path: Path, label_names: Sequence[str]) -> Split:
    """A CSV of ``text,category`` rows as a Split, every category checked."""
    index = {name: i for i, name in enumerate(label_names)}
    texts: list[str] = []
    labels: list[int] = []
    for line, row in enumerate(read_rows(path, (TEXT_COLUMN, LABEL_COLUMN)), start=2):
        label = (row.get(LABEL_COLUMN) or "").strip()
        if label not in index:
            raise DataError(f"{path}:{line}: unknown category {label!r}")
        texts.append(row[TEXT_COLUMN].strip())
        labels.append(index[label])
    return Split(texts, labels)


def read_csv(path: Path, label_names: list[str]) -> Split:
    """Read one banking77 CSV (columns ``text,category``), checking every row."""
    split = read_labelled(path, label_names)
    if not split.texts:
        raise DataError(f"{path}: no rows")
    return split


def stratified_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Hold out ``fraction`` of every class (at least one example each)."""
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(split.labels):
        by_label[label].append(i)
    rng = random.Random(seed)
    keep: list[int] = []
    held: list[int] = []
    for label in sorted(by_label):
        members = by_label[label]
        rng.shuffle(members)
        n_held = max(1, round(len(members) * fraction)) if len(members) > 1 else 0
        held.extend(members[:n_held])
        keep.extend(members[n_held:])
    keep.sort()
    held.sort()

    def take(ids: list[int]) -> Split:
        return Split([split.texts[i] for i in ids], [split.labels[i] for i in ids])

    return take(keep), take(held)


def subsample(split: Split, n: int, seed: int) -> Split:
    """A stratified subset of about ``n`` rows (all classes kept where possible)."""
    if n >= len(split):
        return split
    kept, _ = stratified_split(split, 1 - n / len(split), seed)
    return kept


def download_from_hub(config: DataConfig) -> None:
    """Materialise ``PolyAI/banking77`` from the Hugging Face hub as CSVs in ``config.dir``."""
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise DataError(
            "loading banking77 from the hub needs the datasets package: "
            "pip install 'cleaninbox[hub]'"
        ) from exc
    try:
        dataset = load_dataset(config.hub_id)
    except Exception as exc:
        raise DataError(f"cannot download {config.hub_id} from the hub: {exc}") from exc
    names = [str(n) for n in dataset["train"].features["label"].names]
    target = config.dir
    target.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with (target / f"{split}.csv").open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([TEXT_COLUMN, LABEL_COLUMN])
            for row in dataset[split]:
                writer.writerow([row["text"], names[int(row["label"])]])
    (target / "categories.json").write_text(json.dumps(names, indent=1), encoding="utf-8")


def load_banking77(config: DataConfig, seed: int) -> Banking77:
    """Load, validate and split banking77 as ``config`` says."""
    directory = config.dir
    present = all((directory / name).is_file() for name in FILES)
    source = "csv"
    if config.source == "hub" or (config.source == "auto" and not present):
        if config.source == "auto" and not present and not directory.exists():
            raise DataError(
                f"banking77 directory {directory} does not exist; set data.dir or BANKING77_DIR "
                "to a directory with train.csv, test.csv and categories.json, "
                "or data.source: hub to download it"
            )
        if config.source == "hub":
            download_from_hub(config)
            source = f"hub:{config.hub_id}"
    if not directory.is_dir():
        raise DataError(f"banking77 directory {directory} does not exist")
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing:
        raise DataError(f"banking77 directory {directory} lacks {', '.join(missing)}")
    label_names = read_categories(directory / "categories.json")
    train_full = read_csv(directory / "train.csv", label_names)
    test = read_csv(directory / "test.csv", label_names)
    for name, split in (("train.csv", train_full), ("test.csv", test)):
        absent = set(range(NUM_LABELS)) - set(split.labels)
        if absent and config.train_subset is None and config.test_subset is None:
            raise DataError(
                f"{directory / name}: no examples of "
                f"{', '.join(label_names[i] for i in sorted(absent)[:5])}"
            )
    if config.train_subset is not None:
        train_full = subsample(train_full, config.train_subset, seed)
    if config.test_subset is not None:
        test = subsample(test, config.test_subset, seed)
    train, val = stratified_split(train_full, config.val_fraction, seed)
    hashes = {name: sha256_file(directory / name) for name in FILES}
    return Banking77(label_names, train, val, test, source, hashes)
