"""The ``cleaninbox`` command line.

Every :class:`~daemon.errors.CleanInboxError` becomes one line on stderr and the error's
exit code (2: bad input, 1: failure at run time). Training commands import ``training``
lazily and say which install fixes a missing ``[train]`` extra.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from daemon import __version__
from daemon.errors import CleanInboxError, ConfigError, DataError, DependencyError

DEFAULT_MODELS_DIR = Path("models")


def fail(exc: CleanInboxError) -> NoReturn:
    message = " ".join(str(exc).split()) or type(exc).__name__
    click.echo(f"cleaninbox: error: {message}", err=True)
    sys.exit(exc.exit_code)


class _Group(click.Group):
    """A click group that turns CleanInbox errors into one clear line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CleanInboxError as exc:
            fail(exc)


def _training() -> None:
    """Fail clearly when the [train] extra is missing."""
    import importlib.util

    for name in ("torch", "transformers", "sklearn", "onnx", "matplotlib"):
        if importlib.util.find_spec(name) is None:
            raise DependencyError(
                f"this command needs the training extra ({name} is missing): "
                "pip install 'cleaninbox[train]'"
            )


def _banking77_dir(data_dir: Path | None) -> Path:
    """``--data-dir``, else ``BANKING77_DIR``, else the project default."""
    import os

    return data_dir or Path(os.environ.get("BANKING77_DIR") or "data/banking77")


