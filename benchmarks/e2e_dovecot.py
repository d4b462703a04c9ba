"""End to end against a real Dovecot on loopback: N emails appended, ``cleaninbox once``.

Prints messages per second end to end, the share of time per stage (fetch, parse,
classify, act, state) and the daemon process's peak RSS. Emails are banking77 test queries
rendered with subject, greeting, body and signature. ``--server cyrus`` runs it against
Cyrus IMAP in a container instead (tests/cyrus.py; needs podman), ``--server both`` against
each in turn and prints Cyrus's rate as a ratio of Dovecot's in the same run.

    python benchmarks/e2e_dovecot.py --messages 5000 --bundle models/current
    python benchmarks/e2e_dovecot.py --state postgresql://127.0.0.1/empty  # on PostgreSQL
    python benchmarks/e2e_dovecot.py --messages 1000 --server both
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.model.samples import render_email  # noqa: E402
from tests.mail_fixtures import MailUser  # noqa: E402
from tests.scaffold import cli, scratch_mail  # noqa: E402
from training.config import DataConfig  # noqa: E402
from training.data import load_banking77  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--bundle", type=Path, default=Path("models/current"))
    parser.add_argument("--rules", type=Path, default=REPO / "configs/rules.example.yaml")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("BANKING77_DIR", "data/banking77"))
    )
    parser.add_argument("--batch-size", type=int, default=100, help="account batch_size")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--state",
        default=None,
        help="state: a postgresql:// URL of an empty database (default: a SQLite file in "
        "the scratch directory), to compare the engines on the same run",
    )
    parser.add_argument("--server", choices=["dovecot", "cyrus", "both"], default="dovecot")
    args = parser.parse_args()
    servers = ["dovecot", "cyrus"] if args.server == "both" else [args.server]
    rates = {server: run(server, args) for server in servers}
    if len(rates) == 2:
        print(
            f"messages/s: dovecot {rates['dovecot']:.1f}, cyrus {rates['cyrus']:.1f} "
            f"(cyrus/dovecot {rates['cyrus'] / rates['dovecot']:.2f}, same run)"
        )


def run(server: str, args: argparse.Namespace) -> float:
    """One end-to-end run against ``server``; its messages per second."""
    print(f"--- {server}")
    with scratch_mail("cleaninbox-e2e-", ["bench"], server=server) as scratch:
        scratch.write_settings(
            args.bundle.resolve(),
            [scratch.account("bench", name="bench", batch_size=args.batch_size)],
            rules=args.rules.resolve(),
            log_format="json",
            log_level="info",  # one JSON event per decision, as deployed
            classifier={"threads": args.threads},
            **({"state": args.state} if args.state else {}),
        )
        cli(scratch.work, "once")  # first start

        data = load_banking77(DataConfig(dir=args.data_dir), seed=0)
        rng = random.Random(1)
        started = time.perf_counter()
        with MailUser("bench", scratch.server).client() as client:
            for i in range(args.messages):
                query = data.test.texts[i % len(data.test.texts)]
                style = "signature" if rng.random() < 0.7 else "plain"
                client.append("INBOX", render_email(query, rng, style=style))
        print(f"appended {args.messages} messages in {time.perf_counter() - started:.1f} s")

        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        started = time.perf_counter()
        result = cli(scratch.work, "once", "--timings", timeout=None)
        wall = time.perf_counter() - started
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(result.stdout)
        print(
            f"end to end (process start to exit): {wall:.1f} s, "
            f"{args.messages / wall:.1f} messages/s"
        )
        peak = max(peak_kib, before)
        print(f"daemon peak RSS: {peak / 1024:.0f} MiB (largest child process so far)")
        return args.messages / wall


if __name__ == "__main__":
    main()
