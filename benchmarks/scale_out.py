"""Scale-out figures: replicas sharing one PostgreSQL state, against a real Dovecot.

Default run: ``--accounts`` Dovecot users (a passwd-file), ``--before`` messages each
appended before the start and ``--during`` more spread over the run; ``--replicas``
``cleaninbox run`` processes on one PostgreSQL, every account in an ``accounts_dir`` (one
file per account), each replica with its own HTTP port. Measured:

1. the start-up rebalance: the first moment the lease table shows every account held by
   a live lease and no replica above ``ceil(N/R) + 1`` ("all leased"); from then until
   every account has completed a cycle (its ``cycle`` log event), target one poll interval
   (plus the configured jitter); then, over ``--window`` seconds, the largest gap between
   two cycle starts of one account (the end of the window counts as a start, so an account
   that stops cycling shows), target one interval plus jitter plus ``DISPATCH_TOLERANCE``
   (a pool thread picks a cycle up a little after its fire time); peak RSS per replica
   (``VmHWM``), target <= 300 MB;
   PostgreSQL connections per replica (``pg_stat_activity`` by ``application_name``, the
   most seen in samples every ``--sample-every`` s), target <= 10; leases per replica
   (the most seen), target <= ceil(N/R) + 1;
2. takeover: SIGKILL of replica r0, then for every account it held, seconds from the kill
   until another replica completed a cycle of it; p50 and max, target <= lease_ttl + one
   poll interval.

``--compare-sqlite`` measures instead one replica on PostgreSQL against one on SQLite:
``benchmarks/e2e_dovecot.py`` (``--messages`` on one account, ``cleaninbox once``, the same
bundle) run with each state (``--repeat`` times, alternating; the best counts), messages/s
of both from process start to exit (and within the cycle alone) and the ratio, target
PostgreSQL >= 80% of SQLite end to end.

PostgreSQL runs with fsync on (the test suite's server turns it off): a state benchmark
pays for durable commits, as the SQLite state does with ``synchronous=FULL``. Figures
print as a markdown table; a missed target says MISSED and the exit status stays 0.

    python benchmarks/scale_out.py --bundle models/current
    python benchmarks/scale_out.py --bundle models/current --compare-sqlite
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.store.state import StateStore  # noqa: E402
from tests.dovecot import Dovecot, free_port  # noqa: E402
from tests.mail_fixtures import MailUser, email  # noqa: E402
from tests.postgres import PostgresServer, start_server  # noqa: E402
from tests.scaffold import (  # noqa: E402
    NEVER_ABSTAIN,
    Daemon,
    ScratchMail,
    launch_daemon,
    scratch_mail,
    write_settings,
)

RSS_TARGET_MB = 300
CONNECTIONS_TARGET = 10
PG_SHARE_TARGET = 0.8
QUERIES = [
    "my card has not arrived yet",
    "I was charged twice for the same purchase",
    "how do I top up by bank transfer",
    "is there a fee for exchanging currency",
    "the ATM kept my card",
    "why was my transfer declined",
]


class RunError(Exception):
    """The run could not go on (a replica died, a phase never finished): no figures."""


def note(line: str) -> None:
    """Progress, on stderr: the table alone goes to stdout."""
    print(line, file=sys.stderr, flush=True)


# -- the table --------------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    figure: str
    target: str = ""
    ok: bool | None = None  # None: a figure without a target

    def cells(self) -> str:
        verdict = "" if self.ok is None else "ok" if self.ok else "MISSED"
        return f"| {self.what} | {self.figure} | {self.target} | {verdict} |"


def table(rows: list[Row]) -> str:
    return "\n".join(
        ["| measure | figure | target | |", "|---|---|---|---|", *(r.cells() for r in rows)]
    )


# -- PostgreSQL, mail -------------------------------------------------------------------------


@contextmanager
def durable_postgres() -> Iterator[PostgresServer]:
    """The test suite's throwaway server, restarted with fsync on (see the module doc)."""
    server = start_server()
    try:
        server.stop()
        options = (
            f"-p {server.port} -k {server.directory} -c listen_addresses=127.0.0.1 "
            "-c max_connections=300"
        )
        log = str(server.directory / "server.log")
        server._ctl(
            "-o", options, "-l", log, "-w", "start"
        )  # a private helper: the suite's server has no fsync switch
        yield server
    finally:
        with suppress(subprocess.CalledProcessError):
            server.stop("immediate")
        shutil.rmtree(server.directory, ignore_errors=True)


