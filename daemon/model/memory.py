"""The correction memory's rule: when a remembered correction decides a new message.

A correction remembers the message's sentence embedding (the bundle's ``embedding``
output), the intent the model said, whether the model was sure of it (it acted rather
than leaving the message for review), and the intent the user chose. A new message is
decided by the memory when

1. the model says the same intent about it as it said about the correction (a correction
   of "card_arrival" mail applies only to mail the model calls card_arrival: the model's
   own view of every other intent is left alone, which is what keeps false overrides
   rare), and
2. its embedding is close enough to the correction's (cosine): at least ``similarity``
   for a single correction, which then covers near-duplicates of the corrected message;
   at least the lower ``repeated_similarity`` once the user has made the same correction
   (same model intent, same choice) of decisions the model was sure about ``support``
   times: a repeated, deliberate disagreement with the model is a preference and covers
   that kind of mail, while one fix of an unsure call stays a fix of that message, and
   and at least the still lower ``remap_similarity`` once those corrections are also at
   least ``remap_share`` of the sure decisions the model made with that intent (``seen``:
   the user moved most of what the model calls card_arrival to card_delivery_estimate;
   that is a remap of the intent, not fixes of single messages), and
3. every remembered correction that close chose the same intent: corrections that
   disagree decide nothing.

The nearest such correction is the one followed. Measured on validation data, one
threshold cannot serve both: low enough for "I moved a few; the next goes there too" it
lets a genuine error's correction flip the right decisions around it
(:mod:`training.memory_calibration`); the share tells the two apart: a model's genuine
errors are a small share of what it calls an intent (at most 14% on validation and the
development set), a remap is most of it. Exact search: one matrix product per
message over the corrections of that model intent (10,000 entries of 384 floats are
15 MB and a few microseconds a message; an approximate index would pay only far above
that). The same function serves the daemon, ``cleaninbox classify`` and the threshold's
calibration at export (:mod:`training.memory_calibration`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Entry:
    """One remembered correction, as the rule needs it."""

    id: int
    said: str  # what the model said about the corrected message
    chosen: str  # what the user chose
    embedding: FloatArray  # L2-normalised, shape [dimensions]
    confident: bool = False  # the model acted on it (did not leave it for review)


@dataclass(frozen=True)
class Thresholds:
    """When a correction decides (see the module docstring)."""

    similarity: float
    repeated_similarity: float
    support: int = 2
    #: None: no remap rule (bundles exported before it).
    remap_similarity: float | None = None
    remap_share: float = 0.5


@dataclass(frozen=True)
class Recall:
    """The memory's decision for one message: the correction followed and how close."""

    entry_id: int
    intent: str
    said: str
    similarity: float

    def to_json(self) -> dict[str, object]:
        return {
            "entry": self.entry_id,
            "model_said": self.said,
            "similarity": round(self.similarity, 4),
        }

    def describe(self) -> str:
        """For logs and ``history``: which correction decided, and how close."""
        return (
            f"memory entry {self.entry_id} (similarity {self.similarity:.2f}; "
            f"the model said {self.said})"
        )


class MemoryIndex:
    """Entries grouped by the model intent they apply to, ready for exact search."""

    def __init__(self, entries: Sequence[Entry], dimensions: int) -> None:
        self.dimensions = dimensions
        self.size = len(entries)
        groups: dict[str, list[Entry]] = {}
        for entry in entries:
            if entry.embedding.shape != (dimensions,):
                raise ValueError(
                    f"memory entry {entry.id}: embedding of shape {entry.embedding.shape}, "
                    f"expected ({dimensions},)"
                )
            groups.setdefault(entry.said, []).append(entry)
        self._groups: dict[str, tuple[list[Entry], FloatArray]] = {
            said: (group, np.stack([e.embedding for e in group]).astype(np.float32))
            for said, group in groups.items()
        }
        # Per entry: how many corrections of sure decisions made the same correction.
        support: dict[tuple[str, str], int] = {}
        for entry in entries:
            if entry.confident:
                key = (entry.said, entry.chosen)
                support[key] = support.get(key, 0) + 1
        self._support: dict[str, npt.NDArray[np.int64]] = {
            said: np.array([support.get((said, e.chosen), 0) for e in group], dtype=np.int64)
            for said, (group, _) in self._groups.items()
        }
        #: Per model intent: how many of its corrections were of sure decisions (a floor for
        #: the decisions seen: an imported correction is a decision the model made too).
        self._sure: dict[str, int] = {
            said: sum(e.confident for e in group) for said, (group, _) in self._groups.items()
        }

    def needed(self, said: str, thresholds: Thresholds, seen: int) -> npt.NDArray[np.float64]:
        """Per correction of ``said``: the similarity a message needs to it."""
        support = self._support[said]
        repeated = support >= thresholds.support
        needed = np.where(repeated, thresholds.repeated_similarity, thresholds.similarity)
        if thresholds.remap_similarity is not None:
            share = support / max(seen, self._sure[said], 1)
            remap = repeated & (share >= thresholds.remap_share)
            needed = np.where(remap, np.minimum(thresholds.remap_similarity, needed), needed)
        return needed.astype(np.float64)

    @property
    def nbytes(self) -> int:
        return sum(matrix.nbytes for _, matrix in self._groups.values())

    def recall(
        self, said: str, embedding: FloatArray, thresholds: Thresholds, seen: int = 0
    ) -> Recall | None:
        """The correction that decides a message the model calls ``said``, or None;
        ``seen``: the sure decisions the model made with ``said`` where these corrections
        were made (the remap rule's denominator; 0 when unknown)."""
        found = self._groups.get(said)
        if found is None:
            return None
        group, matrix = found
        sims = matrix @ embedding.astype(np.float32, copy=False)
        needed = self.needed(said, thresholds, seen)
        close = np.flatnonzero(sims >= needed)
        if close.size == 0:
            return None
        if len({group[int(i)].chosen for i in close}) > 1:
            return None  # the close corrections disagree
        best = int(close[np.argmax(sims[close])])
        entry = group[best]
        return Recall(entry.id, entry.chosen, said, float(sims[best]))


def normalise(vectors: FloatArray) -> FloatArray:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    out: FloatArray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return out
