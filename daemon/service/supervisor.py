"""The long-running service: its accounts' cycles, HTTP, signals, the model watch and
the scheduled retrain.

Which accounts run here, and how, is the roster's (:mod:`daemon.service.roster`): all of
them on SQLite; on a PostgreSQL state shared by replicas, those whose lease this replica
holds. Polled accounts run on a bounded pool of ``workers`` threads and are connected only
while their cycle runs; a ``mode: idle`` account keeps its connection and watchers.

SIGTERM/SIGINT: stop taking new batches, finish the one in hand, give the leases back,
exit 0. SIGHUP: reload rules and model (the running pair stays if the new one is
invalid) and the accounts (the settings file and ``accounts_dir``): added, changed and
removed accounts take effect without a restart. A new ``models/current`` is picked up
without a restart.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
import time
from collections.abc import Callable
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
from daemon.errors import (
    AuthError,
    ConnectionLostError,
    LeaseLostError,
    MailboxError,
    StateError,
)
from daemon.mailbox import Mailbox, open_mailbox
from daemon.mailbox.oauth import token_source
from daemon.metrics import Metrics
from daemon.service.backoff import backoff_delay
from daemon.service.faults import command_hooks
from daemon.service.health import Health
from daemon.service.idle import STOP_CHECK
from daemon.service.leases import LeaseKeeper, default_replica_name
from daemon.service.retrain_job import launch
from daemon.service.roster import SHUTDOWN_GRACE, Active, Roster
from daemon.store.database import is_database_url
from daemon.store.leases import LeaseTable
from daemon.store.state import StateStore

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

log = structlog.get_logger(__name__)

MailboxFactory = Callable[[Account, Callable[[str], None] | None], Mailbox]


def _open(account: Account, on_command: Callable[[str], None] | None) -> Mailbox:
    return open_mailbox(account, on_command=on_command)


class Service(Roster):
    """The daemon: its accounts' cycles (the roster decides which run here), HTTP,
    signals, the model watch and the scheduled retrain."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        dry_run: bool | None = None,
        mailbox_factory: MailboxFactory = _open,
        reload_accounts: Callable[[], list[Account]] | None = None,
    ) -> None:
        self.settings = settings
        self.dry_run = settings.dry_run if dry_run is None else dry_run
        self.stop = threading.Event()
        self.metrics = Metrics(registry)
        self.runtime = Runtime(settings, self.metrics)
        replica = settings.replica or default_replica_name()
        self.store = StateStore(
            settings.state, password=settings.state_password(), name=f"cleaninbox {replica}"
        )
        self.triage = Triage(self.runtime, self.store, self.metrics, stop=self.stop)
        self.accounts: dict[str, Account] = {a.name: a for a in settings.accounts}
        self.mailbox_factory = mailbox_factory
        self.reload_accounts = reload_accounts
        self.mailboxes: dict[str, Mailbox] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._active: dict[str, Active] = {}
        self._mutex = threading.RLock()  # guards accounts, mailboxes, locks, active
        self.health = Health()
        self.scheduler: BackgroundScheduler | None = None
        self.leases: LeaseKeeper | None = None
        if is_database_url(settings.state):
            self.leases = LeaseKeeper(
                LeaseTable(self.store.database),
                replica,
                settings.lease_ttl,
                self._lease_accounts,
                self.metrics,
                changed=self._leases_changed,
                share=False,  # one-shot commands need every account they touch; run shares
            )
            self.store.fence = self.leases.fence()
            keeper = self.leases
            self.health.checks.append(
                lambda: None if keeper.database_ok else "state database unreachable"
            )
        self._leases_started = False
        self._needed: set[str] = set()  # one-shot commands: the accounts they asked for
        self._watch_tokens(settings.accounts)

    def _lease_accounts(self) -> list[str]:
        """The accounts to hold leases for: a share of all of them under ``run``; those a
        one-shot command (once, backfill) asked for, otherwise."""
        if self.leases is not None and self.leases.share:
            return list(self.accounts)
        return sorted(self._needed & set(self.accounts))

    def _watch_tokens(self, accounts: list[Account]) -> None:
        for account in accounts:
            if account.oauth2 is not None:
                token_source(account, on_refresh=functools.partial(self._refreshed, account.name))

    def _refreshed(self, account: str, reason: str) -> None:
        self.metrics.oauth_refreshes.labels(account, reason).inc()

    # -- one account -----------------------------------------------------------------------

    def mailbox(self, name: str) -> Mailbox:
        """The account's triage mailbox (made on first use; connected by its cycle)."""
        with self._mutex:
            if name not in self.mailboxes:
                guard = self.leases.guard(name) if self.leases is not None else None
                self.mailboxes[name] = self.mailbox_factory(
                    self.accounts[name], command_hooks(guard)
                )
                self._locks.setdefault(name, threading.Lock())
            return self.mailboxes[name]

    def _lock(self, name: str) -> threading.Lock:
        with self._mutex:
            return self._locks.setdefault(name, threading.Lock())

    def _hold(self, name: str | None = None) -> None:
        """On a PostgreSQL state, make sure the lease rounds run (``run`` claims its share,
        a one-shot command the account it is about to cycle)."""
        if self.leases is None:
            return
        if name is not None:
            self._needed.add(name)
        if not self._leases_started:
            self._leases_started = True
            self.leases.start()
        elif name is not None and not self.leases.holds(name):
            self.leases.round()

    def _wait_for_lease(self, name: str) -> None:
        assert self.leases is not None
        self._hold(name)
        self.leases.acquire(name, self.stop)

    def cycle(
        self, name: str, mode: Mode | None = None, progress: Progress | None = None
    ) -> CycleReport:
        """One cycle over one account, retrying a lost connection a few times."""
        account = self.settings.account(name) if name not in self.accounts else self.accounts[name]
        if self.leases is not None and not self.leases.share:
            self._wait_for_lease(name)
        if self.leases is not None and not self.leases.holds(name):
            raise LeaseLostError(name, "held by another replica")
        mailbox = self.mailbox(name)
        mode = mode or Mode(dry_run=self.dry_run)
        with self._lock(name):
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
        active = self._active.get(name)
        if self.stop.is_set() or active is None or active.stop.is_set():
            return
        self.runtime.check_for_new_model()
        try:
            report = self.cycle(name)
        except LeaseLostError as exc:  # another replica has it now: it settles what is pending
            log.warning("cycle_stopped", reason=str(exc))
            return
        except MailboxError as exc:
            self.health.failed(name, str(exc), needs_person=isinstance(exc, AuthError))
            self.metrics.auth_failed.labels(name).set(1 if isinstance(exc, AuthError) else 0)
            self._schedule_backoff(active, exc)
            return
        except StateError as exc:  # the database is down or unreachable: nothing was acted on
            self.health.failed(name, str(exc))
            self.metrics.errors.labels(name, "state").inc()
            self._schedule_backoff(active, exc)
            return
        except Exception as exc:  # a bug must not kill the scheduler thread
            self.health.failed(name, f"{type(exc).__name__}: {exc}")
            self.metrics.errors.labels(name, "internal").inc()
            log.exception("cycle_crashed")
            self._schedule_backoff(active, exc)
            return
        finally:
            if active.wake is None:  # polling: hold no connection between cycles
                with contextlib.suppress(Exception):
                    self.mailbox(name).close()
        active.failures = 0
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

    def _schedule_backoff(self, active: Active, exc: BaseException) -> None:
        active.failures += 1
        name = active.account.name
        interval = self.settings.interval(active.account)
        delay = backoff_delay(active.failures, interval, self.settings.backoff_max)
        log.error(
            "cycle_failed",
            error=str(exc),
            failures=active.failures,
            retry_in_seconds=round(delay, 1),
        )
        if active.wake is not None:
            active.retry_in = delay
        elif self.scheduler is not None and not self.stop.is_set():
            with contextlib.suppress(Exception):  # the job may just have been removed
                self.scheduler.modify_job(
                    name, next_run_time=datetime.now().astimezone() + timedelta(seconds=delay)
                )

    # -- scheduled retraining ----------------------------------------------------------------

    def retrain(self) -> str:
        """The scheduled retrain (:func:`daemon.service.retrain_job.launch`); with replicas,
        on one of them at a time. Returns promoted, kept, failed or skipped (another
        replica of a shared PostgreSQL state is retraining)."""
        if self.leases is None:
            return launch(self.settings, self.metrics)
        with self.leases.table.only_one("cleaninbox-retrain") as mine:
            if not mine:
                log.info("retrain_skipped", reason="another replica is retraining")
                return "skipped"
            return launch(self.settings, self.metrics)

    # -- lifecycle -------------------------------------------------------------------------

    def once(self, mode: Mode | None = None) -> dict[str, CycleReport]:
        """One cycle over every account; errors are reported per account."""
        reports = {}
        for name in list(self.accounts):
            try:
                reports[name] = self.cycle(name, mode)
            except (MailboxError, LeaseLostError) as exc:
                reports[name] = CycleReport(name, error=str(exc))
                log.error("cycle_failed", account=name, error=str(exc))
        return reports

    def _signals(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            self.stop.set()

        def hup(_signum: int, _frame: FrameType | None) -> None:
            threading.Thread(target=self.reload, args=("SIGHUP",), daemon=True).start()

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
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler  # only `run` needs it

        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(self.settings.workers)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
        )
        self.scheduler = scheduler
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
        if self.leases is not None:
            self.leases.share = True  # a fair share of the accounts, not all of them
        self._hold()
        self._converge()
        log.info(
            "started",
            accounts=sorted(self._active),
            configured=len(self.accounts),
            replica=self.leases.replica if self.leases is not None else None,
            workers=self.settings.workers,
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
        with self._mutex:
            stopping = list(self._active.values())
        for active in stopping:
            active.stop.set()
            if active.wake is not None:
                active.wake.set()
        self._drain(SHUTDOWN_GRACE)
        for active in stopping:  # watchers notice the stop flag within a second
            for watcher in active.watchers:
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
        with self._mutex:
            locks = dict(self._locks)
        for name, lock in locks.items():
            if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                lock.release()
                continue
            log.warning("aborting", account=name, reason=f"cycle still running after {grace:g} s")
            with self._mutex:
                mailbox = self.mailboxes.get(name)
            if mailbox is not None:
                mailbox.abort()
            if lock.acquire(timeout=grace):
                lock.release()

    def close(self) -> None:
        """Close the connections, give the leases back (after the cycles have drained, so
        nobody else starts while this replica still acts), close the store."""
        with self._mutex:
            mailboxes = list(self.mailboxes.values())
        for mailbox in mailboxes:
            with contextlib.suppress(Exception):
                mailbox.close()
        if self.leases is not None and self._leases_started:
            self.leases.stop()
        self.store.close()
