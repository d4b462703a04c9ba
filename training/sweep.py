"""``cleaninbox sweep``: hyperparameter search with Optuna over a training config.

Each trial sets the sampled values on the base training config and fine-tunes (no export):
its score is the best validation accuracy; the test split is never looked at. A trial
whose validation accuracy after an epoch falls below the median of earlier trials at that
epoch is pruned. The study lives in an SQLite file, so a sweep that was stopped resumes
where it stopped (it runs until ``trials`` trials are finished in total). Every run
rewrites ``<output>/results.csv`` and ``results.md`` (all trials) and ``best.yaml`` (the
base config with the best values: ``cleaninbox train --config <output>/best.yaml``).

In a PostgreSQL database the study is shared: any number of workers, on any machines,
run ``cleaninbox sweep`` with the same storage and study name and split its ``trials``
between them (a trial is counted and started under a lock, so the total is exact).
"""

from __future__ import annotations

import csv
import io
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import reduce
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import NullPool

from daemon.config.settings import POSTGRES_SCHEMES
from daemon.config.yaml_settings import YamlSettings
from daemon.errors import CleanInboxError, ConfigError, DependencyError
from training.config import TrainConfig, load_train_config

Log = Callable[[str], None]

#: ``pg_advisory_xact_lock`` key the workers of shared studies serialise on ("CleanSwp").
STUDY_LOCK_KEY = 0x436C65616E537770
#: Trial user attribute naming the worker that ran it (``host:pid``).
WORKER_ATTR = "worker"


class Range(BaseModel):
    """One searched key: a float/int range (``low``, ``high``, ``log``) or ``choices``."""

    model_config = ConfigDict(extra="forbid")

    low: float | None = Field(default=None, description="Lowest value (with high).")
    high: float | None = Field(default=None, description="Highest value (with low).")
    log: bool = Field(default=False, description="Sample on a log scale (learning rates).")
    integer: bool = Field(default=False, description="Sample whole numbers only.")
    choices: list[Any] | None = Field(
        default=None, description="Sample one of these values instead of a range."
    )

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        assert self.low is not None
        assert self.high is not None
        return isinstance(value, int | float) and self.low <= value <= self.high

    @model_validator(mode="after")
    def _one_kind(self) -> Range:
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give either choices (non-empty) or low/high")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError("give low <= high, or choices")
        return self


class SweepConfig(YamlSettings):
    model_config = SettingsConfigDict(
        env_prefix="CLEANINBOX_SWEEP_", env_nested_delimiter="__", extra="forbid"
    )

    base: Path = Field(description="Training config the sampled values are set on.")
    study: str = Field(
        default="cleaninbox",
        description="Optuna study name (workers sharing a study use the same name).",
    )
    storage: str = Field(
        default="runs/sweep.db",
        description="Where the study lives: a SQLite file (or sqlite:/// URL), resumable; "
        "or a postgresql://user@host/db URL that workers on several machines share "
        "(password from the URL, PGPASSWORD or --storage-password-env).",
    )
    output: Path = Field(default=Path("runs/sweep"), description="results.csv/.md, best.yaml.")
    trials: int = Field(
        default=20,
        ge=1,
        description="Finished trials wanted in total: in a shared study, all workers' "
        "trials together.",
    )
    timeout_minutes: float | None = Field(
        default=None,
        gt=0,
        description="Start no new trial after this many minutes of this run (the running "
        "trial finishes); the study resumes from there next time.",
    )
    include_base: bool = Field(
        default=True,
        description="Make the base config's own values the study's first trial, so the "
        "results say whether the search beat what you have.",
    )
    seed: int = Field(default=0, description="Seed of the TPE sampler.")
    prune_after_epochs: int = Field(
        default=1, ge=0, description="Never prune before this many epochs."
    )
    prune_after_trials: int = Field(
        default=5,
        ge=0,
        description="Never prune before this many trials have finished (the median of too "
        "few trials prunes nearly everything).",
    )
    space: dict[str, Range] = Field(min_length=1)

    @field_validator("storage")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        study_url(value)  # refuse another database now, not after the data is prepared
        return value


