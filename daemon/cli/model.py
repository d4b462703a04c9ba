"""Commands for whoever makes and ships models: check the data, train, evaluate, sweep,
retrain on corrections, classify, and the registry (``models list/promote/config/publish/
rollback``).

Training commands import ``training`` only when they run (the daemon never loads torch),
check for the ``[train]`` extra first, and write progress to stderr so stdout carries
only the result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from daemon.cli.common import (
    DEFAULT_MODELS_DIR,
    Group,
    banking77_dir,
    config_file_option,
    data_dir_option,
    echo_err,
    error_message,
    json_option,
    model_option,
    models_dir_option,
    overrides_option,
    path_option,
    require_training,
)
from daemon.errors import CleanInboxError, ConfigError, DataError

if TYPE_CHECKING:
    from daemon.model.registry import BundleEntry
    from daemon.store.corrections_csv import Example

# --- training -----------------------------------------------------------------------------


@click.group(cls=Group)
def data() -> None:
    """The training data (banking77)."""


@data.command("check")
@path_option(
    "--dir", "data_dir", default=None, help="banking77 CSV directory (default: BANKING77_DIR)."
)
@path_option(
    "--copy-to",
    default=None,
    help="Also copy the validated files here, with data.json (their sha256 and sizes).",
)
def data_check(data_dir: Path | None, copy_to: Path | None) -> None:
    """Validate banking77 (columns, 77 labels, no empty texts) and print its sha256."""
    import shutil

    from daemon.model.bundle import sha256_file
    from training.config import DataConfig
    from training.data import FILES, load_banking77

    config = DataConfig(source="csv", dir=banking77_dir(data_dir))
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


@click.command()
@config_file_option("Sweep config YAML (configs/sweep.yaml, configs/sweep-tiny.yaml).")
@click.option(
    "--storage",
    default=None,
    metavar="PATH|URL",
    help="Where the study lives (the config's storage): a SQLite file, or "
    "postgresql://user@host/db so workers on several machines share one study. The "
    "config's trials is then the total of all workers: two workers with trials=4 run 4 "
    "trials between them, not 8.",
)
@click.option(
    "--study-name",
    default=None,
    metavar="NAME",
    help="Optuna study name (the config's study); workers that share a study give the "
    "same storage and name.",
)
@click.option(
    "--storage-password-env",
    default=None,
    metavar="VAR",
    help="Env var holding the PostgreSQL password (else the URL's, or libpq's PGPASSWORD).",
)
@overrides_option()
def sweep(
    config_path: Path,
    storage: str | None,
    study_name: str | None,
    storage_password_env: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Search hyperparameters with Optuna, scored on validation only; resumable, and
    shared by several machines with a PostgreSQL --storage. Writes a results table and the
    best config."""
    import os

    require_training()
    from training.sweep import load_sweep_config
    from training.sweep import sweep as run_sweep

    password = None
    if storage_password_env is not None:
        password = os.environ.get(storage_password_env)
        if password is None:
            raise ConfigError(
                f"--storage-password-env: environment variable {storage_password_env} is not set"
            )
    # JSON strings are YAML scalars: a URL or name is taken verbatim, never reparsed.
    given = {"storage": storage, "study": study_name}
    options = [f"{key}={json.dumps(value)}" for key, value in given.items() if value is not None]
    config = load_sweep_config(config_path, [*overrides, *options])
    best = run_sweep(config, password=password, log=echo_err)
    click.echo(f"results: {config.output / 'results.md'}\nbest config: {best}")


@click.command()
@config_file_option(
    "Training config YAML; its retrain section sets weight, hold-out and tolerance."
)
@path_option(
    "--settings",
    "settings_path",
    default=None,
    help="Daemon settings whose state holds the corrections (default ./cleaninbox.yaml).",
)
@path_option(
    "--corrections",
    default=None,
    help="A CSV from `cleaninbox feedback export` instead of the daemon's state.",
)
@click.option(
    "--state",
    "state_path",
    default=None,
    metavar="PATH|URL",
    help="Read the corrections from this state: a SQLite file or a postgresql:// URL "
    "(what the daemon's job passes; the password from libpq's environment, PGPASSWORD).",
)
@models_dir_option(
    default=None, help="Registry (default: the directory of the settings' model, else models)."
)
@overrides_option()
@json_option("Print the outcome as one JSON object (also when the run fails).")
def retrain(
    config_path: Path,
    settings_path: Path | None,
    corrections: Path | None,
    state_path: str | None,
    models_dir: Path | None,
    overrides: tuple[str, ...],
    as_json: bool,
) -> None:
    """Train a challenger on banking77 plus the user's corrections; promote it only if it
    is not worse on banking77 (within tolerance) and better on held-out corrections.

    Exit status: 0 when the run reached a decision, promoted or kept (--json says which),
    so a scheduler counts only failures; 2 for bad input (settings, config, too few
    corrections); 1 for a failure at run time."""
    from daemon.model.promotion import RetrainResult
    from training.config import load_train_config
    from training.retrain import retrain as run_retrain

    try:
        config = load_train_config(config_path, list(overrides))
        require_training()
        examples, registry = _corrections(settings_path, corrections, state_path, models_dir)
        result = run_retrain(config, examples, registry, log=echo_err)
    except CleanInboxError as exc:
        if as_json:
            click.echo(RetrainResult.failed(error_message(exc)).to_json())
        raise
    if as_json:
        click.echo(result.to_json())
    else:
        click.echo(f"{result.outcome}: {result.reason}\nreport: {result.report}")


