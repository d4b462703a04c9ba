"""What one HTTP client can cost the daemon: body size and time, text length, concurrency.

Against a real uvicorn server (``serve_in_thread``) in this process, shared by the module,
so that the daemon's RSS is this process's. Raw sockets where a client's timing matters.
Linux only (RSS from /proc), hence the posix marker.
"""

from __future__ import annotations

import base64
import json
import select
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from daemon.config.settings import Settings
from daemon.core.runtime import Runtime
from daemon.metrics import Metrics
from daemon.model.classifier import Prediction
from daemon.model.text import MAX_TEXT_CHARS
from daemon.service.health import Health
from daemon.service.http import ClassifyRequest, create_app, serve_in_thread
from tests.dovecot import free_port
from tests.processes import wait_for
from tests.test_http import client

pytestmark = pytest.mark.posix

LIMIT = 1 << 20  # http.max_body_bytes, the default
TIMEOUT = 1.0  # http.receive_timeout_seconds, short for the slow-client tests
MiB = 1 << 20


@dataclass
class Served:
    port: int
    http: httpx.Client
    metrics: Metrics
    runtime: Runtime

    def rejected(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "cleaninbox_http_rejected_total", {"reason": reason}
        )
        return float(value or 0.0)


@pytest.fixture(scope="module")
def served(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("http-bounds")
    rules = work / "rules.yaml"
    rules.write_text(yaml.safe_dump({"rules": [{"match": "*", "actions": ["flag"]}]}))
    port = free_port()
    config = Settings(
        model=tiny_bundle,
        rules=rules,
        state=work / "s.db",
        http={"listen": f"127.0.0.1:{port}", "receive_timeout_seconds": TIMEOUT},
    )
    assert config.http.max_body_bytes == LIMIT and config.http.max_concurrent_classify == 2
    metrics = Metrics(CollectorRegistry())
    runtime = Runtime(config, metrics)
    errors: list[BaseException] = []
    server = serve_in_thread(create_app(config, runtime, metrics, Health()), config, errors.append)
    wait_for(lambda: bool(server.started) or bool(errors), 10, "uvicorn to start")
    assert not errors
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        yield Served(port, http, metrics, runtime)
    server.should_exit = True


def rss() -> int:
    """This process's resident set (bytes): the daemon's, the server runs in it."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096


def head(size: int | None = None, content_type: str = "application/json") -> bytes:
    """Request line and headers of a classify POST (chunked when ``size`` is None)."""
    length = b"Transfer-Encoding: chunked" if size is None else b"Content-Length: %d" % size
    return b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: %s\r\n%s\r\n\r\n" % (
        content_type.encode(),
        length,
    )


@dataclass
class Exchange:
    status: int
    response: bytes
    sent: int  # body bytes the client had sent when the answer came
    seconds: float


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or resets it); a
    connection still open after 10 s raises TimeoutError."""
    received = b""
    sock.settimeout(10)
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionError:
            return received
        if not data:
            return received
        received += data


def stream(port: int, request_head: bytes, chunks: Iterator[bytes]) -> Exchange:
    """Send headers, then body chunks until the server answers; read the answer.

    Before each chunk the socket is polled, so the answer is read as soon as it is there
    (a server that closes on a client still sending makes the client's stack drop unread
    data on the reset that follows).
    """
    sent = 0
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_head)
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except OSError:  # closed by the server: its answer is read below
                break
            sent += len(chunk)
        select.select([sock], [], [], 10)
        seconds = time.monotonic() - started
        response = read_answer(sock)
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0
    return Exchange(status, response, sent, seconds)