def append_mail(server: Dovecot, user: str, count: int, seed: int) -> None:
    """``count`` banking questions into ``user``'s INBOX, on one connection."""
    rng = random.Random(f"{user}-{seed}")
    with MailUser(user, server).client() as client:
        for _ in range(count):
            client.append("INBOX", email(rng.choice(QUERIES), rng.randrange(2**40)))


class Appender(threading.Thread):
    """``per_user`` messages for every user, spread evenly over ``seconds`` (one login
    per message, like a mail delivery); falls behind rather than bursting."""

    def __init__(self, server: Dovecot, users: list[str], per_user: int, seconds: float) -> None:
        super().__init__(name="appender", daemon=True)
        self.server, self.seconds = server, seconds
        rng = random.Random(0)
        self.order = [(user, n) for n in range(per_user) for user in rng.sample(users, len(users))]
        self.appended = 0
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        step = self.seconds / max(1, len(self.order))
        for i, (user, n) in enumerate(self.order):
            if self.stop.wait(max(0.0, started + i * step - time.monotonic())):
                return
            append_mail(self.server, user, 1, 1000 + n)
            self.appended += 1


# -- the replicas -----------------------------------------------------------------------------


def write_replicas(
    scratch: ScratchMail, users: list[str], url: str, args: argparse.Namespace
) -> list[Path]:
    """An accounts_dir with one file per account, and a working directory per replica
    whose settings point at it (same state, own HTTP port)."""
    accounts = scratch.root / "accounts"
    accounts.mkdir()
    for user in users:
        account = scratch.account(user, name=user, tls="implicit", folders=["INBOX"])
        (accounts / f"{user}.yaml").write_text(yaml.safe_dump(account))
    workdirs = []
    for i in range(args.replicas):
        work = scratch.root / f"r{i}"
        work.mkdir()
        write_settings(
            work,
            args.bundle.resolve(),
            [],
            state=url,
            lease_ttl=args.lease_ttl,
            poll_interval=args.poll_interval,
            jitter=args.jitter,
            workers=args.workers,
            accounts_dir=str(accounts),
            http={"enabled": True, "listen": f"127.0.0.1:{free_port()}"},
            log_format="json",
            log_level="info",
            classifier=NEVER_ABSTAIN,
        )
        workdirs.append(work)
    return workdirs


@dataclass(frozen=True)
class Cycle:
    """A completed cycle, from a replica's ``cycle`` log event."""

    account: str
    replica: str
    end: float  # epoch seconds
    seconds: float

    @property
    def start(self) -> float:
        return self.end - self.seconds


