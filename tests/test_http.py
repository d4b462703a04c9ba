"""The HTTP surface, in-process with an injected registry (prometheus client_python style)."""

from __future__ import annotations

import base64
import random
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from daemon.config.settings import Settings
from daemon.core.runtime import Runtime
from daemon.metrics import Metrics
from daemon.model.samples import render_email
from daemon.service.health import Health
from daemon.service.http import create_app


@pytest.fixture
def settings(tmp_path: Path, tiny_bundle: Path) -> Settings:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"rules": [{"match": "*", "actions": ["flag"]}]}))
    return Settings(model=tiny_bundle, rules=rules, state=tmp_path / "s.db")


def client(
    settings: Settings, token: str | None = None, health: Health | None = None
) -> tuple[TestClient, Metrics]:
    metrics = Metrics(CollectorRegistry())
    app = create_app(settings, Runtime(settings, metrics), metrics, health or Health(), token)
    return TestClient(app), metrics


def test_metrics_health_and_model_info(settings: Settings) -> None:
    http, metrics = client(settings)
    metrics.messages.labels("a", "card_arrival", "move").inc(3)
    body = http.get("/metrics").text
    assert (
        'cleaninbox_messages_processed_total{account="a",action="move",intent="card_arrival"} 3.0'
        in body
    )
    assert "cleaninbox_model_info{" in body
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").status_code == 200


def test_readyz_reports_stale_accounts(settings: Settings) -> None:
    health = Health(intervals={"work": 10.0}, started=0.0)
    http, _ = client(settings, health=health)
    reply = http.get("/readyz")
    assert reply.status_code == 503
    assert "work: no successful cycle in 30 s" in reply.json()["problems"][0]
    health.ok("work")
    assert http.get("/readyz").status_code == 200


def test_classify_texts_and_emails(settings: Settings) -> None:
    http, _ = client(settings)
    raw = render_email("my card is lost", random.Random(1))
    reply = http.post(
        "/v1/classify",
        json={
            "texts": ["top up failed"],
            "emails": [base64.b64encode(raw).decode(), base64.b64encode(b"").decode()],
            "top_k": 3,
        },
    )
    assert reply.status_code == 200
    predictions = reply.json()["predictions"]
    assert len(predictions[0]["top_k"]) == 3 and len(predictions[1]["top_k"]) == 3
    assert predictions[2] == {"skipped": "no text body and no subject"}
    assert http.post("/v1/classify", json={}).status_code == 422
    assert http.post("/v1/classify", json={"texts": ["x"] * 300}).status_code == 422


def test_token_is_required_when_configured(settings: Settings) -> None:
    http, _ = client(settings, token="abc")
    assert http.post("/v1/classify", json={"texts": ["x"]}).status_code == 401
    assert (
        http.post(
            "/v1/classify", json={"texts": ["x"]}, headers={"Authorization": "Bearer nope"}
        ).status_code
        == 401
    )
    assert (
        http.post(
            "/v1/classify", json={"texts": ["x"]}, headers={"Authorization": "Bearer abc"}
        ).status_code
        == 200
    )


def test_exposed_without_token_disables_classify(settings: Settings) -> None:
    exposed = settings.model_copy(
        update={"http": settings.http.model_copy(update={"listen": "0.0.0.0:9464"})}
    )
    http, _ = client(exposed)
    assert http.post("/v1/classify", json={"texts": ["x"]}).status_code == 403
    assert http.get("/metrics").status_code == 200
