"""No error reaches a user of the command line as a traceback (issue 16).

An error from outside the program (a server's, the network's, TLS, IMAP, the database's)
is one line ``cleaninbox: error: ...`` and exit status 1; a bug is one line
``cleaninbox: internal error: ...``, a line asking for a bug report and exit status 70;
``--debug`` (or ``CLEANINBOX_DEBUG=1``) shows the traceback. The commands that work
account by account (``once``, ``backfill``, ``check-config --connect``, ``undo``) give
each failing account its own line and still run the others.

Each command is driven through click's CliRunner with the function it calls made to
raise; one real process (``python -m daemon.cli once`` against a closed port) shows that
the real path ends the same way.
"""

from __future__ import annotations

import imaplib
import socket
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy.exc
from click.testing import CliRunner, Result

from daemon.cli import main
from daemon.cli.common import EX_SOFTWARE, exit_status
from daemon.config.settings import Settings
from daemon.core.cycle import CycleReport
from daemon.core.undo import UndoResult
from daemon.errors import ConfigError, MailboxError
from daemon.mailbox.base import Capabilities
from daemon.store.state import StateStore
from tests.scaffold import ENV, imap_account, write_settings

BUG_REPORT = (
    "cleaninbox: this is a bug in CleanInbox; please report it with the output of the "
    "same command run with --debug"
)

# (name, a fresh exception, what its line says after "account NAME: ", exit status)
ERRORS: list[tuple[str, Callable[[], Exception], str, int]] = [
    (
        "refused",
        lambda: ConnectionRefusedError(111, "Connection refused"),
        "ConnectionRefusedError: [Errno 111] Connection refused",
        1,
    ),
    (
        "tls",
        lambda: ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
        "ssl.SSLError: [SSL: WRONG_VERSION_NUMBER] wrong version number",
        1,
    ),
    (
        "imap",
        lambda: imaplib.IMAP4.error("STATUS command error: BAD [b'Unknown item']"),
        "imaplib.IMAP4.error: STATUS command error: BAD [b'Unknown item']",
        1,
    ),
    (
        "database",
        lambda: sqlalchemy.exc.OperationalError(
            "SELECT 1", {}, sqlite3.OperationalError("database is locked")
        ),
        "sqlalchemy.exc.OperationalError: database is locked",
        1,
    ),
    (
        "mailbox",  # names its account itself: named once
        lambda: MailboxError("account {a}: STATUS INBOX: server said BAD"),
        "STATUS INBOX: server said BAD",
        1,
    ),
    (
        "bug",  # what a server's HIGHESTMODSEQ without a number did to imap.py's status()
        lambda: TypeError("int() argument must be a string or a real number, not 'NoneType'"),
        "TypeError: int() argument must be a string or a real number, not 'NoneType'",
        EX_SOFTWARE,
    ),
]
CASES = pytest.mark.parametrize(
    ("make", "words", "status"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)


def raised(make: Callable[[], Exception], account: str | None) -> Exception:
    """A fresh exception; a mailbox error names ``account`` (when there is one)."""
    exc = make()
    if isinstance(exc, MailboxError):
        text = str(exc)
        return MailboxError(text.format(a=account) if account else text.split(": ", 1)[1])
    return exc


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(main, list(args))


def error_lines(result: Result) -> list[str]:
    """The command's own lines on stderr, after checking that nothing else is there but
    JSON log events and backfill's progress label: no traceback."""
    assert "Traceback" not in result.output, result.output
    assert isinstance(result.exception, SystemExit | None), repr(result.exception)
    lines = result.stderr.splitlines()
    assert all(line.startswith(("cleaninbox: ", "{", "backfill ")) for line in lines), lines
    return [line for line in lines if line.startswith("cleaninbox: ")]


def assert_lines(result: Result, failing: list[str | None], words: str, status: int) -> None:
    """Exit ``status``; one line per failing account (None: the command's own failure),
    then, for a bug, one request for a bug report."""
    assert result.exit_code == status, (result.exit_code, result.output)
    kind = "internal error" if status == EX_SOFTWARE else "error"
    expected = [f"cleaninbox: {kind}: {f'account {a}: ' if a else ''}{words}" for a in failing]
    lines = error_lines(result)
    if status == EX_SOFTWARE:
        assert BUG_REPORT in lines.pop(), lines
    assert [line.removesuffix(" (2 decision(s) not undone)") for line in lines] == expected


@pytest.fixture
def settings(tmp_path: Path) -> Path:
    """Three IMAP accounts; no model (the commands that need one have it replaced)."""
    accounts = [imap_account("u", 9, name=name, tls="none", allow_plaintext=True) for name in "abc"]
    return write_settings(tmp_path, tmp_path / "no-model", accounts)


class FakeService:
    """What ``once`` and ``backfill`` use of the service: each account's cycle fails with
    the exception given for it, or reports an empty cycle."""

    def __init__(self, settings: Settings, errors: dict[str, BaseException]) -> None:
        self.accounts = {a.name: a for a in settings.accounts}
        self.errors = errors
        self.dry_run = False
        self.cycled: list[str] = []

    def cycle(self, name: str, mode: object = None, progress: object = None) -> CycleReport:
        self.cycled.append(name)
        if name in self.errors:
            raise self.errors[name]
        return CycleReport(name)

    def close(self) -> None:
        pass


@dataclass
class Services:
    """The FakeServices ``once``/``backfill`` opened, and how their accounts fail."""

    errors: dict[str, BaseException] = field(default_factory=dict)
    made: list[FakeService] = field(default_factory=list)


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch) -> Services:
    services = Services()

    def open_service(settings: Settings, _dry_run: bool, **_kw: object) -> FakeService:
        services.made.append(FakeService(settings, services.errors))
        return services.made[-1]

    monkeypatch.setattr("daemon.cli.service.open_service", open_service)
    return services


