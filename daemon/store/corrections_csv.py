"""The corrections dataset as a CSV file: what ``cleaninbox feedback export`` writes and
``cleaninbox retrain --corrections`` reads.

Writer and reader live together so the format has one definition. The columns start with
banking77's own (``text``, ``category``), so the file also works as a plain banking77-style
dataset; the rest is provenance that the reader ignores. This module is part of the daemon
(no training imports) because the daemon writes the file and must never load training code.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.errors import DataError

if TYPE_CHECKING:
    from daemon.store.state import Correction

COLUMNS = ("text", "category", "predicted", "account", "folder", "created_at")
REQUIRED = frozenset(COLUMNS[:2])


@dataclass(frozen=True)
class Example:
    """One text and the intent the user gave it: the unit retraining learns from."""

    text: str
    label: str


def write_corrections_csv(path: Path, corrections: Sequence[Correction]) -> int:
    """Write ``corrections`` (creating the parent directory); returns how many rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for c in corrections:
            writer.writerow([c.text, c.corrected, c.predicted, c.account, c.folder, c.created_at])
    return len(corrections)


def read_corrections_csv(path: Path) -> list[Example]:
    """The examples of a CSV with ``text`` and ``category`` columns; other columns are
    ignored, so a hand-made banking77-style file works as well as an export."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = REQUIRED - set(reader.fieldnames or ())
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
            return [Example(row["text"], row["category"]) for row in reader]
    except OSError as exc:
        raise DataError(f"cannot read corrections {path}: {exc.strerror}") from exc
