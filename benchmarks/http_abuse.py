"""The HTTP API under abuse (issue 16): what hostile requests cost the daemon, and what API
load at the concurrency limit costs triage.

The daemon's HTTP app (``create_app`` + ``serve_in_thread``, default ``http`` settings)
runs on the real bundle in a child process; this process is the client. For each case
the child's CPU seconds (from /proc, Linux), its RSS afterwards and its peak RSS during
the case (the kernel's high-water mark, reset before each case where the kernel allows)
are printed:

1. a 100 MB body declared by Content-Length, and one sent chunked, streamed until the
   server answers;
2. a 10 MB text (a 10 MB JSON body), and the largest requests still accepted (one 1 MB
   text; 256 texts of 2,000 characters);
3. 10,000 tiny requests in a row on one keep-alive connection: throughput, RSS before and
   after;
4. triage's share of the shared classifier: the child classifies 100 emails (banking77
   test queries rendered as mail, through ``email_to_text`` and ``BoundedInference`` as
   a triage cycle does) alone, then while two clients (the concurrency limit) send the
   largest accepted requests back to back; the median times and their ratio.

    python benchmarks/http_abuse.py --bundle models/current
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MiB = 1 << 20
PROBE_RUNS = 3
ROUNDS = 3


# --- the daemon side (child process) ---------------------------------------------------


def serve(bundle: Path, port: int, data_dir: Path) -> None:
    """Run the HTTP app on ``bundle``; on each "probe" line from stdin, classify 100
    emails the way a triage cycle does and print the seconds it took."""
    import yaml
    from prometheus_client import CollectorRegistry

    from daemon.config.settings import Settings
    from daemon.core.cycle import BoundedInference
    from daemon.core.runtime import Runtime
    from daemon.logs import configure_logging
    from daemon.metrics import Metrics
    from daemon.model.samples import render_email
    from daemon.model.text import email_to_text
    from daemon.service.health import Health
    from daemon.service.http import create_app, serve_in_thread

    configure_logging("warning", "console")
    work = Path(tempfile.mkdtemp(prefix="cleaninbox-http-abuse-"))
    (work / "rules.yaml").write_text(
        yaml.safe_dump({"rules": [{"match": "*", "actions": ["flag"]}]})
    )
    settings = Settings(
        model=bundle,
        rules=work / "rules.yaml",
        state=work / "state.db",
        http={"listen": f"127.0.0.1:{port}"},
    )
    metrics = Metrics(CollectorRegistry())
    runtime = Runtime(settings, metrics)
    errors: list[BaseException] = []
    server = serve_in_thread(
        create_app(settings, runtime, metrics, Health()), settings, errors.append
    )
    while not server.started and not errors:
        time.sleep(0.05)
    if errors:
        raise SystemExit(f"the HTTP server did not start: {errors[0]}")

    with (data_dir / "test.csv").open(newline="") as handle:
        queries = [row["text"] for row in csv.DictReader(handle)]
    rng = random.Random(16)
    texts = [email_to_text(render_email(q, rng)).text for q in rng.sample(queries, 100)]
    inference = BoundedInference(settings.classifier.timeout_seconds)
    inference.classify(runtime.current.classifier, texts)  # warm
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "probe":
            started = time.perf_counter()
            inference.classify(runtime.current.classifier, texts)
            print(json.dumps({"probe": time.perf_counter() - started}), flush=True)


# --- the client side ---------------------------------------------------------------------


class Daemon:
    """The child process, and its CPU time and memory from /proc."""

    def __init__(self, bundle: Path, data_dir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.process = subprocess.Popen(
            [
                *(sys.executable, __file__, "--serve", str(self.port)),
                *("--bundle", str(bundle), "--data-dir", str(data_dir)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdin is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        if self.stdout.readline().strip() != "ready":
            raise SystemExit("the daemon's HTTP app did not start")
        self.base = f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        """User + system CPU seconds of the child so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _status(self, key: str) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        raise KeyError(key)

    def rss(self) -> float:
        return self._status("VmRSS")

    def peak(self) -> float:
        return self._status("VmHWM")

    def reset_peak(self) -> None:
        """Restart the high-water mark at the current RSS (Linux >= 4.0)."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def probe(self) -> float:
        self.stdin.write("probe\n")
        self.stdin.flush()
        return float(json.loads(self.stdout.readline())["probe"])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def measured(daemon: Daemon, name: str, case: Callable[[], str]) -> None:
    """Run one case; print its outcome with the daemon's CPU seconds and memory."""
    daemon.reset_peak()
    cpu, started = daemon.cpu(), time.perf_counter()
    outcome = case()
    wall = time.perf_counter() - started
    print(
        f"| {name} | {outcome} | {wall:.2f} | {daemon.cpu() - cpu:.2f} | "
        f"{daemon.peak():.0f} | {daemon.rss():.0f} |",
        flush=True,
    )


