"""The container images and the Compose stack, built and run as a user runs them (issue 15).

``make image`` builds both images from deploy/docker/ on a base made here by mmdebstrap
(no registry can be reached) with the locked wheels and no package index. The training
image trains configs/train-tiny.yaml into a volume; the daemon image then serves that
bundle read-only, as its non-root user, with no capabilities, against the suite's Dovecot
on the host, and files seeded mail exactly once. It answers /healthz and /metrics on the
published port, its HEALTHCHECK passes, ``podman stop`` ends it with exit 0 within the
grace period, and its state survives a restart on the volume. deploy/compose.yaml comes
up with podman-compose (the images it pulls replaced by local stand-ins,
tests/containers/): its two replicas file mail once and Prometheus scrapes them.

The container engine is podman (tests/podman.py). Without podman these tests skip, except
where CLEANINBOX_REQUIRE_CONTAINERS=1 (.ci/run sets it): there a missing engine fails them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from packaging.utils import canonicalize_name

from tests.conftest import REPO
from tests.dovecot import PASSWORD, Dovecot, free_port
from tests.mail_fixtures import MailUser, email, mid, take_user
from tests.podman import BASE, PODMAN, build, ensure_base_image, podman, run_flags, shared_dir
from tests.processes import wait_for
from tests.scaffold import NEVER_ABSTAIN, RULES

pytestmark = [pytest.mark.containers, pytest.mark.dovecot, pytest.mark.slow, pytest.mark.posix]

if PODMAN is None:
    if os.environ.get("CLEANINBOX_REQUIRE_CONTAINERS") == "1":
        raise RuntimeError("CLEANINBOX_REQUIRE_CONTAINERS=1 but podman is not installed")
    pytestmark.append(pytest.mark.skip(reason="no container engine (podman) installed"))

TAG = "test"
#: The host's loopback as a container on slirp4netns sees it (allow_host_loopback).
HOST_LOOPBACK = "10.0.2.2"
#: Seconds `podman stop` waits before SIGKILL; the daemon drains within 10 s.
GRACE = 30


@dataclass
class Images:
    daemon: str
    train: str
    sizes_mb: dict[str, int]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    """`make base-image wheelhouse` then `make image` with that base, offline."""
    env = {**os.environ, "IMAGE_ENGINE": "podman", "IMAGE_BASE": BASE, "IMAGE_TAG": TAG}
    ensure_base_image(shared_dir(tmp_path_factory))
    subprocess.run(["make", "-s", "wheelhouse"], cwd=REPO, env=env, check=True, timeout=900)
    built = subprocess.run(
        ["make", "-s", "image"],
        cwd=REPO,
        env={**env, "IMAGE_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-5000:]
    sizes = {}
    for line in built.stdout.splitlines():
        name, size = line.split("\t")
        sizes[name] = int(size.removesuffix(" MB"))
    assert set(sizes) == {f"cleaninbox:{TAG}", f"cleaninbox-train:{TAG}"}, built.stdout
    print(f"image sizes (MB): {sizes}")
    return Images(f"cleaninbox:{TAG}", f"cleaninbox-train:{TAG}", sizes)


@pytest.fixture(scope="module")
def volume() -> Iterator[str]:
    name = f"cleaninbox-test-{uuid.uuid4().hex[:8]}"
    podman("volume", "create", name)
    try:
        yield name
    finally:
        podman("volume", "rm", "--force", name, check=False)


@pytest.fixture(scope="module")
def trained(images: Images, volume: str) -> str:
    """The training image trains the tiny configuration and promotes it in the volume."""
    result = podman(
        "run", "--rm", *run_flags(), "-v", f"{volume}:/var/lib/cleaninbox", images.train,
        "train", "--config", "configs/train-tiny.yaml",
        "--output", "/var/lib/cleaninbox/models", "--promote",
        check=False, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return volume


@pytest.fixture(scope="module")
def user(dovecot: Dovecot) -> MailUser:
    return take_user(dovecot)


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory, dovecot: Dovecot, user: MailUser) -> Path:
    """/etc/cleaninbox for the container: settings, rules and Dovecot's CA, world-readable."""
    root = tmp_path_factory.mktemp("etc-cleaninbox")
    shutil.copy(dovecot.cert, root / "ca.pem")
    (root / "rules.yaml").write_text(yaml.safe_dump(RULES))
    settings = {
        "rules": "/etc/cleaninbox/rules.yaml",
        "poll_interval": 1,
        "jitter": 0,
        "classifier": NEVER_ABSTAIN,
        "accounts": [
            {
                "name": "work",
                "kind": "imap",
                "host": HOST_LOOPBACK,
                "port": dovecot.tls_port,
                "tls": "implicit",
                "ca_file": "/etc/cleaninbox/ca.pem",
                "username": user.name,
                "password_env": "CLEANINBOX_WORK_PASSWORD",
                "folders": ["INBOX"],
            }
        ],
    }
    (root / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
    for path in (root, *root.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


@dataclass
class Daemon:
    name: str
    port: int
    http: httpx.Client

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.name).stdout.strip()


@pytest.fixture(scope="module")
def daemon(images: Images, trained: str, config_dir: Path) -> Iterator[Daemon]:
    """The daemon image as a user runs it: read-only, non-root, no capabilities."""
    name = f"cleaninbox-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    podman(
        "create", "--name", name, *run_flags(),
        "--read-only", "--user", "10001:10001", "--cap-drop", "all",
        "--security-opt", "no-new-privileges",
        "--network", "slirp4netns:allow_host_loopback=true",
        "-p", f"127.0.0.1:{port}:9464",
        "-v", f"{trained}:/var/lib/cleaninbox",
        "-v", f"{config_dir}:/etc/cleaninbox:ro",
        "-e", f"CLEANINBOX_WORK_PASSWORD={PASSWORD}",
        "--stop-timeout", str(GRACE),
        images.daemon,
    )  # fmt: skip
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        try:
            yield Daemon(name, port, http)
        finally:
            logs = podman("logs", name, check=False)
            print(logs.stdout[-4000:], logs.stderr[-4000:])
            podman("rm", "--force", name, check=False)


