"""Crash at every point (issue 4, test 1): SIGKILL the real daemon process at its n-th
state write and at its n-th IMAP command, for every n over a 20-message batch; restart;
the invariant holds. Then random kills during a longer run (CI-sized; the full-size run
is benchmarks/reliability_full.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from daemon.service.faults import KILL_AT_COMMAND, KILL_AT_WRITE
from daemon.store.state import StateStore
from tests.cyrus import Cyrus
from tests.dovecot import Dovecot
from tests.mail_fixtures import USERS, MailUser, cli, take_user
from tests.reliability.invariant import check, seed_messages
from tests.scaffold import edited_settings

DESTINATION = "Triage/All"


def reset(user: MailUser, workdir: Path) -> None:
    """An empty INBOX, no other folders, fresh state that starts at INBOX's UIDNEXT."""
    with user.client() as client:
        for _flags, _delim, name in sorted(client.list_folders(), key=lambda f: -len(f[2])):
            if name != "INBOX" and client.folder_exists(name):
                client.delete_folder(name)
        client.select_folder("INBOX")
        uids = client.search("ALL")
        if uids:
            client.add_flags(uids, [b"\\Deleted"])
            client.expunge()
        info = client.select_folder("INBOX")
    var = workdir / "var"
    for name in ("state.db", "state.db-wal", "state.db-shm", "state.db.lock"):
        (var / name).unlink(missing_ok=True)
    with StateStore(var / "state.db") as store:
        store.set_folder("work", "INBOX", int(info[b"UIDVALIDITY"]), int(info[b"UIDNEXT"]) - 1)


def kill_at_every_point(hook: str, user: MailUser, workdir: Path, prefix: str) -> None:
    """Kill at the n-th write/command for n = 1, 2, ... until a cycle gets past them all."""
    crashes = 0
    for n in range(1, 60):
        reset(user, workdir)
        seeds = seed_messages(user, 20, f"{prefix}{hook[-7:].lower()}{n}")
        crashed = cli(workdir, "once", check=False, env={hook: str(n)})
        if crashed.returncode == 0:
            check(user, workdir, seeds, destinations={DESTINATION})
            break  # n is past the last write/command of the cycle
        assert crashed.returncode == -9, (n, crashed.stdout, crashed.stderr)
        crashes += 1
        cli(workdir, "once")  # restart: reconcile and finish
        check(user, workdir, seeds, destinations={DESTINATION}, rerun=n % 5 == 0)
    else:
        pytest.fail("the cycle never completed")
    assert crashes >= (3 if hook == KILL_AT_WRITE else 10), crashes


#: Writes to the state are the same whatever the server; commands are killed on both.
HOOKS_AND_SERVERS = pytest.mark.parametrize(
    ("hook", "mail_server"),
    [
        (KILL_AT_WRITE, "dovecot"),
        (KILL_AT_COMMAND, "dovecot"),
        pytest.param(KILL_AT_COMMAND, "cyrus", marks=pytest.mark.containers),
    ],
    indirect=["mail_server"],
)


@HOOKS_AND_SERVERS
def test_kill_at_every_point_of_a_batch(hook: str, workdir: Path, mail_user: MailUser) -> None:
    kill_at_every_point(hook, mail_user, workdir, "")


def test_random_kills_during_a_long_run(workdir: Path, mail_user: MailUser) -> None:
    reset(mail_user, workdir)
    with edited_settings(workdir) as settings:
        settings["accounts"][0]["batch_size"] = 10  # several batches per cycle
    seeds = seed_messages(mail_user, 100, "random")
    rng = random.Random(4)
    kills = 0
    for _attempt in range(80):
        hook = rng.choice([KILL_AT_WRITE, KILL_AT_COMMAND])
        run = cli(workdir, "once", check=False, env={hook: str(rng.randint(1, 12))})
        if run.returncode == 0:
            break
        assert run.returncode == -9, (run.stdout, run.stderr)
        kills += 1
    else:
        pytest.fail("never completed a run")
    cli(workdir, "once")
    assert kills >= 5, kills
    check(mail_user, workdir, seeds, destinations={DESTINATION})


@pytest.mark.parametrize(
    ("hook", "server"),
    [
        (KILL_AT_WRITE, "dovecot"),
        (KILL_AT_COMMAND, "dovecot"),
        pytest.param(KILL_AT_COMMAND, "cyrus", marks=pytest.mark.containers),
    ],
)
def test_kill_at_every_point_on_the_copy_fallback(
    hook: str, server: str, workdir: Path, request: pytest.FixtureRequest
) -> None:
    """The same on a server without MOVE: COPY + STORE \\Deleted + UID EXPUNGE."""
    backend: Dovecot | Cyrus
    if server == "dovecot":
        backend = request.getfixturevalue("dovecot_without_move")
        user = MailUser(USERS[2 if hook == KILL_AT_WRITE else 3], backend)
    else:  # Cyrus's port without MOVE, on the same mail store as the main one
        backend = request.getfixturevalue("cyrus").without_move()
        user = take_user(backend)
    with edited_settings(workdir) as settings:
        settings["accounts"][0].update(
            username=user.name, port=backend.tls_port, ca_file=str(backend.cert)
        )
    with user.client() as client:
        assert b"MOVE" not in client.capabilities()
    kill_at_every_point(hook, user, workdir, "fb-")
