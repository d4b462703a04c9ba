"""One triage cycle per account and watched folder (docs/architecture.md, "One email's path").

1. Recovery settles decisions a crash left ``pending`` (:mod:`daemon.core.recovery`).
2. SELECT; compare UIDVALIDITY with the stored value (renumbered folders: recovery).
3. UID SEARCH above the high-water mark; fetch with BODY.PEEK, size-capped.
4. Email to text; classify in batches (with a time limit).
5. Rules turn (intent, confidence, headers) into a :class:`~daemon.core.actions.Plan`.
6. Write-ahead: journal every decision (``pending`` where there is something to do);
   apply the plans (:func:`~daemon.core.actions.apply_plans`); mark them done or failed.
7. Advance the high-water mark past messages that are decided (never past one whose
   answer could not be trusted: it is fetched again next cycle); verify that moved
   messages arrived.

Counting and logging is the :class:`~daemon.core.accounting.Accounting` observer's job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from contextlib import contextmanager
from dataclasses import dataclass, replace

import structlog
from structlog.contextvars import bound_contextvars

from daemon.config.settings import Account
from daemon.core import feedback
from daemon.core.accounting import Accounting, CycleReport, Outcome, Progress
from daemon.core.actions import Plan, Target, apply_plans
from daemon.core.memory import CorrectionMemory
from daemon.core.recovery import Arrivals, Recovery
from daemon.core.rules import Headers, Rules
from daemon.core.runtime import Runtime
from daemon.errors import ConnectionLostError, MailboxError, ModelError
from daemon.mailbox.base import FetchedMessage, FolderStatus, Mailbox
from daemon.metrics import Metrics
from daemon.model.classifier import Classified, Classifier, Prediction
from daemon.model.text import EmailText, email_to_text
from daemon.store.base import Store
from daemon.store.records import Decision, FolderState, NewDecision, Status

log = structlog.get_logger(__name__)
NO_SAFE_MOVE = (
    "left in place: the server offers neither MOVE nor UIDPLUS, and a plain EXPUNGE "
    "could remove other clients' messages"
)

__all__ = ["CycleReport", "Mode", "Progress", "Triage"]


@dataclass(frozen=True)
class Mode:
    dry_run: bool = False
    backfill: bool = False
    since: str | None = None  # YYYY-MM-DD, backfill only
    limit: int | None = None  # backfill only


@dataclass
class _Item:
    """One message on its way through a batch."""

    message: FetchedMessage
    text: EmailText
    prediction: Prediction | None = None
    plan: Plan | None = None
    status: Status = "pending"
    reason: str | None = None
    decision_id: int = 0

    def outcome(self) -> Outcome:
        return Outcome(
            self.message.uid,
            self.text.message_id,
            self.prediction,
            self.plan,
            self.status,
            self.reason,
        )


def _text(message: FetchedMessage) -> EmailText:
    text = email_to_text(message.raw)
    if message.identity is not None:  # e.g. Gmail's X-GM-MSGID, stable across labels
        text = replace(text, message_id=message.identity)
    return text


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
    """Runs cycles; shared by every account (the state store serialises its writes)."""

    def __init__(
        self,
        runtime: Runtime,
        store: Store,
        metrics: Metrics,
        *,
        stop: threading.Event | None = None,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.stop = stop or threading.Event()
        self.inference = BoundedInference(runtime.settings.classifier.timeout_seconds)
        self.accounting = Accounting(metrics)
        self.recovery = Recovery(store, self.accounting, self._state)
        self.memory = CorrectionMemory(store, runtime.settings.memory, metrics)

    @property
    def stage_seconds(self) -> dict[str, float]:
        """Seconds spent per stage since start (fetch, parse, classify, state, act)."""
        return self.accounting.stage_seconds

    @contextmanager
    def _state(self) -> Iterator[Store]:
        with self.accounting.stage("state"):
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
        succeeded = False
        with bound_contextvars(account=account.name):
            try:
                mailbox.open()
                self.accounting.connected(account.name, True)
                if not mode.dry_run:
                    report.reconciled = self.reconcile(account, mailbox)
                for folder in account.folders:
                    if self.stop.is_set():
                        break
                    with bound_contextvars(folder=folder):
                        report.merge(self._folder(account, mailbox, folder, mode, progress))
                if account.feedback and not (mode.dry_run or mode.backfill or self.stop.is_set()):
                    report.corrections = self._corrections(account, mailbox)
                succeeded = not mode.dry_run
            except MailboxError as exc:
                lost = isinstance(exc, ConnectionLostError)
                if lost:
                    self.accounting.connected(account.name, False)
                self.accounting.error(account.name, "connection" if lost else "mailbox")
                report.error = str(exc)
                raise
            finally:
                report.seconds = time.perf_counter() - started
                self.accounting.cycle_ended(account.name, report.seconds, succeeded=succeeded)
        return report

    def reconcile(self, account: Account, mailbox: Mailbox) -> int:
        """Finish or settle every pending decision of ``account`` against the server."""
        return self.recovery.reconcile(account.name, mailbox)

    def _corrections(self, account: Account, mailbox: Mailbox) -> int:
        """Look for the user's corrections; a failure there never fails triage."""
        try:
            loaded = self.runtime.current

            def learn(decision: Decision, intent: str, correction_id: int) -> None:
                if decision.text:
                    self.memory.learn(
                        account.name,
                        decision.text,
                        intent,
                        loaded.classifier,
                        correction_id,
                        overruled=decision.memory_id is not None,
                    )

            return feedback.scan(
                account, mailbox, loaded.rules, self._state, self.accounting.metrics, learn
            )
        except ConnectionLostError:
            raise
        except Exception as exc:
            self.accounting.error(account.name, "feedback")
            log.error("feedback_failed", error=f"{type(exc).__name__}: {exc}")
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
        with self.accounting.stage("fetch"):
            status = mailbox.select(folder)
        saved = self.store.folder(account.name, folder)
        if saved is not None and saved.uidvalidity != status.uidvalidity and not mode.backfill:
            return self._renumbered(account, mailbox, saved, status, mode)
        if saved is None or saved.uidvalidity != status.uidvalidity:
            report.notes.append(f"{folder}: first start, old mail left untouched")
            high_water = status.uidnext - 1 if status.uidnext else self._last_uid(mailbox, folder)
            if not mode.dry_run:
                with self._state() as store:
                    store.set_folder(account.name, folder, status.uidvalidity, high_water)
            if not mode.backfill:
                return report
        else:
            high_water = saved.high_water
        # UIDNEXT is above every UID there is: a UID at or past it in an answer is not one
        # to trust yet (delivered since, or the server's mistake), and the mark never
        # moves past it. A UIDNEXT that went backwards is not trusted at all.
        uidnext = status.uidnext if status.uidnext > high_water else 0
        if status.uidnext and not uidnext and not mode.backfill:
            log.warning(
                "uidnext_went_backwards",
                command=f"SELECT {folder}",
                server_said=f"UIDNEXT {status.uidnext}",
                high_water=high_water,
                action="searching above the mark anyway",
            )
        if not mode.backfill and uidnext == high_water + 1:
            return report  # UIDNEXT has not moved past the mark: no new mail, no SEARCH
        with self.accounting.stage("fetch"):
            if mode.backfill:
                uids = mailbox.uids_since(folder, mode.since)
            else:
                uids = mailbox.uids_above(folder, high_water)
        uids = [u for u in uids if not uidnext or u < uidnext]
        known = self.store.known_uids(account.name, folder, status.uidvalidity, uids)
        todo = [u for u in uids if u not in known][: mode.limit]
        report.new = len(todo)
        if progress is not None:
            progress.total(len(todo))
        owns_mark = not (mode.dry_run or mode.backfill)  # those runs leave the mark alone
        arrivals = Arrivals()
        # The mark moves over UIDs the server answered for (a UID SEARCH named but FETCH
        # did not is gone, or never was), never past one left for the next cycle.
        held: int | None = None  # the lowest UID left for the next cycle
        answered = high_water
        for start in range(0, len(todo), account.batch_size):
            if self.stop.is_set():
                log.info("stopping", remaining=len(todo) - start)
                break
            batch = todo[start : start + account.batch_size]
            unread, top = self._batch(
                account, mailbox, folder, status.uidvalidity, batch, mode, report, arrivals
            )
            if unread is not None:
                held = unread if held is None else min(held, unread)
            answered = max(answered, top)
            if progress is not None:
                progress.advance(len(batch))
            mark = answered if held is None else min(answered, held - 1)
            if owns_mark and mark > high_water:
                high_water = mark
                with self._state() as store:
                    store.set_folder(account.name, folder, status.uidvalidity, high_water)
        else:
            # Everything above the mark is decided (known UIDs were reconciled already).
            top = max([answered, *known])
            top = top if held is None else min(top, held - 1)
            if owns_mark and top > high_water:
                with self._state() as store:
                    store.set_folder(account.name, folder, status.uidvalidity, top)
        report.failed += self.recovery.verify_arrivals(account.name, mailbox, arrivals)
        return report

    def _renumbered(
        self,
        account: Account,
        mailbox: Mailbox,
        saved: FolderState,
        status: FolderStatus,
        mode: Mode,
    ) -> CycleReport:
        """Triage what recovery re-identifies as new in a folder whose UIDs were renumbered."""
        report = CycleReport(account.name)
        found = self.recovery.renumbered(account.name, mailbox, saved, status)
        report.notes.append(found.note)
        report.new = len(found.todo)
        arrivals = Arrivals()
        redo = False  # the folder keeps its old UIDVALIDITY: redone (by Message-ID) next cycle
        for start in range(0, len(found.todo), account.batch_size):
            if self.stop.is_set():
                return report
            batch = found.todo[start : start + account.batch_size]
            unread, _top = self._batch(
                account, mailbox, saved.folder, status.uidvalidity, batch, mode, report, arrivals
            )
            redo = redo or unread is not None
        report.failed += self.recovery.verify_arrivals(account.name, mailbox, arrivals)
        if not (mode.dry_run or redo):
            with self._state() as store:
                store.set_folder(account.name, saved.folder, status.uidvalidity, status.uidnext - 1)
        return report

    @staticmethod
    def _last_uid(mailbox: Mailbox, folder: str) -> int:
        """The highest UID in ``folder``: the first start's mark when the server did not
        say UIDNEXT."""
        return max(mailbox.uids_above(folder, 0), default=0)

    # -- one batch -------------------------------------------------------------------------

    def _batch(
        self,
        account: Account,
        mailbox: Mailbox,
        folder: str,
        uidvalidity: int,
        uids: Sequence[int],
        mode: Mode,
        report: CycleReport,
        arrivals: Arrivals,
    ) -> tuple[int | None, int]:
        """Fetch, decide and act on one batch. Returns the lowest UID whose answer could
        not be trusted (neither decided nor acted on: the next cycle fetches it again), if
        any, and the highest UID decided (0 if none)."""
        loaded = self.runtime.current
        with self.accounting.stage("fetch"):
            fetched = mailbox.fetch(folder, uids, account.fetch_max_bytes)
        messages = [m for m in fetched if m.problem is None]
        unread = [m for m in fetched if m.problem is not None]
        for message in unread:
            self.accounting.error(account.name, "server_answer")
            log.warning(
                "message_unreadable",
                uid=message.uid,
                error=message.problem,
                action="not decided; fetched again next cycle",
            )
        with self.accounting.stage("parse"):
            items = [_Item(m, _text(m)) for m in messages]
        todo = self._to_classify(account, items)
        can_move = mailbox.capabilities.move or mailbox.capabilities.uidplus
        self._decide(
            account,
            loaded.classifier,
            loaded.rules,
            todo,
            can_move=can_move,
            record=not mode.dry_run,
        )
        version = loaded.classifier.version
        if not mode.dry_run:
            self._journal_and_act(account, mailbox, folder, uidvalidity, items, version, arrivals)
        for item in items:
            self.accounting.decided(
                account.name, item.outcome(), version, report, dry_run=mode.dry_run
            )
        return min((m.uid for m in unread), default=None), max((m.uid for m in messages), default=0)

    def _to_classify(self, account: Account, items: list[_Item]) -> list[_Item]:
        """Items to classify; the others (unparseable, restored by undo) are skipped."""
        ids = [i.text.message_id for i in items if i.text.message_id]
        restored = self.store.undone_message_ids(account.name, ids) if ids else set()
        todo: list[_Item] = []
        for item in items:
            if item.text.skipped:
                item.status, item.reason = "skipped", item.text.skip_reason
            elif item.text.message_id and item.text.message_id in restored:
                item.status, item.reason = "skipped", "restored by undo; not triaged again"
            else:
                todo.append(item)
        return todo

    def _decide(
        self,
        account: Account,
        classifier: Classifier,
        rules: Rules,
        todo: list[_Item],
        *,
        can_move: bool,
        record: bool = True,
    ) -> None:
        """Classify ``todo`` and give each item its plan (the review plan if the model failed);
        ``record`` False (a dry run): the correction memory writes nothing."""
        if not todo:
            return
        try:
            with self.accounting.stage("classify"):
                classified = self.inference.classify(classifier, [i.text.text for i in todo])
        except ModelError as exc:
            self.accounting.error(account.name, "model")
            log.error("classifier_failed", messages=len(todo), error=str(exc))
            review = rules.review_plan()
            for item in todo:
                item.plan = review
                item.status = "pending" if not review.is_noop else "skipped"
                item.reason = f"not classified: {exc}"
            return
        self.accounting.classified(classified)
        predictions = self.memory.apply(account.name, classifier, classified, record=record)
        for item, p in zip(todo, predictions, strict=True):
            item.prediction = p
            headers = Headers(item.text.sender, item.text.recipients, item.text.subject)
            item.plan = rules.decide(p.intent, p.confidence, p.abstain, headers, p.abstain_reason)
            if item.plan.move and not can_move:
                item.plan = item.plan.without_move()
                item.reason = NO_SAFE_MOVE
            if item.plan.is_noop:
                item.status = "done"
                item.reason = item.reason or (
                    f"abstained, {p.describe_abstention()}; left alone"
                    if p.abstain
                    else f"rule {item.plan.rule}: nothing to do"
                )
            elif p.abstain and item.reason is None:
                item.reason = f"abstained, {p.describe_abstention()}"

    def _journal_and_act(
        self,
        account: Account,
        mailbox: Mailbox,
        folder: str,
        uidvalidity: int,
        items: list[_Item],
        version: str,
        arrivals: Arrivals,
    ) -> None:
        """The write-ahead step: destinations exist and their UIDNEXT is known before the
        decisions are journaled (so recovery can tell our copies from older ones); then
        the plans are applied and the decisions finished."""
        acting = [i for i in items if i.status == "pending"]
        with self.accounting.stage("act"):
            for destination in sorted({d for i in acting if i.plan for d in i.plan.destinations}):
                if destination not in arrivals.uidnext:
                    mailbox.ensure_folder(destination)
                    arrivals.uidnext[destination] = mailbox.status(destination).uidnext
        for item in items:
            if item.plan is not None:
                item.plan = item.plan.before_acting(item.message.flags, arrivals.uidnext)
        decisions = [self._new_decision(account, folder, uidvalidity, i, version) for i in items]
        with self._state() as store:
            ids = store.record(decisions)
        for item, decision_id in zip(items, ids, strict=True):
            item.decision_id = decision_id
        if not acting:
            return
        with self.accounting.stage("act"):
            failed = apply_plans(
                mailbox,
                folder,
                [
                    Target(i.message.uid, i.plan, i.text.message_id)
                    for i in acting
                    if i.plan is not None
                ],
                on_error=lambda kind: self.accounting.error(account.name, f"action_{kind}"),
            )
        for item in acting:
            assert item.plan is not None
            if item.message.uid in failed:
                reason = failed[item.message.uid]
                if reason is not None:
                    item.status, item.reason = "failed", reason
                continue  # else still pending: recovery settles it next cycle
            item.status = "done"
            self.accounting.acted(account.name, item.plan)
            if item.plan.move and item.text.message_id:
                arrivals.expect(item.plan.move, item.decision_id, item.text.message_id)
        finished = [i for i in acting if i.status != "pending"]
        with self._state() as store:
            store.finish_each([(i.decision_id, i.status, i.reason) for i in finished])

    @staticmethod
    def _new_decision(
        account: Account, folder: str, uidvalidity: int, item: _Item, model_version: str
    ) -> NewDecision:
        p, plan = item.prediction, item.plan
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
            plan=plan.to_json() if plan else None,
            destination=plan.move if plan else None,
            status=item.status,
            reason=item.reason,
            text=item.text.text if account.feedback and p else None,
            memory_id=p.memory.entry_id if p and p.memory else None,
            memory_similarity=round(p.memory.similarity, 4) if p and p.memory else None,
        )
