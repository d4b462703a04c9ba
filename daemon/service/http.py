"""HTTP: ``/metrics``, ``/healthz``, ``/readyz`` and ``POST /v1/classify`` (FastAPI).

Bound to 127.0.0.1 by default. When a token is configured, ``/v1/classify`` requires
``Authorization: Bearer <token>``; listening beyond loopback without a token is refused.

The API runs in the daemon's process and on its classifier, so what one client can cost
is bounded (docs/operations.md, "HTTP API limits"): the body size (413 before it is read),
the time to send headers and body (connection closed, 408), the classify requests served
at once (429, never queued) and the characters of each text the model is given.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import math
import threading
from collections.abc import Callable
from typing import Annotated, Any

import anyio
import structlog
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import Counter, make_asgi_app
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.config.settings import Settings, is_loopback
from daemon.core.runtime import Runtime
from daemon.metrics import Metrics
from daemon.model.classifier import Classifier, Prediction
from daemon.model.text import MAX_TEXT_CHARS, email_to_text
from daemon.service.health import Health

MAX_ITEMS = 256
#: Seconds a client told 429 is asked to wait.
RETRY_AFTER_SECONDS = 1
#: Texts per model call for the API (at most; ``classifier.batch_size`` if smaller): short
#: turns on the shared classifier, and small inference buffers. On CPU, batches past a few
#: texts gain little throughput.
API_BATCH = 8
#: The ``cleaninbox_http_rejected_total`` reason of each refusal status.
REJECTED = {
    400: "bad_request",
    408: "timeout",
    413: "too_large",
    415: "bad_request",
    422: "bad_request",
    429: "busy",
}
log = structlog.get_logger(__name__)


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(
        default_factory=list,
        max_length=MAX_ITEMS,
        description=f"Texts; each is cut to its first {MAX_TEXT_CHARS} characters (the "
        "prediction then says truncated: true).",
    )
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


class RequestGuard:
    """Pure ASGI middleware: bounds the request body in size and time, counts refusals.

    FastAPI reads a whole body into memory before validating it, and neither it nor
    uvicorn bounds that read by default, so the bound sits under the app: a declared
    Content-Length over the limit is answered 413 without reading a byte (a client that
    sent ``Expect: 100-continue`` is never asked for the body); a chunked body is counted
    as it streams and refused once past the limit. A body not complete within the
    receive timeout of its headers is answered 408. Both answers close the connection, so
    uvicorn stops reading what the client still sends. The refusals are raised as
    HTTPException from ``receive``: FastAPI re-raises those from its body read, and its
    exception handler renders them like every other error.
    """

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, receive_timeout: float, rejected: Counter
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.receive_timeout = receive_timeout
        self.rejected = rejected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counted = self._counting(send)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            error = self._too_large()
            response = JSONResponse({"detail": error.detail}, error.status_code, error.headers)
            await response(scope, receive, counted)
            return
        await self.app(scope, self._bounded(receive), counted)

    def _too_large(self) -> HTTPException:
        return HTTPException(
            status_code=413,
            detail=f"request body over {self.max_body_bytes} bytes (http.max_body_bytes)",
            headers={"Connection": "close"},
        )

    def _counting(self, send: Send) -> Send:
        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in REJECTED:
                self.rejected.labels(REJECTED[message["status"]]).inc()
            await send(message)

        return counting

    def _bounded(self, receive: Receive) -> Receive:
        deadline = anyio.current_time() + self.receive_timeout
        received = 0
        complete = False

        async def bounded() -> Message:
            nonlocal received, complete
            if complete:  # after the body: e.g. waiting for a disconnect, unbounded
                return await receive()
            message: Message | None = None
            with anyio.move_on_after(deadline - anyio.current_time()):
                message = await receive()
            if message is None:
                raise HTTPException(
                    status_code=408,
                    detail=f"request body not received within {self.receive_timeout:g} s "
                    "(http.receive_timeout_seconds)",
                    headers={"Connection": "close"},
                )
            if message["type"] != "http.request":
                complete = True
                return message
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise self._too_large()
            complete = not message.get("more_body", False)
            return message

        return bounded


def _finite(value: Any) -> Any:
    """``value`` with NaN and the infinities spelled as strings: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, safe for inputs Python's JSON parser accepts but cannot write back.

    ``json.loads`` reads ``NaN`` and ``-Infinity``; the default handler echoes the input in
    its answer and fails to encode it, a 500 that also cost the client its connection.
    """
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse(status_code=422, content={"detail": _finite(jsonable_encoder(errors))})


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


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
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.http.max_body_bytes,
        receive_timeout=settings.http.receive_timeout_seconds,
        rejected=metrics.http_rejected,
    )
    # The Prometheus ASGI app, mounted so that /metrics answers without a redirect.
    metrics_app = make_asgi_app(registry=metrics.registry)
    app.add_route("/metrics", _asgi_endpoint(metrics_app), methods=["GET"])
    # Classify requests being served, and the one of them running the model (answer()).
    slots = threading.BoundedSemaphore(settings.http.max_concurrent_classify)
    gate = threading.Lock()

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

    def require_json(content_type: Annotated[str | None, Header()] = None) -> None:
        # Without it FastAPI hands the raw bytes to validation: a 422 that names no cause.
        if not _is_json(content_type):
            raise HTTPException(
                status_code=415,
                detail=f"Content-Type {content_type or '(none)'}: send application/json",
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

    @app.post("/v1/classify", dependencies=[Depends(require_token), Depends(require_json)])
    def classify(request: ClassifyRequest) -> dict[str, Any]:
        if not slots.acquire(blocking=False):
            raise HTTPException(
                status_code=429,
                detail=f"{settings.http.max_concurrent_classify} classify requests are being "
                "served (http.max_concurrent_classify): retry later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        try:
            return answer(runtime.current.classifier, request, gate)
        finally:
            slots.release()

    return app


def model_input(text: str) -> tuple[str, bool]:
    """A client's text as the model gets it, and whether it was cut.

    Cut to :data:`MAX_TEXT_CHARS`, the cap an email's text gets: far more than the
    tokenizer keeps, but the tokenizer encodes the whole string before it truncates, so an
    uncut text costs time and memory in proportion to its length. JSON may carry lone
    surrogates, which the tokenizer cannot encode: they become "?".
    """
    cut = text[:MAX_TEXT_CHARS]
    return cut.encode("utf-8", "replace").decode("utf-8"), len(text) > MAX_TEXT_CHARS


def _inputs(request: ClassifyRequest) -> tuple[list[str], dict[int, str], set[int]]:
    """The model inputs of a request (texts, then emails), why any email was skipped and
    which inputs were cut."""
    if not request.texts and not request.emails:
        raise HTTPException(status_code=422, detail="give texts or emails")
    inputs: list[str] = []
    truncated: set[int] = set()
    for index, text in enumerate(request.texts):
        given, cut = model_input(text)
        inputs.append(given)
        if cut:
            truncated.add(index)
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
        elif extracted.truncated or len(extracted.text) >= MAX_TEXT_CHARS:
            truncated.add(index)  # the message, or its text, reached its cap
        inputs.append(extracted.text)
    return inputs, skipped, truncated


def answer(
    classifier: Classifier, request: ClassifyRequest, gate: threading.Lock
) -> dict[str, Any]:
    """``POST /v1/classify``: one prediction (or skip reason) per input, in order.

    The classifier is the one triage uses (``runtime.current``), without a lock:
    onnxruntime runs concurrent calls side by side on the same threads, so a request
    slows triage by the share of the CPU it takes. That share is bounded: the inputs are
    bounded in number and length, and the API's batches are small and run one at a time
    (``gate``, across requests): triage's batches compete with one short API batch, never
    with several, and the inference buffers the API needs stay small (onnxruntime keeps
    what concurrent calls once needed). Inputs are sorted by length before batching, as
    :meth:`Classifier.outputs` does, so that little padding is computed.
    """
    inputs, skipped, truncated = _inputs(request)
    keep = sorted((i for i in range(len(inputs)) if i not in skipped), key=lambda i: len(inputs[i]))
    size = min(classifier.batch_size, API_BATCH)
    by_index: dict[int, Prediction] = {}
    for start in range(0, len(keep), size):
        batch = keep[start : start + size]
        with gate:
            predictions = classifier.predict([inputs[i] for i in batch])
        by_index.update(zip(batch, predictions, strict=True))
    results: list[dict[str, Any]] = []
    for i in range(len(inputs)):
        if i in skipped:
            results.append({"skipped": skipped[i]})
            continue
        out = by_index[i].to_json()
        out["top_k"] = out["top_k"][: request.top_k]
        if i in truncated:
            out["truncated"] = True
        results.append(out)
    return {"model": classifier.version, "predictions": results}


def _protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 (h11) protocol with a deadline on each request's headers.

    uvicorn has none: its keep-alive timer is armed only after a response and restarts on
    every byte received, so a client that never finishes its headers (slow loris) would
    hold a connection, a file descriptor the daemon's IMAP connections also need, forever.
    The deadline runs from the connection opening, and again from each response; a
    request whose headers arrived is left to :class:`RequestGuard`'s body deadline.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            in_flight = self.cycle is not None and not self.cycle.response_complete
            if not in_flight and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol


def serve_in_thread(
    app: FastAPI, settings: Settings, on_error: Callable[[BaseException], None]
) -> Any:
    """Start uvicorn in a daemon thread; return the server (call ``should_exit = True``)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=settings.http.host,
        port=settings.http.port,
        http=_protocol(settings.http.receive_timeout_seconds),
        # uvicorn's default: an idle keep-alive connection is closed after 5 s.
        timeout_keep_alive=5,
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