def _echo_err(line: str) -> None:
    click.echo(line, err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cleaninbox")
def main() -> None:
    """CleanInbox: classify new mail into banking77 intents and file it by rules."""


# --- training ---------------------------------------------------------------------------


@main.group(cls=_Group)
def data() -> None:
    """The training data (banking77)."""


@data.command("check")
@click.option(
    "--dir",
    "data_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="banking77 CSV directory (default: BANKING77_DIR).",
)
@click.option(
    "--copy-to",
    type=click.Path(path_type=Path),
    default=None,
    help="Also copy the validated files here, with data.json (their sha256 and sizes).",
)
def data_check(data_dir: Path | None, copy_to: Path | None) -> None:
    """Validate banking77 (columns, 77 labels, no empty texts) and print its sha256."""
    import shutil

    from daemon.model.bundle import sha256_file
    from training.config import DataConfig
    from training.data import FILES, load_banking77

    config = DataConfig(source="csv", dir=_banking77_dir(data_dir))
    loaded = load_banking77(config, seed=0)
    summary = {
        "dir": str(config.dir),
        "labels": len(loaded.label_names),
        "train": len(loaded.train) + len(loaded.val),
        "test": len(loaded.test),
        "sha256": loaded.sha256,
    }
    if copy_to is not None:
        copy_to.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            shutil.copyfile(config.dir / name, copy_to / name)
            if sha256_file(copy_to / name) != loaded.sha256[name]:
                raise DataError(f"{copy_to / name}: the copy does not match its source")
        (copy_to / "data.json").write_text(json.dumps(summary, indent=2) + "\n")
    click.echo(json.dumps(summary, indent=2))


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Sweep config YAML (configs/sweep.yaml, configs/sweep-tiny.yaml).",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def sweep(config_path: Path, overrides: tuple[str, ...]) -> None:
    """Search hyperparameters with Optuna, scored on validation only; resumable. Writes a
    results table and the best config."""
    _training()
    from training.sweep import load_sweep_config
    from training.sweep import sweep as run_sweep

    config = load_sweep_config(config_path, list(overrides))
    best = run_sweep(config, log=_echo_err)
    click.echo(f"results: {config.output / 'results.md'}\nbest config: {best}")


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Training config YAML; its retrain section sets weight, hold-out and tolerance.",
)
@click.option(
    "--settings",
    "settings_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Daemon settings whose state holds the corrections (default ./cleaninbox.yaml).",
)
@click.option(
    "--corrections",
    type=click.Path(path_type=Path),
    default=None,
    help="A CSV from `cleaninbox feedback export` instead of the daemon's state.",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Read the corrections from this state database (what the daemon's job passes).",
)
@click.option(
    "--models-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Registry (default: the directory of the settings' model, else models).",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def retrain(
    config_path: Path,
    settings_path: Path | None,
    corrections: Path | None,
    state_path: Path | None,
    models_dir: Path | None,
    overrides: tuple[str, ...],
) -> None:
    """Train a challenger on banking77 plus the user's corrections; promote it only if it
    is not worse on banking77 (within tolerance) and better on held-out corrections."""
    from training.config import load_train_config

    config = load_train_config(config_path, list(overrides))
    _training()
    from daemon.store.state import StateStore
    from training.retrain import Example, read_corrections_csv
    from training.retrain import retrain as run_retrain

    if corrections is not None:
        examples = read_corrections_csv(corrections)
        registry = models_dir or DEFAULT_MODELS_DIR
    else:
        if state_path is not None:
            state, registry = state_path, models_dir or DEFAULT_MODELS_DIR
        else:
            from daemon.config.settings import load_settings

            settings = load_settings(settings_path)
            state, registry = settings.state, models_dir or settings.model.parent
        with StateStore(state, read_only=True, lock=False) as store:
            examples = [Example(c.text, c.corrected) for c in store.corrections()]
    result = run_retrain(config, examples, registry, log=_echo_err)
    click.echo(
        f"{'promoted' if result.promoted else 'kept'}: {result.reason}\nreport: {result.report}"
    )


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Training config YAML (configs/train.yaml, configs/train-tiny.yaml).",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory to write the bundle into (default: output_dir of the config).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set train.epochs=2 (repeatable).",
)
@click.option("--promote", is_flag=True, help="Point models/current at the new bundle.")
def train(
    config_path: Path, output: Path | None, overrides: tuple[str, ...], promote: bool
) -> None:
    """Fine-tune, calibrate, export and verify a model bundle."""
    from training.config import load_train_config

    config = load_train_config(config_path, list(overrides))
    _training()
    from training.pipeline import train as run_training

    bundle = run_training(config, output, log=_echo_err)
    if promote:
        from daemon.model.registry import promote as promote_bundle

        promote_bundle(bundle.parent, bundle.name)
        _echo_err(f"promoted {bundle.name} to {bundle.parent / 'current'}")
    click.echo(str(bundle))


@main.command()
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_MODELS_DIR / "current",
    show_default=True,
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="banking77 CSV directory (default: $BANKING77_DIR or data/banking77).",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write figures and per-class scores here.",
)
@click.option("--no-emails", is_flag=True, help="Skip the test-queries-as-emails evaluation.")
@click.option(
    "--robustness-dir",
    type=click.Path(path_type=Path),
    default=Path("data/robustness"),
    show_default=True,
    help="The robustness sets (other people's words, out of scope); scored beside banking77.",
)
@click.option("--no-robustness", is_flag=True, help="Score banking77 only.")
def evaluate(
    model_dir: Path,
    data_dir: Path | None,
    report_dir: Path | None,
    no_emails: bool,
    robustness_dir: Path,
    no_robustness: bool,
) -> None:
    """Score a bundle's served decision on banking77 test (plain and as emails) and on the
    robustness sets: other people's words, long emails, perturbations, out of scope."""
    from training.config import DataConfig

    data = DataConfig(
        dir=_banking77_dir(data_dir), robustness_dir=None if no_robustness else robustness_dir
    )
    from daemon.model.bundle import read_manifest

    read_manifest(model_dir)  # a bad bundle is reported before the heavy imports
    _training()
    from training.evaluate import evaluate_bundle

    result = evaluate_bundle(model_dir, data, emails=not no_emails, report_dir=report_dir)
    click.echo(json.dumps(result, indent=2))