def _corrections(
    settings_path: Path | None,
    corrections: Path | None,
    state_path: str | None,
    models_dir: Path | None,
) -> tuple[list[Example], Path]:
    """The corrections (from the CSV, the given state, or else the settings' state) and
    the registry (``--models-dir``, else the settings' model directory when the settings
    were read, else ``models``)."""
    from training.retrain import load_corrections

    registry = models_dir or DEFAULT_MODELS_DIR
    state: Path | str | None = None
    password = None
    if state_path is not None:
        state = state_path if "://" in state_path else Path(state_path)
    elif corrections is None:
        from daemon.config.settings import load_settings

        settings = load_settings(settings_path)
        registry, state = models_dir or settings.model.parent, settings.state
        password = settings.state_password()
    return load_corrections(corrections, state, password), registry


@click.command()
@config_file_option("Training config YAML (configs/train.yaml, configs/train-tiny.yaml).")
@path_option(
    "--output",
    default=None,
    help="Directory to write the bundle into (default: output_dir of the config).",
)
@overrides_option("Override a config key, e.g. --set train.epochs=2 (repeatable).")
@click.option("--promote", is_flag=True, help="Point models/current at the new bundle.")
def train(
    config_path: Path, output: Path | None, overrides: tuple[str, ...], promote: bool
) -> None:
    """Fine-tune, calibrate, export and verify a model bundle."""
    from training.config import load_train_config

    config = load_train_config(config_path, list(overrides))
    require_training()
    from training.pipeline import train as run_training

    bundle = run_training(config, output, log=echo_err)
    if promote:
        from daemon.model.registry import promote as promote_bundle

        promote_bundle(bundle.parent, bundle.name)
        echo_err(f"promoted {bundle.name} to {bundle.parent / 'current'}")
    click.echo(str(bundle))


@click.command()
@model_option
@data_dir_option
@path_option(
    "--report", "report_dir", default=None, help="Also write figures and per-class scores here."
)
@click.option("--no-emails", is_flag=True, help="Skip the test-queries-as-emails evaluation.")
@path_option(
    "--robustness-dir",
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
        dir=banking77_dir(data_dir), robustness_dir=None if no_robustness else robustness_dir
    )
    from daemon.model.bundle import read_manifest

    read_manifest(model_dir)  # a bad bundle is reported before the heavy imports
    require_training()
    from training.evaluate import evaluate_bundle

    result = evaluate_bundle(model_dir, data, emails=not no_emails, report_dir=report_dir)
    click.echo(json.dumps(result, indent=2))


@click.command()
@click.argument("texts", nargs=-1)
@model_option
@path_option(
    "--input",
    "input_file",
    default=None,
    help='.txt (one text a line), .jsonl ({"text": ...}) or .eml file.',
)
@click.option("--top-k", type=click.IntRange(1, 77), default=5, show_default=True)
@path_option(
    "--config",
    "config_path",
    default=None,
    help="Daemon settings: classify with their model and correction memory, as the daemon.",
)
@click.option(
    "--account",
    default=None,
    help="With --config: whose corrections apply (default: the shared pool only).",
)
@click.pass_context
def classify(
    ctx: click.Context,
    texts: tuple[str, ...],
    model_dir: Path,
    input_file: Path | None,
    top_k: int,
    config_path: Path | None,
    account: str | None,
) -> None:
    """Classify texts; print one JSON object a line. With --config, the settings' model
    decides together with the state's correction memory, exactly as the daemon would."""
    from daemon.cli.inputs import read_inputs
    from daemon.model.classifier import Classifier

    items = list(texts)
    if input_file is not None:
        items += read_inputs(input_file)
    if not items:
        raise ConfigError("nothing to classify: give TEXT arguments or --input FILE")
    if config_path is None:
        if account is not None:
            raise ConfigError("--account needs --config (the settings naming the state)")
        classifier = Classifier(model_dir, top_k=top_k)
        for prediction in classifier.predict(items):
            click.echo(json.dumps(prediction.to_json()))
        return
    if ctx.get_parameter_source("model_dir") is not ParameterSource.DEFAULT:
        raise ConfigError("give --model or --config, not both (--config classifies with its model)")
    _classify_as_the_daemon(config_path, items, top_k, account)