def _epoch(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


class Events:
    """The replicas' JSON logs, read as they grow: completed cycles, lease takeovers and
    failed cycles."""

    FAILURES = ("cycle_failed", "cycle_crashed", "cycle_stopped", "lease_round_failed")

    def __init__(self, logs: dict[str, Path]) -> None:
        self.logs = logs
        self.offsets = dict.fromkeys(logs, 0)
        self.cycles: list[Cycle] = []
        self.claimed: dict[str, float] = {}  # account -> last takeover claim (epoch s)
        self.failures: Counter[str] = Counter()

    def read(self) -> None:
        for replica, path in self.logs.items():
            with path.open("rb") as log:
                log.seek(self.offsets[replica])
                data = log.read()
            complete = data.rfind(b"\n") + 1  # a line being written waits for next time
            self.offsets[replica] += complete
            for line in data[:complete].splitlines():
                if line.startswith(b"{"):
                    with suppress(ValueError):
                        self._take(replica, json.loads(line))

    def _take(self, replica: str, event: dict[str, object]) -> None:
        name = event.get("event")
        if name == "cycle":
            seconds = float(event.get("seconds", 0.0))  # type: ignore[arg-type]
            self.cycles.append(Cycle(str(event["account"]), replica, _epoch(event), seconds))
        elif name == "lease_taken_over":
            self.claimed[str(event["account"])] = _epoch(event)
        elif name in self.FAILURES:
            self.failures[f"{name} ({replica})"] += 1


def peak_rss_kib(pid: int) -> int | None:
    """The process's peak resident set (VmHWM), exact whatever the sampling; None once gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None
    )


@dataclass
class Sample:
    at: float  # epoch seconds
    held: dict[str, int]  # replica -> accounts under a live lease
    connections: dict[str, int]  # application_name -> connections


_HELD = (
    "SELECT owner, count(*) FROM leases WHERE owner IS NOT NULL AND expires_at > now() "
    "GROUP BY owner"
)
_CONNECTIONS = (
    "SELECT application_name, count(*) FROM pg_stat_activity "
    "WHERE application_name LIKE 'cleaninbox%' GROUP BY application_name"
)


class Sampler(threading.Thread):
    """Every ``every`` s: the lease table by owner, the connections by replica, and each
    replica's peak RSS (kept from its last look while the process lived)."""

    def __init__(self, url: str, pids: dict[str, int], every: float) -> None:
        super().__init__(name="sampler", daemon=True)
        self.url, self.pids, self.every = url, pids, every
        self.samples: list[Sample] = []
        self.peak_kib: dict[str, int] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True, application_name="scale-out bench") as db:
            while True:
                self.look(db)
                if self.halt.wait(self.every):
                    return

    def look(self, db: psycopg.Connection[tuple[Any, ...]]) -> None:
        held = {str(owner): int(n) for owner, n in db.execute(_HELD).fetchall()}
        conns = {str(app): int(n) for app, n in db.execute(_CONNECTIONS).fetchall()}
        self.samples.append(Sample(time.time(), held, conns))
        for replica, pid in self.pids.items():
            peak = peak_rss_kib(pid)
            if peak is not None:
                self.peak_kib[replica] = peak

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None


@dataclass
class Run:
    """The replicas of one scale-out run and what watches them."""

    args: argparse.Namespace
    users: list[str]
    url: str
    replicas: dict[str, Daemon]
    events: Events
    sampler: Sampler
    rows: list[Row] = field(default_factory=list)

    @property
    def fair(self) -> int:
        replicas: int = self.args.replicas
        return math.ceil(len(self.users) / replicas) + 1

    def wait(self, done: Callable[[], bool], seconds: float, what: str, alive: set[str]) -> None:
        """Until ``done`` (logs read first), failing if a replica in ``alive`` dies."""
        deadline = time.monotonic() + seconds
        while True:
            self.events.read()
            if done():
                return
            for name in sorted(alive):
                daemon = self.replicas[name]
                if daemon.process.poll() is not None:
                    tail = "\n".join(daemon.log().splitlines()[-15:])
                    raise RunError(f"replica {name} exited {daemon.process.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise RunError(f"no {what} within {seconds:.0f} s")
            time.sleep(0.5)

    def metrics_held(self, name: str) -> str:
        """``cleaninbox_leases_held`` from the replica's /metrics (a cross-check)."""
        listen = yaml.safe_load(
            (self.replicas[name].log_path.parent / "cleaninbox.yaml").read_text()
        )
        url = f"http://{listen['http']['listen']}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except OSError as exc:
            return f"? ({exc})"
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "cleaninbox_leases_held":
                    return f"{sample.value:.0f}"
        return "?"


def scale_out(args: argparse.Namespace) -> list[Row]:
    users = [f"so{i:04d}" for i in range(args.accounts)]
    with durable_postgres() as pg, scratch_mail("cleaninbox-scale-", users) as scratch:
        note(f"Dovecot, settings and logs under {scratch.root}")
        url = pg.url(pg.create_database())
        StateStore(url).close()  # the schema, so the sampler can look before replicas start
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda u: append_mail(scratch.server, u, args.before, 0), users))
        note(
            f"{args.before} message(s) to each of {len(users)} accounts in "
            f"{time.monotonic() - started:.0f} s"
        )
        workdirs = write_replicas(scratch, users, url, args)
        replicas = {
            f"r{i}": launch_daemon(w, env={"CLEANINBOX_REPLICA": f"r{i}"})
            for i, w in enumerate(workdirs)
        }
        launched = time.time()
        events = Events({name: d.log_path for name, d in replicas.items()})
        sampler = Sampler(
            url, {name: d.process.pid for name, d in replicas.items()}, args.sample_every
        )
        sampler.start()
        run = Run(args, users, url, replicas, events, sampler)
        try:
            measure(run, scratch.server, launched)
        except RunError as exc:
            run.rows.append(Row("run", f"stopped: {exc}".replace("\n", " / ")[:400], ok=False))
        finally:
            sampler.halt.set()
            sampler.join(10)
            statuses = {name: d.stop() for name, d in replicas.items() if d.process.poll() is None}
        clean = sorted(name for name, status in statuses.items() if status == 0)
        run.rows.append(
            Row("SIGTERM → exit 0", ", ".join(clean) or "none", ok=len(clean) == len(statuses))
        )
        return run.rows


