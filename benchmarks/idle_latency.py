"""Append -> action latency with mode: idle on several accounts (issue 5's target: p95 <= 1 s
over 200 messages spread over 10 accounts).

A private Dovecot on loopback; one `cleaninbox run` process watching every account in
IDLE mode (poll interval 1 h, so nothing is found by polling). One thread per account
appends a message, then watches the destination folder from another connection (STATUS
every 10 ms) until the message is there, waits a random 0-200 ms and sends the next; the
accounts run concurrently.

    python benchmarks/idle_latency.py --bundle models/current --accounts 10 --messages 200
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path

from imapclient import IMAPClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.dovecot import Dovecot  # noqa: E402
from tests.mail_fixtures import MailUser, email  # noqa: E402
from tests.scaffold import NEVER_ABSTAIN, launch_daemon, scratch_mail  # noqa: E402

QUERIES = [
    "my card has not arrived yet",
    "I was charged twice for the same purchase",
    "how do I top up by bank transfer",
    "is there a fee for exchanging currency",
    "the ATM kept my card",
]


def count(c: IMAPClient, folder: str) -> int:
    if not c.folder_exists(folder):
        return 0
    return int(c.folder_status(folder, ["MESSAGES"])[b"MESSAGES"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "models/current")
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()
    users = [f"idle{i:02d}" for i in range(args.accounts)]
    with scratch_mail("cleaninbox-idle-", users) as scratch:
        scratch.write_settings(
            args.bundle.resolve(),
            [scratch.account(user, name=user, mode="idle") for user in users],
            log_level="warning",
            classifier=NEVER_ABSTAIN,
            poll_interval=3600,
            jitter=0,
        )
        daemon = launch_daemon(scratch.work)
        try:
            wall, latencies = measure(scratch.server, users, args.messages // args.accounts)
        finally:
            daemon.stop()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    print(
        f"{len(latencies)} messages over {args.accounts} accounts in {wall:.1f} s: "
        f"append -> filed p50 {q[49] * 1000:.0f} ms, p95 {q[94] * 1000:.0f} ms, "
        f"p99 {q[98] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
    )


def measure(server: Dovecot, users: list[str], per_account: int) -> tuple[float, list[float]]:
    """Wall time and every append -> filed latency, all accounts sending at once."""
    latencies: list[float] = []
    lock = threading.Lock()

    def account(n: int, user: str) -> None:
        rng = random.Random(n)
        appender, watcher = MailUser(user, server).client(), MailUser(user, server).client()
        for i in range(per_account):
            before = count(watcher, "Triage/All")
            raw = email(rng.choice(QUERIES), 100_000 * n + i)
            started = time.monotonic()
            appender.append("INBOX", raw)
            while count(watcher, "Triage/All") <= before:
                if time.monotonic() - started > 30:
                    raise SystemExit(f"{user}: message {i} not filed within 30 s")
                time.sleep(0.01)
            with lock:
                latencies.append(time.monotonic() - started)
            time.sleep(rng.uniform(0, 0.2))

    time.sleep(8)  # model load, first cycles, watchers idling
    threads = [threading.Thread(target=account, args=(n, u)) for n, u in enumerate(users)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started, latencies


if __name__ == "__main__":
    main()
