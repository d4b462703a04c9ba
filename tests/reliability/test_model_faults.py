"""Classifier faults (issue 4, test 9): a model that raises, one that hangs, a corrupt one.
Each is bounded; the messages stay in place with a recorded reason (tagged like an
abstention, never moved) and the cycle goes on."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from daemon.config.settings import load_settings
from daemon.model.bundle import hash_bundle_files
from daemon.model.classifier import Classifier
from daemon.service.supervisor import Service
from tests.mail_fixtures import ENV, MailUser, cli
from tests.reliability.invariant import check, seed_messages


def raising_bundle(source: Path, target: Path) -> Path:
    """A valid, verified bundle whose graph rejects the daemon's inputs at run time."""
    shutil.copytree(source, target)
    model = onnx.load(str(target / "model.onnx"))
    graph = model.graph
    for node in graph.node:  # consumers read a cast copy; the graph input becomes int32
        node.input[:] = ["input_ids_i64" if n == "input_ids" else n for n in node.input]
    graph.input[0].type.tensor_type.elem_type = TensorProto.INT32
    graph.node.insert(
        0, helper.make_node("Cast", ["input_ids"], ["input_ids_i64"], to=TensorProto.INT64)
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(target / "model.onnx"))
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["files"] = hash_bundle_files(target)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def use_model(workdir: Path, bundle: Path) -> None:
    settings = yaml.safe_load((workdir / "cleaninbox.yaml").read_text())
    settings["model"] = str(bundle)
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))


def test_a_model_that_raises_leaves_mail_in_place(
    workdir: Path, mail_user: MailUser, tiny_bundle: Path, tmp_path: Path
) -> None:
    use_model(workdir, raising_bundle(tiny_bundle, tmp_path / "raising"))
    cli(workdir, "once")
    seeds = seed_messages(mail_user, 5, "model-raises")
    out = cli(workdir, "once")  # the cycle completes
    assert "ok" in out.stdout
    check(mail_user, workdir, seeds, destinations=set())
    rows = [json.loads(x) for x in cli(workdir, "history", "--json").stdout.splitlines()]
    assert all(r["reason"].startswith("not classified: model") for r in rows), rows
    assert all(
        "$triage_review" in m["flags"]  # type: ignore[operator]
        for m in mail_user.messages("INBOX").values()
    )


def test_a_model_that_hangs_is_bounded(
    workdir: Path, mail_user: MailUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No real ONNX graph hangs on demand, so the hang is simulated at the Python level
    # (the classifier call never returns in time); everything else is real.
    cli(workdir, "once")
    seeds = seed_messages(mail_user, 3, "model-hangs")
    settings = yaml.safe_load((workdir / "cleaninbox.yaml").read_text())
    settings["classifier"]["timeout_seconds"] = 0.5
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(Classifier, "outputs", lambda self, texts: time.sleep(3) or None)
    service = Service(load_settings(workdir / "cleaninbox.yaml"))
    try:
        started = time.monotonic()
        reports = service.once()
        assert time.monotonic() - started < 2.5  # bounded by the timeout, not the hang
    finally:
        service.close()
    assert reports["work"].error is None
    check(mail_user, workdir, seeds, destinations=set(), rerun=False)
    errors = service.metrics.registry.get_sample_value(
        "cleaninbox_cycle_errors_total", {"account": "work", "kind": "model"}
    )
    assert errors == 1


def test_a_corrupt_model_is_refused_at_start(
    workdir: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_bundle, corrupt)
    (corrupt / "model.onnx").write_bytes(b"\x00" * 100)
    use_model(workdir, corrupt)
    result = cli(workdir, "once", check=False)
    assert result.returncode == 2
    assert "model.onnx has sha256" in result.stderr