def measure(run: Run, server: Dovecot, launched: float) -> None:
    """The phases in order; each adds its rows (a phase that cannot finish raises)."""
    leased = rebalance(run, launched)
    cycled = first_cycles(run, leased)
    steady_state(run, server, leased, cycled)
    run.rows.append(spread(run, leased))
    takeover(run, "r0")
    run.rows.extend(resources(run))


#: Seconds a gap may exceed interval + jitter: the schedule's fire times are exactly one
#: interval (+ jitter) apart, and a cycle starts when a pool thread has picked it up, a
#: little after its fire time; a gap above this tolerance means the schedule fell behind.
DISPATCH_TOLERANCE = 0.5


def _target(args: argparse.Namespace, dispatch: bool = False) -> str:
    extra = f", + {DISPATCH_TOLERANCE:g} s dispatch" if dispatch else ""
    return f"≤ {args.poll_interval:g} s (+ {args.jitter:g} s jitter{extra})"


def rebalance(run: Run, launched: float) -> float:
    """When every account is first held under a live lease with a fair spread."""
    names = set(run.replicas)

    def all_leased() -> bool:
        s = run.sampler.latest()
        return (
            s is not None
            and s.at > launched
            and set(s.held) == names
            and sum(s.held.values()) == len(run.users)
            and max(s.held.values()) <= run.fair
        )

    run.wait(all_leased, run.args.start_timeout, "fair spread of every account's lease", names)
    sample = run.sampler.latest()
    assert sample is not None
    run.rows.append(
        Row("all accounts leased, fair spread", f"{sample.at - launched:.1f} s after start")
    )
    return sample.at


def first_cycles(run: Run, leased: float) -> float:
    """When every account has completed a cycle after ``leased``."""
    args = run.args
    allowed = args.poll_interval + args.jitter

    def first() -> dict[str, float]:
        done: dict[str, float] = {}
        for c in run.events.cycles:
            if c.end >= leased:
                done[c.account] = min(done.get(c.account, c.end), c.end)
        return done

    with suppress(RunError):
        run.wait(
            lambda: len(first()) == len(run.users),
            3 * allowed + 60,
            "cycle of every account after the rebalance",
            set(run.replicas),
        )
    done = first()
    missing = len(run.users) - len(done)
    if missing:
        raise RunError(f"{missing} account(s) never cycled after the rebalance")
    cycled = max(done.values())
    run.rows.append(
        Row(
            "all leased → every account completed a cycle",
            f"{cycled - leased:.1f} s",
            _target(args),
            cycled - leased <= allowed,
        )
    )
    return cycled


def largest_gaps(starts: dict[str, list[float]], since: float, end: float) -> list[float]:
    """Each account's gaps between cycle starts in [since, end], the end counting as a
    start (an account that stopped cycling shows; one that never did gaps the window)."""
    gaps: list[float] = []
    for times in starts.values():
        gaps.extend(b - a for a, b in itertools.pairwise([*sorted(times), end]))
        if not times:
            gaps.append(end - since)
    return gaps


def steady_state(run: Run, server: Dovecot, leased: float, cycled: float) -> None:
    """``--window`` seconds with mail arriving: the largest gap between two cycles."""
    args = run.args
    window = args.window if args.window is not None else 2 * args.poll_interval
    appender = Appender(server, run.users, args.during, window)
    appender.start()
    run.wait(
        lambda: time.time() >= cycled + window, window + 5, "end of the window", set(run.replicas)
    )
    appender.stop.set()
    appender.join(30)
    end = time.time()
    starts: dict[str, list[float]] = {u: [] for u in run.users}
    for c in run.events.cycles:
        if leased <= c.start <= end:
            starts[c.account].append(c.start)
    gaps = largest_gaps(starts, leased, end)
    worst = max(gaps)
    run.rows.append(
        Row(
            f"largest gap between cycle starts of one account, {end - leased:.0f} s window",
            f"{worst:.1f} s (median {statistics.median(gaps):.1f} s; "
            f"{appender.appended} messages appended meanwhile)",
            _target(args, dispatch=True),
            worst <= args.poll_interval + args.jitter + DISPATCH_TOLERANCE,
        )
    )