@CASES
def test_once_gives_each_failing_account_one_line_and_runs_the_others(
    settings: Path, services: Services, make: Callable[[], Exception], words: str, status: int
) -> None:
    services.errors.update(a=raised(make, "a"), c=raised(make, "c"))
    result = run("once", "--config", str(settings))
    assert_lines(result, ["a", "c"], words, status)
    assert services.made[0].cycled == ["a", "b", "c"]  # b still ran, after a failed
    rows = {row.split()[0]: row for row in result.stdout.splitlines()[1:]}
    assert rows["b"].endswith(" ok") and "error: " in rows["a"] and "error: " in rows["c"]


@CASES
def test_backfill_failure_is_one_line(
    settings: Path, services: Services, make: Callable[[], Exception], words: str, status: int
) -> None:
    services.errors.update(b=raised(make, "b"))
    result = run("backfill", "--account", "b", "--config", str(settings))
    assert_lines(result, ["b"], words, status)


class FakeMailbox:
    """What check_logins uses of a mailbox; ``open`` fails with ``error`` when given."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.capabilities = Capabilities(move=True, uidplus=True, condstore=False, keywords=True)

    def open(self) -> None:
        if self.error is not None:
            raise self.error

    def folder_exists(self, _folder: str) -> bool:
        return True

    def probe(self, _folder: str) -> None:
        """No extension to try."""

    def close(self) -> None:
        pass


@CASES
def test_check_config_connect_gives_each_failing_account_one_line(
    settings: Path,
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[], Exception],
    words: str,
    status: int,
) -> None:
    loaded = SimpleNamespace(
        classifier=SimpleNamespace(version="v1", labels=["card_arrival"], threshold=0.5),
        rules=SimpleNamespace(spec=SimpleNamespace(rules=[]), folders=set),
    )
    monkeypatch.setattr("daemon.core.runtime.load", lambda _settings: loaded)
    errors = {"a": raised(make, "a"), "c": raised(make, "c")}
    monkeypatch.setattr(
        "daemon.service.faults.open_mailbox",
        lambda account, on_command=None: FakeMailbox(errors.get(account.name)),
    )
    result = run("check-config", "--connect", "--config", str(settings))
    status = 2 if status == 1 else status  # an account that cannot be used: bad settings
    assert_lines(result, ["a", "c"], words, status)
    assert "account b ok: MOVE yes, UIDPLUS yes, CONDSTORE no" in result.stdout


def failing_history(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def history(*_args: object, **_kw: object) -> list[object]:
        raise exc

    monkeypatch.setattr(StateStore, "history", history)


@pytest.fixture
def state(settings: Path) -> Path:
    """The settings' state database, created (history and undo need one)."""
    path = settings.parent / "var" / "state.db"
    path.parent.mkdir()
    with StateStore(path):
        pass
    return path


@CASES
def test_history_failure_is_one_line(
    settings: Path,
    state: Path,
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[], Exception],
    words: str,
    status: int,
) -> None:
    failing_history(monkeypatch, raised(make, None))
    result = run("history", "--config", str(settings))
    assert_lines(result, [None], words, status)  # the command's failure, not an account's


