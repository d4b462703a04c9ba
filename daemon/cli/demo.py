"""``cleaninbox demo``: a model, a Maildir of sample emails, one triage cycle, a summary.

Everything lives under a work directory (``var/demo``); the model goes to ``models/`` and
is promoted only when no ``models/current`` exists yet. The demo drives the daemon the
way a user would (settings file, :class:`~daemon.service.supervisor.Service`, the audit
log), so it lives with the command line; ``training`` is imported only inside the
functions that need it (to train the quick model, and for the sample texts), never when
the CLI loads.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from daemon.cli.common import (
    banking77_dir,
    data_dir_option,
    echo_err,
    models_dir_option,
    path_option,
    require_training,
)

if TYPE_CHECKING:
    from daemon.config.settings import Settings
    from daemon.core.cycle import CycleReport
    from daemon.store.state import Decision
    from training.data import Banking77

Log = Callable[[str], None]
REPO = Path(__file__).resolve().parents[2]
ROBUSTNESS_DIR = REPO / "data" / "robustness"


@dataclass(frozen=True)
class DemoResult:
    """What the demo's triage cycle did, scored against the sample emails' true intents."""

    reports: Mapping[str, CycleReport]
    folders: Counter[str]
    filed_right: int
    filed_wrong: int
    abstained: int
    out_of_scope: int
    out_of_scope_left: int
    cycle_seconds: float
    total_seconds: float
    settings: Path
    maildir: Path
    model: str


@dataclass(frozen=True)
class _Delivered:
    """The sample emails put into the inbox, by Message-ID."""

    truth: dict[str, str]  # banking77 test queries: Message-ID -> true intent
    out_of_scope: set[str]  # mail that is none of the intents


def ensure_model(models_dir: Path, config: Path, data_dir: Path, log: Log) -> Path:
    """``models/current``, training and promoting the quick model if there is none."""
    from daemon.model.registry import current_version, promote

    if current_version(models_dir) is None:
        from training.config import load_train_config
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


def _fresh_workdir(workdir: Path, model: Path, rules: Path) -> Settings:
    """An empty Maildir and state under ``workdir``, and settings that use them."""
    import mailbox
    import shutil

    import yaml

    from daemon.config.settings import load_settings

    workdir.mkdir(parents=True, exist_ok=True)
    maildir = workdir / "mail"
    state = workdir / "state.db"
    for path in (state, state.with_name("state.db-wal"), state.with_name("state.db-shm")):
        path.unlink(missing_ok=True)
    if maildir.exists():
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
    return load_settings(settings_path)


def _deliver(maildir: Path, data: Banking77, emails: int, seed: int, log: Log) -> _Delivered:
    """Put ``emails`` banking77 test queries (as emails) and a fifth as many messages that
    are none of the intents into the inbox."""
    import mailbox
    import random

    from daemon.model.samples import render_email
    from training.robustness import load_robustness

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
    return _Delivered(truth, out_of_scope)


def _filed(
    decisions: list[Decision], truth: dict[str, str], rules: Path, labels: list[str]
) -> tuple[int, int]:
    """(right, wrong): filed decisions whose folder is, or is not, the one the rules give
    the query's true intent."""
    from daemon.core.rules import Headers, load_rules

    rule_set = load_rules(rules, labels)
    right = wrong = 0
    for d in decisions:
        if d.message_id not in truth or d.abstain or d.intent is None:
            continue
        expected = rule_set.decide(truth[d.message_id], 1.0, False, Headers()).move
        if d.destination == expected:
            right += 1
        else:
            wrong += 1
    return right, wrong


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
) -> DemoResult:
    """Train the quick model if there is none, deliver sample emails to a fresh Maildir
    after the daemon's first start, run one cycle and score where the mail went."""
    from daemon.service.supervisor import Service
    from training.config import DataConfig
    from training.data import load_banking77

    started = time.perf_counter()
    model = ensure_model(models_dir, train_config, data_dir, log)
    data = load_banking77(DataConfig(dir=data_dir), seed)
    settings = _fresh_workdir(workdir, model, rules)
    maildir = workdir / "mail"
    service = Service(settings)
    try:
        service.once()  # first start: remembers where the inbox ends
        delivered = _deliver(maildir, data, emails, seed, log)
        cycle_started = time.perf_counter()
        reports = service.once()
        cycle_seconds = time.perf_counter() - cycle_started
        decisions = service.store.history(kind="triage")
    finally:
        service.close()
    classifier = service.runtime.current.classifier
    truth, out_of_scope = delivered.truth, delivered.out_of_scope
    right, wrong = _filed(decisions, truth, settings.rules, list(classifier.labels))
    return DemoResult(
        reports=reports,
        folders=Counter(d.destination or "INBOX (left)" for d in decisions),
        filed_right=right,
        filed_wrong=wrong,
        abstained=sum(bool(d.abstain) for d in decisions if d.message_id in truth),
        out_of_scope=len(out_of_scope),
        out_of_scope_left=sum(
            d.destination is None for d in decisions if d.message_id in out_of_scope
        ),
        cycle_seconds=cycle_seconds,
        total_seconds=time.perf_counter() - started,
        settings=workdir / "cleaninbox.yaml",
        maildir=maildir,
        model=classifier.version,
    )