def study_url(storage: str) -> URL:
    """``storage`` as a SQLAlchemy URL: a file path or ``sqlite:///`` URL (one machine), or
    a PostgreSQL URL on psycopg 3. Any other scheme raises ValueError naming the value
    (password hidden): a URL is never taken for a file name."""
    if "://" not in storage:
        return URL.create("sqlite", database=str(Path(storage).resolve()))
    try:
        url = make_url(storage)
    except ArgumentError:
        raise ValueError(
            f"study storage {storage.split('://', maxsplit=1)[0]}://...: not a URL"
        ) from None
    if url.drivername.lower() in POSTGRES_SCHEMES:
        return url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite":
        return url
    raise ValueError(
        f"unsupported study storage {url.render_as_string(hide_password=True)}: give a "
        "SQLite file path, sqlite:///PATH or postgresql://user@host/db"
    )


class StudyStorage:
    """Where the study lives, and the lock its workers take around the steps where two of
    them would race: creating Optuna's tables in an empty database, enqueueing the base
    trial, counting the trials and starting the next one. On PostgreSQL the lock is a
    transaction-scoped advisory lock; a SQLite study has one worker, and no lock."""

    def __init__(self, storage: str, password: str | None = None) -> None:
        url = study_url(storage)
        if url.password is not None and password is None:
            password = str(url.password)
        # The password travels beside the URL, never in a string that could be logged
        # (URL.set ignores None: _replace is SQLAlchemy's documented way to clear a part).
        self.url = url._replace(password=None)
        self.shared = url.get_backend_name() != "sqlite"
        self.connect_args: dict[str, str] = {"password": password} if password else {}
        if self.shared:  # UTF-8 whatever the database's encoding (in SQL_ASCII, psycopg
            self.connect_args["client_encoding"] = "utf8"  # hands back bytes for text)
        shown = self.url.set(drivername="postgresql") if self.shared else self.url
        self.where = shown.render_as_string(hide_password=True)
        self._locks = (
            sa.create_engine(self.url, poolclass=NullPool, connect_args=self.connect_args)
            if self.shared
            else None
        )

    @contextmanager
    def lock(self) -> Iterator[None]:
        if self._locks is None:
            yield
            return
        with self._locks.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": STUDY_LOCK_KEY})
            yield

    def optuna_storage(self) -> Any:
        """Optuna's RDB storage, with a heartbeat: the trial of a worker that was killed
        is marked failed two minutes later (it counts as finished, like a trial stopped
        with Ctrl-C) instead of running for ever and holding its place in the count."""
        import optuna

        engine_kwargs: dict[str, Any] = {}
        if self.shared:
            engine_kwargs = {"connect_args": self.connect_args, "pool_pre_ping": True}
        elif self.url.database:
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                self.url.render_as_string(hide_password=False),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=60,
            )


def load_sweep_config(path: Path, overrides: list[str] | None = None) -> SweepConfig:
    """``base`` is relative to the sweep file; ``storage`` and ``output`` to the working
    directory (like a training config's ``output_dir``)."""
    config = SweepConfig.load(path, overrides, what="sweep config")
    if not config.base.is_absolute():
        config.base = path.resolve().parent / config.base
    if not config.base.is_file():
        raise ConfigError(f"sweep config {path}: base training config {config.base} not found")
    # Every searched key must be a real training-config key: fail before the first trial.
    probe = [_override(k, r.choices[0] if r.choices else r.low) for k, r in config.space.items()]
    load_train_config(config.base, probe)
    return config


def _override(key: str, value: Any) -> str:
    """``key=value`` as the config loader parses it (YAML would read 1e-05 as a string)."""
    if isinstance(value, float):
        return f"{key}={value:.12f}".rstrip("0")
    return f"{key}={value}"


def _base_values(config: SweepConfig, base: TrainConfig, log: Log) -> dict[str, Any] | None:
    """The base config's values of the searched keys, or None (logged) when one lies
    outside the space (Optuna would sample it as a new point anyway)."""
    values: dict[str, Any] = {}
    for key, r in config.space.items():
        value = reduce(getattr, key.split("."), base)
        if not r.contains(value):
            log(f"base config's {key}={value} lies outside the searched space: not a trial")
            return None
        values[key] = value
    return values