@main.command()
@click.argument("texts", nargs=-1)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_MODELS_DIR / "current",
    show_default=True,
)
@click.option(
    "--input",
    "input_file",
    type=click.Path(path_type=Path),
    default=None,
    help='.txt (one text a line), .jsonl ({"text": ...}) or .eml file.',
)
@click.option("--top-k", type=click.IntRange(1, 77), default=5, show_default=True)
def classify(texts: tuple[str, ...], model_dir: Path, input_file: Path | None, top_k: int) -> None:
    """Classify texts; print one JSON object a line."""
    from daemon.cli.inputs import read_inputs
    from daemon.errors import ConfigError
    from daemon.model.classifier import Classifier

    items = list(texts)
    if input_file is not None:
        items += read_inputs(input_file)
    if not items:
        raise ConfigError("nothing to classify: give TEXT arguments or --input FILE")
    classifier = Classifier(model_dir, top_k=top_k)
    for prediction in classifier.predict(items):
        click.echo(json.dumps(prediction.to_json()))


@main.command()
@click.option(
    "--workdir", type=click.Path(path_type=Path), default=Path("var/demo"), show_default=True
)
@click.option(
    "--models-dir", type=click.Path(path_type=Path), default=DEFAULT_MODELS_DIR, show_default=True
)
@click.option("--emails", type=click.IntRange(1, 3080), default=300, show_default=True)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="banking77 CSV directory (default: $BANKING77_DIR or data/banking77).",
)
@click.option("--seed", type=int, default=7, show_default=True)
def demo(workdir: Path, models_dir: Path, emails: int, data_dir: Path | None, seed: int) -> None:
    """Build a model if none exists, triage sample emails in a local Maildir, summarise."""
    from daemon.logs import configure_logging

    configure_logging("console", "warning")
    data = _banking77_dir(data_dir)
    if not (data / "test.csv").is_file():
        from daemon.errors import DataError

        raise DataError(f"banking77 not found in {data}; set BANKING77_DIR or --data-dir")
    _training()
    from training.demo import REPO, run_demo

    result = run_demo(
        workdir=workdir,
        models_dir=models_dir,
        train_config=REPO / "configs/train-quick.yaml",
        rules=REPO / "configs/rules.example.yaml",
        data_dir=data,
        emails=emails,
        seed=seed,
        log=_echo_err,
    )
    reports: dict[str, Any] = result["reports"]  # type: ignore[assignment]
    click.echo("")
    _summary(reports, dry_run=False)
    click.echo("")
    click.echo(
        f"model {result['model']}; the cycle took {result['cycle_seconds']:.1f} s, "
        f"the whole demo {result['total_seconds']:.0f} s"
    )
    folders: Any = result["folders"]
    for folder, count in sorted(folders.items(), key=lambda kv: -kv[1]):
        click.echo(f"  {count:>4}  {folder}")
    right, wrong = int(result["filed_right"]), int(result["filed_wrong"])  # type: ignore[call-overload]
    if right + wrong:
        click.echo(
            f"filed into the folder of the query's true intent: {right}/{right + wrong} "
            f"({right / (right + wrong):.1%}); abstained (left in INBOX, tagged "
            f"$triage_review): {result['abstained']}"
        )
    if result["out_of_scope"]:
        click.echo(
            f"mail that is none of the intents, left in INBOX: "
            f"{result['out_of_scope_left']}/{result['out_of_scope']}"
        )
    settings = result["settings"]
    click.echo("")
    click.echo("where to look:")
    click.echo(f"  mail:     {result['maildir']} (Maildir++; folders .Triage.*)")
    click.echo(f"  history:  cleaninbox history --config {settings}")
    click.echo(f"  undo:     cleaninbox undo --since 1h --config {settings}")
    click.echo(
        f"  metrics:  cleaninbox run --config {settings} --set http.enabled=true, "
        "then http://127.0.0.1:9464/metrics"
    )


# --- model registry ---------------------------------------------------------------------


@main.group(cls=_Group)
def models() -> None:
    """List, promote and roll back model bundles."""


_models_dir_option: Callable[[Callable[..., Any]], Callable[..., Any]] = click.option(
    "--models-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_MODELS_DIR,
    show_default=True,
)


