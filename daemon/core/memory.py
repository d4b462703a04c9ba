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
import time
from collections.abc import Iterable, Sequence

import numpy as np
import structlog

from daemon.config.settings import MemorySettings
from daemon.metrics import Metrics
from daemon.model.classifier import Classified, Classifier, Prediction
from daemon.model.memory import Entry, FloatArray, MemoryIndex, Thresholds
from daemon.store.base import Store
from daemon.store.records import SHARED_MEMORY, MemoryEntry

log = structlog.get_logger(__name__)

#: Seconds the remap rule's counts are reused before being read again.
SEEN_TTL = 10.0


def _sure_counts(predictions: Iterable[Prediction]) -> dict[str, int]:
    """How many of ``predictions`` the model made without abstaining, per intent."""
    counts: dict[str, int] = {}
    for prediction in predictions:
        if not prediction.abstain:
            counts[prediction.intent] = counts.get(prediction.intent, 0) + 1
    return counts


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
        #: The model's sure decisions per intent, per scope, and when they were read: a
        #: share a few seconds old decides the same (see :meth:`seen`).
        self._seen: dict[tuple[str, ...] | None, tuple[float, dict[str, int]]] = {}
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
        remap = self.settings.remap_similarity or (
            calibration.remap_similarity if calibration else None
        )
        share = self.settings.remap_share or (calibration.remap_share if calibration else 0.5)
        repeated = min(similarity, repeated)
        return Thresholds(
            similarity,
            repeated,
            support,
            remap_similarity=None if remap is None else min(remap, repeated),
            remap_share=share,
        )

    def _warn_once(self, classifier: Classifier, why: str) -> None:
        if self.settings.enabled and classifier.version not in self._warned:
            self._warned.add(classifier.version)
            log.warning("memory_off", model=classifier.version, reason=why)

    def scope(self, account: str) -> tuple[str, ...] | None:
        """The accounts whose entries apply to ``account``'s mail (None: every account)."""
        return None if self.settings.scope == "shared" else (account, SHARED_MEMORY)

    # -- deciding --------------------------------------------------------------------------

    def apply(
        self,
        account: str,
        classifier: Classifier,
        classified: Classified,
        *,
        record: bool = True,
    ) -> list[Prediction]:
        """The predictions with those the memory decides replaced (same order).
        ``record`` False (a dry run): the state is not written (no counts, no uses)."""
        predictions = classified.predictions
        threshold = self.thresholds(classifier)
        if threshold is None or classified.embeddings is None or not predictions:
            return predictions
        index = self.index(account, classifier)
        out: list[Prediction] = []
        used: list[int] = []
        if index.size:
            seen = self.seen(account) if threshold.remap_similarity is not None else {}
            for prediction, embedding in zip(predictions, classified.embeddings, strict=True):
                recall = index.recall(
                    prediction.intent, embedding, threshold, seen.get(prediction.intent, 0)
                )
                if recall is None or recall.intent == prediction.intent:
                    out.append(prediction)  # nothing, or a correction keeping the model's
                else:
                    out.append(prediction.following(recall))
                    used.append(recall.entry_id)
        else:
            out = list(predictions)
        if self.record_use and record:
            # The model's own sure decisions, per intent: the remap rule's denominator.
            self.store.count_seen(account, _sure_counts(p for p in out if p.memory is None))
            if used:
                self.store.used_memory(used)
                if self.metrics is not None:
                    self.metrics.memory_decisions.labels(account).inc(len(used))
        return out

    def seen(self, account: str) -> dict[str, int]:
        """The model's sure decisions per intent where ``account``'s corrections apply,
        read at most every :data:`SEEN_TTL` seconds (one query saved per batch; the remap
        share moves by one message at a time, and an entry learnt re-reads it)."""
        accounts = self.scope(account)
        now = time.monotonic()
        with self._lock:
            cached = self._seen.get(accounts)
        if cached is not None and now - cached[0] < SEEN_TTL:
            return cached[1]
        counts = self.store.seen_counts(accounts)
        with self._lock:
            self._seen[accounts] = (now, counts)
        return counts

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
        *,
        seen: bool = False,
        overruled: bool = False,
    ) -> int | None:
        """Remember that ``text`` is ``chosen``; the entry's id, or None when the memory
        is off or the model in service already says ``chosen`` without abstaining.
        ``seen``: the message is also one the model decided (``feedback import``: each row
        counts, right or wrong; the daemon counted its own decisions when it made them).
        ``overruled``: the memory decided the message and the user put it where the model
        would have: that is remembered too (a correction that agrees with the model, which
        stops other corrections from deciding mail close to it) and counts as one of the
        model's decisions (a remap the user keeps undoing loses its share)."""
        if self.thresholds(classifier) is None:
            return None
        self.reembed(classifier)
        classified = classifier.classify([text])
        assert classified.embeddings is not None
        said = classified.predictions[0]
        agrees = said.intent == chosen and not said.abstain
        if seen or (overruled and agrees):
            self.store.count_seen(account, _sure_counts([said]))
        if agrees and not overruled:
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
        with self._lock:
            self._seen.clear()
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
