"""``cleaninbox demo``: a model, a Maildir of sample emails, one triage cycle, a summary.

Everything lives under a work directory (``var/demo``); the model goes to ``models/`` and
is promoted only when no ``models/current`` exists yet.
"""

from __future__ import annotations

import mailbox
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import yaml

from daemon.config.settings import load_settings
from daemon.core.rules import Headers, load_rules
from daemon.model.registry import current_version, promote
from daemon.model.samples import render_email
from daemon.service.supervisor import Service
from training.config import DataConfig, load_train_config
from training.data import load_banking77
from training.robustness import load_robustness

Log = Callable[[str], None]
REPO = Path(__file__).resolve().parent.parent
ROBUSTNESS_DIR = REPO / "data" / "robustness"


def ensure_model(models_dir: Path, config: Path, data_dir: Path, log: Log) -> Path:
    """``models/current``, training and promoting the quick model if there is none."""
    if current_version(models_dir) is None:
        from training.pipeline import train

        log(f"no model in {models_dir}/current: training the quick model ({config.name})")
        started = time.perf_counter()
        overrides = [
            f"output_dir={models_dir}",
            f"data.dir={data_dir}",
            f"data.robustness_dir={ROBUSTNESS_DIR}",
        ]
        bundle = train(load_train_config(config, overrides), log=log)
        promote(models_dir, bundle.name, reason="demo")
        log(f"model ready in {time.perf_counter() - started:.0f} s: {bundle.name}")
    return models_dir / "current"


def run_demo(
    *,
    workdir: Path,
    models_dir: Path,
    train_config: Path,
    rules: Path,
    data_dir: Path,
    emails: int,
    seed: int,
    log: Log = print,
) -> dict[str, object]:
    started = time.perf_counter()
    model = ensure_model(models_dir, train_config, data_dir, log)
    data = load_banking77(DataConfig(dir=data_dir), seed)
    workdir.mkdir(parents=True, exist_ok=True)
    maildir = workdir / "mail"
    state = workdir / "state.db"
    for path in (state, state.with_name("state.db-wal"), state.with_name("state.db-shm")):
        path.unlink(missing_ok=True)
    if maildir.exists():
        import shutil

        shutil.rmtree(maildir)
    mailbox.Maildir(str(maildir), create=True)
    settings_path = workdir / "cleaninbox.yaml"
    settings_path.write_text(
        yaml.safe_dump(
            {
                "model": str(model.absolute()),
                "rules": str(rules.absolute()),
                "state": "state.db",
                "log_format": "json",
                "log_level": "warning",
                "http": {"enabled": False},
                "accounts": [{"name": "demo", "kind": "maildir", "path": "mail"}],
            },
            sort_keys=False,
        )
    )
    settings = load_settings(settings_path)

    service = Service(settings)
    try:
        service.once()  # first start: remembers where the inbox ends
        rng = random.Random(seed)
        picks = rng.sample(range(len(data.test)), min(emails, len(data.test)))
        box = mailbox.Maildir(str(maildir), create=False)
        truth: dict[str, str] = {}
        for n, i in enumerate(picks):
            mid = f"<demo-{n}@cleaninbox.example>"
            box.add(render_email(data.test.texts[i], rng, message_id=mid))
            truth[mid] = data.label_names[data.test.labels[i]]
        # Mail that is none of the intents: newsletters, meetings, other topics.
        others = load_robustness(ROBUSTNESS_DIR, data.label_names).oos_eval
        out_of_scope: set[str] = set()
        for n, text in enumerate(rng.sample(others, min(max(1, emails // 5), len(others)))):
            mid = f"<demo-other-{n}@cleaninbox.example>"
            box.add(render_email(text, rng, message_id=mid))
            out_of_scope.add(mid)
        log(
            f"delivered {len(picks)} sample emails (banking77 test queries) and "
            f"{len(out_of_scope)} that are none of the intents to {maildir}"
        )
        cycle_started = time.perf_counter()
        reports = service.once()
        cycle_seconds = time.perf_counter() - cycle_started
        decisions = service.store.history(kind="triage")
    finally:
        service.close()

    rule_set = load_rules(settings.rules, list(service.runtime.current.classifier.labels))
    right = wrong = 0
    for d in decisions:
        if d.message_id not in truth or d.abstain or d.intent is None:
            continue
        expected = rule_set.decide(truth[d.message_id], 1.0, False, Headers()).move
        if d.destination == expected:
            right += 1
        else:
            wrong += 1
    folders = Counter(d.destination or "INBOX (left)" for d in decisions)
    return {
        "reports": reports,
        "folders": folders,
        "filed_right": right,
        "filed_wrong": wrong,
        "abstained": sum(bool(d.abstain) for d in decisions if d.message_id in truth),
        "out_of_scope": len(out_of_scope),
        "out_of_scope_left": sum(
            d.destination is None for d in decisions if d.message_id in out_of_scope
        ),
        "cycle_seconds": cycle_seconds,
        "total_seconds": time.perf_counter() - started,
        "settings": settings_path,
        "maildir": maildir,
        "model": service.runtime.current.classifier.version,
    }
