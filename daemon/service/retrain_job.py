"""The scheduled retrain, launched from the daemon: ``cleaninbox retrain`` in a separate,
low-priority process (torch never loads into the daemon, and triage keeps its threads);
a promoted model is then picked up by the model watcher like any other. The child prints
its typed result (:class:`daemon.model.promotion.RetrainResult`) as one JSON line with
``--json``, also when it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import structlog

from daemon.config.settings import Settings
from daemon.metrics import Metrics
from daemon.model.promotion import RetrainResult
from daemon.store.database import without_password

log = structlog.get_logger(__name__)


def launch(settings: Settings, metrics: Metrics) -> str:
    """Run the retrain to its end; promoted, kept or failed."""
    schedule = settings.retrain
    assert schedule is not None
    nice = shutil.which("nice")
    # A PostgreSQL password goes to the child in libpq's PGPASSWORD, never in its argv.
    state, password = without_password(settings.state)
    password = settings.state_password() or password
    env = {**os.environ, **({"PGPASSWORD": password} if password else {})}
    command = [
        *([nice, "-n", "19"] if nice else []),
        sys.executable,
        "-m",
        "daemon.cli",
        "retrain",
        "--json",
        "--config",
        str(schedule.config),
        "--state",
        state,
        "--models-dir",
        str(settings.model.parent),
    ]
    log.info("retrain_started", config=str(schedule.config))
    started = time.monotonic()
    try:
        result = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=schedule.timeout_hours * 3600,
            check=False,
        )
    except subprocess.TimeoutExpired:
        outcome, detail = "failed", f"took longer than {schedule.timeout_hours:g} h"
    else:
        lines = result.stdout.strip().splitlines()
        try:
            parsed = RetrainResult.from_json(lines[-1]) if lines else None
        except ValueError:
            parsed = None
        if parsed is not None and (parsed.outcome == "failed") == (result.returncode != 0):
            outcome, detail = parsed.outcome, parsed.reason
        else:  # it died before printing a result: the last stderr line says why
            outcome = "failed"
            detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
    metrics.retrains.labels(outcome).inc()
    (log.info if outcome != "failed" else log.error)(
        "retrain_finished",
        outcome=outcome,
        detail=detail,
        seconds=round(time.monotonic() - started, 1),
    )
    return outcome
