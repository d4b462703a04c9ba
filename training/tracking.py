"""Experiment tracking for training runs (``tracking: none | tensorboard | wandb | mlflow``).

Every run logs its config, the data files' sha256, the metrics of each epoch, the final
metrics and report figures, and the bundle version. TensorBoard writes event files under
``tracking_dir``; wandb honours ``WANDB_MODE=offline`` (sync later with ``wandb sync``);
mlflow uses a local store under ``tracking_dir`` (an SQLite file and an artifacts
directory) unless ``MLFLOW_TRACKING_URI`` says otherwise. wandb and mlflow are optional
extras: a missing one is a clear error at start.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from daemon.errors import DependencyError


class Tracker(Protocol):
    def epoch(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def finish(
        self, summary: Mapping[str, float], figures: list[Path], version: str | None
    ) -> None: ...


def _require(module: str, backend: str, extra: str) -> Any:
    """Import a backend's module, or say which install extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyError(
            f"tracking: {backend} needs its package: pip install 'cleaninbox[{extra}]'"
        ) from exc


class NoTracker:
    def epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        return

    def finish(
        self, summary: Mapping[str, float], figures: list[Path], version: str | None
    ) -> None:
        return


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return out


class TensorBoardTracker:
    def __init__(self, directory: Path, name: str, config: dict[str, Any], data: dict[str, str]):
        writer_class = _require("torch.utils.tensorboard", "tensorboard", "train").SummaryWriter
        self.path = directory / name
        self.writer = writer_class(log_dir=str(self.path))
        self.writer.add_text("config", f"```\n{json.dumps(config, indent=1)}\n```")
        self.writer.add_text("data_sha256", json.dumps(data, indent=1))

    def epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"epoch/{key}", value, step)

    def finish(
        self, summary: Mapping[str, float], figures: list[Path], version: str | None
    ) -> None:
        import numpy as np
        from matplotlib.image import imread

        for key, value in summary.items():
            self.writer.add_scalar(f"final/{key}", value, 0)
        for figure in figures:
            image = np.asarray(imread(figure))
            self.writer.add_image(f"report/{figure.stem}", image[..., :3], dataformats="HWC")
        self.writer.add_text("bundle_version", version or "(not written)")
        self.writer.close()


class WandbTracker:
    def __init__(self, directory: Path, name: str, config: dict[str, Any], data: dict[str, str]):
        self.wandb = wandb = _require("wandb", "wandb", "wandb")
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "cleaninbox"),
            name=name,
            dir=str(directory),
            config={**config, "data_sha256": data},
            reinit="finish_previous",
        )

    def epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log({f"epoch/{k}": v for k, v in metrics.items()}, step=step)

    def finish(
        self, summary: Mapping[str, float], figures: list[Path], version: str | None
    ) -> None:
        for key, value in summary.items():
            self.run.summary[key] = value
        self.run.summary["bundle_version"] = version or ""
        if figures:
            self.run.log({f"report/{f.stem}": self.wandb.Image(str(f)) for f in figures})
        self.run.finish()


class MlflowTracker:
    def __init__(self, directory: Path, name: str, config: dict[str, Any], data: dict[str, str]):
        self.mlflow = mlflow = _require("mlflow", "mlflow", "mlflow")
        if "MLFLOW_TRACKING_URI" not in os.environ:
            # A local store: runs in an SQLite file, artifacts beside it (MLflow 3 keeps
            # its plain-file store in maintenance mode).
            directory.mkdir(parents=True, exist_ok=True)
            mlflow.set_tracking_uri(f"sqlite:///{directory.resolve() / 'mlflow.db'}")
            if mlflow.get_experiment_by_name("cleaninbox") is None:
                mlflow.create_experiment(
                    "cleaninbox", artifact_location=(directory.resolve() / "artifacts").as_uri()
                )
        mlflow.set_experiment("cleaninbox")
        mlflow.start_run(run_name=name)
        params = _flatten(config)
        params.update({f"data_sha256.{k}": v for k, v in data.items()})
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        self.mlflow.log_metrics({f"epoch.{k}": v for k, v in metrics.items()}, step=step)

    def finish(
        self, summary: Mapping[str, float], figures: list[Path], version: str | None
    ) -> None:
        self.mlflow.log_metrics(dict(summary))
        for figure in figures:
            self.mlflow.log_artifact(str(figure), artifact_path="report")
        self.mlflow.set_tag("bundle_version", version or "")
        self.mlflow.end_run()


def start(
    backend: str, directory: Path, name: str, config: dict[str, Any], data: dict[str, str]
) -> Tracker:
    """The tracker for ``backend``; ``none`` logs nothing."""
    if backend == "none":
        return NoTracker()
    kinds: dict[str, Any] = {
        "tensorboard": TensorBoardTracker,
        "wandb": WandbTracker,
        "mlflow": MlflowTracker,
    }
    tracker: Tracker = kinds[backend](directory, name, config, data)
    return tracker