def streamed(port: int, head: bytes, chunks: Iterator[bytes]) -> str:
    """Send headers, then body chunks until the server answers (polled before each)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head)
        started = time.perf_counter()
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except OSError:
                break
            sent += len(chunk)
        select.select([sock], [], [], 60)
        answered = time.perf_counter() - started
        try:
            status = sock.recv(65536).split(b" ", 2)[1].decode()
        except (ConnectionError, IndexError):
            status = "no answer (connection reset)"
    return f"{status} after {answered * 1000:.0f} ms, {sent / MiB:.1f} MiB of the body sent"


def post_json(base: str, body: dict[str, Any]) -> str:
    import httpx

    reply = httpx.post(f"{base}/v1/classify", json=body, timeout=600)
    truncated = sum(1 for p in reply.json().get("predictions", []) if p.get("truncated"))
    return f"{reply.status_code}" + (f", {truncated} truncated" if truncated else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "current")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "banking77")
    parser.add_argument("--tiny", type=int, default=10_000, help="tiny requests in a row")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.bundle.resolve(), args.serve, args.data_dir)
        return

    import httpx

    from daemon.model.text import MAX_TEXT_CHARS

    daemon = Daemon(args.bundle.resolve(), args.data_dir)
    try:
        print(
            f"bundle {args.bundle.resolve().name}; {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.1f}; daemon PID "
            f"{daemon.process.pid}, RSS {daemon.rss():.0f} MiB after start\n"
        )
        print("| case | answer | wall s | daemon CPU s | peak RSS MiB | RSS after MiB |")
        print("|---|---|---|---|---|---|")
        size = 100 * MiB
        piece = b"a" * (64 * 1024)
        head = (
            b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        )
        measured(
            daemon,
            "100 MB body (Content-Length)",
            lambda: streamed(
                daemon.port,
                head + b"Content-Length: %d\r\n\r\n" % size,
                (piece for _ in range(size // len(piece))),
            ),
        )
        chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
        measured(
            daemon,
            "100 MB body (chunked)",
            lambda: streamed(
                daemon.port,
                head + b"Transfer-Encoding: chunked\r\n\r\n",
                (chunk for _ in range(size // len(piece))),
            ),
        )
        sentence = "I lost my card and I need a new one. "
        measured(
            daemon,
            "10 MB text",
            lambda: post_json(daemon.base, {"texts": [(sentence * 300_000)[: 10 * MiB]]}),
        )
        measured(
            daemon,
            "1 MB text (largest accepted)",
            lambda: post_json(daemon.base, {"texts": [(sentence * 30_000)[:1_000_000]]}),
        )
        largest = {"texts": [(sentence * 60)[:MAX_TEXT_CHARS]] * 256}
        measured(
            daemon,
            f"256 texts of {MAX_TEXT_CHARS} characters",
            lambda: post_json(daemon.base, largest),
        )

        def tiny() -> str:
            with httpx.Client(base_url=daemon.base, timeout=60) as http:
                for _ in range(200):  # warm
                    http.post("/v1/classify", json={"texts": ["card"]})
                before = daemon.rss()
                started = time.perf_counter()
                statuses = [
                    http.post("/v1/classify", json={"texts": ["card"]}).status_code
                    for _ in range(args.tiny)
                ]
                rate = args.tiny / (time.perf_counter() - started)
            ok = statuses.count(200)
            return (
                f"{ok}/{args.tiny} 200, {rate:.0f} requests/s; RSS {before:.0f} -> "
                f"{daemon.rss():.0f} MiB"
            )

        measured(daemon, f"{args.tiny:,} tiny requests", tiny)

        alone: list[float] = []
        loaded: list[float] = []
        answers: list[int] = []
        for _ in range(ROUNDS):  # alternated: other load on the machine hits both alike
            alone += [daemon.probe() for _ in range(PROBE_RUNS)]
            stop = threading.Event()

            def load(stop: threading.Event = stop) -> None:
                with httpx.Client(base_url=daemon.base, timeout=600) as http:
                    while not stop.is_set():
                        answers.append(http.post("/v1/classify", json=largest).status_code)

            clients = [threading.Thread(target=load) for _ in range(2)]
            for thread in clients:
                thread.start()
            time.sleep(1.0)
            loaded += [daemon.probe() for _ in range(PROBE_RUNS)]
            stop.set()
            for thread in clients:
                thread.join()
        a, b = statistics.median(alone), statistics.median(loaded)
        print(
            f"\ntriage's 100 emails through the shared classifier, median of "
            f"{len(alone)}: {a:.2f} s alone, {b:.2f} s under API load at the concurrency "
            f"limit: {b / a:.2f}x ({len(answers)} largest requests answered meanwhile, "
            f"statuses {sorted(set(answers))})"
        )
        metrics = httpx.get(f"{daemon.base}/metrics").text.splitlines()
        print(
            *(line for line in metrics if line.startswith("cleaninbox_http_rejected_total")),
            sep="\n",
        )
        print(f"daemon RSS at the end: {daemon.rss():.0f} MiB")
        print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