@CASES
def test_undo_gives_each_failing_account_one_line_and_undoes_the_others(
    settings: Path,
    state: Path,
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[], Exception],
    words: str,
    status: int,
) -> None:
    decisions = [
        SimpleNamespace(id=i, account=account, folder="Triage/All", message_id=f"<{i}@x>")
        for i, account in enumerate("abab", start=1)
    ]
    monkeypatch.setattr("daemon.core.undo.undoable", lambda *_a, **_kw: decisions)

    def undo(_store: object, todo: list[Any], _mailbox_for: object, **_kw: object) -> list[Any]:
        (d,) = todo
        if d.account == "a":
            raise raised(make, "a")
        return [UndoResult(d, "done", "moved back to INBOX")]

    monkeypatch.setattr("daemon.core.undo.undo", undo)
    result = run("undo", "--since", "1d", "--config", str(settings))
    assert_lines(result, ["a"], words, status)
    assert error_lines(result)[0].endswith(f"{words} (2 decision(s) not undone)")
    assert "b/Triage/All <2@x>: done" in result.stdout
    assert "b/Triage/All <4@x>: done" in result.stdout
    assert "2 undone, 0 failed, 2 not tried" in result.stdout


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(
    settings: Path, state: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    failing_history(monkeypatch, KeyError("folder"))
    args = ["history", "--config", str(settings)]
    result = run("--debug", *args) if how == "flag" else run(*args, env={"CLEANINBOX_DEBUG": "1"})
    assert result.exit_code == EX_SOFTWARE
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert "in history\n    raise exc\nKeyError: 'folder'" in result.stderr
    lines = result.stderr.splitlines()
    assert lines[-2] == "cleaninbox: internal error: KeyError: 'folder'"
    assert lines[-1].endswith("please report it with this output")


def test_debug_shows_each_failing_accounts_traceback(settings: Path, services: Services) -> None:
    services.errors.update(a=ConnectionResetError(104, "Connection reset by peer"))
    result = run("--debug", "once", "--config", str(settings))
    assert result.exit_code == 1
    assert result.stderr.count("Traceback (most recent call last):") == 1
    assert "ConnectionResetError: [Errno 104] Connection reset by peer\ncleaninbox: error: " in (
        result.stderr
    )


def test_ctrl_c_is_one_line_and_exit_130(
    settings: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_history(monkeypatch, KeyboardInterrupt())
    result = run("history", "--config", str(settings))
    assert (result.exit_code, result.stderr) == (130, "cleaninbox: interrupted\n")


def test_ctrl_c_stops_once_instead_of_moving_to_the_next_account(
    settings: Path, services: Services
) -> None:
    services.errors.update(a=KeyboardInterrupt())
    result = run("once", "--config", str(settings))
    assert (result.exit_code, result.stderr) == (130, "cleaninbox: interrupted\n")
    assert services.made[0].cycled == ["a"]


def test_sys_exit_keeps_its_status(
    settings: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_history(monkeypatch, SystemExit(5))
    result = run("history", "--config", str(settings))
    assert (result.exit_code, result.stderr) == (5, "")


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ConfigError("bad"), 2),
        (TimeoutError("timed out"), 1),
        (EOFError(), 1),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 1),
        (imaplib.IMAP4.abort("socket error: EOF"), 1),
        (sqlite3.DatabaseError("file is not a database"), 1),
        (sqlalchemy.exc.DatabaseError("SELECT 1", {}, sqlite3.DatabaseError("malformed")), 1),
        # Wrong SQL or wrong data from the program itself: bugs, though drivers raise them.
        (sqlite3.ProgrammingError("Incorrect number of bindings"), EX_SOFTWARE),
        (
            sqlalchemy.exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE")),
            EX_SOFTWARE,
        ),
        (AttributeError("'NoneType' object has no attribute 'uid'"), EX_SOFTWARE),
        (AssertionError(), EX_SOFTWARE),
    ],
    ids=repr,
)
def test_exit_status_tells_outside_errors_from_bugs(exc: BaseException, status: int) -> None:
    assert exit_status(exc) == status


def test_once_against_a_closed_port_is_one_line_in_a_real_process(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    """No monkeypatching: the real command, the real mailbox, a refused connection."""
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        account = imap_account("u", port, name="work", tls="none", allow_plaintext=True)
        config = write_settings(tmp_path, tiny_bundle, [account])
        result = subprocess.run(
            [sys.executable, "-m", "daemon.cli", "once", "--config", str(config)],
            capture_output=True,
            text=True,
            env=ENV,
            cwd=tmp_path,
            timeout=120,
        )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("cleaninbox:")]
    assert lines == [
        f"cleaninbox: error: account work: connect: connection to 127.0.0.1:{port} refused"
    ]