def _sample(trial: Any, key: str, r: Range) -> Any:
    if r.choices is not None:
        return trial.suggest_categorical(key, r.choices)
    assert r.low is not None
    assert r.high is not None
    if r.integer:
        return trial.suggest_int(key, int(r.low), int(r.high), log=r.log)
    return trial.suggest_float(key, r.low, r.high, log=r.log)


def sweep(
    config: SweepConfig,
    *,
    data_dir: Path | None = None,
    password: str | None = None,
    log: Log = print,
) -> Path:
    """Run (or resume, or join) the study; returns the path of ``best.yaml``. ``password``:
    the PostgreSQL storage's, when it is not in the URL (libpq also reads PGPASSWORD)."""
    try:
        import optuna
    except ImportError as exc:
        raise DependencyError(
            "cleaninbox sweep needs optuna: pip install 'cleaninbox[sweep]'"
        ) from exc
    from training.finetune import EpochRecord, seed_everything
    from training.model import load_base_model
    from training.stages.fit import fit_model
    from training.stages.prepare import prepare_data

    extra = [f"data.dir={data_dir}"] if data_dir else []
    base_config = load_train_config(config.base, extra)
    # The training run's data stage, once: the same split every trial. Trials fit on
    # banking77 alone (their score is validation accuracy), so no robustness sets.
    sets = prepare_data(base_config, lambda _line: None, robustness=False).sets
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    target = StudyStorage(config.storage, password)
    try:
        with target.lock():
            study = optuna.create_study(
                study_name=config.study,
                storage=target.optuna_storage(),
                load_if_exists=True,
                direction="maximize",
                pruner=optuna.pruners.MedianPruner(
                    n_startup_trials=config.prune_after_trials,
                    n_warmup_steps=config.prune_after_epochs,
                ),
            )
            if config.include_base and not study.trials:
                values = _base_values(config, base_config, log)
                if values is not None:
                    study.enqueue_trial(values, user_attrs={"base": True})
                    log(f"sweep {config.study}: trial 0 is the base config")
    except OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise CleanInboxError(
            f"sweep {config.study}: cannot open the study in {target.where}: {reason}"
        ) from None
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: Any, started: Callable[[], None]) -> float:
        started()  # the trial is counted: other workers may take the next one
        trial.set_user_attr(WORKER_ATTR, worker)
        values = {key: _sample(trial, key, r) for key, r in config.space.items()}
        trial_config: TrainConfig = load_train_config(
            config.base, extra + [_override(k, v) for k, v in values.items()]
        )
        trial_config.train.progress = False
        seed_everything(trial_config.train.seed)
        base = load_base_model(trial_config.model)

        def report(record: EpochRecord) -> None:
            trial.report(record.val_accuracy, step=record.epoch)
            if trial.should_prune():
                reason = f"validation accuracy {record.val_accuracy:.4f} at epoch {record.epoch}"
                log(f"trial {trial.number}: pruned, {reason} with {values}")
                raise optuna.TrialPruned(reason)

        fitted = fit_model(
            trial_config, sets.data, base, lambda _line: None, report, num_outputs=sets.num_outputs
        )
        log(
            f"trial {trial.number}: validation accuracy {fitted.best_val_accuracy:.4f} "
            f"(epoch {fitted.best_epoch}) with {values}"
        )
        return float(fitted.best_val_accuracy)

    finished = sum(1 for t in study.trials if t.state.is_finished())
    running = sum(1 for t in study.trials if t.state == optuna.trial.TrialState.RUNNING)
    remaining = max(0, config.trials - finished - running)
    if target.shared:
        log(
            f"sweep {config.study} in {target.where}: {finished} trial(s) already finished, "
            f"{running} running, up to {remaining} more here (the study's {config.trials} "
            "trials are shared by all its workers)"
        )
    else:
        log(f"sweep {config.study}: {finished} trial(s) already finished, running {remaining}")
    ran = _run_trials(study, objective, config, target)
    if target.shared:
        log(f"sweep {config.study}: this worker ({worker}) ran {ran} trial(s)")
    return _write_results(study, config, base_config)


