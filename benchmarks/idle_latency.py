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
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from imapclient import IMAPClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.dovecot import PASSWORD, Dovecot  # noqa: E402
from tests.mail_fixtures import ENV, RULES, email  # noqa: E402

QUERIES = [
    "my card has not arrived yet",
    "I was charged twice for the same purchase",
    "how do I top up by bank transfer",
    "is there a fee for exchanging currency",
    "the ATM kept my card",
]


def client(server: Dovecot, user: str) -> IMAPClient:
    context = ssl.create_default_context(cafile=str(server.cert))
    c = IMAPClient("127.0.0.1", port=server.tls_port, ssl=True, ssl_context=context)
    c.login(user, PASSWORD)
    return c


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
    root = Path(tempfile.mkdtemp(prefix="cleaninbox-idle-"))
    server = Dovecot(root / "dovecot")
    users = [f"idle{i:02d}" for i in range(args.accounts)]
    for user in users:
        server.add_user(user)
    server.start()
    work = root / "work"
    work.mkdir()
    (work / "rules.yaml").write_text(yaml.safe_dump(RULES))
    settings = {
        "model": str(args.bundle.resolve()),
        "rules": "rules.yaml",
        "state": "var/state.db",
        "log_level": "warning",
        "http": {"enabled": False},
        "classifier": {"abstain_threshold": 0.0, "out_of_scope_threshold": 1.0},
        "poll_interval": 3600,
        "jitter": 0,
        "accounts": [
            {
                "name": user,
                "host": "127.0.0.1",
                "port": server.tls_port,
                "ca_file": str(server.cert),
                "username": user,
                "password_env": "CLEANINBOX_TEST_PASSWORD",
                "mode": "idle",
            }
            for user in users
        ],
    }
    (work / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
    log = (work / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run", "--config", "cleaninbox.yaml"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=ENV,
        cwd=work,
    )
    latencies: list[float] = []
    lock = threading.Lock()
    per_account = args.messages // args.accounts

    def account(n: int, user: str) -> None:
        rng = random.Random(n)
        appender, watcher = client(server, user), client(server, user)
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

    try:
        time.sleep(8)  # model load, first cycles, watchers idling
        threads = [threading.Thread(target=account, args=(n, u)) for n, u in enumerate(users)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - started
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        server.stop()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    print(
        f"{len(latencies)} messages over {args.accounts} accounts in {wall:.1f} s: "
        f"append -> filed p50 {q[49] * 1000:.0f} ms, p95 {q[94] * 1000:.0f} ms, "
        f"p99 {q[98] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
