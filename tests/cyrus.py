"""A second real IMAP server for the integration tests: Cyrus IMAP in a container.

Debian's cyrus-imapd conflicts with the dovecot-imapd the suite runs on the host, so
Cyrus (3.6, Debian 12's) runs in a podman container built from
tests/containers/cyrus.Dockerfile on the suite's local base image, one per test session,
with its ports published on 127.0.0.1. Its configuration is Debian's default namespace,
the standard one, which differs from Dovecot's where a client can go wrong: '.' as the
hierarchy separator and the user's folders under the personal namespace "INBOX." (the
rules' ``Triage/All`` is ``INBOX.Triage.All`` there). Port 994 is the same server and
mail store without MOVE (``suppress_capabilities``): the COPY fallback.
"""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import REPO
from tests.dovecot import PASSWORD, free_port, make_certificate
from tests.podman import build, podman, run_flags

IMAGE = "localhost/cleaninbox-cyrus:test"


class Cyrus:
    """A running Cyrus: the same attributes as :class:`tests.dovecot.Dovecot` that
    accounts and test clients use (``port``, ``tls_port``, ``cert``), and the names."""

    name = "cyrus"
    prefix = "INBOX."
    delimiter = "."

    def __init__(self, root: Path, container: str, ports: dict[int, int]) -> None:
        self.root = root
        self.container = container
        self.port = ports[143]
        self.tls_port = ports[993]
        #: The same server without MOVE: UID COPY + STORE \Deleted + UID EXPUNGE.
        self.tls_port_without_move = ports[994]
        self.cert = root / "cert.pem"

    def native(self, folder: str) -> str:
        """A folder as the rules name it (``Triage/All``) as Cyrus names it."""
        if folder.upper() == "INBOX":
            return folder
        return self.prefix + folder.replace("/", self.delimiter)

    def logical(self, name: str) -> str:
        """The inverse of :meth:`native`."""
        return name.removeprefix(self.prefix).replace(self.delimiter, "/")

    def without_move(self) -> Cyrus:
        """A view of this server through the port that does not advertise MOVE."""
        view = Cyrus.__new__(Cyrus)
        view.__dict__.update(self.__dict__)
        view.tls_port = self.tls_port_without_move
        return view


def _wait_ready(server: Cyrus, timeout: float = 60) -> None:
    """Until a TLS login answers (the master forks its services after recovery)."""
    from imapclient import IMAPClient

    context = ssl.create_default_context(cafile=str(server.cert))
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            for port in (server.tls_port, server.tls_port_without_move):
                client = IMAPClient("127.0.0.1", port=port, ssl=True, ssl_context=context)
                client.logout()
            return
        except (OSError, ssl.SSLError) as exc:
            last = exc
            time.sleep(0.2)
    logs = podman("logs", server.container, check=False)
    raise RuntimeError(f"cyrus did not answer within {timeout} s ({last}): {logs.stderr[-2000:]}")


#: Master, its preforked imapd and idled, and the imapd of connections the tests left.
MAX_PROCESSES = 100


@contextmanager
def running_cyrus(root: Path, users: Iterable[str], locks: Path) -> Iterator[Cyrus]:
    """Cyrus serving ``users`` (password tests.dovecot.PASSWORD), removed on the way out."""
    build(IMAGE, REPO / "tests/containers/cyrus.Dockerfile", locks)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # mounted at /certs: Cyrus's imapd (user cyrus) reads the key there
    make_certificate(root)
    ports = {inside: free_port() for inside in (143, 993, 994)}
    container = f"cleaninbox-cyrus-{uuid.uuid4().hex[:8]}"
    published = [f"--publish=127.0.0.1:{host}:{inside}" for inside, host in ports.items()]
    podman(
        "run", "-d", "--name", container, *run_flags(),
        # slirp4netns: its port forwarder publishes on the host's loopback wherever podman
        # runs (the bridge's iptables forwarding does not on every host)
        "--network", "slirp4netns", *published,
        # Cyrus syncs every message and mailbox change to disk: on the CI machine, beside
        # an image build, that made one crash test take 27 min instead of 2. The mail
        # store and databases live in memory (podman copies the image's files up).
        "--tmpfs", "/var/lib/cyrus:rw,mode=0750", "--tmpfs", "/var/spool/cyrus:rw,mode=0755",
        "-v", f"{root}:/certs:ro", "-e", f"CYRUS_PASSWORD={PASSWORD}",
        IMAGE, *users,
    )  # fmt: skip
    server = Cyrus(root, container, ports)
    try:
        _wait_ready(server)
        yield server
        # A service master cannot run forks without end (idled listed as a service once
        # left about 2,000 processes and a core spinning for the whole CI run).
        processes = len(podman("top", container, "pid").stdout.splitlines()) - 1
        assert processes < MAX_PROCESSES, f"Cyrus ran {processes} processes at the end"
    finally:
        podman("rm", "--force", "--time", "5", container, check=False, timeout=60)
