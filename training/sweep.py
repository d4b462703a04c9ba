"""``cleaninbox sweep``: hyperparameter search with Optuna over a training config.

Each trial sets the sampled values on the base training config and fine-tunes (no export):
its score is the best validation accuracy; the test split is never looked at. A trial
whose validation accuracy after an epoch falls below the median of earlier trials at that
epoch is pruned. The study lives in an SQLite file, so a sweep that was stopped resumes
where it stopped (it runs until ``trials`` trials are finished in total). Every run
rewrites ``<output>/results.csv`` and ``results.md`` (all trials) and ``best.yaml`` (the
base config with the best values: ``cleaninbox train --config <output>/best.yaml``).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from functools import reduce
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from daemon.config.yaml_settings import YamlSettings
from daemon.errors import ConfigError, DependencyError
from training.config import TrainConfig, load_train_config

Log = Callable[[str], None]


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
    study: str = Field(default="cleaninbox", description="Optuna study name.")
    storage: Path = Field(
        default=Path("runs/sweep.db"), description="SQLite file: resumable study."
    )
    output: Path = Field(default=Path("runs/sweep"), description="results.csv/.md, best.yaml.")
    trials: int = Field(default=20, ge=1, description="Finished trials wanted in total.")
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


def sweep(config: SweepConfig, *, data_dir: Path | None = None, log: Log = print) -> Path:
    """Run (or resume) the study; returns the path of ``best.yaml``."""
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
    config.storage.parent.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=config.study,
        storage=f"sqlite:///{config.storage.resolve()}",
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=config.seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=config.prune_after_trials, n_warmup_steps=config.prune_after_epochs
        ),
    )

    def objective(trial: Any) -> float:
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

    if config.include_base and not study.trials:
        values = _base_values(config, base_config, log)
        if values is not None:
            study.enqueue_trial(values, user_attrs={"base": True})
            log(f"sweep {config.study}: trial 0 is the base config")
    finished = sum(1 for t in study.trials if t.state.is_finished())
    remaining = max(0, config.trials - finished)
    log(f"sweep {config.study}: {finished} trial(s) already finished, running {remaining}")
    if remaining:
        timeout = config.timeout_minutes * 60 if config.timeout_minutes else None
        study.optimize(objective, n_trials=remaining, timeout=timeout)
    return _write_results(study, config, base_config)


def _write_results(study: Any, config: SweepConfig, base_config: TrainConfig) -> Path:
    import optuna

    config.output.mkdir(parents=True, exist_ok=True)
    keys = list(config.space)
    rows = []
    for t in study.trials:
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        state = t.state.name.lower() + (" (base)" if t.user_attrs.get("base") else "")
        rows.append([t.number, state, t.value, *(t.params.get(k) for k in keys), seconds])
    with (config.output / "results.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "state", "val_accuracy", *keys, "seconds"])
        writer.writerows(rows)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise ConfigError(f"sweep {config.study}: no trial finished (all pruned or failed)")
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
    (config.output / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tuned = load_train_config(config.base, [_override(k, v) for k, v in best.params.items()])
    data = tuned.model_dump(mode="json")
    data["data"]["dir"] = str(base_config.data.dir)
    path = config.output / "best.yaml"
    path.write_text(
        f"# Best of sweep {config.study} (validation accuracy {best.value:.4f}, trial "
        f"{best.number}); train it with: cleaninbox train --config {path}\n"
        + yaml.safe_dump(data, sort_keys=False),
        encoding="utf-8",
    )
    return path