def _run_trials(
    study: Any,
    objective: Callable[[Any, Callable[[], None]], float],
    config: SweepConfig,
    target: StudyStorage,
) -> int:
    """This worker's share: trials until ``config.trials`` have started in the study (all
    workers together) or the timeout has passed; returns how many it ran.

    Optuna's ``MaxTrialsCallback`` counts after a trial ends, so two workers finishing at
    the same moment would both start one more. Here the count and the start of the next
    trial happen under the storage's lock, released as the trial starts (``held.close``
    in the objective): the total is exact."""
    import optuna

    state = optuna.trial.TrialState
    started_states = (state.RUNNING, state.COMPLETE, state.PRUNED, state.FAIL)
    deadline = time.monotonic() + config.timeout_minutes * 60 if config.timeout_minutes else None
    ran = 0
    while deadline is None or time.monotonic() < deadline:
        with ExitStack() as held:
            held.enter_context(target.lock())
            started = len(study.get_trials(deepcopy=False, states=started_states))
            if started >= config.trials:
                break
            # A seed per trial, not per process: workers (and resumed runs) all seeded
            # with config.seed would draw the same values for their first trials.
            study.sampler = optuna.samplers.TPESampler(
                seed=config.seed + started, constant_liar=True
            )
            study.optimize(lambda trial: objective(trial, held.close), n_trials=1)
        ran += 1
    return ran


def _write_results(study: Any, config: SweepConfig, base_config: TrainConfig) -> Path:
    import optuna

    config.output.mkdir(parents=True, exist_ok=True)
    keys = list(config.space)
    rows, workers = [], []
    for t in study.trials:
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        state = t.state.name.lower() + (" (base)" if t.user_attrs.get("base") else "")
        rows.append([t.number, state, t.value, *(t.params.get(k) for k in keys), seconds])
        workers.append(t.user_attrs.get(WORKER_ATTR))
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["trial", "state", "val_accuracy", *keys, "seconds", "worker"])
    writer.writerows([*row, worker] for row, worker in zip(rows, workers, strict=True))
    _replace(config.output / "results.csv", table.getvalue())
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        running = sum(1 for t in study.trials if t.state == optuna.trial.TrialState.RUNNING)
        why = f"yet, {running} running elsewhere" if running else "(all pruned or failed)"
        raise ConfigError(f"sweep {config.study}: no trial finished {why}")
    best = study.best_trial
    lines = [
        f"# Sweep {config.study}: best validation accuracy {best.value:.4f} (trial {best.number})",
        "",
    ]
    base = [t for t in complete if t.user_attrs.get("base")]
    if base:
        lines += [f"Base config (trial {base[0].number}): {base[0].value:.4f}.", ""]
    lines += [
        "| trial | state | validation accuracy | " + " | ".join(keys) + " | minutes |",
        "|---|---|---|" + "---|" * len(keys) + "---|",
    ]
    for row in rows:
        value = f"{row[2]:.4f}" if isinstance(row[2], float) else "-"
        lines.append(
            f"| {row[0]} | {row[1]} | {value} | "
            + " | ".join(
                "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
                for v in row[3 : 3 + len(keys)]
            )
            + (f" | {row[-1] / 60:.1f} |" if row[-1] is not None else " | - |")
        )
    _replace(config.output / "results.md", "\n".join(lines) + "\n")
    tuned = load_train_config(config.base, [_override(k, v) for k, v in best.params.items()])
    data = tuned.model_dump(mode="json")
    data["data"]["dir"] = str(base_config.data.dir)
    path = config.output / "best.yaml"
    _replace(
        path,
        f"# Best of sweep {config.study} (validation accuracy {best.value:.4f}, trial "
        f"{best.number}); train it with: cleaninbox train --config {path}\n"
        + yaml.safe_dump(data, sort_keys=False),
    )
    return path


def _replace(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: workers of a shared study on one machine may
    write the same results at the same moment."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)