def _classify_as_the_daemon(
    config_path: Path, items: list[str], top_k: int, account: str | None
) -> None:
    from daemon.config.settings import load_settings
    from daemon.core.memory import CorrectionMemory
    from daemon.core.runtime import classifier_for
    from daemon.store.records import SHARED_MEMORY
    from daemon.store.state import StateStore

    settings = load_settings(config_path)
    if account is not None and account not in {a.name for a in settings.accounts}:
        raise ConfigError(f"--account {account!r}: no such account in {config_path}")
    classifier = classifier_for(settings, top_k=top_k)
    with StateStore(settings.state, password=settings.state_password(), lock=False) as store:
        memory = CorrectionMemory(store, settings.memory, record_use=False)
        decided = memory.apply(account or SHARED_MEMORY, classifier, classifier.classify(items))
    for prediction in decided:
        click.echo(json.dumps(prediction.to_json()))


# --- the model registry -------------------------------------------------------------------


@click.group(cls=Group)
def models() -> None:
    """List, promote and roll back model bundles."""


@models.command("list")
@models_dir_option()
@json_option()
def models_list(models_dir: Path, as_json: bool) -> None:
    """Show bundles with their metrics (* marks models/current)."""
    from daemon.model.registry import list_bundles

    entries = list_bundles(models_dir)
    if as_json:
        for entry in entries:
            click.echo(json.dumps(_entry_json(entry)))
        return
    if not entries:
        click.echo(f"no bundles in {models_dir}")
        return
    click.echo(
        f"  {'version':<28} {'test acc':>8} {'macro-F1':>8} {'email':>7} "
        f"{'baseline':>8}  {'parent (retrained from)':<28} base model"
    )
    for entry in entries:
        click.echo(_entry_line(entry))


def _entry_json(entry: BundleEntry) -> dict[str, object]:
    """A bundle as ``models list --json`` prints it: the scalar metrics only."""
    m = entry.manifest
    return {
        "version": entry.version,
        "current": entry.current,
        "base_model": m.base_model if m else None,
        "parent_version": m.parent_version if m else None,
        "metrics": {k: v for k, v in (m.metrics if m else {}).items() if not isinstance(v, dict)},
        "error": entry.error,
    }


def _entry_line(entry: BundleEntry) -> str:
    """A bundle as a row of the ``models list`` table (figures in percent)."""
    mark = "*" if entry.current else " "
    if entry.manifest is None:
        return f"{mark} {entry.version:<28} unreadable: {entry.error}"
    figures = entry.manifest.metrics

    def pct(key: str) -> str:
        value = figures.get(key)
        return f"{value * 100:.2f}" if isinstance(value, int | float) else "-"

    return (
        f"{mark} {entry.version:<28} {pct('test_accuracy'):>8} {pct('test_macro_f1'):>8} "
        f"{pct('email_test_accuracy'):>7} {pct('baseline_test_accuracy'):>8}  "
        f"{entry.manifest.parent_version or '-':<28} {entry.manifest.base_model}"
    )


@models.command("promote")
@click.argument("version")
@models_dir_option()
def models_promote(version: str, models_dir: Path) -> None:
    """Verify bundle VERSION and point models/current at it."""
    from daemon.model.registry import promote

    manifest = promote(models_dir, version)
    click.echo(f"models/current -> {manifest.version}")


@models.command("config")
@click.argument("version")
@models_dir_option()
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
    from daemon.model.registry import publish

    manifest = publish(source, target)
    click.echo(f"{manifest.version} -> {target}")


@models.command("rollback")
@models_dir_option()
def models_rollback(models_dir: Path) -> None:
    """Point models/current back at the bundle it served before the last switch (from
    this machine's promotion log; with none, it says so and exits 2)."""
    from daemon.model.registry import rollback

    manifest = rollback(models_dir)
    click.echo(f"models/current -> {manifest.version}")
