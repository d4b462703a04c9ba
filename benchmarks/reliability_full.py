"""Full-size crash run (issue 4, test 1): random SIGKILLs while triaging many messages.

N seeded messages in a real Dovecot; the real daemon process is killed (SIGKILL) before
a random state write or IMAP command, again and again, restarted each time; then it runs
to completion and the invariant is measured (not asserted): lost, duplicated, misrouted,
changed, left \\Deleted, state mismatches, pending records, and actions taken by a rerun.
The CI-sized variant with the same code is tests/reliability/test_crash.py.

    python benchmarks/reliability_full.py --messages 2000 --kills 200
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.service.faults import KILL_AT_COMMAND, KILL_AT_WRITE  # noqa: E402
from tests.mail_fixtures import MailUser  # noqa: E402
from tests.reliability.invariant import examine, rerun_actions, seed_messages  # noqa: E402
from tests.scaffold import NEVER_ABSTAIN, cli, scratch_mail  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=200, help="stop killing after this many")
    parser.add_argument(
        "--max-n",
        type=int,
        default=8,
        help="kill before a random write/command in 1..N of each run",
    )
    parser.add_argument("--bundle", type=Path, default=REPO / "models/current")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    with scratch_mail("cleaninbox-crash-", ["crash"]) as scratch:
        work = scratch.work
        scratch.write_settings(
            args.bundle.resolve(),
            [scratch.account("crash", batch_size=args.batch_size)],
            log_format="json",
            log_level="warning",
            classifier=NEVER_ABSTAIN,
        )
        user = MailUser("crash", scratch.server)
        cli(work, "once")
        started = time.perf_counter()
        seeds = seed_messages(user, args.messages, "full")
        print(f"seeded {len(seeds)} messages in {time.perf_counter() - started:.1f} s")
        rng = random.Random(args.seed)
        kills = 0
        started = time.perf_counter()
        while kills < args.kills:  # each restarted run gets a little further, then dies
            hook = rng.choice([KILL_AT_WRITE, KILL_AT_COMMAND])
            run = cli(work, "once", check=False, env={hook: str(rng.randint(1, args.max_n))})
            if run.returncode == 0:
                break  # it ran out of work before the chosen point: all triaged
            if run.returncode != -9:
                raise SystemExit(f"unexpected exit {run.returncode}: {run.stderr}")
            kills += 1
        killing = time.perf_counter() - started
        started = time.perf_counter()
        cli(work, "once")
        recovery = time.perf_counter() - started
        found = examine(user, work, seeds, destinations={"Triage/All"})
        rerun = rerun_actions(user, work)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"kills: {kills} in {killing:.0f} s")
        print(f"recovery run after the last kill: {recovery:.1f} s")
        n = found.counts
        print(
            f"seeded {len(seeds)}, lost {n['lost']}, duplicated {n['duplicated']}, "
            f"misrouted {n['misrouted']}, changed {n['changed']}, left \\Deleted "
            f"{n['deleted']}, state mismatches {n['state']}, pending {n['pending']}, "
            f"rerun actions {rerun}"
        )
        print(f"peak RSS of a daemon process: {peak:.0f} MiB")
        for problem in found.problems[:20]:
            print("  ", problem)


if __name__ == "__main__":
    main()
