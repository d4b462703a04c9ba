"""The bundle a run assembles: staging directory, manifest template, files on disk."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from daemon import __version__
from daemon.model.bundle import (
    MODEL_NAME,
    SCHEMA_VERSION,
    TOKENIZER_NAME,
    Calibration,
    DatasetInfo,
    Manifest,
    OutOfScope,
    hash_bundle_files,
    write_manifest,
)
from daemon.model.text import TEXT_RECIPE
from training.config import TrainConfig
from training.model import LoadedBase
from training.stages.prepare import Prepared

#: The checkout (or installed tree) this package lives in.
_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(_ROOT), *args], capture_output=True, text=True, check=True, timeout=5
    ).stdout.strip()


def code_version() -> str:
    """Package version plus the git commit (and ``-dirty``) when run from a checkout."""
    try:
        sha = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"


def hardware() -> str:
    return f"{platform.machine()} CPU, {os.cpu_count()} threads"


def write_bundle(
    directory: Path, model_file: Path, tokenizer_json: str, manifest: Manifest
) -> Manifest:
    """A loadable bundle in ``directory``: the graph, the tokenizer and ``manifest`` with
    the files' sha256 sums (returned), so the daemon's own loader can serve it."""
    directory.mkdir(parents=True, exist_ok=True)
    if model_file != directory / MODEL_NAME:
        shutil.copyfile(model_file, directory / MODEL_NAME)
    (directory / TOKENIZER_NAME).write_text(tokenizer_json, encoding="utf-8")
    manifest = manifest.model_copy(update={"files": hash_bundle_files(directory)})
    write_manifest(directory, manifest)
    return manifest


@dataclass(frozen=True)
class Staging:
    """Where the bundle is assembled before it is renamed to its version: a run that
    fails leaves nothing under ``models/`` but this directory, which it removes."""

    directory: Path
    stamp: str  # creation time: the version's first part
    manifest: Manifest  # labels, recipe, inputs; calibration and metrics are placeholders


def open_staging(
    config: TrainConfig, prepared: Prepared, base: LoadedBase, out_root: Path
) -> Staging:
    """A fresh staging directory under ``out_root`` and the manifest template."""
    data = prepared.data
    created = datetime.now(UTC).replace(microsecond=0)
    stamp = created.strftime("%Y%m%d-%H%M%S")
    directory = out_root / f".staging-{stamp}-{os.getpid()}"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        out_of_scope=OutOfScope(threshold=1.0)
        if prepared.sets.num_outputs > len(data.label_names)
        else None,
        version="staging",
        created_at=created,
        code_version=code_version(),
        labels=data.label_names,
        max_length=config.model.max_length,
        text_recipe=TEXT_RECIPE,
        inputs=["input_ids", "attention_mask"],
        pad_token_id=base.pad_token_id,
        calibration=Calibration(temperature=1.0, abstain_threshold=0.0),
        base_model=base.name,
        dataset=DatasetInfo(name="banking77", source=data.source, files=data.sha256),
        training_config=config.model_dump(mode="json"),
        metrics={},
        files={MODEL_NAME: "", TOKENIZER_NAME: ""},
    )
    return Staging(directory, stamp, manifest)