@models.command("list")
@_models_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
def models_list(models_dir: Path, as_json: bool) -> None:
    """Show bundles with their metrics (* marks models/current)."""
    from daemon.model.registry import list_bundles

    entries = list_bundles(models_dir)
    if as_json:
        for entry in entries:
            m = entry.manifest
            click.echo(
                json.dumps(
                    {
                        "version": entry.version,
                        "current": entry.current,
                        "base_model": m.base_model if m else None,
                        "parent_version": m.parent_version if m else None,
                        "metrics": {
                            k: v
                            for k, v in (m.metrics if m else {}).items()
                            if not isinstance(v, dict)
                        },
                        "error": entry.error,
                    }
                )
            )
        return
    if not entries:
        click.echo(f"no bundles in {models_dir}")
        return
    click.echo(
        f"  {'version':<28} {'test acc':>8} {'macro-F1':>8} {'email':>7} "
        f"{'baseline':>8}  {'parent (retrained from)':<28} base model"
    )
    for entry in entries:
        mark = "*" if entry.current else " "
        if entry.manifest is None:
            click.echo(f"{mark} {entry.version:<28} unreadable: {entry.error}")
            continue
        figures = entry.manifest.metrics

        def pct(key: str, metrics: dict[str, Any] = figures) -> str:
            value = metrics.get(key)
            return f"{value * 100:.2f}" if isinstance(value, int | float) else "-"

        click.echo(
            f"{mark} {entry.version:<28} {pct('test_accuracy'):>8} {pct('test_macro_f1'):>8} "
            f"{pct('email_test_accuracy'):>7} {pct('baseline_test_accuracy'):>8}  "
            f"{entry.manifest.parent_version or '-':<28} {entry.manifest.base_model}"
        )


@models.command("promote")
@click.argument("version")
@_models_dir_option
def models_promote(version: str, models_dir: Path) -> None:
    """Verify bundle VERSION and point models/current at it."""
    from daemon.model.registry import promote

    manifest = promote(models_dir, version)
    click.echo(f"models/current -> {manifest.version}")


@models.command("config")
@click.argument("version")
@_models_dir_option
def models_config(version: str, models_dir: Path) -> None:
    """Print the training config a bundle was made with (YAML), headed by the code version
    and data sha256 to check before reproducing it."""
    import yaml

    from daemon.model.bundle import load_manifest
    from daemon.model.registry import resolve_bundle

    manifest = load_manifest(resolve_bundle(models_dir, version), verify=False)
    lines = [
        f"# Training config of bundle {manifest.version} (created {manifest.created_at:%Y-%m-%d}).",
        f"# Code version: {manifest.code_version}  (git checkout it first)",
        f"# Data ({manifest.dataset.name}, {manifest.dataset.source}): `cleaninbox data check`",
        "# must print these sha256:",
        *(f"#   {name}: {digest}" for name, digest in sorted(manifest.dataset.files.items())),
        f"# Reproduce: cleaninbox train --config THIS_FILE  (base model {manifest.base_model})",
    ]
    click.echo("\n".join(lines))
    click.echo(yaml.safe_dump(manifest.training_config, sort_keys=False), nl=False)


@models.command("publish")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(path_type=Path))
def models_publish(source: Path, target: Path) -> None:
    """Copy the one bundle in SOURCE (a training output directory) to TARGET after
    verifying every file's sha256 (the pipeline's export stage)."""
    import shutil

    from daemon.model.bundle import load_manifest

    bundles = [p for p in sorted(source.iterdir()) if (p / "manifest.json").is_file()]
    if len(bundles) != 1:
        raise ConfigError(f"{source}: expected exactly one bundle, found {len(bundles)}")
    manifest = load_manifest(bundles[0], verify=True)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(bundles[0], target, ignore=shutil.ignore_patterns(".*"))
    load_manifest(target, verify=True)
    click.echo(f"{manifest.version} -> {target}")


@models.command("rollback")
@_models_dir_option
def models_rollback(models_dir: Path) -> None:
    """Point models/current back at the bundle it served before the last switch."""
    from daemon.model.registry import rollback

    manifest = rollback(models_dir)
    click.echo(f"models/current -> {manifest.version}")


# --- the daemon ---------------------------------------------------------------------------


def _config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a setting, e.g. --set dry_run=true (repeatable).",
    )(func)
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Settings YAML (default: ./cleaninbox.yaml if present).",
    )(func)