def _seed(user: MailUser, first: int, count: int) -> set[str]:
    ids = set()
    for seed in range(first, first + count):
        raw = email("my card has not arrived yet", seed)
        user.append(raw)
        ids.add(mid(raw))
    return ids


def _filed(user: MailUser) -> dict[str, list[str]]:
    """Message-ID -> the folders holding it."""
    where: dict[str, list[str]] = {}
    for folder in ("INBOX", "Triage/All"):
        for message_id in user.messages(folder):
            where.setdefault(message_id, []).append(folder)
    return where


def _rss_mb(daemon: Daemon) -> float:
    pid = daemon.inspect("{{.State.Pid}}")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for the container's process {pid}")


def _start(daemon: Daemon) -> None:
    """Start the container; return once its account has finished a cycle (/readyz)."""
    podman("start", daemon.name)
    wait_for(lambda: _cycled(daemon), 120, "a first cycle of the container's account")


def _cycled(daemon: Daemon) -> bool:
    try:
        ready = daemon.http.get("/readyz")
    except httpx.TransportError:
        return False
    # Until the supervisor has taken the account on, /readyz may list no accounts yet.
    account = ready.json().get("accounts", {}).get("work", {}) if ready.status_code == 200 else {}
    return account.get("last_ok") is not None


_LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m; "
    "print('\\n'.join(f'{d.metadata[\"Name\"]}=={d.version}' for d in m.distributions()))"
)