def spread(run: Run, leased: float) -> Row:
    """The most leases each replica held after the rebalance (and what /metrics says now)."""
    names = sorted(run.replicas)
    samples = [s for s in run.sampler.samples if s.at >= leased]
    most = {n: max(s.held.get(n, 0) for s in samples) for n in names}
    figure = ", ".join(f"{n} {most[n]} (/metrics now {run.metrics_held(n)})" for n in names)
    return Row(
        "leases per replica (most seen after the rebalance)",
        figure,
        f"≤ ceil(N/R)+1 = {run.fair}",
        max(most.values()) <= run.fair,
    )


def takeover(run: Run, victim: str) -> None:
    """SIGKILL ``victim``; per account it held, seconds until a survivor cycled it."""
    args = run.args
    process = run.replicas[victim].process
    with psycopg.connect(run.url, autocommit=True, application_name="scale-out bench") as db:
        orphans = {
            str(account)
            for (account,) in db.execute(
                "SELECT account FROM leases WHERE owner = %s AND expires_at > now()", (victim,)
            ).fetchall()
        }
    peak = peak_rss_kib(process.pid)
    if peak is not None:
        run.sampler.peak_kib[victim] = peak
    killed = time.time()
    process.send_signal(signal.SIGKILL)
    process.wait(10)

    def cycled() -> dict[str, float]:
        first: dict[str, float] = {}
        for c in run.events.cycles:
            if c.account in orphans and c.replica != victim and c.end > killed:
                first[c.account] = min(first.get(c.account, c.end), c.end)
        return first

    limit = args.lease_ttl + args.poll_interval
    with suppress(RunError):  # a late account shows as missing in the figure
        run.wait(
            lambda: len(cycled()) == len(orphans),
            3 * (limit + args.jitter) + 30,
            "cycle of every orphaned account",
            set(run.replicas) - {victim},
        )
    delays = sorted(t - killed for t in cycled().values())
    claims = sorted(
        t - killed for a, t in run.events.claimed.items() if a in orphans and t > killed
    )
    missing = len(orphans) - len(delays)
    figure = f"{len(orphans)} accounts: " + (
        f"p50 {statistics.median(delays):.1f} s, max {delays[-1]:.1f} s" if delays else "none"
    )
    if missing:
        figure += f", {missing} never cycled"
    if claims:
        figure += f" (lease claimed: p50 {statistics.median(claims):.1f} s, max {claims[-1]:.1f} s)"
    ok = bool(delays) and not missing and delays[-1] <= limit
    run.rows.append(
        Row(
            f"SIGKILL {victim} → its accounts cycled elsewhere",
            figure,
            f"≤ TTL + poll = {limit:g} s",
            ok,
        )
    )


def resources(run: Run) -> list[Row]:
    """Peak RSS and most connections per replica over the whole run, takeover included."""
    time.sleep(run.args.sample_every * 1.5)  # one more sample after the takeover
    run.events.read()
    names = sorted(run.replicas)
    mib = {n: run.sampler.peak_kib.get(n, 0) / 1024 for n in names}
    samples = run.sampler.samples
    conns = {n: max(s.connections.get(f"cleaninbox {n}", 0) for s in samples) for n in names}
    mine = {f"cleaninbox {n}" for n in names}
    others = sorted({app for s in samples for app in s.connections} - mine)
    failures = ", ".join(f"{k} {v}" for k, v in sorted(run.events.failures.items())) or "none"
    return [
        Row(
            "peak RSS per replica (VmHWM)",
            ", ".join(f"{n} {mib[n]:.0f} MiB" for n in names),
            f"≤ {RSS_TARGET_MB} MB",
            max(mib.values()) * 2**20 <= RSS_TARGET_MB * 10**6,
        ),
        Row(
            "PostgreSQL connections per replica (most seen)",
            ", ".join(f"{n} {conns[n]}" for n in names)
            + (f"; others: {', '.join(others)}" if others else ""),
            f"≤ {CONNECTIONS_TARGET}",
            max(conns.values()) <= CONNECTIONS_TARGET,
        ),
        Row("cycles completed; failures logged", f"{len(run.events.cycles)}; {failures}"),
    ]


