"""Per-message decision time and daemon peak RSS for each hostile message (issue 4).

Each generated case is appended alone to a real Dovecot and triaged by one
``cleaninbox once --timings`` process run under GNU time: the cycle's wall time (model
loading excluded) and the process's peak RSS are printed per case.

    python benchmarks/hostile_bounds.py --bundle models/current
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.mail_fixtures import MailUser  # noqa: E402
from tests.reliability.hostile import CASES  # noqa: E402
from tests.scaffold import ENV, cli, daemon_command, scratch_mail  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "models/current")
    args = parser.parse_args()
    with scratch_mail("cleaninbox-hostile-", ["hostile"]) as scratch:
        work = scratch.work
        scratch.write_settings(
            args.bundle.resolve(), [scratch.account("hostile")], log_level="warning"
        )
        user = MailUser("hostile", scratch.server)
        cli(work, "once")
        print(f"{'case':<22} {'size':>10} {'cycle s':>8} {'peak RSS MiB':>13}  decision")
        worst_time = worst_rss = 0.0
        for case, make in sorted(CASES.items()):
            raw = make()
            if not raw:
                print(
                    f"{case:<22} {0:>10} {'-':>8} {'-':>13}  (Dovecot refuses to store "
                    "an empty message)"
                )
                continue
            user.append(raw)
            run = subprocess.run(
                ["/usr/bin/time", "-f", "RSS_KB=%M", *daemon_command(work, "once", "--timings")],
                capture_output=True,
                text=True,
                env=ENV,
                cwd=work,
                check=True,
            )
            wall = float(re.search(r"timings: ([0-9.]+) s wall", run.stdout).group(1))  # type: ignore[union-attr]
            rss = int(re.search(r"RSS_KB=(\d+)", run.stderr).group(1)) / 1024  # type: ignore[union-attr]
            rows = cli(work, "history", "--json").stdout.strip().splitlines()
            last = json.loads(rows[-1]) if rows else {}
            outcome = f"{last.get('status')}: {last.get('reason') or last.get('action')}"
            print(f"{case:<22} {len(raw):>10} {wall:>8.2f} {rss:>13.0f}  {outcome[:70]}")
            worst_time, worst_rss = max(worst_time, wall), max(worst_rss, rss)
        print(
            f"worst cycle time {worst_time:.2f} s (one message per cycle); "
            f"worst peak RSS {worst_rss:.0f} MiB"
        )


if __name__ == "__main__":
    main()
