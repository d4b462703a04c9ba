"""HTTP: ``/metrics``, ``/healthz``, ``/readyz`` and ``POST /v1/classify`` (FastAPI).

Bound to 127.0.0.1 by default. When a token is configured, ``/v1/classify`` requires
``Authorization: Bearer <token>``; listening beyond loopback without a token is refused.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app
from pydantic import BaseModel, ConfigDict, Field

from daemon.config.settings import Settings, is_loopback
from daemon.core.runtime import Runtime
from daemon.metrics import Metrics
from daemon.model.classifier import Classifier
from daemon.model.text import email_to_text
from daemon.service.health import Health

MAX_ITEMS = 256
log = structlog.get_logger(__name__)


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(default_factory=list, max_length=MAX_ITEMS)
    emails: list[str] = Field(
        default_factory=list,
        max_length=MAX_ITEMS,
        description="Raw RFC 5322 messages, base64-encoded.",
    )
    top_k: int = Field(default=5, ge=1, le=77)


def _asgi_endpoint(asgi_app: Any) -> Any:
    """Wrap an ASGI app as a Starlette endpoint (a route, not a Mount: no /metrics/ redirect)."""

    class Endpoint:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await asgi_app(scope, receive, send)

    return Endpoint()


def create_app(
    settings: Settings,
    runtime: Runtime,
    metrics: Metrics,
    health: Health,
    token: str | None = None,
) -> FastAPI:
    exposed_without_token = not is_loopback(settings.http.host) and token is None
    if exposed_without_token:
        log.warning(
            "classify_disabled",
            listen=settings.http.listen,
            reason="not a loopback address and no http.token_env/token_file: POST /v1/classify "
            "answers 403; /metrics, /healthz and /readyz are served",
        )
    app = FastAPI(title="CleanInbox", version="1", docs_url=None, redoc_url=None)
    # The Prometheus ASGI app, mounted so that /metrics answers without a redirect.
    metrics_app = make_asgi_app(registry=metrics.registry)
    app.add_route("/metrics", _asgi_endpoint(metrics_app), methods=["GET"])

    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if exposed_without_token:
            raise HTTPException(
                status_code=403,
                detail="POST /v1/classify needs http.token_env or http.token_file when "
                "http.listen is not a loopback address",
            )
        if token is None:
            return
        expected = f"Bearer {token}"
        if authorization is None or not hmac.compare_digest(authorization, expected):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        loaded = runtime.current
        problems = health.problems()
        body: dict[str, Any] = {
            "status": "ok" if not problems else "unavailable",
            "model": loaded.classifier.version,
            "accounts": {
                name: {"last_ok": health.last_ok.get(name), "error": health.last_error.get(name)}
                for name in health.intervals
            },
            "problems": problems,
        }
        return JSONResponse(body, status_code=200 if not problems else 503)

    @app.post("/v1/classify", dependencies=[Depends(require_token)])
    def classify(request: ClassifyRequest) -> dict[str, Any]:
        return answer(runtime.current.classifier, request)

    return app


def _inputs(request: ClassifyRequest) -> tuple[list[str], dict[int, str]]:
    """The model inputs of a request (texts, then emails) and why any email was skipped."""
    if not request.texts and not request.emails:
        raise HTTPException(status_code=422, detail="give texts or emails")
    inputs: list[str] = list(request.texts)
    skipped: dict[int, str] = {}
    for index, encoded in enumerate(request.emails, start=len(request.texts)):
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPException(
                status_code=422,
                detail=f"emails[{index - len(request.texts)}] is not valid base64",
            ) from None
        extracted = email_to_text(raw)
        if extracted.skipped:
            skipped[index] = extracted.skip_reason or "skipped"
        inputs.append(extracted.text)
    return inputs, skipped


def answer(classifier: Classifier, request: ClassifyRequest) -> dict[str, Any]:
    """``POST /v1/classify``: one prediction (or skip reason) per input, in order."""
    inputs, skipped = _inputs(request)
    keep = [i for i in range(len(inputs)) if i not in skipped]
    predictions = classifier.predict([inputs[i] for i in keep])
    by_index = dict(zip(keep, predictions, strict=True))
    results: list[dict[str, Any]] = []
    for i in range(len(inputs)):
        if i in skipped:
            results.append({"skipped": skipped[i]})
            continue
        out = by_index[i].to_json()
        out["top_k"] = out["top_k"][: request.top_k]
        results.append(out)
    return {"model": classifier.version, "predictions": results}


def serve_in_thread(
    app: FastAPI, settings: Settings, on_error: Callable[[BaseException], None]
) -> Any:
    """Start uvicorn in a daemon thread; return the server (call ``should_exit = True``)."""
    import threading

    import uvicorn

    config = uvicorn.Config(
        app,
        host=settings.http.host,
        port=settings.http.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # surfaced by the service
            on_error(exc)

    thread = threading.Thread(target=run, name="cleaninbox-http", daemon=True)
    thread.start()
    return server
