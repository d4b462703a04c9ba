"""How long a silently dead link goes unnoticed in mode: idle, with the default settings
(liveness_timeout 60 s, socket timeout 30 s), and whether mail sent meanwhile is missed.

A private Dovecot; `cleaninbox run` reaches it through the test proxy. Once the watcher
idles, the proxy freezes every open link (nothing passes, no FIN, no RST: a NAT box that
forgot the connection). Two messages are appended straight to Dovecot while the link is
dead; the script reports when the daemon logged the dead link and when each message was
filed.

    python benchmarks/idle_dead_link.py --bundle models/current [--liveness 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.dovecot import Dovecot  # noqa: E402
from tests.mail_fixtures import ENV, RULES, MailUser, email, mid  # noqa: E402
from tests.proxy import Proxy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "models/current")
    parser.add_argument("--liveness", type=float, default=60.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cleaninbox-deadlink-"))
    server = Dovecot(root / "dovecot")
    server.add_user("watcher")
    server.start()
    proxy = Proxy(server.port)
    work = root / "work"
    work.mkdir()
    (work / "rules.yaml").write_text(yaml.safe_dump(RULES))
    account = {
        "name": "work",
        "host": "127.0.0.1",
        "port": proxy.port,
        "tls": "none",
        "allow_plaintext": True,
        "username": "watcher",
        "password_env": "CLEANINBOX_TEST_PASSWORD",
        "mode": "idle",
        "liveness_timeout": args.liveness,
    }
    settings = {
        "model": str(args.bundle.resolve()),
        "rules": "rules.yaml",
        "state": "var/state.db",
        "log_format": "json",
        "http": {"enabled": False},
        "classifier": {"abstain_threshold": 0.0, "out_of_scope_threshold": 1.0},
        "poll_interval": 3600,
        "accounts": [account],
    }
    (work / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
    log_path = work / "daemon.log"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run", "--config", "cleaninbox.yaml"],
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        env=ENV,
        cwd=work,
    )
    user = MailUser("watcher", server)
    try:
        while proxy.count(b" IDLE\r\n") < 1:
            time.sleep(0.05)
        time.sleep(2)
        frozen_at = time.time()
        proxy.freeze()
        first = email("my card has not arrived", 1)
        user.append(first)
        time.sleep(args.liveness / 3)
        second = email("I was charged twice", 2)
        user.append(second)
        filed: dict[str, float] = {}
        while len(filed) < 2 and time.time() - frozen_at < 5 * args.liveness:
            there = user.messages("Triage/All")
            for name, raw in (("first", first), ("second", second)):
                if name not in filed and mid(raw) in there:
                    filed[name] = time.time() - frozen_at
            time.sleep(0.2)
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        proxy.close()
        server.stop()
    lost = None
    for line in log_path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "idle_link_lost" and lost is None:
            stamp = event["timestamp"].replace("Z", "+00:00")
            from datetime import datetime

            lost = datetime.fromisoformat(stamp).timestamp() - frozen_at
    print(
        f"liveness_timeout {args.liveness:g} s: dead link logged after "
        f"{lost:.1f} s; first message filed after {filed.get('first', float('nan')):.1f} s, "
        f"second (sent {args.liveness / 3:.0f} s into the outage) after "
        f"{filed.get('second', float('nan')):.1f} s; missed: {2 - len(filed)}"
        if lost is not None
        else f"dead link never detected; filed: {filed}"
    )


if __name__ == "__main__":
    main()