def _settings(config_path: Path | None, overrides: tuple[str, ...]) -> Any:
    from daemon.config.settings import load_settings
    from daemon.logs import configure_logging

    settings = load_settings(config_path, list(overrides))
    configure_logging(settings.log_format, settings.log_level)
    return settings


def _service(settings: Any, dry_run: bool) -> Any:
    from daemon.service.faults import install_write_hook
    from daemon.service.supervisor import Service

    install_write_hook()
    return Service(settings, dry_run=dry_run or settings.dry_run)


@main.command()
@_config_options
@click.option("--dry-run", is_flag=True, help="Decide and log; change nothing.")
def run(config_path: Path | None, overrides: tuple[str, ...], dry_run: bool) -> None:
    """Run the daemon until SIGTERM."""
    settings = _settings(config_path, overrides)
    service = _service(settings, dry_run)
    sys.exit(service.run())


def _summary(reports: dict[str, Any], dry_run: bool) -> None:
    click.echo(
        f"{'account':<16} {'new':>6} {'moved':>6} {'tagged':>6} {'left':>6} "
        f"{'abstain':>7} {'skipped':>7} {'failed':>6} {'seconds':>8}  status"
    )
    for name, r in reports.items():
        left = r.actions.get("none", 0)
        click.echo(
            f"{name:<16} {r.new:>6} {r.actions.get('move', 0):>6} "
            f"{r.actions.get('tag', 0) + r.actions.get('copy', 0):>6} {left:>6} "
            f"{r.abstained:>7} {r.skipped:>7} {r.failed:>6} {r.seconds:>8.2f}  "
            f"{'error: ' + r.error if r.error else ('dry run' if dry_run else 'ok')}"
        )
        for note in r.notes:
            click.echo(f"  note: {note}")
        if r.intents:
            top = ", ".join(f"{k} {v}" for k, v in r.intents.most_common(5))
            click.echo(f"  top intents: {top}")


@main.command()
@_config_options
@click.option("--dry-run", is_flag=True, help="Decide and log; change nothing.")
@click.option("--timings", is_flag=True, help="Also print where the time went, by stage.")
def once(
    config_path: Path | None, overrides: tuple[str, ...], dry_run: bool, timings: bool
) -> None:
    """One cycle over every account, then exit (prints a summary table)."""
    import time

    settings = _settings(config_path, overrides)
    service = _service(settings, dry_run)
    started = time.perf_counter()
    try:
        reports = service.once()
    finally:
        service.close()
    wall = time.perf_counter() - started
    _summary(reports, service.dry_run)
    if timings:
        from daemon.metrics import STAGES

        stage = {s: service.triage.stage_seconds[s] for s in STAGES}
        decided = sum(r.decided for r in reports.values())
        click.echo(
            f"timings: {wall:.2f} s wall, {decided} messages, "
            f"{decided / wall if wall else 0:.1f} messages/s"
        )
        for name, seconds in stage.items():
            click.echo(f"  {name:<9} {seconds:8.2f} s  {seconds / wall * 100 if wall else 0:5.1f}%")
        other = wall - sum(stage.values())
        click.echo(f"  {'other':<9} {other:8.2f} s  {other / wall * 100 if wall else 0:5.1f}%")
    if any(r.error for r in reports.values()):
        sys.exit(1)


@main.command()
@click.argument("account")
@_config_options
@click.option("--no-browser", is_flag=True, help="Only print the address to open.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds to wait for the browser to come back.",
)
def auth(
    account: str,
    config_path: Path | None,
    overrides: tuple[str, ...],
    no_browser: bool,
    timeout: float,
) -> None:
    """Authorise ACCOUNT with OAuth2 (Google, Microsoft, or any provider) and save its
    refresh token to oauth2.refresh_token_file."""
    from daemon.mailbox.authflow import authorize

    settings = _settings(config_path, overrides)
    where = authorize(
        settings.account(account),
        open_browser=not no_browser,
        timeout=timeout,
        say=lambda line: click.echo(line, nl=True),
    )
    click.echo(f"refresh token saved to {where}; the daemon uses it from its next login")


