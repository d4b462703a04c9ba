"""What the mail tests and the benchmarks build around a daemon, written once.

- the settings builder: ``write_settings`` and the account makers write the
  cleaninbox.yaml (and rules.yaml) a test or benchmark needs; ``edited_settings`` changes
  one in place;
- the daemon launcher: ``cli`` runs a command to completion, ``launch_daemon`` starts
  ``cleaninbox run`` (or any subcommand) in the background with a log file, waits until
  it is ready and stops it;
- the Dovecot + settings scaffold: ``scratch_mail`` gives the benchmarks, which run
  outside pytest, the same Dovecot and working directory the pytest fixtures in
  ``tests.mail_fixtures`` give the tests.

Benchmarks import this from the repository root (they put it on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.cyrus import Cyrus
from tests.dovecot import PASSWORD, Dovecot, running_dovecot
from tests.processes import stop_process, wait_for
from tests.proxy import Proxy

# Every rule kind the daemon has: flag + keyword that continue, a keyword that keeps the
# message where it is, and a move that files everything else into Triage/All.
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

PASSWORD_ENV = "CLEANINBOX_TEST_PASSWORD"
ENV = {**os.environ, PASSWORD_ENV: PASSWORD}

# The tiny test bundle is not calibrated: these thresholds make it act on every message,
# so a test's outcome does not hang on the model's confidence.
NEVER_ABSTAIN = {"abstain_threshold": 0.0, "out_of_scope_threshold": 1.0}


def imap_account(
    username: str, port: int, *, name: str = "work", ca_file: Path | None = None, **extra: Any
) -> dict[str, Any]:
    """An account on a server at 127.0.0.1:``port`` logging in with the test password."""
    account: dict[str, Any] = {
        "name": name,
        "host": "127.0.0.1",
        "port": port,
        "username": username,
        "password_env": PASSWORD_ENV,
    }
    if ca_file is not None:
        account["ca_file"] = str(ca_file)
    return {**account, **extra}


def dovecot_account(server: Dovecot | Cyrus, username: str, **extra: Any) -> dict[str, Any]:
    """An account on ``server`` (the suite's Dovecot, or Cyrus: tests/cyrus.py) over
    implicit TLS, trusting its throwaway certificate."""
    return imap_account(username, server.tls_port, ca_file=server.cert, **extra)


def proxied_account(proxy: Proxy, username: str, **extra: Any) -> dict[str, Any]:
    """An account reaching Dovecot through the test proxy, in plain text so faults show."""
    return imap_account(username, proxy.port, tls="none", allow_plaintext=True, **extra)


def write_settings(
    workdir: Path,
    model: Path | str,
    accounts: list[dict[str, Any]],
    *,
    rules: dict[str, Any] | Path = RULES,
    **options: Any,
) -> Path:
    """Write workdir/cleaninbox.yaml (and rules.yaml for a rule set); the settings' path.

    State goes under workdir/var and HTTP is off unless ``options`` say otherwise;
    ``rules`` may instead name an existing rules file.
    """
    settings: dict[str, Any] = {
        "model": str(model),
        "rules": "rules.yaml",
        "state": "var/state.db",
        "http": {"enabled": False},
        **options,
        "accounts": accounts,
    }
    if isinstance(rules, Path):
        settings["rules"] = str(rules)
    else:
        (workdir / "rules.yaml").write_text(yaml.safe_dump(rules))
    path = workdir / "cleaninbox.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@contextmanager
def edited_settings(workdir: Path) -> Iterator[dict[str, Any]]:
    """workdir/cleaninbox.yaml as a dict; what the block changes is written back."""
    path = workdir / "cleaninbox.yaml"
    settings: dict[str, Any] = yaml.safe_load(path.read_text())
    yield settings
    path.write_text(yaml.safe_dump(settings))


def daemon_command(workdir: Path, *args: str) -> list[str]:
    """``cleaninbox ARGS --config workdir/cleaninbox.yaml`` with this interpreter."""
    return [sys.executable, "-m", "daemon.cli", *args, "--config", str(workdir / "cleaninbox.yaml")]


def cli(
    workdir: Path,
    *args: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float | None = 300,
) -> subprocess.CompletedProcess[str]:
    """``cleaninbox ARGS --config workdir/cleaninbox.yaml`` as a real process, run to its end."""
    result = subprocess.run(
        daemon_command(workdir, *args),
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        cwd=workdir,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


@dataclass
class Daemon:
    """A daemon process started by :func:`launch_daemon`, its output in ``log_path``."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines (log_format: json), in order."""
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (SIGKILL after ``timeout``); its exit status, 0 for a clean shutdown."""
        return stop_process(self.process, timeout)


def launch_daemon(
    workdir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ready: Callable[[], bool] | None = None,
    timeout: float = 30,
    what: str = "the daemon to be ready",
) -> Daemon:
    """Start ``cleaninbox ARGS`` (default ``run``) in workdir, logging to daemon.log.

    With ``ready``, wait up to ``timeout`` s until it holds (failing the caller, with the
    daemon stopped, when it never does).
    """
    log_path = workdir / "daemon.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            daemon_command(workdir, *(args or ("run",))),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**ENV, **(env or {})},
            cwd=workdir,
        )
    daemon = Daemon(process, log_path)
    if ready is not None:
        try:
            wait_for(ready, timeout, what)
        except BaseException:
            daemon.stop()
            raise
    return daemon


@dataclass
class ScratchMail:
    """A running mail server and an empty daemon working directory under one root."""

    root: Path
    server: Dovecot | Cyrus
    work: Path

    def account(self, username: str, **extra: Any) -> dict[str, Any]:
        return dovecot_account(self.server, username, **extra)

    def write_settings(self, model: Path, accounts: list[dict[str, Any]], **options: Any) -> Path:
        return write_settings(self.work, model, accounts, **options)


@contextmanager
def scratch_mail(
    prefix: str, users: Iterable[str], server: str = "dovecot"
) -> Iterator[ScratchMail]:
    """The benchmarks' mail server (Dovecot on the host, or Cyrus in a container:
    tests/cyrus.py) + working directory, kept afterwards for a look at them."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    work = root / "work"
    work.mkdir()
    running: AbstractContextManager[Dovecot | Cyrus]
    if server == "cyrus":
        from tests.cyrus import running_cyrus

        running = running_cyrus(root / "cyrus", users, locks=root)
    else:
        running = running_dovecot(root / "dovecot", users)
    with running as started:
        yield ScratchMail(root, started, work)
