"""The long-running service: one APScheduler interval job per account, HTTP, signals.

SIGTERM/SIGINT: stop taking new batches, finish the one in hand, exit 0.
SIGHUP: reload rules and model (the running pair stays if the new one is invalid).
A new ``models/current`` is picked up without a restart.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import FrameType
from typing import TYPE_CHECKING

import stamina
import structlog
from prometheus_client import CollectorRegistry
from structlog.contextvars import bound_contextvars

from daemon.config.settings import Account, Settings
from daemon.core.cycle import CycleReport, Mode, Progress, Triage
from daemon.core.runtime import Runtime
from daemon.errors import AuthError, ConnectionLostError, MailboxError
from daemon.mailbox import Mailbox
from daemon.mailbox.oauth import token_source
from daemon.metrics import Metrics
from daemon.model.promotion import RetrainResult
from daemon.service.backoff import backoff_delay
from daemon.service.faults import open_mailbox_with_hooks
from daemon.service.health import Health
from daemon.service.idle import STOP_CHECK, IdleWatcher
from daemon.store.database import without_password
from daemon.store.state import StateStore

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

log = structlog.get_logger(__name__)
SHUTDOWN_GRACE = 10.0  # seconds a running cycle gets to finish after SIGTERM


@dataclass
class _Backoff:
    failures: int = 0


class Service:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        dry_run: bool | None = None,
        mailbox_factory: Callable[[Account], Mailbox] = open_mailbox_with_hooks,
    ) -> None:
        self.settings = settings
        self.dry_run = settings.dry_run if dry_run is None else dry_run
        self.stop = threading.Event()
        self.metrics = Metrics(registry)
        self.runtime = Runtime(settings, self.metrics)
        self.store = StateStore(settings.state, password=settings.state_password())
        self.triage = Triage(self.runtime, self.store, self.metrics, stop=self.stop)
        for account in settings.accounts:
            if account.oauth2 is not None:
                token_source(account, on_refresh=functools.partial(self._refreshed, account.name))
        self.mailboxes = {a.name: mailbox_factory(a) for a in settings.accounts}
        self.health = Health(intervals={a.name: settings.interval(a) for a in settings.accounts})
        self._backoff = {a.name: _Backoff() for a in settings.accounts}
        self._locks = {a.name: threading.Lock() for a in settings.accounts}
        self.scheduler: BackgroundScheduler | None = None
        # mode: idle accounts run in their own worker thread, woken by their IDLE watchers
        self._wake = {a.name: threading.Event() for a in settings.accounts if a.mode == "idle"}
        self._retry_in: dict[str, float] = {}
        self.watchers: list[IdleWatcher] = []

    def _refreshed(self, account: str, reason: str) -> None:
        self.metrics.oauth_refreshes.labels(account, reason).inc()

    # -- one account -----------------------------------------------------------------------

    def cycle(
        self, name: str, mode: Mode | None = None, progress: Progress | None = None
    ) -> CycleReport:
        """One cycle over one account, retrying a lost connection a few times."""
        account = self.settings.account(name)
        mailbox = self.mailboxes[name]
        mode = mode or Mode(dry_run=self.dry_run)
        with self._locks[name]:
            for attempt in stamina.retry_context(
                on=ConnectionLostError, attempts=3, wait_initial=0.5, wait_max=5.0, timeout=60.0
            ):
                with attempt:
                    if self.stop.is_set():
                        return CycleReport(name, error="stopped")
                    return self.triage.cycle(account, mailbox, mode, progress)
        raise AssertionError("unreachable")  # pragma: no cover

    def _job(self, name: str) -> None:
        with bound_contextvars(account=name):
            self._run_job(name)

    def _run_job(self, name: str) -> None:
        if self.stop.is_set():
            return
        self.runtime.check_for_new_model()
        try:
            report = self.cycle(name)
        except MailboxError as exc:
            self.health.failed(name, str(exc), needs_person=isinstance(exc, AuthError))
            self.metrics.auth_failed.labels(name).set(1 if isinstance(exc, AuthError) else 0)
            self._schedule_backoff(name, exc)
            return
        except Exception as exc:  # a bug must not kill the scheduler thread
            self.health.failed(name, f"{type(exc).__name__}: {exc}")
            self.metrics.errors.labels(name, "internal").inc()
            log.exception("cycle_crashed")
            self._schedule_backoff(name, exc)
            return
        self._backoff[name].failures = 0
        self.health.ok(name)
        self.metrics.auth_failed.labels(name).set(0)
        log.info(
            "cycle",
            new=report.new,
            acted=report.acted,
            abstained=report.abstained,
            skipped=report.skipped,
            failed=report.failed,
            reconciled=report.reconciled,
            corrections=report.corrections,
            seconds=round(report.seconds, 3),
        )

    def _schedule_backoff(self, name: str, exc: BaseException) -> None:
        state = self._backoff[name]
        state.failures += 1
        interval = self.settings.interval(self.settings.account(name))
        delay = backoff_delay(state.failures, interval, self.settings.backoff_max)
        log.error(
            "cycle_failed",
            error=str(exc),
            failures=state.failures,
            retry_in_seconds=round(delay, 1),
        )
        if name in self._wake:
            self._retry_in[name] = delay
        elif self.scheduler is not None and not self.stop.is_set():
            self.scheduler.modify_job(
                name, next_run_time=datetime.now().astimezone() + timedelta(seconds=delay)
            )

    def _idle_worker(self, name: str) -> None:
        """Cycles for a mode: idle account: at once when a watcher wakes it, else every
        poll interval (a safety net); a wake during a cycle starts another right after."""
        wake = self._wake[name]
        interval = self.settings.interval(self.settings.account(name))
        wake.set()  # the first cycle runs at start, like a scheduled account's
        while not self.stop.is_set():
            wake.wait(interval)
            if self.stop.is_set():
                return
            wake.clear()
            self._job(name)
            delay = self._retry_in.pop(name, None)
            if delay is not None:
                self.stop.wait(delay)

    def _start_idle(self, account: Account) -> None:
        name = account.name
        wake = self._wake[name]

        def woken(reason: str) -> None:
            log.debug("woken", account=name, reason=reason)
            if reason == "link lost":
                # The triage connection shares the path that just died: break it now, so
                # the catch-up cycle reconnects at once instead of waiting out a timeout.
                self.mailboxes[name].abort()
            wake.set()

        threading.Thread(
            target=self._idle_worker, args=(name,), name=f"triage-{name}", daemon=True
        ).start()
        for folder in account.folders:
            watcher = IdleWatcher(
                account,
                folder,
                woken,
                self.stop,
                self.metrics,
                backoff_max=self.settings.backoff_max,
            )
            self.watchers.append(watcher)
            watcher.start()

    # -- scheduled retraining ----------------------------------------------------------------

    def retrain(self) -> str:
        """Run ``cleaninbox retrain`` in a separate, low-priority process (torch never loads
        into the daemon, and triage keeps its threads); a promoted model is then picked up
        by the model watcher like any other. The child prints its typed result
        (:class:`daemon.model.promotion.RetrainResult`) as one JSON line with ``--json``, also
        when it fails. Returns promoted, kept or failed."""
        schedule = self.settings.retrain
        assert schedule is not None
        nice = shutil.which("nice")
        # A PostgreSQL password goes to the child in libpq's PGPASSWORD, never in its argv.
        state, password = without_password(self.settings.state)
        password = self.settings.state_password() or password
        env = {**os.environ, **({"PGPASSWORD": password} if password else {})}
        command = [
            *([nice, "-n", "19"] if nice else []),
            sys.executable,
            "-m",
            "daemon.cli",
            "retrain",
            "--json",
            "--config",
            str(schedule.config),
            "--state",
            state,
            "--models-dir",
            str(self.settings.model.parent),
        ]
        log.info("retrain_started", config=str(schedule.config))
        started = time.monotonic()
        try:
            result = subprocess.run(
                command,
                env=env,
                capture_output=True,
                text=True,
                timeout=schedule.timeout_hours * 3600,
                check=False,
            )
        except subprocess.TimeoutExpired:
            outcome, detail = "failed", f"took longer than {schedule.timeout_hours:g} h"
        else:
            lines = result.stdout.strip().splitlines()
            try:
                parsed = RetrainResult.from_json(lines[-1]) if lines else None
            except ValueError:
                parsed = None
            if parsed is not None and (parsed.outcome == "failed") == (result.returncode != 0):
                outcome, detail = parsed.outcome, parsed.reason
            else:  # it died before printing a result: the last stderr line says why
                outcome = "failed"
                detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        self.metrics.retrains.labels(outcome).inc()
        (log.info if outcome != "failed" else log.error)(
            "retrain_finished",
            outcome=outcome,
            detail=detail,
            seconds=round(time.monotonic() - started, 1),
        )
        return outcome

    # -- lifecycle -------------------------------------------------------------------------

    def once(self, mode: Mode | None = None) -> dict[str, CycleReport]:
        """One cycle over every account; errors are reported per account."""
        reports = {}
        for account in self.settings.accounts:
            try:
                reports[account.name] = self.cycle(account.name, mode)
            except MailboxError as exc:
                reports[account.name] = CycleReport(account.name, error=str(exc))
                log.error("cycle_failed", account=account.name, error=str(exc))
        return reports

    def _signals(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            self.stop.set()

        def hup(_signum: int, _frame: FrameType | None) -> None:
            threading.Thread(target=self.runtime.reload, args=("SIGHUP",), daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit status."""
        self._signals()
        server = None
        http_error: list[BaseException] = []
        if self.settings.http.enabled:
            from daemon.service.http import create_app, serve_in_thread  # FastAPI: only if on

            token = self.settings.http.token()
            app = create_app(
                self.settings,
                self.runtime,
                self.metrics,
                self.health,
                token.get_secret_value() if token else None,
            )
            server = serve_in_thread(app, self.settings, http_error.append)
        from apscheduler.schedulers.background import BackgroundScheduler  # only `run` needs it

        scheduler = BackgroundScheduler(
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        )
        self.scheduler = scheduler
        now = datetime.now().astimezone()
        for account in self.settings.accounts:
            if account.mode == "idle":
                self._start_idle(account)
                continue
            scheduler.add_job(
                self._job,
                "interval",
                args=[account.name],
                id=account.name,
                seconds=self.settings.interval(account),
                jitter=self.settings.jitter or None,
                next_run_time=now,
            )
        scheduler.add_job(
            self.runtime.check_for_new_model, "interval", seconds=10, id="model-watch"
        )
        if self.settings.retrain is not None:
            from apscheduler.triggers.cron import CronTrigger

            scheduler.add_job(
                self.retrain,
                CronTrigger.from_crontab(self.settings.retrain.cron),
                id="retrain",
                max_instances=1,
            )
        scheduler.start()
        log.info(
            "started",
            accounts=[a.name for a in self.settings.accounts],
            model=self.runtime.current.classifier.version,
            dry_run=self.dry_run,
            http=self.settings.http.listen if self.settings.http.enabled else None,
        )
        status = 0
        while not self.stop.wait(0.5):
            if http_error:
                log.error("http_failed", error=str(http_error[0]))
                status = 1
                self.stop.set()
        log.info("stopping", reason="signal" if status == 0 else "error")
        scheduler.shutdown(wait=False)
        self._drain(SHUTDOWN_GRACE)
        for watcher in self.watchers:  # they notice the stop flag within a second
            watcher.join(STOP_CHECK + 1.0)
            if watcher.thread.is_alive():
                watcher.abort()
                watcher.join(1.0)
        if server is not None:
            server.should_exit = True
        self.close()
        log.info("stopped")
        time.sleep(0)  # let log lines flush in order
        return status

    def _drain(self, grace: float) -> None:
        """Let running cycles finish the batch in hand; after ``grace`` seconds, break the
        connections they are blocked on (a pending decision is reconciled at the next
        start, exactly as after a lost connection)."""
        deadline = time.monotonic() + grace
        for name, lock in self._locks.items():
            if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                lock.release()
                continue
            log.warning("aborting", account=name, reason=f"cycle still running after {grace:g} s")
            self.mailboxes[name].abort()
            if lock.acquire(timeout=grace):
                lock.release()

    def close(self) -> None:
        for mailbox in self.mailboxes.values():
            with contextlib.suppress(Exception):
                mailbox.close()
        self.store.close()