@main.command("check-config")
@_config_options
@click.option("--connect", is_flag=True, help="Also log in to every account.")
def check_config(config_path: Path | None, overrides: tuple[str, ...], connect: bool) -> None:
    """Validate settings, the model bundle and the rules (and with --connect, logins)."""
    from daemon.core.runtime import load
    from daemon.errors import CleanInboxError
    from daemon.service.faults import open_mailbox_with_hooks as open_mailbox

    settings = _settings(config_path, overrides)
    loaded = load(settings)
    click.echo(f"settings ok: {len(settings.accounts)} account(s)")
    click.echo(
        f"model ok: {loaded.classifier.version} ({len(loaded.classifier.labels)} labels, "
        f"abstain below {loaded.classifier.threshold:.3f})"
    )
    click.echo(
        f"rules ok: {settings.rules} ({len(loaded.rules.spec.rules)} rules, folders: "
        f"{', '.join(sorted(loaded.rules.folders())) or 'none'})"
    )
    if not connect:
        return
    failures = 0
    for account in settings.accounts:
        mailbox = open_mailbox(account)
        try:
            mailbox.open()
            missing = [f for f in account.folders if not mailbox.folder_exists(f)]
            if missing:
                raise CleanInboxError(
                    f"account {account.name}: folder(s) not found: {', '.join(missing)}"
                )
            caps = mailbox.capabilities
            click.echo(
                f"account {account.name} ok: MOVE {'yes' if caps.move else 'no'}, "
                f"UIDPLUS {'yes' if caps.uidplus else 'no'}, "
                f"CONDSTORE {'yes' if caps.condstore else 'no'}"
            )
        except CleanInboxError as exc:
            failures += 1
            click.echo(f"cleaninbox: error: {exc}", err=True)
        finally:
            mailbox.close()
    if failures:
        sys.exit(2)


@main.command()
@_config_options
@click.option("--account", required=True, help="Account to backfill.")
@click.option("--since", default=None, help="Only mail delivered on/after YYYY-MM-DD.")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most N messages.")
@click.option("--dry-run", is_flag=True, help="Decide and log; change nothing.")
def backfill(
    config_path: Path | None,
    overrides: tuple[str, ...],
    account: str,
    since: str | None,
    limit: int | None,
    dry_run: bool,
) -> None:
    """Triage mail that was already there when CleanInbox started."""
    from datetime import date

    from daemon.core.cycle import Mode
    from daemon.errors import ConfigError

    if since is not None:
        try:
            date.fromisoformat(since)
        except ValueError:
            raise ConfigError(f"--since {since!r} is not a date like 2026-01-31") from None
    settings = _settings(config_path, overrides)
    settings.account(account)
    service = _service(settings, dry_run)
    mode = Mode(dry_run=service.dry_run, backfill=True, since=since, limit=limit)

    class Bar:
        def __init__(self, bar: Any) -> None:
            self.bar = bar

        def total(self, count: int) -> None:
            self.bar.length = (self.bar.length or 0) + count

        def advance(self, count: int) -> None:
            self.bar.update(count)

    try:
        with click.progressbar(
            length=0, label=f"backfill {account}", file=sys.stderr, show_pos=True
        ) as bar:
            report = service.cycle(account, mode, progress=Bar(bar))
    finally:
        service.close()
    _summary({account: report}, service.dry_run)


