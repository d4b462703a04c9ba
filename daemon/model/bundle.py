"""The model bundle: the contract between training and the daemon (docs/architecture.md).

A bundle is a directory holding ``model.onnx``, ``tokenizer.json``, ``manifest.json``,
``MODEL_CARD.md`` and ``report/``. The manifest lists the sha256 of every other file;
:func:`load_manifest` refuses a bundle whose files or schema do not match, naming the file.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from daemon.errors import BundleError

SCHEMA_VERSION = 2
#: Schema versions this daemon serves: 1 (intents only), 2 (adds ``out_of_scope``).
READABLE_SCHEMAS = (1, 2)
MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"
TOKENIZER_NAME = "tokenizer.json"
#: The graph output holding the pooled, L2-normalised sentence embedding (the head's
#: input), which the correction memory compares messages by. Bundles without it classify
#: as before; the memory is then off.
EMBEDDING_OUTPUT = "embedding"
REQUIRED_FILES = (MODEL_NAME, TOKENIZER_NAME)


class Calibration(BaseModel):
    """How raw logits become confidences, and when the model should abstain."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(gt=0)
    abstain_threshold: float = Field(ge=0, le=1)
    target_accuracy: float | None = None
    validation_coverage: float | None = None
    validation_selective_accuracy: float | None = None


class OutOfScope(BaseModel):
    """How the bundle tells mail that is none of its intents (schema 2).

    The graph's logits have one column more than ``labels``: a "none of these" class
    trained on out-of-scope messages. After the calibrated softmax over every column, a
    message whose "none of these" probability reaches ``threshold`` is left alone as out
    of scope, whatever its best intent's confidence.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["none_of_these"] = "none_of_these"
    threshold: float = Field(gt=0, le=1)
    #: what the thresholds were chosen for, and what they gave on the data they were chosen on
    targets: dict[str, float] = Field(default_factory=dict)
    chosen_on: dict[str, float] = Field(default_factory=dict)


class MemoryCalibration(BaseModel):
    """When the correction memory may decide instead of the model (bundles whose graph has
    the ``embedding`` output; :mod:`daemon.model.memory` applies it).

    A correction records what the model said and what the user chose; a new message is
    decided by the memory when the model says the same about it, its embedding is at least
    ``similarity`` (cosine) from a correction's, or ``repeated_similarity`` from one the
    user made ``support`` times of sure decisions (``remap_similarity`` once those are
    ``remap_share`` of what the model called that intent), and every correction that close
    agrees.
    Both are chosen on the validation split (``chosen_on``): the lowest thresholds at which
    the corrections of the validation errors, each applied to the other validation
    messages, change no more than ``max_flip_rate`` of the right decisions.
    """

    model_config = ConfigDict(extra="forbid")

    output: str = EMBEDDING_OUTPUT
    dimensions: int = Field(gt=0)
    similarity: float = Field(gt=0, le=1)
    #: None (bundles of the first memory exports): the same as ``similarity``.
    repeated_similarity: float | None = Field(default=None, gt=0, le=1)
    support: int = Field(default=2, ge=1)
    #: The remap rule (None: bundles exported before it): ``remap_similarity`` once the
    #: ``support`` corrections are at least ``remap_share`` of the sure decisions the model
    #: made with that intent; chosen on the validation remap simulation.
    remap_similarity: float | None = Field(default=None, gt=0, le=1)
    remap_share: float = Field(default=0.5, gt=0, le=1)
    max_flip_rate: float = Field(ge=0, le=1)
    chosen_on: dict[str, float] = Field(default_factory=dict)


class DatasetInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    source: str
    files: dict[str, str]  # file name -> sha256


class Manifest(BaseModel):
    """``manifest.json``: everything the daemon needs to serve a bundle, and its lineage."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: Literal[1, 2]
    version: str
    created_at: datetime
    code_version: str
    labels: list[str] = Field(min_length=2)
    max_length: int = Field(gt=0)
    text_recipe: str
    inputs: list[str]
    pad_token_id: int = 0
    calibration: Calibration
    base_model: str
    dataset: DatasetInfo
    training_config: dict[str, Any]
    metrics: dict[str, Any]
    files: dict[str, str]  # relative path -> sha256, every file of the bundle but the manifest
    parent_version: str | None = None
    out_of_scope: OutOfScope | None = None
    memory: MemoryCalibration | None = None

    @property
    def num_outputs(self) -> int:
        """Columns of the graph's logits: one per label, plus "none of these" if present."""
        return len(self.labels) + (1 if self.out_of_scope is not None else 0)

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        if self.schema_version < 2 and self.out_of_scope is not None:
            raise ValueError("out_of_scope needs schema_version 2")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        missing = [name for name in REQUIRED_FILES if name not in self.files]
        if missing:
            raise ValueError(f"files must list {', '.join(missing)}")
        if "input_ids" not in self.inputs or "attention_mask" not in self.inputs:
            raise ValueError("inputs must include input_ids and attention_mask")
        return self


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def hash_bundle_files(bundle_dir: Path) -> dict[str, str]:
    """sha256 of every regular file in the bundle except the manifest, by relative path."""
    out: dict[str, str] = {}
    for path in sorted(bundle_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            out[path.relative_to(bundle_dir).as_posix()] = sha256_file(path)
    return out


def write_manifest(bundle_dir: Path, manifest: Manifest) -> Path:
    path = bundle_dir / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_manifest(bundle_dir: Path) -> Manifest:
    """Parse ``manifest.json`` and check its schema, without hashing files."""
    if not bundle_dir.exists():
        raise BundleError(f"model bundle {bundle_dir} does not exist")
    if not bundle_dir.is_dir():
        raise BundleError(f"model bundle {bundle_dir} is not a directory")
    path = bundle_dir / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"model bundle {bundle_dir}: {MANIFEST_NAME} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(
            f"model bundle {bundle_dir}: {MANIFEST_NAME} is unreadable: {exc}"
        ) from exc
    if not isinstance(raw, dict):
        raise BundleError(f"model bundle {bundle_dir}: {MANIFEST_NAME} is not a JSON object")
    found = raw.get("schema_version")
    if found not in READABLE_SCHEMAS:
        readable = " and ".join(str(v) for v in READABLE_SCHEMAS)
        raise BundleError(
            f"model bundle {bundle_dir}: {MANIFEST_NAME} has schema_version {found!r}, "
            f"this CleanInbox reads {readable}"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise BundleError(
            f"model bundle {bundle_dir}: {MANIFEST_NAME} field {where}: {first['msg']}"
        ) from exc


def verify_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Check every file listed in the manifest exists and matches its sha256."""
    for rel, expected in manifest.files.items():
        path = bundle_dir / rel
        if not path.is_file():
            raise BundleError(f"model bundle {bundle_dir}: {rel} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(
                f"model bundle {bundle_dir}: {rel} has sha256 {actual[:12]}…, "
                f"the manifest says {expected[:12]}… (corrupt or modified file)"
            )


def load_manifest(bundle_dir: Path, *, verify: bool = True) -> Manifest:
    """Read and (by default) fully verify a bundle's manifest and files."""
    manifest = read_manifest(bundle_dir)
    if verify:
        verify_files(bundle_dir, manifest)
    return manifest