def body_of(response: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(response.partition(b"\r\n\r\n")[2])
    return parsed


def test_a_100_mb_body_is_refused_before_it_is_sent(served: Served) -> None:
    size = 100 * MiB
    chunk = b"a" * (64 * 1024)
    before = rss()
    reply = stream(served.port, head(size), (chunk for _ in range(size // len(chunk))))
    assert reply.status == 413
    assert b"connection: close" in reply.response.lower()  # uvicorn stops reading it
    assert "http.max_body_bytes" in body_of(reply.response)["detail"]
    # Answered on the headers: what was sent is what the sockets' buffers took meanwhile.
    assert reply.sent < 16 * MiB and reply.seconds < 1.0
    assert rss() - before < 20 * MiB
    assert served.rejected("too_large") >= 1


def test_a_chunked_body_is_counted_and_refused_past_the_limit(served: Served) -> None:
    size = 100 * MiB
    piece = b"a" * (64 * 1024)
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    before = served.rejected("too_large")
    reply = stream(served.port, head(None), (chunk for _ in range(size // len(piece))))
    assert reply.status == 413 and reply.seconds < 1.0
    assert reply.sent < 16 * MiB
    assert served.rejected("too_large") == before + 1
    # The same through an ordinary client that streams a body of unknown length.
    answer = served.http.post(
        "/v1/classify",
        content=(piece for _ in range(64)),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 413


def test_the_limit_is_inclusive(served: Served) -> None:
    body = b'{"texts": ["card lost"]}'
    exact = body + b" " * (LIMIT - len(body))
    json_type = {"Content-Type": "application/json"}
    assert served.http.post("/v1/classify", content=exact, headers=json_type).status_code == 200
    over = served.http.post("/v1/classify", content=exact + b" ", headers=json_type)
    assert over.status_code == 413


def test_a_10_mb_text_is_refused_and_a_1_mb_text_is_cut_then_classified(served: Served) -> None:
    huge = served.http.post("/v1/classify", json={"texts": ["a" * (10 * MiB)]})
    assert huge.status_code == 413
    long_text = ("I lost my card and need a new one. " * 30_000)[:1_000_000]
    reply = served.http.post("/v1/classify", json={"texts": [long_text]})
    assert reply.status_code == 200
    (whole,) = reply.json()["predictions"]
    assert whole["truncated"] is True
    # What was classified is the text's first MAX_TEXT_CHARS characters (alone in its
    # batch both times: int8 activation ranges are per batch).
    cut = served.http.post("/v1/classify", json={"texts": [long_text[:MAX_TEXT_CHARS]]})
    (first,) = cut.json()["predictions"]
    assert "truncated" not in first and first["top_k"] == whole["top_k"]


def test_an_email_whose_text_reaches_the_cap_says_so(served: Served) -> None:
    raw = b"Subject: card\r\nFrom: a@example.org\r\n\r\n" + b"my card was lost again " * 500
    reply = served.http.post("/v1/classify", json={"emails": [base64.b64encode(raw).decode()]})
    assert reply.status_code == 200
    assert reply.json()["predictions"][0]["truncated"] is True


def test_malformed_json_and_wrong_content_types_are_explained(served: Served) -> None:
    bad = served.rejected("bad_request")
    malformed = served.http.post(
        "/v1/classify", content=b'{"texts": ["x"', headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["msg"] == "JSON decode error"
    form = served.http.post("/v1/classify", data={"texts": "x"})
    assert form.status_code == 415
    assert "application/json" in form.json()["detail"]
    plain = served.http.post(
        "/v1/classify", content=b'{"texts": ["x"]}', headers={"Content-Type": "text/plain"}
    )
    assert plain.status_code == 415
    missing = served.http.post("/v1/classify", content=b'{"texts": ["x"]}')
    assert missing.status_code == 415 and "(none)" in missing.json()["detail"]
    problem_json = served.http.post(
        "/v1/classify",
        content=b'{"texts": ["x"]}',
        headers={"Content-Type": "application/vnd.api+json; charset=utf-8"},
    )
    assert problem_json.status_code == 200
    assert served.rejected("bad_request") == bad + 4


def test_a_lone_surrogate_is_classified_not_a_server_error(served: Served) -> None:
    # Valid JSON (an escaped lone surrogate) that the tokenizer cannot encode as is.
    body = b'{"texts": ["lost card \\ud800"]}'
    reply = served.http.post(
        "/v1/classify", content=body, headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == 200


@dataclass
class Blocked:
    """The served classifier's predict, made to wait until released."""

    release: threading.Event
    calls: list[int]


@pytest.fixture
def blocked(served: Served, monkeypatch: pytest.MonkeyPatch) -> Iterator[Blocked]:
    classifier = served.runtime.current.classifier
    predict = classifier.predict
    state = Blocked(threading.Event(), [])

    def blocking(texts: Sequence[str]) -> list[Prediction]:
        state.calls.append(1)
        state.release.wait(10)
        return predict(texts)

    monkeypatch.setattr(classifier, "predict", blocking)
    yield state
    state.release.set()


def test_beyond_the_concurrency_bound_429_at_once(served: Served, blocked: Blocked) -> None:
    busy = served.rejected("busy")
    results: list[int] = []

    def post() -> None:
        with httpx.Client(timeout=20) as own:
            url = f"http://127.0.0.1:{served.port}/v1/classify"
            results.append(own.post(url, json={"texts": ["lost card"]}).status_code)

    clients = [threading.Thread(target=post) for _ in range(2)]
    clients[0].start()
    wait_for(lambda: len(blocked.calls) == 1, 5, "the first request to reach the model")
    clients[1].start()
    time.sleep(0.3)  # the second takes the other slot, and waits for the model
    started = time.monotonic()
    refused = served.http.post("/v1/classify", json={"texts": ["lost card"]})
    assert time.monotonic() - started < 1.0  # answered, not queued
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert "http.max_concurrent_classify" in refused.json()["detail"]
    assert served.rejected("busy") == busy + 1
    assert served.http.get("/healthz").status_code == 200  # not a classify request
    # One request in the model at a time: the second waits behind the first.
    assert len(blocked.calls) == 1
    blocked.release.set()
    for thread in clients:
        thread.join(10)
    assert results == [200, 200] and len(blocked.calls) == 2
    assert served.http.post("/v1/classify", json={"texts": ["lost card"]}).status_code == 200


def test_a_body_that_never_comes_is_answered_408(served: Served) -> None:
    timeouts = served.rejected("timeout")
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(head(100) + b'{"texts": [')
        response = read_answer(sock)  # to the server's close
        elapsed = time.monotonic() - started
    assert response.startswith(b"HTTP/1.1 408 ")
    assert "http.receive_timeout_seconds" in body_of(response)["detail"]
    assert TIMEOUT * 0.9 < elapsed < TIMEOUT + 1.5
    assert served.rejected("timeout") == timeouts + 1


def test_headers_that_never_end_are_cut_off(served: Served) -> None:
    """Slow loris: uvicorn alone keeps such a connection forever."""
    sockets = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(50)]
    try:
        started = time.monotonic()
        for sock in sockets:
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        # Meanwhile the server answers others.
        assert served.http.get("/healthz").status_code == 200
        for sock in sockets:
            sock.settimeout(TIMEOUT + 3)
            assert sock.recv(1) == b""  # closed by the server
        assert time.monotonic() - started < TIMEOUT + 3
    finally:
        for sock in sockets:
            sock.close()


def test_a_keep_alive_connection_trickling_its_next_request_is_cut_off(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        closed = False
        for byte in b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaa":
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            if select.select([sock], [], [], 0.2)[0]:
                read_answer(sock)  # the rest of the first answer, if any, then the close
                closed = True
                break
        # Every byte came well within uvicorn's 5 s keep-alive; the deadline still ends it.
        assert closed and time.monotonic() - started < TIMEOUT + 1.5


def test_1000_tiny_requests_are_all_answered_and_memory_settles(served: Served) -> None:
    body = {"texts": ["card"]}
    for _ in range(200):  # warm: allocator pools, caches
        served.http.post("/v1/classify", json=body)
    before = rss()
    started = time.monotonic()
    statuses = [served.http.post("/v1/classify", json=body).status_code for _ in range(1000)]
    elapsed = time.monotonic() - started
    assert statuses == [200] * 1000
    assert rss() - before < 10 * MiB
    assert elapsed < 20  # about 6 s on 2 busy cores


def test_a_burst_of_long_texts_and_oversized_bodies_leaves_memory_where_it_was(
    served: Served,
) -> None:
    long_texts = {"texts": ["I lost my card. " * 125] * 32}
    served.http.post("/v1/classify", json=long_texts)
    before = rss()
    for _ in range(5):
        assert served.http.post("/v1/classify", json=long_texts).status_code == 200
        over = served.http.post("/v1/classify", json={"texts": ["a" * (3 * MiB)]})
        assert over.status_code == 413
    assert rss() - before < 20 * MiB


# Property: whatever the body, the answer is a deliberate one, never a 500.
_texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["\ud800", "\x00", "\u202e", "a" * 5000, " " * 3000, "é" * 2500]),
)
_emails = st.one_of(
    st.binary(max_size=300).map(lambda raw: base64.b64encode(raw).decode()),
    st.text(max_size=20),
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
#: Each field of ClassifyRequest: values of its type, in and out of bounds, or any JSON.
_fields = {
    "texts": st.lists(_texts, max_size=6) | _json,
    "emails": st.lists(_emails, max_size=3) | _json,
    "top_k": st.integers(min_value=-5, max_value=100) | _json,
}
_request = st.fixed_dictionaries({}, optional={**_fields, "extra": _json})


def test_the_property_covers_every_request_field() -> None:
    assert set(_fields) == set(ClassifyRequest.model_fields)


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()


_bodies = st.one_of(
    _request.map(_encode),
    _json.map(_encode),
    st.binary(max_size=200),
    st.tuples(_request.map(_encode), st.integers(min_value=0)).map(
        lambda pair: pair[0][: pair[1] % (len(pair[0]) + 1)]  # cut short
    ),
    st.just(b"[" * 100_000),  # nesting deeper than the JSON parser recurses
    st.just(b'{"top_k": ' + b"9" * 5000 + b"}"),  # past Python's int digit limit
)
_content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
    ]
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(body=_bodies, content_type=_content_types)
# Python's JSON parser reads these; the error answer echoing them once failed with a 500.
@example(body=b"-Infinity", content_type="application/json")
@example(body=b'{"texts": ["a"], "top_k": NaN}', content_type="application/json")
@example(body=b'{"emails": [{"subject": Infinity}]}', content_type="application/json")
def test_no_request_body_gets_a_server_error(
    served: Served, body: bytes, content_type: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    reply = served.http.post("/v1/classify", content=body, headers=headers)
    assert reply.status_code in (200, 400, 413, 415, 422), (reply.status_code, reply.text)
    if reply.status_code == 200:
        sent = json.loads(body)
        count = len(sent.get("texts", [])) + len(sent.get("emails", []))
        assert len(reply.json()["predictions"]) == count
    assert reply.status_code != 400 or reply.json()["detail"]


def test_the_bounds_hold_in_process_too(tiny_bundle: Path, tmp_path: Path) -> None:
    """The in-process client of tests/test_http.py goes through the same guard."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"rules": [{"match": "*", "actions": ["flag"]}]}))
    config = Settings(
        model=tiny_bundle, rules=rules, state=tmp_path / "s.db", http={"max_body_bytes": 2048}
    )
    http, metrics = client(config)
    assert http.post("/v1/classify", json={"texts": ["a" * 4096]}).status_code == 413
    assert http.post("/v1/classify", json={"texts": ["lost card"]}).status_code == 200
    sample = metrics.registry.get_sample_value(
        "cleaninbox_http_rejected_total", {"reason": "too_large"}
    )
    assert sample == 1.0
