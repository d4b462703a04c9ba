"""`cleaninbox run` as a real process: latency, metrics, health, reloads, clean shutdown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.dovecot import PASSWORD, free_port
from tests.mail_fixtures import MailUser, email, mid, wait_for
from tests.scaffold import Daemon, edited_settings, launch_daemon

Running = tuple[Daemon, str, Path]


@pytest.fixture
def daemon(workdir: Path, tiny_bundle: Path) -> Iterator[Running]:
    """`cleaninbox run` with HTTP on a free port and models/current switchable."""
    models = workdir / "models"
    models.mkdir()
    shutil.copytree(tiny_bundle, models / "bundle-a")
    (models / "current").symlink_to("bundle-a")
    port = free_port()
    with edited_settings(workdir) as settings:
        settings["model"] = "models/current"
        settings["http"] = {
            "enabled": True,
            "listen": f"127.0.0.1:{port}",
            "token_env": "CLEANINBOX_TEST_TOKEN",
        }
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    running = launch_daemon(
        workdir, env={"CLEANINBOX_TEST_TOKEN": "t0ken"}, ready=up, what="the HTTP endpoint"
    )
    try:
        yield running, base, workdir
    finally:
        running.stop()


def cycled(base: str) -> bool:
    """Whether the running daemon has finished a cycle successfully."""
    return metric(base, "cleaninbox_last_successful_cycle_timestamp_seconds") > 0


def metric(base: str, name: str, labels: dict[str, str] | None = None) -> float:
    total = 0.0
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if labels and not all(f'{k}="{v}"' in head for k, v in labels.items()):
            continue
        total += float(value)
    return total


def test_run_files_mail_within_an_interval_and_reports_it(
    daemon: Running, mail_user: MailUser
) -> None:
    running, base, workdir = daemon
    state = workdir / "var" / "state.db"
    wait_for(lambda: state.exists() and cycled(base), 15, "the first cycle")
    raws = [email("I lost my card", 40 + i) for i in range(5)]
    latencies = []
    for raw in raws:
        mail_user.append(raw)
        latencies.append(
            wait_for(
                lambda raw=raw: mid(raw) in mail_user.messages("Triage/All"),
                10,
                "the message to be filed",
            )
        )
    # poll_interval is 1 s: a new message is acted on within one interval + 1 s.
    assert max(latencies) <= 2.0, latencies

    assert metric(base, "cleaninbox_messages_processed_total", {"account": "work"}) == 5
    assert metric(base, "cleaninbox_actions_total", {"action": "move"}) == 5
    assert metric(base, "cleaninbox_confidence_count") == 5
    assert metric(base, "cleaninbox_inference_seconds_count") == 5
    assert metric(base, "cleaninbox_connection_up", {"account": "work"}) == 1
    info = [
        line
        for line in httpx.get(f"{base}/metrics").text.splitlines()
        if line.startswith("cleaninbox_model_info")
    ]
    assert info
    assert 'version="' in info[0]

    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200
    assert ready.json()["accounts"]["work"]["last_ok"] is not None

    body = {"texts": ["I lost my card", "how do I top up?"]}
    assert httpx.post(f"{base}/v1/classify", json=body).status_code == 401
    reply = httpx.post(f"{base}/v1/classify", json=body, headers={"Authorization": "Bearer t0ken"})
    assert reply.status_code == 200
    predictions = reply.json()["predictions"]
    keys = {"intent", "confidence", "abstain", "abstain_reason", "out_of_scope", "top_k"}
    assert [set(p) for p in predictions] == [keys] * 2
    bad = httpx.post(
        f"{base}/v1/classify", json={"emails": ["%%%"]}, headers={"Authorization": "Bearer t0ken"}
    )
    assert bad.status_code == 422

    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(timeout=20) == 0
    events = [line["event"] for line in running.events()]
    assert events.count("decision") == 5
    assert "stopped" in events
    assert PASSWORD not in running.log()


def test_reloads_rules_on_sighup_and_a_new_model_without_restart(
    daemon: Running, mail_user: MailUser
) -> None:
    running, base, workdir = daemon
    process = running.process
    wait_for(
        lambda: httpx.get(f"{base}/readyz").status_code == 200 or cycled(base),
        15,
        "the first cycle",
    )
    rules = yaml.safe_load((workdir / "rules.yaml").read_text())
    rules["rules"][-1]["actions"] = [{"move": "Triage/Other"}]
    (workdir / "rules.yaml").write_text(yaml.safe_dump(rules))
    process.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    raw = email("card not working", 50)
    mail_user.append(raw)
    wait_for(lambda: mid(raw) in mail_user.messages("Triage/Other"), 10, "the new rules")

    # A broken bundle behind models/current is refused; the running model stays.
    models = workdir / "models"
    shutil.copytree(models / "bundle-a", models / "bundle-b")
    manifest = json.loads((models / "bundle-b" / "manifest.json").read_text())
    manifest["version"] = "bundle-b-version"
    (models / "bundle-b" / "manifest.json").write_text(json.dumps(manifest))
    shutil.copytree(models / "bundle-b", models / "bundle-broken")
    (models / "bundle-broken" / "model.onnx").write_bytes(b"broken")
    (models / "next").symlink_to("bundle-broken")
    os.replace(models / "next", models / "current")
    time.sleep(2.5)
    assert process.poll() is None
    assert httpx.get(f"{base}/readyz").json()["model"] != "bundle-b-version"
    assert metric(base, "cleaninbox_cycle_errors_total", {"kind": "reload"}) >= 1

    (models / "next").symlink_to("bundle-b")
    os.replace(models / "next", models / "current")
    wait_for(
        lambda: httpx.get(f"{base}/readyz").json()["model"] == "bundle-b-version",
        15,
        "the new model",
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
