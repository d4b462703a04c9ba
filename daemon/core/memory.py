"""The correction memory: corrections that decide similar mail at once, before the next
retrain (docs/learning.md).

When the user corrects a decision (:mod:`daemon.core.feedback`), the memory keeps the
message's sentence embedding under the model in service, what that model says about it
(and whether it was sure) and what the user chose. A new message that the model calls the
same intent and that is close enough to such a correction is decided by the correction
instead (:mod:`daemon.model.memory` has the rule; its thresholds come from the bundle,
chosen on validation data at export, or from the ``memory`` settings). The rules then act on the
user's intent as usual; the decision records the entry followed and its similarity.

Entries live in the state store, so they survive restarts and are shared by replicas.
When another model comes into service, every entry is embedded again under it, and an
entry the new model gets right on its own is dropped: retraining has consolidated it.
``cleaninbox classify --config`` decides through this same class.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import structlog

from daemon.config.settings import MemorySettings
from daemon.metrics import Metrics
from daemon.model.classifier import Classified, Classifier, Prediction
from daemon.model.memory import Entry, FloatArray, MemoryIndex, Thresholds
from daemon.store.base import Store
from daemon.store.records import SHARED_MEMORY, MemoryEntry

log = structlog.get_logger(__name__)


def to_bytes(embedding: FloatArray) -> bytes:
    return np.asarray(embedding, dtype="<f4").tobytes()


def from_bytes(blob: bytes) -> FloatArray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


class CorrectionMemory:
    """Looks up, learns and re-embeds corrections for one process (thread-safe)."""

    def __init__(
        self,
        store: Store,
        settings: MemorySettings,
        metrics: Metrics | None = None,
        *,
        record_use: bool = True,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        #: Whether a decision counts as a use (least recently used entries expire first);
        #: ``cleaninbox classify`` evaluates without touching that.
        self.record_use = record_use
        self._lock = threading.Lock()
        self._indexes: dict[tuple[tuple[str, ...] | None, str], tuple[str, MemoryIndex]] = {}
        self._current: str | None = None  # the model version entries were last re-embedded for
        self._warned: set[str] = set()
        self._published: set[str] = set()

    # -- when it applies -------------------------------------------------------------------

    def thresholds(self, classifier: Classifier) -> Thresholds | None:
        """The thresholds in force for ``classifier``; None when the memory is off."""
        if not self.settings.enabled or classifier.embedding_output is None:
            self._warn_once(classifier, "the bundle has no embedding output")
            return None
        calibration = classifier.manifest.memory
        if calibration is None and self.settings.similarity is None:
            self._warn_once(classifier, "the bundle has no memory calibration")
            return None
        similarity = self.settings.similarity or (calibration.similarity if calibration else 1.0)
        repeated = (
            self.settings.repeated_similarity
            or (calibration.repeated_similarity if calibration else None)
            or similarity
        )
        support = self.settings.support or (calibration.support if calibration else 2)
        return Thresholds(similarity, min(similarity, repeated), support)

    def _warn_once(self, classifier: Classifier, why: str) -> None:
        if self.settings.enabled and classifier.version not in self._warned:
            self._warned.add(classifier.version)
            log.warning("memory_off", model=classifier.version, reason=why)

    def scope(self, account: str) -> tuple[str, ...] | None:
        """The accounts whose entries apply to ``account``'s mail (None: every account)."""
        return None if self.settings.scope == "shared" else (account, SHARED_MEMORY)

    # -- deciding --------------------------------------------------------------------------

    def apply(
        self, account: str, classifier: Classifier, classified: Classified
    ) -> list[Prediction]:
        """The predictions with those the memory decides replaced (same order)."""
        predictions = classified.predictions
        threshold = self.thresholds(classifier)
        if threshold is None or classified.embeddings is None or not predictions:
            return predictions
        index = self.index(account, classifier)
        if index.size == 0:
            return predictions
        out: list[Prediction] = []
        used: list[int] = []
        for prediction, embedding in zip(predictions, classified.embeddings, strict=True):
            recall = index.recall(prediction.intent, embedding, threshold)
            if recall is None:
                out.append(prediction)
            else:
                out.append(prediction.following(recall))
                used.append(recall.entry_id)
        if used and self.record_use:
            self.store.used_memory(used)
            if self.metrics is not None:
                self.metrics.memory_decisions.labels(account).inc(len(used))
        return out

    def index(self, account: str, classifier: Classifier) -> MemoryIndex:
        """The entries that apply to ``account`` under ``classifier``, cached until an
        entry is added, replaced or removed (one small query per call)."""
        self.reembed(classifier)
        accounts = self.scope(account)
        key = (accounts, classifier.version)
        signature = self.store.memory_signature(accounts, classifier.version)
        with self._lock:
            cached = self._indexes.get(key)
            if cached is not None and cached[0] == signature:
                return cached[1]
        entries = self.store.memory_entries(accounts, classifier.version)
        index = MemoryIndex(
            [Entry(e.id, e.said, e.chosen, from_bytes(e.embedding), e.confident) for e in entries],
            classifier.dimensions,
        )
        with self._lock:
            self._indexes[key] = (signature, index)
        return index

    # -- learning --------------------------------------------------------------------------

    def learn(
        self,
        account: str,
        text: str,
        chosen: str,
        classifier: Classifier,
        correction_id: int | None = None,
    ) -> int | None:
        """Remember that ``text`` is ``chosen``; the entry's id, or None when the memory
        is off or the model in service already says ``chosen`` without abstaining."""
        if self.thresholds(classifier) is None:
            return None
        self.reembed(classifier)
        classified = classifier.classify([text])
        assert classified.embeddings is not None
        said = classified.predictions[0]
        if said.intent == chosen and not said.abstain:
            return None
        entry_id = self.store.remember(
            account=account,
            text=text,
            said=said.intent,
            confident=not said.abstain,
            chosen=chosen,
            model_version=classifier.version,
            embedding=to_bytes(classified.embeddings[0]),
            max_entries=self.settings.max_entries,
            correction_id=correction_id,
        )
        log.info("memory_learned", entry=entry_id, model_said=said.intent, chosen=chosen)
        self.publish()
        return entry_id

    def reembed(self, classifier: Classifier) -> None:
        """Bring every entry to ``classifier``'s model (once per model and process)."""
        if self._current == classifier.version or classifier.embedding_output is None:
            return
        with self._lock:
            if self._current == classifier.version:
                return
            stale = [
                e for e in self.store.memory_entries() if e.model_version != classifier.version
            ]
            if stale:
                updates, dropped = self._recompute(stale, classifier)
                self.store.reembed_memory(updates, dropped, classifier.version)
                log.info(
                    "memory_reembedded",
                    model=classifier.version,
                    entries=len(updates),
                    dropped_now_right=len(dropped),
                )
            self._current = classifier.version
            self._indexes.clear()
        self.publish()

    @staticmethod
    def _recompute(
        stale: Sequence[MemoryEntry], classifier: Classifier
    ) -> tuple[list[tuple[int, str, bool, bytes]], list[int]]:
        classified = classifier.classify([e.text for e in stale])
        assert classified.embeddings is not None
        updates: list[tuple[int, str, bool, bytes]] = []
        dropped: list[int] = []
        for entry, said, embedding in zip(
            stale, classified.predictions, classified.embeddings, strict=True
        ):
            if said.intent == entry.chosen and not said.abstain:
                dropped.append(entry.id)
            else:
                updates.append((entry.id, said.intent, not said.abstain, to_bytes(embedding)))
        return updates, dropped

    def publish(self) -> None:
        """Entries per account on the gauge (after re-embedding; ``feedback list`` for more)."""
        if self.metrics is None:
            return
        counts = self.store.memory_counts(self._current)
        for account in self._published | set(counts):
            self.metrics.memory_entries.labels(account).set(counts.get(account, 0))
        self._published |= set(counts)