# -- SQLite against PostgreSQL ---------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """One e2e_dovecot.py run: messages/s from process start to exit (the headline, and
    what the target compares) and within the cycle alone (``--timings``)."""

    end_to_end: float
    cycle: float


def e2e(args: argparse.Namespace, state: str | None) -> Rate:
    """One ``benchmarks/e2e_dovecot.py`` run, a process of its own (so its peak RSS and
    caches are its own)."""
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "e2e_dovecot.py"),
        "--messages",
        str(args.messages),
        "--bundle",
        str(args.bundle.resolve()),
        *(["--state", state] if state else []),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    note(result.stdout.strip())
    whole = re.search(r"^end to end .*?([\d.]+) messages/s", result.stdout, re.MULTILINE)
    cycle = re.search(r"^timings: .*?([\d.]+) messages/s", result.stdout, re.MULTILINE)
    if result.returncode != 0 or whole is None or cycle is None:
        raise RunError(
            f"e2e_dovecot.py exited {result.returncode}: {result.stderr.strip()[-2000:]}"
        )
    return Rate(float(whole.group(1)), float(cycle.group(1)))


def compare_engines(args: argparse.Namespace) -> list[Row]:
    rates: dict[str, list[Rate]] = {"SQLite": [], "PostgreSQL": []}
    with durable_postgres() as pg:
        for round_ in range(args.repeat):
            for engine, measured in rates.items():  # alternating: load drift hits both
                note(f"round {round_ + 1}/{args.repeat}: {engine}")
                state = None if engine == "SQLite" else pg.url(pg.create_database())
                measured.append(e2e(args, state))
    best = {engine: max(r, key=lambda rate: rate.end_to_end) for engine, r in rates.items()}
    rows = [
        Row(
            f"{engine}: {args.messages} messages, one account, `cleaninbox once`",
            f"{best[engine].end_to_end:.1f} messages/s end to end "
            f"({best[engine].cycle:.1f} within the cycle)"
            + (f"; best of {len(r)}" if len(r) > 1 else ""),
        )
        for engine, r in rates.items()
    ]
    ratio = best["PostgreSQL"].end_to_end / best["SQLite"].end_to_end
    within = best["PostgreSQL"].cycle / best["SQLite"].cycle
    rows.append(
        Row(
            "PostgreSQL / SQLite, end to end",
            f"{ratio:.1%} (within the cycle {within:.1%})",
            f"≥ {PG_SHARE_TARGET:.0%}",
            ratio >= PG_SHARE_TARGET,
        )
    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "models/current")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--poll-interval", type=float, default=60.0)
    parser.add_argument("--jitter", type=float, default=5.0, help="settings' jitter (its default)")
    parser.add_argument("--lease-ttl", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=8, help="settings' workers (its default)")
    parser.add_argument("--before", type=int, default=3, help="messages per account before start")
    parser.add_argument(
        "--during", type=int, default=2, help="messages per account during the window"
    )
    parser.add_argument(
        "--window",
        type=float,
        default=None,
        help="steady-state seconds (default: 2 poll intervals)",
    )
    parser.add_argument("--sample-every", type=float, default=1.0)
    parser.add_argument("--start-timeout", type=float, default=600.0)
    parser.add_argument(
        "--compare-sqlite", action="store_true", help="the engine comparison instead"
    )
    parser.add_argument("--messages", type=int, default=5000, help="--compare-sqlite: messages")
    parser.add_argument(
        "--repeat", type=int, default=1, help="--compare-sqlite: runs per engine (best counts)"
    )
    args = parser.parse_args()
    if args.replicas < 2 and not args.compare_sqlite:
        parser.error("--replicas: at least 2 (one is killed)")
    try:
        rows = compare_engines(args) if args.compare_sqlite else scale_out(args)
    except RunError as exc:
        note(f"failed: {exc}")
        return 1
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
