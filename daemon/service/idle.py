"""IMAP IDLE watchers: one connection per watched folder that wakes the account's triage
as soon as the server announces new mail (RFC 2177).

A watcher never touches mail: it EXAMINEs its folder, idles and calls ``wake()``. Triage
runs on the account's own connection, so a slow cycle never delays noticing the next
message, and a message that arrives during a cycle starts another one right after.

Liveness: after ``liveness_timeout / 2`` seconds without a word from the server the
watcher ends IDLE (``DONE``) and expects the tagged reply within ``liveness_timeout / 4``;
no reply means the link is dead (a NAT box dropped it, a cable was pulled): the watcher
reconnects, and the account's triage connection, which most likely died with it, is
broken too so the catch-up cycle does not wait out a socket timeout on it. Detection
takes at most three quarters of the timeout, leaving the rest for reconnecting. IDLE
is also re-issued every ``idle_reissue`` seconds (at most 29 minutes). After every
(re)connect the watcher wakes triage once: mail that arrived while it was disconnected is
caught up at once, not at the next poll.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import structlog
from structlog.contextvars import bound_contextvars

from daemon.config.settings import Account
from daemon.errors import CleanInboxError
from daemon.mailbox.imap import ImapMailbox
from daemon.metrics import Metrics
from daemon.service.backoff import backoff_delay

log = structlog.get_logger(__name__)
NEW_MAIL = (b"EXISTS", b"RECENT")
STOP_CHECK = 1.0  # seconds: how often a waiting watcher looks at the stop flag


class IdleWatcher:
    def __init__(
        self,
        account: Account,
        folder: str,
        wake: Callable[[str], None],
        stop: threading.Event,
        metrics: Metrics,
        *,
        backoff_max: float = 300.0,
        connect: Callable[[Account], ImapMailbox] = ImapMailbox,
    ) -> None:
        self.account = account
        self.folder = folder
        self.wake = wake
        self.stop = stop
        self.metrics = metrics
        self.backoff_max = backoff_max
        self.mailbox = connect(account)
        self.thread = threading.Thread(
            target=self.run, name=f"idle-{account.name}-{folder}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def abort(self) -> None:
        """Break the connection from another thread (shutdown)."""
        self.mailbox.abort()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        with bound_contextvars(account=self.account.name, folder=self.folder):
            self._run()

    def _run(self) -> None:
        failures = 0
        up = self.metrics.idle_connected.labels(self.account.name, self.folder)
        while not self.stop.is_set():
            try:
                self.mailbox.open()
                self.mailbox.idle_start(self.folder)
            except CleanInboxError as exc:
                up.set(0)
                failures += 1
                delay = backoff_delay(failures, 1.0, self.backoff_max, max_doublings=8)
                log.error(
                    "idle_connect_failed",
                    error=str(exc),
                    failures=failures,
                    retry_in_seconds=round(delay, 1),
                )
                self.mailbox.close()
                self.stop.wait(delay)
                continue
            up.set(1)
            if failures:
                self.metrics.idle_reconnects.labels(self.account.name).inc()
                log.info("idle_reconnected")
            failures = 0
            self.wake("connected")  # catch up on whatever arrived while we were away
            try:
                self._idle()
            except CleanInboxError as exc:
                up.set(0)
                failures = 1
                self.metrics.idle_reconnects.labels(self.account.name).inc()
                log.warning(
                    "idle_link_lost",
                    error=str(exc),
                )
                self.wake("link lost")
                self.mailbox.close()
                self.stop.wait(random.uniform(0.1, 1.0))  # then reconnect at once
                continue
        up.set(0)
        self.mailbox.close()

    def _idle(self) -> None:
        """IDLE until stopped; returns only on stop, raises when the link is dead."""
        account = self.account
        quiet_limit = account.liveness_timeout / 2
        while True:
            started = last_heard = time.monotonic()
            probe = False
            while not self.stop.is_set():
                now = time.monotonic()
                if now - started >= account.idle_reissue:
                    break
                if now - last_heard >= quiet_limit:
                    probe = True
                    break
                wait = min(
                    STOP_CHECK,
                    account.idle_reissue - (now - started),
                    quiet_limit - (now - last_heard),
                )
                responses = self.mailbox.idle_wait(max(0.01, wait))
                if responses:
                    last_heard = time.monotonic()
                    self._notice(responses)
                elif time.monotonic() - now < wait / 2:
                    # Readable but nothing parsed: the server closed the connection.
                    probe = True
                    break
            # DONE doubles as the liveness probe: a live server answers at once.
            self._notice(self.mailbox.idle_done(account.liveness_timeout / 4))
            if self.stop.is_set():
                return
            log.debug(
                "idle_reissued",
                reason="quiet link checked" if probe else "reissue interval",
            )
            self.mailbox.idle_start(self.folder)

    def _notice(self, responses: list[tuple[object, ...]]) -> None:
        if any(len(r) > 1 and r[1] in NEW_MAIL for r in responses):
            self.wake("new mail")
