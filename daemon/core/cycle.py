"""One triage cycle per account and watched folder (DESIGN.md section 4).

1. SELECT; compare UIDVALIDITY with the stored value.
2. UID SEARCH above the high-water mark; fetch with BODY.PEEK, size-capped.
3. Email to text; classify in batches.
4. Rules turn (intent, confidence, headers) into a plan.
5. Write-ahead: commit the intended action as ``pending``; act on the server; mark done.
6. Advance the high-water mark past messages that are decided (done, skipped or failed,
   each with its reason). Pending records are reconciled before every cycle.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol

import structlog

from daemon.config.settings import Account
from daemon.core import feedback
from daemon.core.rules import Headers, Plan
from daemon.core.runtime import Runtime
from daemon.errors import ConnectionLostError, MailboxError, ModelError
from daemon.mailbox.base import FetchedMessage, FolderStatus, Mailbox
from daemon.metrics import Metrics
from daemon.model.classifier import Classified, Classifier, Prediction
from daemon.model.text import EmailText, email_to_text
from daemon.store.state import FolderState, NewDecision, StateStore, Status

log = structlog.get_logger("cleaninbox.triage")
VANISHED = "vanished: another client moved or deleted it after it was fetched; nothing was done"
NO_SAFE_MOVE = (
    "left in place: the server offers neither MOVE nor UIDPLUS, and a plain EXPUNGE "
    "could remove other clients' messages"
)


@dataclass
class CycleReport:
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
    dest_uidnext: dict[str, int] = field(default_factory=dict)  # per-cycle cache
    moved: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # to verify

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
class Mode:
    dry_run: bool = False
    backfill: bool = False
    since: str | None = None  # YYYY-MM-DD, backfill only
    limit: int | None = None  # backfill only


@dataclass
class _Item:
    message: FetchedMessage
    text: EmailText
    prediction: Prediction | None = None
    plan: Plan | None = None
    status: Status = "pending"
    reason: str | None = None
    decision_id: int = 0


def _text(message: FetchedMessage) -> EmailText:
    text = email_to_text(message.raw)
    if message.identity is not None:  # e.g. Gmail's X-GM-MSGID, stable across labels
        text = replace(text, message_id=message.identity)
    return text


def _parse_time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def plan_flags(plan: Plan) -> list[str]:
    """The IMAP flags and keywords a plan sets on the message."""
    return [
        *plan.keywords,
        *(["\\Flagged"] if plan.flag else []),
        *(["\\Seen"] if plan.mark_read else []),
    ]


def action_kinds(plan: Plan) -> list[str]:
    """Metric labels of the actions in a plan (cleaninbox_actions_total)."""
    kinds = ["keyword"] * len(plan.keywords)
    kinds += ["flag"] if plan.flag else []
    kinds += ["mark_read"] if plan.mark_read else []
    kinds += ["copy"] * len(plan.copies)
    kinds += ["move"] if plan.move else []
    return kinds


def _action_kind(plan: Plan) -> str:
    if plan.move:
        return "move"
    if plan.copies:
        return "copy"
    if plan.keywords or plan.flag or plan.mark_read:
        return "tag"
    return "none"


class BoundedInference:
    """Runs the classifier in a worker thread with a time limit.

    A model that hangs cannot be interrupted inside onnxruntime; when it overruns, the call
    fails with ModelError (the messages are left in place with that reason), the stuck
    worker is abandoned and a fresh one serves the next batch.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cleaninbox-model")

    def classify(self, classifier: Classifier, texts: list[str]) -> Classified:
        future = self._pool.submit(classifier.classify, texts)
        try:
            return future.result(timeout=self.timeout)
        except FuturesTimeout:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cleaninbox-model")
            raise ModelError(
                f"the model did not answer within {self.timeout:g} s (classifier.timeout_seconds)"
            ) from None
        except ModelError:
            raise
        except Exception as exc:  # a broken model must not stop the cycle
            raise ModelError(f"the model failed: {type(exc).__name__}: {exc}") from exc


