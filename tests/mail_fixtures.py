"""Fixtures for tests against a real Dovecot started by the suite (integration, reliability)."""

from __future__ import annotations

import hashlib
import os
import random
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from imapclient import IMAPClient

from daemon.model.samples import render_email
from tests.dovecot import PASSWORD, Dovecot

RULES = {
    "version": 1,
    "groups": {},
    "rules": [
        {
            "name": "vip",
            "match": "*",
            "headers": {"subject": "URGENT"},
            "actions": ["flag", {"keyword": "$urgent"}],
            "continue": True,
        },
        {
            "name": "keep-here",
            "match": "*",
            "headers": {"from": "keep@"},
            "actions": [{"keyword": "$seen_by_triage"}],
        },
        {
            "name": "file-all",
            "match": "*",
            "actions": [{"keyword": "$intent_{intent}"}, {"move": "Triage/All"}],
        },
    ],
    "abstain": {"actions": [{"keyword": "$triage_review"}]},
}


USERS = [f"user{i:03d}" for i in range(64)]
_free_users = list(USERS)


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    server = Dovecot(tmp_path_factory.mktemp("dovecot"))
    # All users exist before Dovecot starts: its passwd-file reload after a change can lag
    # behind a login that follows the change within the same second.
    for name in USERS:
        server.add_user(name)
    server.start()
    yield server
    server.stop()


@dataclass
class MailUser:
    name: str
    server: Dovecot

    def client(self) -> IMAPClient:
        context = ssl.create_default_context(cafile=str(self.server.cert))
        c = IMAPClient("127.0.0.1", port=self.server.tls_port, ssl=True, ssl_context=context)
        c.login(self.name, PASSWORD)
        return c

    def append(self, raw: bytes, folder: str = "INBOX") -> None:
        with self.client() as c:
            c.append(folder, raw)

    def folders(self) -> list[str]:
        with self.client() as c:
            return [
                str(name) for flags, _delim, name in c.list_folders() if b"\\Noselect" not in flags
            ]

    def messages(self, folder: str) -> dict[str, dict[str, object]]:
        """Message-ID -> {uid, flags, raw} of every message in ``folder``."""
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


def take_user(dovecot: Dovecot) -> MailUser:
    """A mailbox user no other test has used."""
    if not _free_users:
        pytest.fail(f"all {len(USERS)} test mail users are taken; raise the pool size")
    return MailUser(_free_users.pop(0), dovecot)


@pytest.fixture
def mail_user(dovecot: Dovecot) -> MailUser:
    """A fresh mailbox user for each test."""
    return take_user(dovecot)


@pytest.fixture
def workdir(tmp_path: Path, tiny_bundle: Path, mail_user: MailUser, dovecot: Dovecot) -> Path:
    """cleaninbox.yaml + rules for ``mail_user``; the tiny bundle never abstains."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(RULES))
    settings = {
        "model": str(tiny_bundle),
        "rules": "rules.yaml",
        "state": "var/state.db",
        "poll_interval": 1,
        "jitter": 0,
        "log_format": "json",
        "http": {"enabled": False},
        "classifier": {"abstain_threshold": 0.0, "out_of_scope_threshold": 1.0},
        "accounts": [
            {
                "name": "work",
                "kind": "imap",
                "host": "127.0.0.1",
                "port": dovecot.tls_port,
                "tls": "implicit",
                "ca_file": str(dovecot.cert),
                "username": mail_user.name,
                "password_env": "CLEANINBOX_TEST_PASSWORD",
                "folders": ["INBOX"],
            }
        ],
    }
    (tmp_path / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
    return tmp_path


ENV = {**os.environ, "CLEANINBOX_TEST_PASSWORD": PASSWORD}


def cli(
    workdir: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``cleaninbox ARGS --config workdir/cleaninbox.yaml`` as a real process."""
    result = subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args, "--config", str(workdir / "cleaninbox.yaml")],
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        cwd=workdir,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` every 50 ms; seconds it took, or fail naming ``what``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


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
