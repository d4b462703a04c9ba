"""The model and rules in service, swapped atomically on SIGHUP or a new ``models/current``.

A new bundle is loaded and the rules validated against its labels *before* the swap; if
either fails, the running pair stays in service and the error is logged.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon.config.settings import Settings
from daemon.core.rules import Rules, load_rules
from daemon.errors import CleanInboxError
from daemon.metrics import Metrics
from daemon.model.classifier import Classifier

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Loaded:
    classifier: Classifier
    rules: Rules
    bundle_path: Path  # the resolved bundle directory


def classifier_for(settings: Settings, *, top_k: int = 5) -> Classifier:
    """The settings' model, served as the daemon serves it."""
    return Classifier(
        settings.model.resolve(),
        threads=settings.classifier.threads,
        batch_size=settings.classifier.batch_size,
        top_k=top_k,
        abstain_threshold=settings.classifier.abstain_threshold,
        out_of_scope_threshold=settings.classifier.out_of_scope_threshold,
        spin_wait=settings.classifier.spin_wait,
    )


def load(settings: Settings) -> Loaded:
    classifier = classifier_for(settings)
    rules = load_rules(settings.rules, classifier.labels)
    return Loaded(classifier, rules, classifier.bundle_dir)


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics, loaded: Loaded | None = None):
        self.settings = settings
        self.metrics = metrics
        self._lock = threading.Lock()
        self._loaded = loaded or load(settings)
        self._publish()

    def _publish(self) -> None:
        m = self._loaded.classifier.manifest
        self.metrics.set_model(m.version, m.base_model, m.text_recipe, time.time())

    @property
    def current(self) -> Loaded:
        with self._lock:
            return self._loaded

    def reload(self, reason: str) -> bool:
        """Load model and rules again; keep the old pair if anything is wrong."""
        try:
            fresh = load(self.settings)
        except CleanInboxError as exc:
            log.error(
                "reload_failed", reason=reason, error=str(exc), kept=self._loaded.classifier.version
            )
            self.metrics.errors.labels(account="", kind="reload").inc()
            self.metrics.model_load_failures.inc()
            return False
        with self._lock:
            old = self._loaded
            self._loaded = fresh
        self._publish()
        log.info(
            "reloaded",
            reason=reason,
            model=fresh.classifier.version,
            previous=old.classifier.version,
            rules=str(self.settings.rules),
        )
        return True

    def check_for_new_model(self) -> bool:
        """Reload when ``settings.model`` (``models/current``) now names another bundle."""
        try:
            target = self.settings.model.resolve()
        except OSError:
            return False
        if target == self._loaded.bundle_path:
            return False
        return self.reload(f"model path now points at {target.name}")
