"""What a cycle tells the world: the per-run report, Prometheus metrics and decision logs.

The cycle calls an :class:`Accounting` at the points worth counting; it owns every metric
and log line about decisions, so the cycle itself is only the order of the steps. The
account and folder are bound to the log context by the cycle (structlog contextvars), so
they are on every line without being passed.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from daemon.core.actions import Plan
from daemon.metrics import Metrics
from daemon.model.classifier import Classified, Prediction
from daemon.store.records import Status

log = structlog.get_logger(__name__)


@dataclass
class CycleReport:
    """What one run decided, per account (summed over its folders)."""

    account: str
    new: int = 0
    decided: int = 0
    acted: int = 0
    abstained: int = 0
    skipped: int = 0
    failed: int = 0
    reconciled: int = 0
    corrections: int = 0
    seconds: float = 0.0
    error: str | None = None
    actions: Counter[str] = field(default_factory=Counter)
    intents: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def merge(self, other: CycleReport) -> None:
        for name in (
            "new",
            "decided",
            "acted",
            "abstained",
            "skipped",
            "failed",
            "reconciled",
            "corrections",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.actions.update(other.actions)
        self.intents.update(other.intents)
        self.notes += other.notes


class Progress(Protocol):
    """Told how many messages a run will decide, then as batches finish (backfill's bar)."""

    def total(self, count: int) -> None: ...

    def advance(self, count: int) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """One message's decision as it ended in this run."""

    uid: int
    message_id: str | None
    prediction: Prediction | None
    plan: Plan | None
    status: Status
    reason: str | None


class Accounting:
    """Counts and logs what the cycle does; one per daemon, shared by every account."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        #: Seconds spent per stage since start (also exported as cleaninbox_stage_seconds_total).
        self.stage_seconds: defaultdict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - started
            self.stage_seconds[name] += spent
            self.metrics.stage.labels(name).inc(spent)

    def connected(self, account: str, up: bool) -> None:
        self.metrics.connection.labels(account).set(1 if up else 0)

    def error(self, account: str, kind: str, count: int = 1) -> None:
        self.metrics.errors.labels(account, kind).inc(count)

    def cycle_ended(self, account: str, seconds: float, *, succeeded: bool) -> None:
        self.metrics.cycle.labels(account).observe(seconds)
        if succeeded:
            self.metrics.last_success.labels(account).set(time.time())

    def classified(self, result: Classified) -> None:
        per_message = result.seconds / max(1, len(result.predictions))
        self.metrics.inference_batch.observe(result.seconds)
        for _ in result.predictions:
            self.metrics.inference.observe(per_message)

    def acted(self, account: str, plan: Plan) -> None:
        for kind in plan.kinds:
            self.metrics.actions.labels(account, kind).inc()

    def reconciled(self, account: str, outcome: str) -> None:
        self.metrics.reconciled.labels(account, outcome).inc()

    def decided(
        self, account: str, outcome: Outcome, model: str, report: CycleReport, *, dry_run: bool
    ) -> None:
        """Count one decision in ``report`` and the metrics, and log it."""
        p, plan = outcome.prediction, outcome.plan
        report.decided += 1
        if outcome.status == "skipped":
            report.skipped += 1
            kind = (outcome.reason or "unknown").split(";")[0].split(":")[0][:40]
            if not dry_run:
                self.metrics.skipped.labels(account, kind).inc()
        elif outcome.status == "failed":
            report.failed += 1
        action = plan.kind if plan else "none"
        if p is not None:
            report.intents[p.intent] += 1
            report.actions[action if outcome.status != "failed" else "failed"] += 1
            report.abstained += p.abstain
            report.acted += action != "none" and outcome.status == "done"
            if not dry_run:
                self._count_prediction(account, p, action)
        log.info(
            "decision",
            uid=outcome.uid,
            message_id=outcome.message_id,
            intent=p.intent if p else None,
            confidence=round(p.confidence, 4) if p else None,
            abstain=p.abstain if p else None,
            abstain_reason=p.abstain_reason if p else None,
            out_of_scope=round(p.out_of_scope, 4) if p and p.out_of_scope is not None else None,
            rule=plan.rule if plan else None,
            action=plan.describe() if plan else "leave alone",
            status="dry-run" if dry_run else outcome.status,
            reason=outcome.reason,
            model=model if p else None,
            memory=p.memory.to_json() if p and p.memory else None,
        )

    def _count_prediction(self, account: str, p: Prediction, action: str) -> None:
        self.metrics.messages.labels(account, p.intent, action).inc()
        if p.memory is None:  # a memory decision's "confidence" is its similarity
            self.metrics.confidence.observe(p.confidence)
        if p.abstain:
            self.metrics.abstentions.labels(account, p.abstain_reason or "low_confidence").inc()
