"""The bundle contract: the daemon refuses a bundle whose files or schema do not match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.errors import BundleError
from daemon.model.bundle import hash_bundle_files, load_manifest, read_manifest
from daemon.model.classifier import Classifier


def test_tiny_bundle_has_the_contracted_files(tiny_bundle: Path) -> None:
    for name in ("model.onnx", "tokenizer.json", "manifest.json", "MODEL_CARD.md"):
        assert (tiny_bundle / name).is_file(), name
    for name in (
        "confusion_matrix.png",
        "reliability.png",
        "coverage_accuracy.png",
        "top5_samples.png",
        "per_class.csv",
        "metrics.json",
    ):
        assert (tiny_bundle / "report" / name).stat().st_size > 0, name
    manifest = load_manifest(tiny_bundle)
    assert manifest.files == hash_bundle_files(tiny_bundle)
    assert len(manifest.labels) == 77
    assert manifest.calibration.temperature > 0
    assert 0 <= manifest.calibration.abstain_threshold <= 1
    assert set(manifest.dataset.files) == {"train.csv", "test.csv", "categories.json"}
    assert manifest.training_config["model"]["init"] == "random"
    assert manifest.version.startswith(manifest.created_at.strftime("%Y%m%d-%H%M%S"))
    for key in ("test_accuracy", "test_macro_f1", "int8_vs_fp32_agreement", "email_test_accuracy"):
        assert key in manifest.metrics, key
    assert len(manifest.metrics["per_class_f1"]) == 77


def test_modified_model_file_is_refused_naming_the_file(bundle_copy: Path) -> None:
    with (bundle_copy / "model.onnx").open("r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match=r"model\.onnx has sha256 .*corrupt or modified"):
        Classifier(bundle_copy)


def test_missing_tokenizer_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"tokenizer\.json is missing"):
        load_manifest(bundle_copy)


def test_unknown_schema_version_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="schema_version 99, this CleanInbox reads 1 and 2"):
        read_manifest(bundle_copy)


def test_manifest_field_errors_name_the_field(bundle_copy: Path) -> None:
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["calibration"]["temperature"] = -1
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"field calibration\.temperature"):
        read_manifest(bundle_copy)


def test_truncated_manifest_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "manifest.json"
    path.write_text(path.read_text()[:100])
    with pytest.raises(BundleError, match=r"manifest\.json is unreadable"):
        read_manifest(bundle_copy)


def test_missing_bundle_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        read_manifest(tmp_path / "nope")
