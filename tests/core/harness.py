"""The triage core assembled in-process: real settings, rules, state store, metrics and
:class:`~daemon.core.cycle.Triage`, an in-memory server and a deterministic classifier.

Only public entry points are used (``Triage(runtime, store, metrics)``, ``cycle``,
``reconcile``, ``StateStore`` and its queries), so the core can be refactored under
these tests.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import yaml
from prometheus_client import CollectorRegistry

from daemon.config.settings import Account, load_settings
from daemon.core.cycle import CycleReport, Mode, Triage
from daemon.core.rules import Rules, load_rules
from daemon.core.runtime import Loaded, Runtime
from daemon.metrics import Metrics
from daemon.model.bundle import MemoryCalibration
from daemon.model.classifier import Classified, Classifier, Prediction
from daemon.model.memory import FloatArray, normalise
from daemon.store import state
from daemon.store.state import StateStore
from tests.core.memory import Crash, MemoryMailbox, MemoryServer

LABELS = [
    "card_arrival",
    "lost_or_stolen_card",
    "transfer_timing",
    "extra_charge_on_statement",
    "top_up_failed",
]
# Which word in the model input text means which intent (first match wins).
KEYWORDS = [
    ("stolen", "lost_or_stolen_card"),
    ("card", "card_arrival"),
    ("transfer", "transfer_timing"),
    ("fee", "extra_charge_on_statement"),
    ("top up", "top_up_failed"),
]
THRESHOLD = 0.5

# A move, copies plus a move, a tag-only rule, a continuing rule, and an abstain default.
RULES = {
    "version": 1,
    "groups": {"urgent": ["lost_or_stolen_card"], "cards": ["card_arrival", "lost_or_stolen_card"]},
    "rules": [
        {
            "name": "urgent",
            "match": {"group": "urgent"},
            "actions": ["flag", {"keyword": "$urgent"}],
            "continue": True,
        },
        {
            "name": "cards",
            "match": {"group": "cards"},
            "actions": [{"keyword": "$intent_{intent}"}, {"move": "Triage/Cards"}],
        },
        {
            "name": "transfers",
            "match": {"intent": "transfer_timing"},
            "actions": [
                {"keyword": "$intent_{intent}"},
                {"copy": "Archive/Transfers"},
                {"copy": "Archive/All"},
                {"move": "Triage/Transfers"},
            ],
        },
        {
            "name": "fees",
            "match": {"intent": "extra_charge_on_statement"},
            "actions": [{"keyword": "$intent_{intent}"}, "flag"],
        },
        {
            "name": "top-ups",
            "match": {"intent": "top_up_failed"},
            "actions": [{"keyword": "$intent_{intent}"}, "mark_read", {"move": "Triage/TopUps"}],
        },
    ],
    "abstain": {"actions": [{"keyword": "$triage_review"}]},
    "out_of_scope": {"actions": []},
}

RULES_TEXT = yaml.safe_dump(RULES, sort_keys=False)


DIMENSIONS = 64


def bag_of_words(text: str) -> FloatArray:
    """The fake's sentence embedding: words hashed into 64 buckets, unit length (two
    texts sharing most of their words are close)."""
    vector = np.zeros(DIMENSIONS, dtype=np.float32)
    for word in text.lower().split():
        vector[zlib.crc32(word.strip("?.!,").encode()) % DIMENSIONS] += 1.0
    return normalise(vector[None, :])[0]


@dataclass(frozen=True)
class FakeManifest:
    """The manifest fields the core reads: what :class:`~daemon.core.runtime.Runtime`
    publishes, and the correction memory's threshold."""

    version: str = "keyword-fake-1"
    base_model: str = "none (keyword fake)"
    text_recipe: str = "subject-body"
    memory: MemoryCalibration = field(
        default_factory=lambda: MemoryCalibration(
            dimensions=DIMENSIONS,
            similarity=0.8,
            repeated_similarity=0.8,
            remap_similarity=0.4,
            max_flip_rate=0.002,
        )
    )


class KeywordClassifier:
    """Stands in for :class:`daemon.model.classifier.Classifier` (the ``classifier`` of
    :class:`~daemon.core.runtime.Loaded`).

    Why a fake: the real classifier needs a bundle from a training run (minutes), and these
    tests are about what the core does with a prediction, not about the model. The intent
    comes from a keyword in the text; a ``?`` makes it unsure (low confidence, abstains);
    the word ``newsletter`` makes it out of scope. Its "sentence embedding" is a bag of
    words (:func:`bag_of_words`), so the correction memory works on it as on a bundle.
    """

    embedding_output = "embedding"
    dimensions = DIMENSIONS

    def __init__(self, labels: Sequence[str] = tuple(LABELS)) -> None:
        self.manifest = FakeManifest()
        self.labels = list(labels)
        self.calls: list[list[str]] = []

    @property
    def version(self) -> str:
        return self.manifest.version

    def _one(self, text: str) -> Prediction:
        lowered = text.lower()
        intent = next((i for word, i in KEYWORDS if word in lowered), self.labels[0])
        confidence = 0.3 if "?" in text else 0.9
        others = [label for label in self.labels if label != intent]
        top_k = [(intent, confidence), *((label, 0.01) for label in others[:2])]
        if "newsletter" in lowered:
            return Prediction(intent, confidence, True, top_k, "out_of_scope", 0.95)
        if confidence < THRESHOLD:
            return Prediction(intent, confidence, True, top_k, "low_confidence", None)
        return Prediction(intent, confidence, False, top_k, None, None)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        self.calls.append(list(texts))
        return [self._one(text) for text in texts]

    def classify(self, texts: Sequence[str]) -> Classified:
        started = time.perf_counter()
        predictions = self.predict(texts)
        embeddings = np.stack([bag_of_words(t) for t in texts]) if texts else None
        return Classified(predictions, time.perf_counter() - started, embeddings)


