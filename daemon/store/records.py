"""The records the store keeps, each defined once.

A decision's fields are declared here and nowhere else: the column list of the INSERT,
the row mapping and the JSON of ``cleaninbox history --json`` are derived from them
(:data:`DECISION_COLUMNS`, :func:`decision_row`, :func:`decision_from_row`). A column
that holds JSON or a boolean says so in its field's metadata.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

Status = Literal["pending", "done", "skipped", "failed", "undone"]
Kind = Literal["triage", "undo"]
_JSON = {"codec": "json"}
_BOOL = {"codec": "bool"}


def iso_utc(moment: datetime) -> str:
    """A time as the store writes and compares times: ISO 8601 UTC, milliseconds, ``Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utcnow() -> str:
    return iso_utc(datetime.now(UTC))


@dataclass(frozen=True, kw_only=True)
class NewDecision:
    """What the cycle (or undo) journals before it acts."""

    kind: Kind
    account: str
    folder: str
    uidvalidity: int
    uid: int
    message_id: str | None
    size: int | None = None
    internal_date: str | None = None
    intent: str | None = None
    confidence: float | None = None
    abstain: bool | None = field(default=None, metadata=_BOOL)
    #: The model's best intents with their calibrated probabilities.
    top_k: list[tuple[str, float]] | None = field(default=None, metadata=_JSON)
    model_version: str | None = None
    rule: str | None = None
    action: str | None = None
    #: The plan, as :meth:`daemon.core.actions.Plan.to_json` writes it.
    plan: dict[str, Any] | None = field(default=None, metadata=_JSON)
    destination: str | None = None
    status: Status
    reason: str | None = None
    #: The model input text, kept where the account learns from corrections.
    text: str | None = None
    undo_of: int | None = None
    #: When the correction memory decided instead of the model: the entry it followed
    #: and the cosine similarity to it.
    memory_id: int | None = None
    memory_similarity: float | None = None


@dataclass(frozen=True, kw_only=True)
class Decision(NewDecision):
    """A journaled decision: the audit log's row."""

    id: int
    created_at: str
    done_at: str | None = None
    #: The lease epoch the intent was journaled under (replicas on PostgreSQL; else None).
    lease_epoch: int | None = None

    def journaled(self) -> NewDecision:
        """The decision as it was journaled (without its id and times)."""
        return NewDecision(**{f.name: getattr(self, f.name) for f in fields(NewDecision)})

    def to_json(self) -> dict[str, Any]:
        """The audit log entry as ``history --json`` prints it (no text, plan or size)."""
        data = asdict(self)
        for private in ("text", "plan", "size", "internal_date"):
            data.pop(private)
        return data


#: Columns an INSERT of a new decision fills, in order (``created_at``, ``done_at`` too).
DECISION_COLUMNS: tuple[str, ...] = (
    *(f.name for f in fields(NewDecision)),
    "created_at",
    "done_at",
)


#: (to the database, from the database) for the columns whose field says so.
_CODECS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "json": (json.dumps, json.loads),
    "bool": (int, bool),
}


def _convert(codec: str | None, value: Any, direction: int) -> Any:
    if value is None or codec is None:
        return value
    return _CODECS[codec][direction](value)


def decision_row(decision: NewDecision, now: str) -> tuple[Any, ...]:
    """The values of :data:`DECISION_COLUMNS` for ``decision`` journaled at ``now``."""
    values = [
        _convert(f.metadata.get("codec"), getattr(decision, f.name), 0) for f in fields(NewDecision)
    ]
    return (*values, now, None if decision.status == "pending" else now)


class Row(Protocol):
    """A database row indexed by column name (``sqlite3.Row``, a dict)."""

    def __getitem__(self, key: str, /) -> Any: ...


def decision_from_row(row: Row) -> Decision:
    """A :class:`Decision` from a database row."""
    return Decision(
        **{f.name: _convert(f.metadata.get("codec"), row[f.name], 1) for f in fields(Decision)}
    )


@dataclass(frozen=True)
class FolderState:
    """Where triage stands in one watched folder."""

    account: str
    folder: str
    uidvalidity: int
    high_water: int
    updated_at: str = ""  # ISO 8601 UTC of the last successful update


@dataclass(frozen=True)
class Correction:
    """A message the user filed elsewhere than CleanInbox did: a labelled example."""

    id: int
    account: str
    decision_id: int
    message_id: str | None
    text: str
    predicted: str | None
    corrected: str
    folder: str
    created_at: str


#: The memory entries of this "account" apply to every account (imported corrections).
SHARED_MEMORY = "*"


@dataclass(frozen=True)
class MemoryEntry:
    """A correction as the correction memory keeps it: the text, its embedding under
    ``model_version`` (float32 bytes), what that model said and what the user chose."""

    id: int
    account: str
    correction_id: int | None
    text: str
    said: str
    confident: bool  # the model acted on its decision (did not leave it for review)
    chosen: str
    model_version: str
    embedding: bytes
    created_at: str
    used_at: str | None
    uses: int

    def to_json(self) -> dict[str, Any]:
        """``feedback list --json``: everything but the embedding."""
        data = asdict(self)
        data.pop("embedding")
        return data
