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
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.mail_fixtures import MailUser, email, mid  # noqa: E402
from tests.proxy import Proxy  # noqa: E402
from tests.scaffold import NEVER_ABSTAIN, launch_daemon, proxied_account, scratch_mail  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "models/current")
    parser.add_argument("--liveness", type=float, default=60.0)
    args = parser.parse_args()
    with scratch_mail("cleaninbox-deadlink-", ["watcher"]) as scratch:
        proxy = Proxy(scratch.server.port)
        account = proxied_account(proxy, "watcher", mode="idle", liveness_timeout=args.liveness)
        scratch.write_settings(
            args.bundle.resolve(),
            [account],
            log_format="json",
            classifier=NEVER_ABSTAIN,
            poll_interval=3600,
        )
        daemon = launch_daemon(scratch.work)
        user = MailUser("watcher", scratch.server)
        try:
            frozen_at, filed = outage(proxy, user, args.liveness)
        finally:
            daemon.stop(timeout=60)
            proxy.close()
    lost = None
    for event in daemon.events():
        if event.get("event") == "idle_link_lost" and lost is None:
            stamp = event["timestamp"].replace("Z", "+00:00")
            lost = datetime.fromisoformat(stamp).timestamp() - frozen_at
    print(
        f"liveness_timeout {args.liveness:g} s: dead link logged after "
        f"{lost:.1f} s; first message filed after {filed.get('first', float('nan')):.1f} s, "
        f"second (sent {args.liveness / 3:.0f} s into the outage) after "
        f"{filed.get('second', float('nan')):.1f} s; missed: {2 - len(filed)}"
        if lost is not None
        else f"dead link never detected; filed: {filed}"
    )


def outage(proxy: Proxy, user: MailUser, liveness: float) -> tuple[float, dict[str, float]]:
    """Freeze the link once the watcher idles, send two messages; when each was filed."""
    while proxy.count(b" IDLE\r\n") < 1:
        time.sleep(0.05)
    time.sleep(2)
    frozen_at = time.time()
    proxy.freeze()
    first = email("my card has not arrived", 1)
    user.append(first)
    time.sleep(liveness / 3)
    second = email("I was charged twice", 2)
    user.append(second)
    filed: dict[str, float] = {}
    while len(filed) < 2 and time.time() - frozen_at < 5 * liveness:
        there = user.messages("Triage/All")
        for name, raw in (("first", first), ("second", second)):
            if name not in filed and mid(raw) in there:
                filed[name] = time.time() - frozen_at
        time.sleep(0.2)
    return frozen_at, filed


if __name__ == "__main__":
    main()
