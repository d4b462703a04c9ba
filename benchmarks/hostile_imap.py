"""Mutated IMAP answers (issue 16): 10,000 and more answers of normal 20-message cycles,
corrupted by the hostile peer's mutation mode, against the daemon's real `once` path.

Each run is a fresh account on the scripted peer (tests/hostile_peer.py): a first start,
20 new mails, one cycle in which 1 to ``--per-run`` answers are mutated (drop an item, NIL
for a number, a string for a number, a truncated literal, reordered or unsolicited
untagged responses, a duplicated or foreign UID), one cycle against the same server
behaving, then the exactly-once invariant (tests/reliability/invariant.py). Printed:
mutated answers by kind, crashes (an exception out of `once`), tracebacks (logged), and
the invariant's findings: lost, duplicated, altered (bytes changed), left \\Deleted,
misrouted, pending, and state (mail left where it was without a recorded reason, or a
decision that disagrees with the server). The CI-sized variant is
tests/reliability/test_hostile_servers.py::test_mutated_answers_of_a_20_message_cycle.

    python benchmarks/hostile_imap.py --bundle models/current --answers 10000
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import stamina  # noqa: E402
import structlog  # noqa: E402

from tests.hostile_peer import MUTATIONS, Answer, HostilePeer  # noqa: E402
from tests.reliability.test_hostile_servers import (  # noqa: E402
    PASSWORD,
    Tally,
    hostile_account,
    mutated_run,
)
from tests.scaffold import PASSWORD_ENV  # noqa: E402


def answers_in_a_cycle(peer: HostilePeer, bundle: Path, root: Path, messages: int) -> list[int]:
    """For each answer the peer sends in a normal cycle over ``messages`` new mails, how
    many of the mutations find something to change in it (a tagged "OK" alone: one)."""
    run = hostile_account(peer, bundle, Path(tempfile.mkdtemp(dir=root)))
    run.once()
    run.seed(messages, "count")
    answers: list[Answer] = []

    def record(_command: str, answer: Answer) -> Answer:
        answers.append(answer)
        return answer

    peer.deviations[:] = [record]
    run.once()
    peer.deviations.clear()
    return [
        sum(mutate(list(a), random.Random(0)) != a for mutate in MUTATIONS.values())
        for a in answers
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "models/current")
    parser.add_argument("--answers", type=int, default=10_000, help="mutated answers to reach")
    parser.add_argument("--per-run", type=int, default=6, help="at most this many per cycle")
    parser.add_argument("--rounds", type=int, default=5, help="mutated cycles per account")
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=20, help="stop after this long")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    os.environ[PASSWORD_ENV] = PASSWORD
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(open(os.devnull, "w")))  # noqa: SIM115
    bundle = args.bundle.resolve()
    rng = random.Random(args.seed)
    total = Tally()
    peer = HostilePeer([], PASSWORD)
    with (
        tempfile.TemporaryDirectory(prefix="cleaninbox-hostile-") as tmp,
        stamina.set_testing(True, attempts=3),
    ):
        root = Path(tmp)
        sizes = answers_in_a_cycle(peer, bundle, root, args.messages)
        rich = [i for i, fitting in enumerate(sizes) if fitting >= len(MUTATIONS) // 2]
        print(
            f"a normal {args.messages}-message cycle: {len(sizes)} answers, {len(rich)} "
            "that most mutations fit (SELECT, SEARCH, FETCH, STATUS)"
        )
        started = time.perf_counter()
        kinds = sorted(MUTATIONS)
        while sum(total.mutated.values()) < args.answers:
            if time.perf_counter() - started > args.minutes * 60:
                print(f"stopped after {args.minutes:g} minutes")
                break
            plans = []
            for _round in range(args.rounds):
                count = rng.randint(1, args.per_run)
                # three in four from the answers most mutations fit, the others from any
                indexes = {rng.choice(rich if rng.random() < 0.75 else range(len(sizes)))}
                while len(indexes) < count:
                    indexes.add(rng.choice(rich if rng.random() < 0.75 else range(len(sizes))))
                plans.append({i: (rng.choice(kinds), rng.randrange(2**32)) for i in indexes})
            workdir = Path(tempfile.mkdtemp(dir=root))
            run = hostile_account(peer, bundle, workdir)
            total.add(mutated_run(run, plans, args.messages))
            del peer.stores[run.user]  # keep memory and disk small
            for path in sorted(workdir.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
        seconds = time.perf_counter() - started
    peer.close()
    mutated = sum(total.mutated.values())
    print(
        f"{total.runs} mutated cycles, {mutated} mutated answers in {seconds:.0f} s "
        f"({mutated / seconds:.1f} mutated answers/s)"
    )
    for kind, count in sorted(total.mutated.items()):
        print(f"  {kind:<34} {count:>6}")
    findings = total.findings  # a Counter: 0 for what never happened
    print(f"crashes {len(total.crashes)}, tracebacks {len(total.tracebacks)}")
    print(
        f"lost {findings['lost']}, duplicated {findings['duplicated']}, "
        f"altered {findings['changed']}, left \\Deleted {findings['deleted']}, "
        f"misrouted {findings['misrouted']}, pending {findings['pending']}, "
        f"state {findings['state']}"
    )
    for problem in (total.crashes + total.tracebacks + total.problems)[:20]:
        print("  " + problem.strip().splitlines()[-1][:300])


if __name__ == "__main__":
    main()