@main.command()
@_config_options
@click.option("--account", default=None)
@click.option("--since", default=None, help="ISO date/time, or a duration like 2h or 7d.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
@click.option("--limit", type=click.IntRange(1), default=None)
def history(
    config_path: Path | None,
    overrides: tuple[str, ...],
    account: str | None,
    since: str | None,
    as_json: bool,
    limit: int | None,
) -> None:
    """Show the audit log of decisions."""
    from daemon.store.state import StateStore

    settings = _settings(config_path, overrides)
    since_iso = _since(since)
    with StateStore(settings.state, read_only=True, lock=False) as store:
        rows = store.history(account=account, since=since_iso, limit=limit)
    for d in rows:
        if as_json:
            click.echo(json.dumps(d.to_json()))
            continue
        conf = f"{d.confidence:.2f}" if d.confidence is not None else "-"
        click.echo(
            f"{d.id:>6} {d.created_at} {d.account}/{d.folder} uid {d.uid} "
            f"{d.intent or '-'} {conf} {d.action or '-'} [{d.status}]"
            f"{' ' + d.reason if d.reason else ''}"
        )


@main.group(cls=_Group)
def feedback() -> None:
    """Corrections learned from the user's moves (accounts with feedback: true)."""


@feedback.command("export")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="CSV file to write (banking77 columns text,category plus provenance).",
)
@click.option("--account", default=None, help="Only this account's corrections.")
@_config_options
def feedback_export(
    output: Path, account: str | None, config_path: Path | None, overrides: tuple[str, ...]
) -> None:
    """Write the recorded corrections as a dataset for `cleaninbox retrain`."""
    import csv

    from daemon.store.state import StateStore

    settings = _settings(config_path, overrides)
    with StateStore(settings.state, read_only=True, lock=False) as store:
        rows = store.corrections(account)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "category", "predicted", "account", "folder", "created_at"])
        for c in rows:
            writer.writerow([c.text, c.corrected, c.predicted, c.account, c.folder, c.created_at])
    click.echo(f"{len(rows)} correction(s) written to {output}")


@main.command()
@click.argument("target", type=click.Path(path_type=Path))
@_config_options
def backup(target: Path, config_path: Path | None, overrides: tuple[str, ...]) -> None:
    """Copy the state database (audit log, positions) to TARGET, safely while the daemon
    runs. Restore: stop the daemon, put the copy in place of the state file, start it."""
    from daemon.store.state import StateStore

    settings = _settings(config_path, overrides)
    with StateStore(settings.state, read_only=True, lock=False) as store:
        size = store.backup(target)
    click.echo(f"state {settings.state} backed up to {target} ({size:,} bytes)")


def _since(value: str | None) -> str | None:
    if value is None:
        return None
    from datetime import UTC, datetime

    from daemon.core.undo import parse_duration, since_iso
    from daemon.errors import ConfigError

    if value[-1:].isalpha() and value[:-1].strip().isdigit():
        return since_iso(parse_duration(value))
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--since {value!r} is neither an ISO date nor a duration") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@main.command()
@_config_options
@click.option(
    "--since", "since_duration", default=None, help="Undo decisions of the last 2h, 1d..."
)
@click.option("--decision", "decision_id", type=int, default=None, help="Undo one decision.")
@click.option("--dry-run", is_flag=True, help="Show what would be undone.")
def undo(
    config_path: Path | None,
    overrides: tuple[str, ...],
    since_duration: str | None,
    decision_id: int | None,
    dry_run: bool,
) -> None:
    """Put messages back where they were, using the audit log."""
    from daemon.core.undo import parse_duration, since_iso, undoable
    from daemon.core.undo import undo as run_undo
    from daemon.errors import ConfigError
    from daemon.service.faults import open_mailbox_with_hooks as open_mailbox
    from daemon.store.state import StateStore

    if (since_duration is None) == (decision_id is None):
        raise ConfigError("give exactly one of --since DURATION or --decision ID")
    settings = _settings(config_path, overrides)
    since = since_iso(parse_duration(since_duration)) if since_duration else None
    boxes: dict[str, Any] = {}

    def mailbox_for(name: str) -> Any:
        if name not in boxes:
            boxes[name] = open_mailbox(settings.account(name))
            boxes[name].open()
        return boxes[name]

    with StateStore(settings.state) as store:
        todo = undoable(store, since=since, decision_id=decision_id)
        try:
            results = run_undo(store, todo, mailbox_for, dry_run=dry_run)
        finally:
            for box in boxes.values():
                box.close()
    for r in results:
        click.echo(
            f"{r.decision.id:>6} {r.decision.account}/{r.decision.folder} "
            f"{r.decision.message_id or '-'}: {r.status}: {r.detail}"
        )
    click.echo(
        f"{sum(r.status == 'done' for r in results)} undone, "
        f"{sum(r.status == 'failed' for r in results)} failed"
        f"{', dry run' if dry_run else ''}"
    )
    if any(r.status == "failed" for r in results):
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
