"""Which accounts run in this process, and how: the roster of the
:class:`~daemon.service.supervisor.Service`.

Every configured account on a SQLite state; on a PostgreSQL state shared by replicas,
those whose lease this replica holds, taken up and dropped as leases come and go
(:mod:`daemon.service.leases`), and as SIGHUP adds, changes or removes accounts. A polled
account is an APScheduler job on the bounded pool; a ``mode: idle`` account has its own
worker thread and IDLE watchers. Starting many accounts at once (a start, a takeover)
spreads their first cycles over half a poll interval and their steady schedules over a
whole one (so replicas that start together do not all poll in the same half minute).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from daemon.config.settings import Account, Settings
from daemon.core.runtime import Runtime
from daemon.mailbox import Mailbox
from daemon.metrics import Metrics
from daemon.service.health import Health
from daemon.service.idle import IdleWatcher
from daemon.service.leases import LeaseKeeper
from daemon.service.schedule import Grid

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

log = structlog.get_logger(__name__)
SHUTDOWN_GRACE = 10.0  # seconds a running cycle gets to finish after SIGTERM


def first_cycle_job(name: str) -> str:
    """The id of the one-off job of an account's first cycle (its schedule's id is its
    name)."""
    return f"{name}\x00first"


@dataclass
class Active:
    """An account this service is running: its schedule or IDLE worker and watchers."""

    account: Account
    stop: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event | None = None  # mode: idle
    watchers: list[IdleWatcher] = field(default_factory=list)
    retry_in: float | None = None
    failures: int = 0


class Roster:
    """The accounts part of the service (a mixin: the service owns the state below)."""

    settings: Settings
    runtime: Runtime
    metrics: Metrics
    health: Health
    stop: threading.Event
    accounts: dict[str, Account]
    mailboxes: dict[str, Mailbox]
    leases: LeaseKeeper | None
    scheduler: BackgroundScheduler | None
    reload_accounts: Callable[[], list[Account]] | None
    _active: dict[str, Active]
    _mutex: threading.RLock
    _job: Callable[[str], None]
    _lock: Callable[[str], threading.Lock]
    _watch_tokens: Callable[[list[Account]], None]

    # -- which accounts run here -------------------------------------------------------------

    def _wanted(self) -> set[str]:
        """Accounts this service should be running now."""
        if self.leases is None:
            return set(self.accounts)
        return self.leases.held() & set(self.accounts)

    def _leases_changed(self, gained: set[str], lost: set[str]) -> None:
        if self.scheduler is not None and not self.stop.is_set():
            self._converge()

    def _converge(self) -> None:
        """Start what should run and is not; stop what runs and should not."""
        with self._mutex:
            wanted = self._wanted()
            for name in sorted(set(self._active) - wanted):
                self._deactivate(name)
            starting = sorted(wanted - set(self._active))
            # Many accounts at once (a start, a takeover): spread their first cycles over
            # half a poll interval instead of queueing them all on the pool at this
            # instant (a taken-over account still cycles within TTL + one interval), and
            # their schedules over the whole interval: account k polls first at d_k, then
            # at 2 d_k and every interval after, so the pool sees an even load.
            spread = len(starting) > self.settings.workers
            for k, name in enumerate(starting):
                account = self.accounts[name]
                window = self.settings.interval(account) / 2
                delay = window * k / len(starting) if spread else 0.0
                self._activate(account, delay)

    def _activate(self, account: Account, delay: float = 0.0) -> None:
        """Run ``account`` here: its first cycle after ``delay`` seconds; a polled
        account's schedule then takes the phase ``2 * delay`` (see ``_converge``)."""
        name = account.name
        active = Active(account)
        self._active[name] = active
        self.health.track(name, self.settings.interval(account))
        if account.mode == "idle":
            self._start_idle(active)
        elif self.scheduler is not None:
            phase = datetime.now().astimezone() + timedelta(seconds=2 * delay)
            self.scheduler.add_job(
                self._job,
                Grid(self.settings.interval(account), start=phase, jitter=self.settings.jitter),
                args=[name],
                id=name,
                next_run_time=phase,
                replace_existing=True,
            )
            if delay > 0:
                self.scheduler.add_job(
                    self._job,
                    "date",
                    args=[name],
                    id=first_cycle_job(name),
                    run_date=phase - timedelta(seconds=delay),
                    replace_existing=True,
                )
        log.info("account_started", account=name, mode=account.mode)

    def _deactivate(self, name: str) -> None:
        """Stop running ``name``: its schedule, worker and watchers end; its connections
        are broken (a cycle in flight can send nothing more: its lease guard refuses)."""
        active = self._active.pop(name)
        active.stop.set()
        if active.wake is not None:
            active.wake.set()
        if self.scheduler is not None:
            for job in (name, first_cycle_job(name)):
                with contextlib.suppress(Exception):  # a first cycle's job is gone once run
                    self.scheduler.remove_job(job)
        for watcher in active.watchers:
            watcher.abort()
        mailbox = self.mailboxes.pop(name, None)
        if mailbox is not None:
            mailbox.abort()
            threading.Thread(target=self._close_later, args=(name, mailbox), daemon=True).start()
        self.health.forget(name)
        log.info("account_stopped", account=name)

    def _close_later(self, name: str, mailbox: Mailbox) -> None:
        """Close a dropped mailbox once its cycle (if any) has let go of it."""
        lock = self._lock(name)
        if lock.acquire(timeout=SHUTDOWN_GRACE):
            lock.release()
        with contextlib.suppress(Exception):
            mailbox.close()

    def reload(self, reason: str = "SIGHUP") -> None:
        """Rules and model; then the accounts, when the service knows where they come from."""
        self.runtime.reload(reason)
        if self.reload_accounts is None:
            return
        try:
            fresh = {a.name: a for a in self.reload_accounts()}
        except Exception as exc:  # a broken file must not stop the running accounts
            log.error("accounts_reload_failed", error=str(exc))
            return
        with self._mutex:
            changed = {n for n in set(fresh) & set(self.accounts) if fresh[n] != self.accounts[n]}
            added, removed = set(fresh) - set(self.accounts), set(self.accounts) - set(fresh)
            for name in changed & set(self._active):
                self._deactivate(name)
            for name in changed | removed:
                self.mailboxes.pop(name, None)
            self.accounts = fresh
            self._watch_tokens([fresh[n] for n in added | changed])
            log.info(
                "accounts_reloaded",
                added=sorted(added),
                removed=sorted(removed),
                changed=sorted(changed),
            )
        if self.leases is not None:
            self.leases.round()  # claim new accounts, give back removed ones, at once
        self._converge()

    # -- mode: idle ------------------------------------------------------------------------

    def _idle_worker(self, active: Active) -> None:
        """Cycles for a mode: idle account: at once when a watcher wakes it, else every
        poll interval (a safety net); a wake during a cycle starts another right after."""
        wake = active.wake
        assert wake is not None
        name = active.account.name
        interval = self.settings.interval(active.account)
        wake.set()  # the first cycle runs at start, like a scheduled account's
        while not (self.stop.is_set() or active.stop.is_set()):
            wake.wait(interval)
            if self.stop.is_set() or active.stop.is_set():
                return
            wake.clear()
            self._job(name)
            delay, active.retry_in = active.retry_in, None
            if delay is not None:
                active.stop.wait(delay)

    def _start_idle(self, active: Active) -> None:
        account = active.account
        name = account.name
        wake = active.wake = threading.Event()

        def woken(reason: str) -> None:
            log.debug("woken", account=name, reason=reason)
            if reason == "link lost":
                # The triage connection shares the path that just died: break it now, so
                # the catch-up cycle reconnects at once instead of waiting out a timeout.
                with self._mutex:
                    mailbox = self.mailboxes.get(name)
                if mailbox is not None:
                    mailbox.abort()
            wake.set()

        threading.Thread(
            target=self._idle_worker, args=(active,), name=f"triage-{name}", daemon=True
        ).start()
        for folder in account.folders:
            watcher = IdleWatcher(
                account,
                folder,
                woken,
                active.stop,
                self.metrics,
                backoff_max=self.settings.backoff_max,
            )
            active.watchers.append(watcher)
            watcher.start()