class Triage:
    """Runs cycles; shared by every account (the state store serialises writes)."""

    def __init__(
        self,
        runtime: Runtime,
        store: StateStore,
        metrics: Metrics,
        *,
        stop: threading.Event | None = None,
        state_lock: threading.Lock | None = None,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.metrics = metrics
        self.stop = stop or threading.Event()
        self._state_lock = state_lock or threading.Lock()
        self.inference = BoundedInference(runtime.settings.classifier.timeout_seconds)
        #: Seconds spent per stage since start (also exported as cleaninbox_stage_seconds_total).
        self.stage_seconds: defaultdict[str, float] = defaultdict(float)

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - started
            self.stage_seconds[name] += spent
            self.metrics.stage.labels(name).inc(spent)

    @contextmanager
    def _state(self) -> Iterator[StateStore]:
        with self._stage("state"), self._state_lock:
            yield self.store

    # -- the cycle -------------------------------------------------------------------------

    def cycle(
        self,
        account: Account,
        mailbox: Mailbox,
        mode: Mode | None = None,
        progress: Progress | None = None,
    ) -> CycleReport:
        mode = mode or Mode()
        report = CycleReport(account.name)
        started = time.perf_counter()
        mailbox.read_only = mode.dry_run
        try:
            mailbox.open()
            self.metrics.connection.labels(account.name).set(1)
            if not mode.dry_run:
                report.reconciled = self.reconcile(account, mailbox)
            for folder in account.folders:
                if self.stop.is_set():
                    break
                report.merge(self._folder(account, mailbox, folder, mode, progress))
            if account.feedback and not (mode.dry_run or mode.backfill or self.stop.is_set()):
                report.corrections = self._corrections(account, mailbox)
        except MailboxError as exc:
            kind = "connection" if isinstance(exc, ConnectionLostError) else "mailbox"
            if isinstance(exc, ConnectionLostError):
                self.metrics.connection.labels(account.name).set(0)
            self.metrics.errors.labels(account.name, kind).inc()
            report.error = str(exc)
            raise
        finally:
            report.seconds = time.perf_counter() - started
            self.metrics.cycle.labels(account.name).observe(report.seconds)
        if not mode.dry_run:
            self.metrics.last_success.labels(account.name).set(time.time())
        return report

    def _corrections(self, account: Account, mailbox: Mailbox) -> int:
        """Look for the user's corrections; a failure there never fails triage."""
        try:
            return feedback.scan(
                account, mailbox, self.runtime.current.rules, self._state, self.metrics
            )
        except ConnectionLostError:
            raise
        except Exception as exc:
            self.metrics.errors.labels(account.name, "feedback").inc()
            log.error("feedback_failed", account=account.name, error=f"{type(exc).__name__}: {exc}")
            return 0

    def _folder(
        self,
        account: Account,
        mailbox: Mailbox,
        folder: str,
        mode: Mode,
        progress: Progress | None,
    ) -> CycleReport:
        report = CycleReport(account.name)
        with self._stage("fetch"):
            status = mailbox.select(folder)
        saved = self.store.folder(account.name, folder)
        if saved is not None and saved.uidvalidity != status.uidvalidity and not mode.backfill:
            return self._uidvalidity_changed(account, mailbox, folder, saved, status, mode)
        if saved is None or saved.uidvalidity != status.uidvalidity:
            report.notes.append(f"{folder}: first start, old mail left untouched")
            high_water = status.uidnext - 1
            if not mode.dry_run:
                with self._state() as store:
                    store.set_folder(account.name, folder, status.uidvalidity, high_water)
            if not mode.backfill:
                return report
        else:
            high_water = saved.high_water

        if not mode.backfill and 0 < status.uidnext <= high_water + 1:
            return report  # UIDNEXT has not moved past the mark: no new mail, no SEARCH
        with self._stage("fetch"):
            if mode.backfill:
                uids = mailbox.uids_since(folder, mode.since)
            else:
                uids = mailbox.uids_above(folder, high_water)
        known = self.store.known_uids(account.name, folder, status.uidvalidity, uids)
        todo = [u for u in uids if u not in known]
        if mode.limit is not None:
            todo = todo[: mode.limit]
        report.new = len(todo)
        if progress is not None:
            progress.total(len(todo))
        for start in range(0, len(todo), account.batch_size):
            if self.stop.is_set():
                log.info(
                    "stopping", account=account.name, folder=folder, remaining=len(todo) - start
                )
                break
            batch = todo[start : start + account.batch_size]
            self._batch(account, mailbox, folder, status.uidvalidity, batch, mode, report)
            if progress is not None:
                progress.advance(len(batch))
            top = max(batch)
            if not mode.dry_run and not mode.backfill and top > high_water:
                high_water = top
                with self._state() as store:
                    store.set_folder(account.name, folder, status.uidvalidity, high_water)
        else:
            # Everything above the mark is decided (known UIDs were reconciled already).
            top = max(uids, default=high_water)
            if not mode.dry_run and not mode.backfill and top > high_water:
                with self._state() as store:
                    store.set_folder(account.name, folder, status.uidvalidity, top)
        self._verify_arrivals(account, mailbox, folder, report)
        return report

    def _verify_arrivals(
        self, account: Account, mailbox: Mailbox, folder: str, report: CycleReport
    ) -> None:
        """Check each destination once per pass: a message another client moved or deleted
        just before our MOVE is not there, and its decision becomes 'failed: vanished'."""
        vanished: list[tuple[int, Status, str | None]] = []
        for destination, moved in report.moved.items():
            floor = report.dest_uidnext.get(destination, 1)
            arrived = set(mailbox.message_ids_from(destination, floor).values())
            for decision_id, message_id in moved:
                if message_id not in arrived:
                    vanished.append((decision_id, "failed", VANISHED))
                    log.warning(
                        "vanished",
                        account=account.name,
                        folder=folder,
                        message_id=message_id,
                        destination=destination,
                    )
        report.moved.clear()
        if vanished:
            report.failed += len(vanished)
            self.metrics.errors.labels(account.name, "vanished").inc(len(vanished))
            with self._state() as store:
                store.finish_each(vanished)

    def _uidvalidity_changed(
        self,
        account: Account,
        mailbox: Mailbox,
        folder: str,
        saved: FolderState,
        status: FolderStatus,
        mode: Mode,
    ) -> CycleReport:
        """The folder's UIDs were renumbered (or it was recreated): stored UIDs are void.

        Messages are re-identified by Message-ID: those already decided are left alone;
        the rest are triaged if they were delivered since the last successful cycle, and
        left alone (as on a first start) if older. Nothing is done to a stale UID.
        """
        report = CycleReport(account.name)
        since = _parse_time(saved.updated_at)
        with self._stage("fetch"):
            # SEARCH SINCE is by date in the server's time zone: a day earlier, then filtered.
            day = (since - timedelta(days=1)).date().isoformat() if since else None
            uids = mailbox.uids_since(folder, day)
            identities = mailbox.identify(folder, uids)
        decided = self.store.decided_message_ids(
            account.name, [i.message_id for i in identities.values() if i.message_id]
        )
        margin = timedelta(minutes=5)  # clock skew between the server and us
        todo: list[int] = []
        for uid in sorted(identities):
            identity = identities[uid]
            if identity.message_id and identity.message_id in decided:
                continue
            if since and identity.internal_date and identity.internal_date < since - margin:
                continue
            todo.append(uid)
        log.warning(
            "uidvalidity_changed",
            account=account.name,
            folder=folder,
            stored=saved.uidvalidity,
            server=status.uidvalidity,
            recognised=sum(1 for i in identities.values() if i.message_id in decided),
            to_triage=len(todo),
            action="stored UIDs are void; messages re-identified by Message-ID",
        )
        self.metrics.errors.labels(account.name, "uidvalidity_changed").inc()
        report.notes.append(
            f"{folder}: UIDVALIDITY changed ({saved.uidvalidity} -> {status.uidvalidity}); "
            f"{len(todo)} message(s) since the last cycle re-identified as new"
        )
        report.new = len(todo)
        for start in range(0, len(todo), account.batch_size):
            if self.stop.is_set():
                return report  # the folder keeps its old UIDVALIDITY: redone next cycle
            batch = todo[start : start + account.batch_size]
            self._batch(account, mailbox, folder, status.uidvalidity, batch, mode, report)
        self._verify_arrivals(account, mailbox, folder, report)
        if not mode.dry_run:
            with self._state() as store:
                store.set_folder(account.name, folder, status.uidvalidity, status.uidnext - 1)
        return report

    def _batch(
        self,
        account: Account,
        mailbox: Mailbox,
        folder: str,
        uidvalidity: int,
        uids: Sequence[int],
        mode: Mode,
        report: CycleReport,
    ) -> None:
        loaded = self.runtime.current
        classifier, rules = loaded.classifier, loaded.rules
        capabilities = mailbox.capabilities
        can_move = capabilities.move or capabilities.uidplus
        with self._stage("fetch"):
            messages = mailbox.fetch(folder, uids, account.fetch_max_bytes)
        with self._stage("parse"):
            items = [_Item(m, _text(m)) for m in messages]
        restored = self._restored_message_ids(account.name, items)
        todo: list[_Item] = []
        for item in items:
            if item.text.skipped:
                item.status, item.reason = "skipped", item.text.skip_reason
            elif item.text.message_id and item.text.message_id in restored:
                item.status, item.reason = "skipped", "restored by undo; not triaged again"
            else:
                todo.append(item)
        classified: Classified | None = None
        if todo:
            try:
                with self._stage("classify"):
                    classified = self.inference.classify(classifier, [i.text.text for i in todo])
            except ModelError as exc:
                self.metrics.errors.labels(account.name, "model").inc()
                log.error(
                    "classifier_failed",
                    account=account.name,
                    folder=folder,
                    messages=len(todo),
                    error=str(exc),
                )
                review = rules.review_plan()
                for item in todo:
                    item.plan = review
                    item.status = "pending" if not review.is_noop else "skipped"
                    item.reason = f"not classified: {exc}"
                todo = []
        if todo and classified is not None:
            per_message = classified.seconds / len(todo)
            self.metrics.inference_batch.observe(classified.seconds)
            for item, prediction in zip(todo, classified.predictions, strict=True):
                self.metrics.inference.observe(per_message)
                item.prediction = prediction
                headers = Headers(item.text.sender, item.text.recipients, item.text.subject)
                item.plan = rules.decide(
                    prediction.intent,
                    prediction.confidence,
                    prediction.abstain,
                    headers,
                    prediction.abstain_reason,
                )
                if item.plan.move and not can_move:
                    item.plan = replace(item.plan, move=None)
                    item.reason = NO_SAFE_MOVE
                if item.plan.is_noop:
                    item.status = "done"
                    item.reason = item.reason or (
                        f"abstained, {prediction.describe_abstention()}; left alone"
                        if prediction.abstain
                        else f"rule {item.plan.rule}: nothing to do"
                    )
                elif prediction.abstain and item.reason is None:
                    item.reason = f"abstained, {prediction.describe_abstention()}"

        if mode.dry_run:
            for item in items:
                self._account_for(account, folder, item, classifier.version, report, dry_run=True)
            return

        # Destinations exist and their UIDNEXT is known before the intent is recorded, so
        # reconciliation can tell our copies from older ones.
        # (UIDNEXT is read once per destination and cycle: an earlier value is a lower,
        # still correct, floor.)
        dest_uidnext = report.dest_uidnext
        acting = [i for i in items if i.status == "pending"]
        with self._stage("act"):
            for destination in sorted({d for i in acting for d in self._destinations(i)}):
                if destination not in dest_uidnext:
                    mailbox.ensure_folder(destination)
                    dest_uidnext[destination] = mailbox.status(destination).uidnext

        decisions = [
            self._new_decision(account, folder, uidvalidity, item, classifier.version, dest_uidnext)
            for item in items
        ]
        with self._state() as store:
            ids = store.record(decisions)
        for item, decision_id in zip(items, ids, strict=True):
            item.decision_id = decision_id

        if acting:
            with self._stage("act"):
                self._apply(account, mailbox, folder, acting)
            with self._state() as store:
                store.finish_each([(i.decision_id, i.status, i.reason) for i in acting])
            for item in acting:
                if item.status == "done" and item.plan and item.plan.move and item.text.message_id:
                    report.moved.setdefault(item.plan.move, []).append(
                        (item.decision_id, item.text.message_id)
                    )
        for item in items:
            self._account_for(account, folder, item, classifier.version, report, dry_run=False)

    @staticmethod
    def _destinations(item: _Item) -> list[str]:
        assert item.plan is not None
        return [*item.plan.copies, *([item.plan.move] if item.plan.move else [])]

    def _restored_message_ids(self, account: str, items: Sequence[_Item]) -> set[str]:
        ids = [i.text.message_id for i in items if i.text.message_id]
        if not ids:
            return set()
        return self.store.undone_message_ids(account, ids)

    def _new_decision(
        self,
        account: Account,
        folder: str,
        uidvalidity: int,
        item: _Item,
        model_version: str,
        dest_uidnext: dict[str, int],
    ) -> NewDecision:
        p = item.prediction
        plan = item.plan
        plan_json: dict[str, Any] | None = None
        if plan is not None:
            plan_json = plan.to_json()
            plan_json["flags_before"] = list(item.message.flags)
            plan_json["dest_uidnext"] = {d: dest_uidnext.get(d) for d in self._destinations(item)}
        return NewDecision(
            kind="triage",
            account=account.name,
            folder=folder,
            uidvalidity=uidvalidity,
            uid=item.message.uid,
            message_id=item.text.message_id,
            size=item.message.size,
            internal_date=item.message.internal_date,
            intent=p.intent if p else None,
            confidence=p.confidence if p else None,
            abstain=p.abstain if p else None,
            top_k=p.top_k if p else None,
            model_version=model_version if p else None,
            rule=plan.rule if plan else None,
            action=plan.describe() if plan else "leave alone",
            plan=plan_json,
            destination=plan.move if plan else None,
            dest_uidnext=dest_uidnext.get(plan.move) if plan and plan.move else None,
            status=item.status,
            reason=item.reason,
            text=item.text.text if account.feedback and p else None,
        )

    def _apply(
        self,
        account: Account,
        mailbox: Mailbox,
        folder: str,
        items: Sequence[_Item],
    ) -> None:
        """Apply plans in few commands: flags and copies first, then each destination's
        moves together with the flags of the messages that go there (``tag_and_move``:
        on Maildir the flags are written in the destination, not the source)."""
        flagged_here: dict[tuple[str, ...], list[_Item]] = defaultdict(list)
        copies: dict[str, list[_Item]] = defaultdict(list)
        moves: dict[str, list[_Item]] = defaultdict(list)
        for item in items:
            assert item.plan is not None
            travels = bool(item.plan.move) and not item.plan.copies
            flags = tuple(sorted(set(plan_flags(item.plan))))
            if not travels and flags:
                flagged_here[flags].append(item)  # one STORE per distinct set of flags
            for destination in item.plan.copies:
                copies[destination].append(item)
            if item.plan.move:
                moves[item.plan.move].append(item)
        failed: dict[int, str] = {}
        # Another client may have moved or deleted messages since they were fetched: act
        # only on those still there, and record the rest as vanished.
        present = mailbox.existing(folder, [i.message.uid for i in items])
        for item in items:
            if item.message.uid not in present:
                failed[item.message.uid] = VANISHED

        def attempt(kind: str, target: str, group: list[_Item], run: Callable[[], None]) -> None:
            live = [i for i in group if i.message.uid not in failed]
            if not live:
                return
            try:
                run()
            except ConnectionLostError:
                raise  # records stay pending; reconciled on the next cycle
            except MailboxError as exc:
                self.metrics.errors.labels(account.name, f"action_{kind}").inc()
                for item in live:
                    failed[item.message.uid] = f"{kind} {target} failed: {exc}"

        for flags, group in flagged_here.items():
            attempt(
                "flag",
                " ".join(flags),
                group,
                partial(self._flag, mailbox, folder, list(flags), group, failed),
            )
        for destination, group in copies.items():
            attempt(
                "copy",
                destination,
                group,
                partial(self._copy, mailbox, folder, destination, group, failed),
            )
        for destination, group in moves.items():
            attempt(
                "move",
                destination,
                group,
                partial(self._move, mailbox, folder, destination, group, failed),
            )
        for item in items:
            if item.message.uid in failed:
                item.status, item.reason = "failed", failed[item.message.uid]
                continue
            item.status = "done"
            assert item.plan is not None
            for action in action_kinds(item.plan):
                self.metrics.actions.labels(account.name, action).inc()

    @staticmethod
    def _flag(
        mailbox: Mailbox,
        folder: str,
        flags: list[str],
        group: list[_Item],
        failed: dict[int, str],
    ) -> None:
        mailbox.add_flags(
            folder, [i.message.uid for i in group if i.message.uid not in failed], flags
        )

    @staticmethod
    def _copy(
        mailbox: Mailbox, folder: str, destination: str, group: list[_Item], failed: dict[int, str]
    ) -> None:
        mailbox.copy(
            folder, [i.message.uid for i in group if i.message.uid not in failed], destination
        )

    @staticmethod
    def _move(
        mailbox: Mailbox,
        folder: str,
        destination: str,
        group: list[_Item],
        failed: dict[int, str],
    ) -> None:
        """Items with copies had their flags set before copying; the rest carry them."""
        mailbox.tag_and_move(
            folder,
            {
                i.message.uid: [] if i.plan is None or i.plan.copies else plan_flags(i.plan)
                for i in group
                if i.message.uid not in failed
            },
            destination,
        )

    def _account_for(
        self,
        account: Account,
        folder: str,
        item: _Item,
        version: str,
        report: CycleReport,
        *,
        dry_run: bool,
    ) -> None:
        p, plan = item.prediction, item.plan
        report.decided += 1
        if item.status == "skipped":
            report.skipped += 1
            kind = (item.reason or "unknown").split(";")[0].split(":")[0][:40]
            if not dry_run:
                self.metrics.skipped.labels(account.name, kind).inc()
        elif item.status == "failed":
            report.failed += 1
        action = _action_kind(plan) if plan else "none"
        if p is not None:
            report.intents[p.intent] += 1
            report.actions[action if item.status != "failed" else "failed"] += 1
            if p.abstain:
                report.abstained += 1
            if action != "none" and item.status == "done":
                report.acted += 1
            if not dry_run:
                self.metrics.messages.labels(account.name, p.intent, action).inc()
                self.metrics.confidence.observe(p.confidence)
                if p.abstain:
                    self.metrics.abstentions.labels(
                        account.name, p.abstain_reason or "low_confidence"
                    ).inc()
        log.info(
            "decision",
            account=account.name,
            folder=folder,
            uid=item.message.uid,
            message_id=item.text.message_id,
            intent=p.intent if p else None,
            confidence=round(p.confidence, 4) if p else None,
            abstain=p.abstain if p else None,
            abstain_reason=p.abstain_reason if p else None,
            out_of_scope=round(p.out_of_scope, 4) if p and p.out_of_scope is not None else None,
            rule=plan.rule if plan else None,
            action=plan.describe() if plan else "leave alone",
            status="dry-run" if dry_run else item.status,
            reason=item.reason,
            model=version if p else None,
        )

    # -- reconciliation --------------------------------------------------------------------

    def reconcile(self, account: Account, mailbox: Mailbox) -> int:
        """Finish or settle every pending decision of ``account`` against the server."""
        pending = self.store.pending(account.name)
        for decision in pending:
            if decision.kind != "triage":
                outcome, reason = "interrupted", "interrupted before it finished; run it again"
                status: Status = "failed"
            else:
                plan = Plan.from_json(decision.plan or {"rule": decision.rule or "?"})
                outcome, status, reason = self._settle(mailbox, decision, plan)
            with self._state() as store:
                store.finish([decision.id], status, reason)
            self.metrics.reconciled.labels(account.name, outcome).inc()
            log.warning(
                "reconciled",
                account=account.name,
                folder=decision.folder,
                uid=decision.uid,
                message_id=decision.message_id,
                outcome=outcome,
                status=status,
                reason=reason,
            )
        return len(pending)

    def _settle(self, mailbox: Mailbox, decision: Any, plan: Plan) -> tuple[str, Status, str]:
        folder, mid = decision.folder, decision.message_id
        try:
            status = mailbox.select(folder)
        except ConnectionLostError:
            raise
        except MailboxError as exc:
            return "source_gone", "failed", f"source folder unavailable: {exc}"
        if status.uidvalidity == decision.uidvalidity:
            ids = mailbox.message_ids(folder, [decision.uid])
            present_uids = (
                [decision.uid]
                if decision.uid in ids and (mid is None or ids[decision.uid] == mid)
                else []
            )
        else:
            present_uids = mailbox.find_message_id(folder, mid) if mid else []
        extra: dict[str, Any] = (decision.plan or {}).get("dest_uidnext") or {}

        def ours(destination: str) -> list[int]:
            if not mid or not mailbox.folder_exists(destination):
                return []
            floor = extra.get(destination) or 0
            found = [u for u in mailbox.find_message_id(destination, mid) if u >= floor]
            if len(found) > 1 and mailbox.capabilities.uidplus:
                # an interrupted and retried command left two: keep one copy
                mailbox.delete(destination, found[1:])
                found = found[:1]
            return found

        if plan.move:
            in_dest = ours(plan.move)
            if in_dest and present_uids:
                mailbox.delete(folder, present_uids)
                return (
                    "completed",
                    "done",
                    "completed after restart: removed the source copy an interrupted "
                    "move left behind",
                )
            if in_dest:
                return "completed", "done", "completed after restart: already at destination"
        if not present_uids:
            return (
                "vanished",
                "failed",
                "message left the source folder before the action completed "
                "(moved or deleted by another client)",
            )
        uids = present_uids
        flags = plan_flags(plan)
        if not plan.move or plan.copies:
            mailbox.add_flags(folder, uids, flags)
            flags = []
        for destination in plan.copies:
            mailbox.ensure_folder(destination)
            if not ours(destination):
                mailbox.copy(folder, uids, destination)
        if plan.move:
            mailbox.ensure_folder(plan.move)
            mailbox.tag_and_move(folder, dict.fromkeys(uids, flags), plan.move)
        return "redone", "done", "redone after restart"