def test_daemon_image_holds_the_lock_and_no_torch(images: Images) -> None:
    """The image's environment is exactly requirements/daemon.txt: the same on every build,
    and no torch (the daemon runs on onnxruntime)."""
    listed = podman(
        "run", "--rm", *run_flags(), "--entrypoint", "python", images.daemon,
        "-c", _LIST_DISTRIBUTIONS,
    ).stdout  # fmt: skip
    installed = {_pin(line) for line in listed.splitlines() if "==" in line}
    locked = (REPO / "requirements/daemon.txt").read_text().splitlines()
    wanted = {_pin(line) for line in locked if "==" in line and not line.startswith("#")}
    assert "torch" not in {name for name, _ in installed}
    # pip and setuptools leave the image; CleanInbox itself is not in its own lock.
    assert {pin for pin in installed if pin[0] != "cleaninbox"} == {
        pin for pin in wanted if pin[0] not in {"pip", "setuptools", "wheel"}
    }


_LEFT_OVER = (
    "import pathlib, sysconfig; site = pathlib.Path(sysconfig.get_path('purelib')); "
    "print('\\n'.join(str(p.relative_to(site)) for p in ["
    "*site.glob('onnxruntime/capi/libonnxruntime.so*'), *site.glob('onnxruntime/tools'), "
    "*site.rglob('tests'), *site.rglob('*.pyi')]))"
)


def test_daemon_image_carries_nothing_it_never_loads(images: Images) -> None:
    """The Dockerfile's prune held (about 60 MB): no duplicate onnxruntime library, no
    model-editing tools, test suites or stubs. Loading what is left: the other tests."""
    left = podman(
        "run", "--rm", *run_flags(), "--entrypoint", "python", images.daemon, "-c", _LEFT_OVER
    ).stdout.split()
    assert left == []


def _pin(line: str) -> tuple[str, str]:
    """("name", "version") of a ``name==version`` line, the name normalised."""
    name, _, version = line.split(" ", maxsplit=1)[0].partition("==")
    return canonicalize_name(name), version


def test_container_triages_exactly_once_and_survives_a_restart(
    daemon: Daemon, user: MailUser
) -> None:
    # Mail already there at the first start is left alone (`backfill` files it); mail
    # that arrives afterwards is filed.
    _start(daemon)
    first = _seed(user, 0, 12)
    wait_for(
        lambda: (
            set(_filed(user)) >= first and all(_filed(user)[m] == ["Triage/All"] for m in first)
        ),
        180,
        "the seeded mail filed into Triage/All",
    )
    rss = _rss_mb(daemon)
    print(f"container RSS after triage: {rss:.0f} MB")

    # Observability on the published port, and the image's own HEALTHCHECK.
    assert daemon.http.get("/healthz").json() == {"status": "ok"}
    metrics = daemon.http.get("/metrics").text
    processed = [
        line for line in metrics.splitlines()
        if line.startswith("cleaninbox_messages_processed_total{")
    ]  # fmt: skip
    assert sum(float(line.rsplit(" ", 1)[1]) for line in processed) == len(first), processed
    assert podman("healthcheck", "run", daemon.name, check=False).returncode == 0

    # A clean stop within the grace period, exit 0.
    started = time.monotonic()
    podman("stop", "--time", str(GRACE), daemon.name, timeout=GRACE + 30)
    assert time.monotonic() - started < GRACE
    assert daemon.inspect("{{.State.ExitCode}}") == "0"

    # The state lives on the volume: after a restart the filed mail is not filed again
    # and new mail is.
    second = _seed(user, 100, 5)
    _start(daemon)
    wait_for(
        lambda: all(_filed(user).get(m) == ["Triage/All"] for m in second),
        180,
        "the mail that came while stopped filed",
    )
    where = _filed(user)
    assert {m: f for m, f in where.items() if f != ["Triage/All"]} == {}
    assert len(user.messages("Triage/All")) == len(first | second)
    history = podman(
        "exec", daemon.name, "cleaninbox", "history", "--json",
        "--config", "/etc/cleaninbox/cleaninbox.yaml",
    )  # fmt: skip
    decided = [json.loads(line)["message_id"] for line in history.stdout.splitlines()]
    assert sorted(decided) == sorted(first | second), history.stdout
    podman("stop", "--time", str(GRACE), daemon.name, timeout=GRACE + 30)
    assert daemon.inspect("{{.State.ExitCode}}") == "0"


