"""The local model registry: bundles under ``models/``, and ``models/current``.

``models/current`` is a relative symlink to the bundle in service, switched atomically
(a new link renamed over the old one) and only by an explicit promote or rollback.
Each switch is appended to ``models/promotions.jsonl`` so rollback knows what came before.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from daemon.errors import BundleError, ConfigError
from daemon.model.bundle import MANIFEST_NAME, Manifest, load_manifest, read_manifest

CURRENT = "current"
PROMOTIONS = "promotions.jsonl"


@dataclass(frozen=True)
class BundleEntry:
    path: Path
    manifest: Manifest | None
    error: str | None
    current: bool

    @property
    def version(self) -> str:
        return self.manifest.version if self.manifest else self.path.name


def current_version(models_dir: Path) -> str | None:
    link = models_dir / CURRENT
    if not link.exists():
        return None
    return link.resolve().name


def list_bundles(models_dir: Path) -> list[BundleEntry]:
    """Every bundle directory, oldest first; unreadable ones carry their error."""
    if not models_dir.is_dir():
        return []
    current = current_version(models_dir)
    entries = []
    for path in sorted(models_dir.iterdir()):
        if not path.is_dir() or path.is_symlink() or path.name.startswith("."):
            continue
        if not (path / MANIFEST_NAME).exists():
            continue
        try:
            manifest: Manifest | None = read_manifest(path)
            error = None
        except BundleError as exc:
            manifest, error = None, str(exc)
        entries.append(BundleEntry(path, manifest, error, path.name == current))
    return entries


def resolve_bundle(models_dir: Path, version: str) -> Path:
    candidate = Path(version)
    path = (
        candidate
        if candidate.is_dir() and candidate.parent.resolve() == models_dir.resolve()
        else models_dir / version
    )
    if not path.is_dir() or path.name in (CURRENT,) or path.name.startswith("."):
        known = ", ".join(e.path.name for e in list_bundles(models_dir)) or "none"
        raise ConfigError(f"no bundle {version!r} in {models_dir} (bundles: {known})")
    return path


def _switch(models_dir: Path, target: Path) -> None:
    link = models_dir / CURRENT
    if link.exists() and not link.is_symlink():
        raise ConfigError(f"{link} exists and is not a symlink; move it away first")
    tmp = models_dir / f".{CURRENT}.{os.getpid()}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target.name, target_is_directory=True)
    os.replace(tmp, link)
    dir_fd = os.open(models_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def promote(models_dir: Path, version: str, reason: str = "promote") -> Manifest:
    """Verify a bundle fully, then point ``models/current`` at it."""
    path = resolve_bundle(models_dir, version)
    manifest = load_manifest(path, verify=True)
    previous = current_version(models_dir)
    _switch(models_dir, path)
    record = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "version": path.name,
        "previous": previous,
        "reason": reason,
    }
    with (models_dir / PROMOTIONS).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    return manifest


def rollback(models_dir: Path) -> Manifest:
    """Switch ``models/current`` back to the bundle it pointed at before the last switch.

    A :class:`ConfigError` (one line from the command line) when there is nothing to go
    back to: no ``current``, no log (a fresh checkout has none: the log is this machine's
    and git-ignored), no recorded predecessor; or when the log cannot be read."""
    current = current_version(models_dir)
    if current is None:
        raise ConfigError(
            f"nothing to roll back: {models_dir / CURRENT} does not exist (no model promoted)"
        )
    records = _promotions(models_dir / PROMOTIONS)
    if not records:
        raise ConfigError(f"nothing to roll back: no promotion recorded in {models_dir}")
    for record in reversed(records):
        if record.get("version") == current and record.get("previous"):
            return promote(models_dir, str(record["previous"]), reason=f"rollback from {current}")
    raise ConfigError(f"nothing to roll back: {current} has no recorded predecessor")


def _promotions(log: Path) -> list[dict[str, object]]:
    """The promotion log's records, oldest first (none when there is no log)."""
    if not log.is_file():
        return []
    records = []
    for number, line in enumerate(log.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{log}: line {number} is not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{log}: line {number} is not a JSON object")
        records.append(record)
    return records


def publish(source: Path, target: Path) -> Manifest:
    """Copy the one bundle in ``source`` (a training output directory) to ``target``,
    verifying every file's sha256 before and after, so a published bundle is exactly the
    one that was trained (the pipeline's export stage). ``target`` is replaced."""
    import shutil

    if not source.is_dir():
        raise ConfigError(f"{source}: not a directory (give the training output directory)")
    bundles = [p for p in sorted(source.iterdir()) if (p / MANIFEST_NAME).is_file()]
    if len(bundles) != 1:
        raise ConfigError(f"{source}: expected exactly one bundle, found {len(bundles)}")
    manifest = load_manifest(bundles[0], verify=True)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(bundles[0], target, ignore=shutil.ignore_patterns(".*"))
    load_manifest(target, verify=True)
    return manifest
