"""How the roster schedules the accounts it runs: a few start at once; many (a start, a
takeover) have their first cycles spread over half a poll interval and their schedules
over the whole interval, so the worker pool sees an even load instead of every account
polling in the same half minute; each schedule keeps its period, jitter or not."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry

from daemon.config.settings import load_settings
from daemon.service.roster import first_cycle_job
from daemon.service.schedule import Grid
from daemon.service.supervisor import Service
from tests.scaffold import imap_account, write_settings

INTERVAL = 60.0


def roster(tmp_path: Path, tiny_bundle: Path, accounts: int) -> Service:
    listed = [imap_account(f"u{i:02d}", 9, name=f"a{i:02d}") for i in range(accounts)]
    path = write_settings(
        tmp_path, tiny_bundle, listed, poll_interval=INTERVAL, jitter=0, workers=4
    )
    service = Service(load_settings(path), registry=CollectorRegistry())
    service.scheduler = BackgroundScheduler()
    service.scheduler.start(paused=True)  # jobs are planned, none runs
    return service


@pytest.fixture
def make(tmp_path: Path, tiny_bundle: Path) -> Iterator[Callable[[int], Service]]:
    made: list[Service] = []

    def factory(accounts: int) -> Service:
        made.append(roster(tmp_path, tiny_bundle, accounts))
        return made[-1]

    yield factory
    for service in made:
        assert service.scheduler is not None
        service.scheduler.shutdown(wait=False)
        service.close()


def planned(service: Service) -> dict[str, float]:
    """Seconds from now to each job's next run, by job id."""
    assert service.scheduler is not None
    now = datetime.now().astimezone()
    return {
        job.id: (job.next_run_time - now).total_seconds() for job in service.scheduler.get_jobs()
    }


def test_a_few_accounts_start_at_once(make: Callable[[int], Service]) -> None:
    service = make(3)
    service._converge()
    jobs = planned(service)
    assert sorted(jobs) == ["a00", "a01", "a02"]  # no separate first cycles
    assert all(abs(seconds) < 2 for seconds in jobs.values())


def test_many_accounts_spread_first_cycles_and_schedules(make: Callable[[int], Service]) -> None:
    service = make(12)
    service._converge()
    jobs = planned(service)
    names = [f"a{i:02d}" for i in range(12)]
    firsts = sorted(jobs[first_cycle_job(n)] for n in names if first_cycle_job(n) in jobs)
    phases = sorted(jobs[n] for n in names)
    # The first cycles: every account within half an interval, evenly (a00 at once,
    # through its schedule, the others 2.5 s apart).
    assert len(firsts) == 11
    assert firsts[0] == pytest.approx(2.5, abs=1) and firsts[-1] == pytest.approx(27.5, abs=1)
    # The schedules: evenly over the whole interval, 5 s apart.
    assert phases[0] == pytest.approx(0, abs=1) and phases[-1] == pytest.approx(55, abs=1)
    gaps = [b - a for a, b in itertools.pairwise(phases)]
    assert all(g == pytest.approx(5, abs=0.5) for g in gaps)
    # Each account's second cycle comes at most half an interval after its first.
    for name in names[1:]:
        assert 0 < jobs[name] - jobs[first_cycle_job(name)] <= INTERVAL / 2


def test_stopping_an_account_removes_its_first_cycle_too(make: Callable[[int], Service]) -> None:
    service = make(12)
    service._converge()
    service._deactivate("a07")
    jobs = planned(service)
    assert "a07" not in jobs and first_cycle_job("a07") not in jobs
    assert "a06" in jobs and first_cycle_job("a06") in jobs


def test_the_grid_keeps_its_period_and_its_jitter_does_not_accumulate() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    grid = Grid(60.0, start, jitter=5.0)
    fire = grid.get_next_fire_time(None, start - timedelta(seconds=1))
    fires = [fire]
    for _ in range(200):
        fire = grid.get_next_fire_time(fire, fire)
        fires.append(fire)
    offsets = [(f - start).total_seconds() - 60 * k for k, f in enumerate(fires)]
    assert all(0 <= o < 5 for o in offsets)  # slot k fires within [60 k, 60 k + 5)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(fires)]
    assert max(gaps) < 65 and min(gaps) > 55
    # Moved off the grid (a backoff), it comes back to the next slot.
    late = start + timedelta(seconds=60 * 3 + 42)
    assert grid.get_next_fire_time(late, late) >= start + timedelta(seconds=60 * 4)
    assert grid.get_next_fire_time(late, late) < start + timedelta(seconds=60 * 4 + 5)


def test_the_grid_caps_jitter_at_half_the_interval() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    grid = Grid(10.0, start, jitter=30.0)
    fire = start
    for k in range(1, 50):
        fire = grid.get_next_fire_time(fire, fire)
        assert 10 * k <= (fire - start).total_seconds() < 10 * k + 5
