"""mkdocs hook: the configuration reference is generated from the settings models at
build time (pydantic field types, defaults and descriptions), so it cannot drift."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MARKER = "<!-- settings-reference -->"


def _type(annotation: Any) -> str:
    generic = getattr(annotation, "__args__", None)
    text = str(annotation) if generic else getattr(annotation, "__name__", str(annotation))
    for noise in (
        "typing.",
        "pathlib.",
        "pydantic.types.",
        "daemon.config.settings.",
        "training.config.",
    ):
        text = text.replace(noise, "")
    return text.replace("|", "or")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "see below"
    return f"`{value!r}`"


def table(model: type[BaseModel], prefix: str) -> str:
    rows = [
        f"### `{prefix}`" if prefix else "### top level",
        "",
        (model.__doc__ or "").strip().replace("\n", " "),
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, field in model.model_fields.items():
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(
            f"| `{name}` | {_type(field.annotation)} | "
            f"{_default(field).replace('|', '/')} | {description} |"
        )
    return "\n".join(rows) + "\n"


def reference() -> str:
    from daemon.config.settings import (
        Account,
        ClassifierSettings,
        HttpSettings,
        OAuth2Settings,
        RetrainSchedule,
        Settings,
    )
    from training.config import (
        CalibrationConfig,
        DataConfig,
        ExportConfig,
        ModelConfig,
        ReportConfig,
        RetrainConfig,
        TrainConfig,
        TrainerConfig,
    )
    from training.sweep import Range, SweepConfig

    daemon = [
        (Settings, ""),
        (HttpSettings, "http"),
        (ClassifierSettings, "classifier"),
        (Account, "accounts[]"),
        (OAuth2Settings, "accounts[].oauth2"),
        (RetrainSchedule, "retrain"),
    ]
    training = [
        (TrainConfig, ""),
        (DataConfig, "data"),
        (ModelConfig, "model"),
        (TrainerConfig, "train"),
        (CalibrationConfig, "calibration"),
        (ExportConfig, "export"),
        (ReportConfig, "report"),
        (RetrainConfig, "retrain"),
    ]
    out = ["## Daemon settings (`cleaninbox.yaml`, `CLEANINBOX_*`)", ""]
    out += [table(model, prefix) for model, prefix in daemon]
    out += ["## Training config (`configs/train.yaml`, `CLEANINBOX_TRAIN_*`)", ""]
    out += [table(model, prefix) for model, prefix in training]
    out += ["## Sweep config (`configs/sweep.yaml`, `CLEANINBOX_SWEEP_*`)", ""]
    out += [table(SweepConfig, ""), table(Range, "space.<training key>")]
    return "\n".join(out)


def on_page_markdown(markdown: str, **_: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, reference())
    return markdown