# --- the Compose stack ---------------------------------------------------------------------

COMPOSE_FILES = [REPO / "deploy/compose.yaml", REPO / "tests/containers/compose.test.yaml"]
SERVICES_IMAGE = f"localhost/cleaninbox-services:{TAG}"


@dataclass
class Stack:
    project: str
    # Host ports, each on a free one through deploy/compose.yaml's variables.
    ports: dict[str, int]

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        files = [arg for path in COMPOSE_FILES for arg in ("-f", str(path))]
        result = subprocess.run(
            [_podman_compose(), "--in-pod", "false", "-p", self.project, *files, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=REPO,
            env={**os.environ, **{name: str(port) for name, port in self.ports.items()}},
        )
        assert result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-3000:])
        return result

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"


_PORT_VARIABLES = (
    "IMAP_HOST_PORT",
    "METRICS_HOST_PORT_1",
    "METRICS_HOST_PORT_2",
    "PROMETHEUS_HOST_PORT",
    "GRAFANA_HOST_PORT",
)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (each socket held until all are chosen)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def _podman_compose() -> str:
    """podman-compose from this environment (the dev extra), where pytest runs."""
    found = Path(sys.executable).with_name("podman-compose")
    return str(found) if found.exists() else "podman-compose"


@pytest.fixture(scope="module")
def stack(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """deploy/compose.yaml up with podman-compose, service by service.

    podman runs healthchecks from systemd timers, and these machines run no systemd: the
    health of the postgres service never turns "healthy", so `depends_on` conditions
    cannot be waited on here. The test starts the services in their dependency order
    itself, checking each condition as Compose would (pg_isready, the trainer's exit 0).
    """
    build(
        SERVICES_IMAGE,
        REPO / "tests/containers/services.Dockerfile",
        shared_dir(tmp_path_factory),
    )
    ports = dict(zip(_PORT_VARIABLES, _free_ports(len(_PORT_VARIABLES)), strict=True))
    stack = Stack(f"cleaninbox-test-{uuid.uuid4().hex[:6]}", ports)
    try:
        stack.compose("up", "-d", "--no-deps", "dovecot", "postgres")
        wait_for(
            lambda: podman(
                "exec", stack.container("postgres"),
                "pg_isready", "--username=cleaninbox", "--dbname=cleaninbox", check=False,
            ).returncode == 0,
            120,
            "postgres ready",
        )  # fmt: skip
        stack.compose("up", "-d", "--no-deps", "trainer")
        waited = podman("wait", stack.container("trainer"), timeout=900)
        assert waited.stdout.strip() == "0", podman("logs", stack.container("trainer")).stderr
        stack.compose("up", "-d", "--no-deps", "cleaninbox-1", "cleaninbox-2", "prometheus")
        yield stack
    finally:
        for service in ("cleaninbox-1", "cleaninbox-2", "trainer"):
            logs = podman("logs", stack.container(service), check=False)
            print(service, logs.stdout[-2000:], logs.stderr[-2000:])
        subprocess.run(
            [_podman_compose(), "-p", stack.project,
             *[a for p in COMPOSE_FILES for a in ("-f", str(p))], "down", "-v"],
            capture_output=True, timeout=300, check=False, cwd=REPO,
        )  # fmt: skip


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


#: Run in a replica's container, which shares dovecot's network namespace: both replicas'
#: /metrics (ports 9464 and 9465 there) as JSON, each the text or the error.
_METRICS_PROBE = """
import json, urllib.request
out = {}
for port in (9464, 9465):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            out[port] = answer.read().decode()
    except OSError as exc:
        out[port] = f"error: {exc}"
print(json.dumps(out))
"""

#: Appends the messages on stdin (JSON, a list of latin-1 strings) to the demo INBOX.
_APPEND_PROBE = """
import imaplib, json, sys
client = imaplib.IMAP4("127.0.0.1", 143)
client.login("demo", "demo")
for raw in json.load(sys.stdin):
    client.append("INBOX", None, None, raw.encode("latin-1"))
client.logout()
"""

#: Asks Prometheus (by its service name on the stack's network) for a series.
_PROMETHEUS_PROBE = """
import sys, urllib.parse, urllib.request
query = urllib.parse.urlencode({"query": sys.argv[1]})
with urllib.request.urlopen(f"http://prometheus:9090/api/v1/query?{query}", timeout=5) as a:
    print(a.read().decode())
"""


def _probe(stack: Stack, code: str, *args: str, stdin: str = "") -> str:
    """Run ``code`` with the Python of the first replica's container.

    The checks go from inside the stack rather than through its published ports: those
    are the host's business (whether a port can be published on 127.0.0.1 depends on
    the engine's network set-up), while what is tested here is the stack itself.
    """
    result = subprocess.run(
        [PODMAN or "podman", "exec", "-i", stack.container("cleaninbox-1"),
         "python", "-c", code, *args],
        input=stdin, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return result.stdout if result.returncode == 0 else f"exit {result.returncode}: {result.stderr}"


def _replica_metrics(stack: Stack, seen: dict[str, str]) -> list[str]:
    """Both replicas' /metrics; ``seen`` keeps the last answer or error, for the message
    of a failed wait."""
    answer = _probe(stack, _METRICS_PROBE)
    try:
        texts: dict[str, str] = json.loads(answer)
    except ValueError:
        seen["metrics"] = answer[-500:]
        return []
    seen.update({port: text[:200] for port, text in texts.items()})
    return list(texts.values())


def _wait(stack: Stack, check: Callable[[dict[str, str]], bool], timeout: float, what: str) -> None:
    seen: dict[str, str] = {}
    try:
        wait_for(lambda: check(seen), timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answers {seen}") from None


def test_compose_stack_files_mail_and_prometheus_scrapes_it(stack: Stack) -> None:
    # One of the two replicas holds the demo account's lease and finishes a first cycle.
    cycled = "cleaninbox_last_successful_cycle_timestamp_seconds"
    _wait(
        stack,
        lambda seen: any(_metric(text, cycled) > 0 for text in _replica_metrics(stack, seen)),
        180,
        "a first cycle of the demo account",
    )
    sent = 6
    raws = [email("my card has not arrived yet", 1000 + seed) for seed in range(sent)]
    appended = _probe(stack, _APPEND_PROBE, stdin=json.dumps([r.decode("latin-1") for r in raws]))
    assert not appended.startswith("exit"), appended
    processed = "cleaninbox_messages_processed_total"

    def decided(seen: dict[str, str]) -> float:
        return sum(_metric(text, processed) for text in _replica_metrics(stack, seen))

    _wait(stack, lambda seen: decided(seen) >= sent, 180, "the replicas to decide the new mail")
    # Exactly once across the two replicas.
    assert decided({}) == sent

    def scraped(seen: dict[str, str]) -> bool:
        said = _probe(stack, _PROMETHEUS_PROBE, processed)
        seen["prometheus"] = said[-300:]
        try:
            answer = json.loads(said)
        except ValueError:
            return False
        return answer["status"] == "success" and bool(answer["data"]["result"])

    _wait(stack, scraped, 120, "Prometheus to hold a cleaninbox_ series")

    # Whether the host reaches the published ports is the engine's business (above); say
    # what it found, for whoever reads the log.
    for variable in ("METRICS_HOST_PORT_1", "IMAP_HOST_PORT", "PROMETHEUS_HOST_PORT"):
        port = stack.ports[variable]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                print(f"published port 127.0.0.1:{port} ({variable}): connects")
        except OSError as exc:
            print(f"published port 127.0.0.1:{port} ({variable}): {exc}")
