"""The retrain's decision: the contract between ``cleaninbox retrain --json`` (training)
and the daemon's scheduled job (:meth:`daemon.service.supervisor.Service.retrain`), which
reads it back without importing training code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import TypeAdapter

__all__ = ["Outcome", "RetrainResult", "Scores"]

Outcome = Literal["promoted", "kept", "failed"]


@dataclass(frozen=True)
class Scores:
    banking77_accuracy: float
    holdout_accuracy: float


@dataclass(frozen=True)
class RetrainResult:
    """What one run decided and on which figures. ``failed`` carries only the reason (the
    run stopped before a decision); the others carry both models' versions and scores.
    The daemon's scheduled job reads this back from ``cleaninbox retrain --json``, so the
    outcome travels as data, not as the wording of a line."""

    outcome: Outcome
    reason: str
    champion: str | None = None
    challenger: str | None = None
    champion_scores: Scores | None = None
    challenger_scores: Scores | None = None
    corrections_train: int = 0
    corrections_holdout: int = 0
    report: Path | None = None

    @property
    def promoted(self) -> bool:
        return self.outcome == "promoted"

    @classmethod
    def failed(cls, reason: str) -> RetrainResult:
        return cls("failed", reason)

    def to_json(self) -> str:
        """One line of JSON (paths as strings, scores as objects)."""
        return _RESULT_JSON.dump_json(self).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> RetrainResult:
        """The result :meth:`to_json` wrote; a ``ValueError`` if ``text`` is not one."""
        return _RESULT_JSON.validate_json(text)


_RESULT_JSON = TypeAdapter(RetrainResult)