def message(name: str, body: str, subject: str = "") -> bytes:
    """A plain-text email whose Message-ID is ``<NAME@core.test>``."""
    lines = [
        f"Message-ID: {mid(name)}",
        "From: Customer <customer@example.org>",
        "To: support@bank.example",
        f"Subject: {subject}",
        "Date: Mon, 03 Mar 2025 10:00:00 +0000",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        body,
        "",
    ]
    return "\r\n".join(lines).encode()


def mid(name: str) -> str:
    return f"<{name}@core.test>"


_RULES: dict[tuple[str, ...], Rules] = {}


def _loaded_rules(path: Path, labels: list[str]) -> Rules:
    """The rules file loaded once per test process: every world writes the same file, and
    validating it takes longer than a whole in-memory cycle."""
    key = tuple(labels)
    if key not in _RULES:
        _RULES[key] = load_rules(path, labels)
    return _RULES[key]


@dataclass
class World:
    """One account's daemon "process" (settings, store, triage) and its mail server.

    :meth:`restart` is what a crash followed by a new process amounts to: the triage is
    dropped, the store closed (it holds the single-instance lock) and both made anew on
    the same database file.
    """

    root: Path
    server: MemoryServer
    feedback: bool = False
    batch_size: int = 100
    #: Where the state lives: a SQLite file under this directory (default: under root),
    #: or a ``postgresql://`` URL.
    state_dir: Path | str | None = None
    classifier: KeywordClassifier = field(default_factory=KeywordClassifier)

    def __post_init__(self) -> None:
        (self.root / "rules.yaml").write_text(RULES_TEXT)
        account = {
            "name": "mem",
            "host": "imap.memory.invalid",  # never contacted: the mailbox is in memory
            "username": "user",
            "password_env": "CLEANINBOX_TEST_UNUSED_PASSWORD",
            "batch_size": self.batch_size,
            "feedback": self.feedback,
        }
        state_dir = self.state_dir or self.root / "var"
        location = state_dir if isinstance(state_dir, str) else str(state_dir / "state.db")
        settings = {
            "rules": "rules.yaml",
            "state": location,
            "accounts": [account],
        }
        (self.root / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
        self.settings = load_settings(self.root / "cleaninbox.yaml")
        self.account: Account = self.settings.accounts[0]
        self.store = StateStore(self.settings.state)
        self.triage = self._triage()
        self.mailbox = self.server.connect(self.account.name)

    def _triage(self) -> Triage:
        self.metrics = Metrics(CollectorRegistry())
        rules = _loaded_rules(self.settings.rules, self.classifier.labels)
        # cast: the fake has every attribute of Classifier that the core reads.
        loaded = Loaded(cast(Classifier, self.classifier), rules, self.root / "no-bundle")
        return Triage(Runtime(self.settings, self.metrics, loaded=loaded), self.store, self.metrics)

    def cycle(self, mailbox: MemoryMailbox | None = None, mode: Mode | None = None) -> CycleReport:
        return self.triage.cycle(self.account, mailbox or self.mailbox, mode or Mode())

    def restart(self) -> None:
        """The process died: a new one opens the same state and connects again."""
        self.store.close()
        self.store = StateStore(self.settings.state)
        self.triage = self._triage()
        self.mailbox = self.server.connect(self.account.name)

    def settle(self, rounds: int = 4) -> list[CycleReport]:
        """Cycles until one finds nothing new and nothing pending to reconcile."""
        reports = []
        for _ in range(rounds):
            report = self.cycle()
            reports.append(report)
            if report.new == 0 and report.reconciled == 0:
                return reports
        raise AssertionError(f"not quiet after {rounds} cycles: {reports}")

    def close(self) -> None:
        self.store.close()


@contextmanager
def crash_at_write(n: int | None, seen: list[int] | None = None) -> Iterator[None]:
    """Kill the "process" just before its ``n``-th state commit from now (None: count
    the commits only, into ``seen``). The hook is always removed again."""
    count = 0

    def hook(_number: int) -> None:
        nonlocal count
        count += 1
        if seen is not None:
            seen.append(count)
        if count == n:
            raise Crash(f"killed before state write {n}")

    state.set_write_hook(hook)
    try:
        yield
    finally:
        state.set_write_hook(None)


def survive(action: Callable[[], object]) -> bool:
    """Run ``action``; True when the process "died" in it."""
    try:
        action()
    except Crash:
        return True
    return False
