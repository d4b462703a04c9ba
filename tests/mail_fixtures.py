"""Fixtures for tests against a real Dovecot started by the suite (integration, reliability)."""

from __future__ import annotations

import hashlib
import random
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from imapclient import IMAPClient

from daemon.model.samples import render_email
from tests.cyrus import Cyrus, running_cyrus
from tests.dovecot import PASSWORD, Dovecot, running_dovecot
from tests.podman import require_podman, shared_dir
from tests.processes import wait_for
from tests.scaffold import ENV, NEVER_ABSTAIN, RULES, cli, dovecot_account, write_settings

# ENV, RULES, cli and wait_for live in tests.scaffold and tests.processes; many tests
# import them from here, with the fixtures, so they stay part of this module's interface.
__all__ = [
    "ENV",
    "RULES",
    "SERVERS",
    "USERS",
    "MailServer",
    "MailUser",
    "cli",
    "cyrus",
    "dovecot",
    "email",
    "mail_server",
    "mail_user",
    "mid",
    "snapshot",
    "take_user",
    "wait_for",
    "workdir",
]

USERS = [f"user{i:03d}" for i in range(128)]
#: Users no test has taken yet, per server.
_free_users: dict[str, list[str]] = {}


class MailServer(Protocol):
    """What accounts and test clients use of a server the suite runs (Dovecot, Cyrus)."""

    name: str
    port: int
    tls_port: int
    cert: Path

    def native(self, folder: str) -> str: ...

    def logical(self, name: str) -> str: ...


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    with running_dovecot(tmp_path_factory.mktemp("dovecot"), USERS) as server:
        yield server


@pytest.fixture(scope="session")
def cyrus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cyrus]:
    """Cyrus IMAP in a container (tests/cyrus.py), one per session (per xdist worker)."""
    require_podman()
    root = tmp_path_factory.mktemp("cyrus")
    with running_cyrus(root, USERS, shared_dir(tmp_path_factory)) as server:
        yield server


#: The servers the core scenarios run against, for
#: ``parametrize("mail_server", SERVERS, indirect=True)``: Cyrus needs a container engine.
SERVERS = ["dovecot", pytest.param("cyrus", marks=pytest.mark.containers)]


@pytest.fixture
def mail_server(request: pytest.FixtureRequest) -> MailServer:
    """The suite's Dovecot, unless a test parametrises it (``SERVERS``)."""
    server: MailServer = request.getfixturevalue(str(getattr(request, "param", "dovecot")))
    return server


@dataclass
class MailUser:
    name: str
    server: MailServer

    def client(self) -> IMAPClient:
        context = ssl.create_default_context(cafile=str(self.server.cert))
        c = IMAPClient("127.0.0.1", port=self.server.tls_port, ssl=True, ssl_context=context)
        c.login(self.name, PASSWORD)
        return c

    def append(self, raw: bytes, folder: str = "INBOX") -> None:
        with self.client() as c:
            c.append(self.server.native(folder), raw)

    def folders(self) -> list[str]:
        """The user's folders as the rules name them."""
        with self.client() as c:
            return [
                self.server.logical(str(name))
                for flags, _delim, name in c.list_folders()
                if b"\\Noselect" not in flags
            ]

    def messages(self, folder: str) -> dict[str, dict[str, object]]:
        """Message-ID -> {uid, flags, raw} of every message in ``folder`` (as the rules
        name it)."""
        folder = self.server.native(folder)
        with self.client() as c:
            if not c.folder_exists(folder):
                return {}
            c.select_folder(folder, readonly=True)
            uids = c.search("ALL")
            out: dict[str, dict[str, object]] = {}
            if not uids:
                return out
            for uid, data in c.fetch(uids, ["BODY.PEEK[]", "FLAGS"]).items():
                raw = data[b"BODY[]"]
                head = raw.split(b"\r\n\r\n", 1)[0]
                mid = next(
                    (
                        line.split(b":", 1)[1].strip().decode("utf-8", "replace")
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"message-id:")
                    ),
                    f"uid-{uid}",
                )
                out[mid] = {"uid": uid, "flags": {f.decode() for f in data[b"FLAGS"]}, "raw": raw}
            return out


def take_user(server: MailServer) -> MailUser:
    """A mailbox user no other test has used on ``server``."""
    free = _free_users.setdefault(server.name, list(USERS))
    if not free:
        pytest.fail(f"all {len(USERS)} test mail users are taken; raise the pool size")
    return MailUser(free.pop(0), server)


@pytest.fixture
def mail_user(mail_server: MailServer) -> MailUser:
    """A fresh mailbox user for each test, on ``mail_server``."""
    return take_user(mail_server)


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """The state's engine for ``workdir``: sqlite unless a test parametrises it
    (``@pytest.mark.parametrize("engine", ENGINES, indirect=True)``)."""
    return str(getattr(request, "param", "sqlite"))


#: Both state engines, for ``parametrize("engine", ENGINES, indirect=True)``.
ENGINES = ["sqlite", "postgresql"]


@pytest.fixture
def workdir(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    tiny_bundle: Path,
    mail_user: MailUser,
    mail_server: MailServer,
    engine: str,
) -> Path:
    """cleaninbox.yaml + rules for ``mail_user``; the tiny bundle never abstains. The
    state is a SQLite file under var/, or a fresh PostgreSQL schema (``engine``)."""
    state: dict[str, Any] = {}
    if engine == "postgresql":
        # a short lease: a SIGKILLed one-shot command's lease expires quickly
        state = {"state": request.getfixturevalue("pg_server").schema_url(), "lease_ttl": 3}
    account = dovecot_account(
        mail_server, mail_user.name, kind="imap", tls="implicit", folders=["INBOX"]
    )
    write_settings(
        tmp_path,
        tiny_bundle,
        [account],
        poll_interval=1,
        jitter=0,
        log_format="json",
        classifier=NEVER_ABSTAIN,
        **state,
    )
    return tmp_path


def email(query: str, seed: int, **headers: str) -> bytes:
    rng = random.Random(seed)
    raw = render_email(query, rng, style="plain", extra_headers=None)
    for key, value in headers.items():
        raw = raw.replace(f"{key}: ".encode(), f"X-Old-{key}: ".encode(), 1)
        raw = f"{key}: {value}\r\n".encode() + raw
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def mid(raw: bytes) -> str:
    for line in raw.split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    raise AssertionError("no Message-ID")


def snapshot(user: MailUser) -> dict[str, object]:
    return {
        folder: {
            m: (v["flags"] - {"\\Recent"}, hashlib.sha256(v["raw"]).hexdigest())  # type: ignore[arg-type]
            for m, v in user.messages(folder).items()
        }
        for folder in ("INBOX", "Triage/All")
    }