@click.command()
@path_option("--workdir", default=Path("var/demo"), show_default=True)
@models_dir_option()
@click.option("--emails", type=click.IntRange(1, 3080), default=300, show_default=True)
@data_dir_option
@click.option("--seed", type=int, default=7, show_default=True)
def demo(workdir: Path, models_dir: Path, emails: int, data_dir: Path | None, seed: int) -> None:
    """Build a model if none exists, triage sample emails in a local Maildir, summarise."""
    from daemon.errors import DataError
    from daemon.logs import configure_logging

    configure_logging("console", "warning")
    data = banking77_dir(data_dir)
    if not (data / "test.csv").is_file():
        raise DataError(f"banking77 not found in {data}; set BANKING77_DIR or --data-dir")
    require_training()
    result = run_demo(
        workdir=workdir,
        models_dir=models_dir,
        train_config=REPO / "configs/train-quick.yaml",
        rules=REPO / "configs/rules.example.yaml",
        data_dir=data,
        emails=emails,
        seed=seed,
        log=echo_err,
    )
    _print_result(result)


def _print_result(result: DemoResult) -> None:
    """The summary table, where the mail went, how much of it was right, where to look."""
    from daemon.cli.service import print_summary

    click.echo("")
    print_summary(result.reports, dry_run=False)
    click.echo("")
    click.echo(
        f"model {result.model}; the cycle took {result.cycle_seconds:.1f} s, "
        f"the whole demo {result.total_seconds:.0f} s"
    )
    for folder, count in sorted(result.folders.items(), key=lambda kv: -kv[1]):
        click.echo(f"  {count:>4}  {folder}")
    right, wrong = result.filed_right, result.filed_wrong
    if right + wrong:
        click.echo(
            f"filed into the folder of the query's true intent: {right}/{right + wrong} "
            f"({right / (right + wrong):.1%}); abstained (left in INBOX, tagged "
            f"$triage_review): {result.abstained}"
        )
    if result.out_of_scope:
        click.echo(
            f"mail that is none of the intents, left in INBOX: "
            f"{result.out_of_scope_left}/{result.out_of_scope}"
        )
    settings = result.settings
    click.echo("")
    click.echo("where to look:")
    click.echo(f"  mail:     {result.maildir} (Maildir++; folders .Triage.*)")
    click.echo(f"  history:  cleaninbox history --config {settings}")
    click.echo(f"  undo:     cleaninbox undo --since 1h --config {settings}")
    click.echo(
        f"  metrics:  cleaninbox run --config {settings} --set http.enabled=true, "
        "then http://127.0.0.1:9464/metrics"
    )
