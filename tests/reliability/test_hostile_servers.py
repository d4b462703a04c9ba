"""Hostile IMAP servers (issue 16): the deviations real servers show, each answered by a
scripted peer (tests/hostile_peer.py) to real cycles of the daemon, and the contract
(docs/reliability.md, "Hostile servers: the contract") asserted for each:

- no crash and no traceback, whatever the server answers;
- an answer that cannot be interpreted fails that message (left for the next cycle),
  folder or account for this cycle, with ONE log line that names the command and quotes
  the server's words;
- never an action on a message whose identity or content is unsure;
- an advertised extension the server gets wrong is no longer used, logged once;
- where the answer is merely different but valid, the mail is triaged;
- and always the exactly-once invariant (tests/reliability/invariant.py): nothing lost,
  duplicated or altered, the state agreeing with the server, a rerun doing nothing.

Each test is one ``cleaninbox once`` as the CLI runs it (the service in this process, so
that its log events can be captured): a first start, a hostile cycle over freshly
delivered mail, then cycles against the same server behaving, which must finish the job.
``seen_on`` names a server known to show the behaviour, where one is known.
"""

from __future__ import annotations

import hashlib
import random
import re
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import stamina
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from daemon.config.settings import load_settings
from daemon.core.accounting import CycleReport
from daemon.model.samples import render_email
from daemon.service.supervisor import Service
from tests.hostile_peer import (
    CAPABILITIES,
    CLOSE,
    MUTATIONS,
    Answer,
    Deviation,
    HostilePeer,
    Mutator,
    PeerUser,
    Refusal,
    each,
    fetch_uid,
    limited,
    literal_sub,
    on,
    refuse,
    text_sub,
)
from tests.reliability.invariant import SEED_HEADER, Seed, examine, journal, locate
from tests.scaffold import NEVER_ABSTAIN, PASSWORD_ENV, cli, imap_account
from tests.scaffold import write_settings as write_daemon_settings

PASSWORD = "hostile-secret"
DESTINATION = "Triage/All"
Outcome = Literal["triaged", "held", "account", "refused", "later"]
Hook = Callable[["Hostile"], object]


@dataclass(frozen=True)
class Case:
    """One deviation. ``outcome`` of the hostile cycle: ``triaged`` (all mail filed),
    ``held`` (the messages whose answer was unsure are left, undecided, for the next
    cycle; the rest filed), ``account`` (the cycle fails for the account, nothing done),
    ``refused`` (the server refused the action: recorded as failed, left in place),
    ``later`` (nothing seen this cycle, nothing done). ``says``: the command and the
    server's words the one line (one per message for held/refused) must carry."""

    id: str
    behaviour: str
    seen_on: str
    outcome: Outcome
    deviation: Callable[[HostilePeer, str], Deviation] | None = None
    refusal: Callable[[], Refusal] | None = None
    says: tuple[str, str] | None = None
    lines: int | None = None  # lines quoting the server, when not one per outcome
    before: Hook | None = None  # runs after the first start
    between: Hook | None = None  # runs between hostile cycles
    cycles: int = 1  # hostile cycles
    capabilities: str = CAPABILITIES
    delimiter: str | None = "/"
    prefix: str = ""  # the personal namespace's
    feedback: bool = False
    no_message_id: bool = False


def fixed(deviation: Deviation) -> Callable[[HostilePeer, str], Deviation]:
    return lambda _peer, _user: deviation


def sub(prefix: str, pattern: bytes, replacement: bytes) -> Callable[[HostilePeer, str], Deviation]:
    """Rewrite the text (never the mail) of answers to commands starting with ``prefix``."""
    return fixed(on(prefix, each(lambda r: text_sub(pattern, replacement, r))))


def content(rewrite: Callable[[Answer], Answer]) -> Callable[[HostilePeer, str], Deviation]:
    """Rewrite the answers to the cycle's content fetches (UID FETCH of BODY.PEEK[]<...>)."""

    def deviation(command: str, answer: Answer) -> Answer:
        return rewrite(answer) if "BODY.PEEK[]<" in command.upper() else answer

    return fixed(deviation)


def fetches(
    change: Callable[[bytes], bytes], first_only: bool = False
) -> Callable[[Answer], Answer]:
    """Apply ``change`` to the FETCH responses of an answer (or to the first one)."""

    def rewrite(answer: Answer) -> Answer:
        out, done = [], False
        for response in answer:
            changing = bool(fetch_uid(response)) and not (first_only and done)
            out.append(change(response) if changing else response)
            done = done or changing
        return out

    return rewrite


def insert(*responses: bytes) -> Callable[[Answer], Answer]:
    """Untagged responses put first in an answer (unsolicited, or out of order)."""
    return lambda answer: [*responses, *answer]


def body(change: Callable[[bytes], bytes | None]) -> Callable[[bytes], bytes]:
    return lambda response: literal_sub(b"BODY[]<0>", change, response)


def identity(change: Callable[[bytes], bytes | None]) -> Callable[[bytes], bytes]:
    return lambda response: literal_sub(b"BODY[HEADER.FIELDS (MESSAGE-ID)]", change, response)


def item(pattern: bytes, replacement: bytes) -> Callable[[bytes], bytes]:
    return lambda response: text_sub(pattern, replacement, response)


def duplicate(change: Callable[[bytes], bytes]) -> Callable[[Answer], Answer]:
    """The first FETCH response sent twice, the second time through ``change``."""

    def rewrite(answer: Answer) -> Answer:
        at = next(i for i, r in enumerate(answer) if fetch_uid(r))
        return [*answer[: at + 1], change(answer[at]), *answer[at + 1 :]]

    return rewrite


def renumber(peer: HostilePeer, user: str) -> Deviation:
    """At the next SELECT of INBOX, the server renumbers it: a new UIDVALIDITY, new UIDs."""
    done = [False]

    def deviation(command: str, answer: Answer) -> Answer:
        if done[0] or not command.upper().startswith('SELECT "INBOX"'):
            return answer
        done[0] = True
        box = peer.stores[user].folders["INBOX"]
        old = dict(box.messages)
        box.uidvalidity += 500
        box.messages.clear()
        box.uidnext += 10
        for uid in sorted(old):
            box.add(old[uid])
        return [
            text_sub(rb"\[UIDVALIDITY \d+\]", b"[UIDVALIDITY %d]" % box.uidvalidity, r)
            for r in (
                text_sub(rb"\[UIDNEXT \d+\]", b"[UIDNEXT %d]" % box.uidnext, r) for r in answer
            )
        ]

    return deviation


def hide_destination(peer: HostilePeer, user: str) -> Deviation:
    """Triage/All exists, but LIST does not show it."""
    return on("LIST", lambda answer: [r for r in answer if DESTINATION.encode() not in r])


def create_destination(run: Hostile) -> None:
    run.peer.stores[run.user].create(run.peer.server_name(DESTINATION))


def mail_already_filed(run: Hostile) -> None:
    """Earlier cycles filed mail: the high-water mark is above UID 1."""
    run.seed(3, "earlier")
    run.once()


def user_changes_a_keyword(run: Hostile) -> None:
    """The user gives a filed message another intent keyword (CONDSTORE sees it)."""
    peer = run.peer
    with peer.lock:
        store = peer.stores[run.user]
        message = next(iter(store.folders[peer.server_name(DESTINATION)].messages.values()))
        message.flags = {f for f in message.flags if not f.startswith("$intent_")}
        message.flags.add("$intent_card_arrival")
        store.bump(message)


def refuse_if(words: str, status: str) -> Callable[[], Refusal]:
    return lambda: lambda command: status if words in command.upper() else None


NO_MOVE = CAPABILITIES.replace(" MOVE", "")
BYE = [b"* BYE System Error\r\n", CLOSE]

CASES = [
    # -- SELECT --------------------------------------------------------------------------------
    Case(
        "select-without-uidnext",
        "SELECT answers no UIDNEXT",
        "servers written to RFC 2060, which did not require it",
        "triaged",
        fixed(on('SELECT "INBOX"', lambda a: [r for r in a if b"[UIDNEXT" not in r])),
    ),
    Case(
        "select-uidnext-nil",
        "SELECT answers UIDNEXT NIL",
        "",
        "triaged",
        sub('SELECT "INBOX"', rb"\[UIDNEXT \d+\]", b"[UIDNEXT NIL]"),
    ),
    Case(
        "select-without-uidvalidity",
        "SELECT answers no UIDVALIDITY: stored UIDs cannot be trusted",
        "",
        "account",
        fixed(on('SELECT "INBOX"', lambda a: [r for r in a if b"[UIDVALIDITY" not in r])),
        says=("SELECT INBOX", "Select completed"),
    ),
    Case(
        "select-uidvalidity-quoted",
        'SELECT answers UIDVALIDITY as a string ("1001")',
        "",
        "triaged",
        sub('SELECT "INBOX"', rb"\[UIDVALIDITY (\d+)\]", rb'[UIDVALIDITY "\1"]'),
    ),
    Case(
        "select-two-uidvalidities",
        "SELECT answers two different UIDVALIDITYs (one stale, out of order)",
        "",
        "account",
        fixed(on('SELECT "INBOX"', insert(b"* OK [UIDVALIDITY 77] stale\r\n"))),
        says=("SELECT INBOX", "UIDVALIDITY 77"),
    ),
    Case(
        "select-highestmodseq-nil",
        "SELECT answers HIGHESTMODSEQ NIL though CONDSTORE is advertised",
        "",
        "triaged",
        sub('SELECT "INBOX"', rb"\[HIGHESTMODSEQ \d+\]", b"[HIGHESTMODSEQ NIL]"),
        says=("SELECT INBOX", "HIGHESTMODSEQ NIL"),
    ),
    Case(
        "select-out-of-order",
        "SELECT's untagged responses in reverse order",
        "",
        "triaged",
        fixed(on("SELECT", lambda a: [*reversed(a[:-1]), a[-1]])),
    ),
    Case(
        "select-unsolicited",
        "unsolicited EXISTS and EXPUNGE in the middle of SELECT's answer",
        "any server while mail is delivered or deleted (RFC 3501 allows them)",
        "triaged",
        fixed(on("SELECT", insert(b"* 1 EXPUNGE\r\n", b"* 40 EXISTS\r\n"))),
    ),
    Case(
        "select-not-connected",
        "SELECT answered BAD 'User is authenticated but not connected.'",
        "Outlook.com / Exchange Online",
        "account",
        refusal=lambda: refuse('SELECT "INBOX"', "BAD User is authenticated but not connected.", 1),
        says=("SELECT INBOX", "User is authenticated but not connected"),
    ),
    Case(
        "uidvalidity-changed",
        "UIDVALIDITY changes between cycles, every UID renumbered",
        "Exchange / Outlook.com after a mailbox move; Dovecot after its index is rebuilt",
        "triaged",
        renumber,
    ),
    Case(
        "uidnext-backwards",
        "UIDNEXT goes backwards (below UIDs already seen) with the same UIDVALIDITY",
        "",
        "triaged",
        sub('SELECT "INBOX"', rb"\[UIDNEXT \d+\]", b"[UIDNEXT 1]"),
        says=("SELECT INBOX", "UIDNEXT 1"),
        before=mail_already_filed,
    ),
    # -- STATUS (the destination's UIDNEXT, before acting) -------------------------------------
    Case(
        "status-highestmodseq-nil",
        "STATUS answers HIGHESTMODSEQ NIL (issue 16: it crashed `once` with a TypeError)",
        "a third-party server with partial CONDSTORE support (issue 16)",
        "triaged",
        sub("STATUS", rb"HIGHESTMODSEQ \d+", b"HIGHESTMODSEQ NIL"),
        says=("STATUS Triage/All", "HIGHESTMODSEQ NIL"),
    ),
    Case(
        "status-without-highestmodseq",
        "STATUS leaves out HIGHESTMODSEQ, though asked",
        "",
        "triaged",
        sub("STATUS", rb" HIGHESTMODSEQ \d+", b""),
    ),
    Case(
        "status-without-uidnext",
        "STATUS leaves out UIDNEXT",
        "",
        "account",
        sub("STATUS", rb"UIDNEXT \d+ ", b""),
        says=("STATUS Triage/All", '* STATUS "Triage/All"'),
    ),
    Case(
        "status-uidnext-quoted",
        'STATUS answers UIDNEXT as a string ("7")',
        "",
        "triaged",
        sub("STATUS", rb"UIDNEXT (\d+)", rb'UIDNEXT "\1"'),
    ),
    Case(
        "status-other-folder-after",
        "an unsolicited STATUS about another folder after the one asked for",
        "servers with NOTIFY or LIST-STATUS sending updates",
        "triaged",
        fixed(on("STATUS", lambda a: [*a[:-1], b'* STATUS "INBOX" (UIDNEXT 4242)\r\n', a[-1]])),
    ),
    Case(
        "status-other-folder-only",
        "STATUS answers about another folder only",
        "",
        "account",
        sub("STATUS", rb'STATUS "Triage/All"', b'STATUS "INBOX"'),
        says=("STATUS Triage/All", '* STATUS "INBOX"'),
    ),
    Case(
        "status-bad-highestmodseq",
        "BAD to STATUS (HIGHESTMODSEQ) though CONDSTORE is advertised",
        "",
        "triaged",
        refusal=refuse_if("HIGHESTMODSEQ", "BAD Unknown STATUS item"),
        says=("STATUS Triage/All", "Unknown STATUS item"),
    ),
    Case(
        "status-without-response",
        "STATUS completes without its untagged STATUS response",
        "",
        "account",
        fixed(on("STATUS", lambda a: a[-1:])),
        says=("STATUS Triage/All", "Status completed"),
    ),
    # -- UID SEARCH ----------------------------------------------------------------------------
    Case(
        "search-duplicate-uids",
        "UID SEARCH lists every UID twice",
        "",
        "triaged",
        sub("UID SEARCH", rb" (\d+)", rb" \1 \1"),
    ),
    Case(
        "search-phantom-uid",
        "UID SEARCH lists a UID that does not exist (far above UIDNEXT)",
        "",
        "triaged",
        sub("UID SEARCH UID", rb"(\* SEARCH[ \d]*)\r\n", rb"\1 999999\r\n"),
    ),
    Case(
        "search-word-among-numbers",
        "UID SEARCH answers a word among the numbers",
        "",
        "account",
        sub("UID SEARCH UID", rb"\* SEARCH", b"* SEARCH not-a-number"),
        says=("UID SEARCH", "not-a-number"),
    ),
    Case(
        "search-without-response",
        "UID SEARCH completes without its untagged SEARCH response",
        "",
        "later",
        fixed(limited(on("UID SEARCH UID", lambda a: a[-1:]))),
    ),
    # -- UID FETCH -----------------------------------------------------------------------------
    Case(
        "fetch-without-uid",
        "a FETCH response to UID FETCH without its UID item",
        "",
        "held",
        content(fetches(item(rb"UID \d+ ", b""), first_only=True)),
        says=("UID FETCH", "FETCH (BODY[]<0>"),
    ),
    Case(
        "fetch-never-uid",
        "no FETCH response to UID FETCH carries its UID",
        "",
        "held",
        content(fetches(item(rb"UID \d+ ", b""))),
        says=("UID FETCH", "FETCH (BODY[]<0>"),
    ),
    Case(
        "fetch-foreign-uid",
        "FETCH data for a UID that was not asked for",
        "",
        "triaged",
        content(duplicate(item(rb"UID \d+", b"UID 999999"))),
    ),
    Case(
        "fetch-unsolicited-flags",
        "an unsolicited FETCH (FLAGS) without UID amid the answer",
        "servers reporting other clients' flag changes (RFC 3501 allows it)",
        "triaged",
        content(insert(b"* 1 FETCH (FLAGS (\\Seen))\r\n")),
    ),
    Case(
        "fetch-conflicting-duplicate",
        "two FETCH responses for one UID with different bodies",
        "",
        "held",
        content(duplicate(body(lambda data: data.replace(b"Subject:", b"Subject: other")))),
        says=("UID FETCH", "BODY[]<0>"),
    ),
    Case(
        "fetch-identical-duplicate",
        "the same FETCH response sent twice",
        "",
        "triaged",
        content(duplicate(lambda response: response)),
    ),
    Case(
        "fetch-body-nil",
        "BODY[]<0> answered NIL",
        "",
        "held",
        content(fetches(body(lambda _data: None), first_only=True)),
        says=("UID FETCH", "BODY[]<0> NIL"),
    ),
    Case(
        "fetch-body-empty",
        "BODY[]<0> answered empty though RFC822.SIZE says more",
        "",
        "held",
        content(fetches(body(lambda _data: b""), first_only=True)),
        says=("UID FETCH", "BODY[]<0> {0}"),
    ),
    Case(
        "fetch-body-cut-in-header",
        "BODY[]<0> shorter than promised, cut inside the header",
        "",
        "held",
        content(fetches(body(lambda data: data[:20]), first_only=True)),
        says=("UID FETCH", "BODY[]<0> {20}"),
    ),
    Case(
        "fetch-body-cut-in-text",
        "BODY[]<0> shorter than promised, cut after the header",
        "",
        "triaged",
        content(fetches(body(lambda data: data[: data.index(b"\r\n\r\n") + 12]))),
    ),
    Case(
        "fetch-size-missing",
        "RFC822.SIZE left out",
        "",
        "triaged",
        content(fetches(item(rb"RFC822\.SIZE \d+ ?", b""))),
    ),
    Case(
        "fetch-size-nil",
        "RFC822.SIZE answered NIL",
        "",
        "triaged",
        content(fetches(item(rb"RFC822\.SIZE \d+", b"RFC822.SIZE NIL"))),
    ),
    Case(
        "fetch-size-quoted",
        'RFC822.SIZE answered as a string ("377")',
        "",
        "triaged",
        content(fetches(item(rb"RFC822\.SIZE (\d+)", rb'RFC822.SIZE "\1"'))),
    ),
    Case(
        "fetch-size-estimated",
        "RFC822.SIZE an estimate, larger than the message",
        "Exchange / Outlook.com (EnableExactRFC822Size is off by default)",
        "triaged",
        content(fetches(item(rb"RFC822\.SIZE (\d+)", rb"RFC822.SIZE 9\1"))),
    ),
    Case(
        "fetch-flags-nil",
        "FLAGS answered NIL",
        "",
        "triaged",
        content(fetches(item(rb"FLAGS \([^)]*\)", b"FLAGS NIL"))),
    ),
    Case(
        "fetch-flags-missing",
        "FLAGS left out",
        "",
        "triaged",
        content(fetches(item(rb"FLAGS \([^)]*\) ?", b""))),
    ),
    Case(
        "fetch-internaldate-nil",
        "INTERNALDATE answered NIL",
        "",
        "triaged",
        content(fetches(item(rb'INTERNALDATE "[^"]*"', b"INTERNALDATE NIL"))),
    ),
    Case(
        "fetch-internaldate-garbage",
        "INTERNALDATE not a date",
        "",
        "triaged",
        content(fetches(item(rb'INTERNALDATE "[^"]*"', b'INTERNALDATE "yesterday"'))),
    ),
    Case(
        "fetch-uid-quoted",
        'UID answered as a string ("3")',
        "",
        "triaged",
        content(fetches(item(rb"UID (\d+)", rb'UID "\1"'))),
    ),
    Case(
        "fetch-out-of-order",
        "FETCH responses in reverse order",
        "",
        "triaged",
        content(lambda a: [*reversed(a[:-1]), a[-1]]),
    ),
    Case(
        "fetch-unsolicited-expunge",
        "unsolicited EXPUNGE and EXISTS in the middle of UID FETCH",
        "any server while another client deletes or mail arrives",
        "triaged",
        content(lambda a: [a[0], b"* 1 EXPUNGE\r\n", b"* 40 EXISTS\r\n", *a[1:]]),
    ),
    Case(
        "fetch-identity-nil",
        "the Message-ID header fetch (arrival check) answered NIL",
        "",
        "triaged",
        fixed(on("UID FETCH", each(identity(lambda _data: None)))),
        says=("UID FETCH", "BODY[HEADER.FIELDS (MESSAGE-ID)] NIL"),
    ),
    Case(
        "fetch-cut-mid-literal",
        "the server dies in the middle of a literal (fewer bytes than announced)",
        "",
        "triaged",
        fixed(
            limited(
                lambda command, answer: (
                    [answer[0][:60], CLOSE] if "BODY.PEEK[]<" in command else answer
                )
            )
        ),
    ),
    Case(
        "message-id-missing",
        "a message without a Message-ID header",
        "any server (drafts, some automated senders)",
        "triaged",
        no_message_id=True,
    ),
    # -- extensions advertised but broken, refusals --------------------------------------------
    Case(
        "move-bad",
        "BAD to UID MOVE though MOVE is advertised",
        "",
        "triaged",
        refusal=lambda: refuse("UID MOVE", "BAD Unknown command"),
        says=("UID MOVE", "Unknown command"),
    ),
    Case(
        "move-overquota",
        "NO [OVERQUOTA] to UID MOVE",
        "Dovecot, Cyrus (RFC 5530 response codes)",
        "refused",
        refusal=lambda: refuse(
            "UID MOVE", "NO [OVERQUOTA] Quota exceeded (mailbox for user is full)"
        ),
        says=("UID MOVE", "[OVERQUOTA] Quota exceeded"),
    ),
    Case(
        "copy-overquota",
        "NO [OVERQUOTA] to UID COPY (a server without MOVE)",
        "Dovecot, Cyrus (RFC 5530 response codes)",
        "refused",
        refusal=lambda: refuse(
            "UID COPY", "NO [OVERQUOTA] Quota exceeded (mailbox for user is full)"
        ),
        says=("UID COPY", "[OVERQUOTA] Quota exceeded"),
        capabilities=NO_MOVE,
    ),
    Case(
        "uidplus-bad",
        "BAD to UID EXPUNGE though UIDPLUS is advertised (a server without MOVE)",
        "",
        "refused",
        refusal=lambda: refuse("UID EXPUNGE", "BAD Unknown command"),
        says=("UID EXPUNGE", "Unknown command"),
        lines=1,
        capabilities=NO_MOVE,
    ),
    Case(
        "enable-bad",
        "BAD to ENABLE CONDSTORE though ENABLE and CONDSTORE are advertised",
        "",
        "triaged",
        refusal=lambda: refuse("ENABLE", "BAD Unknown command"),
        says=("ENABLE", "Unknown command"),
    ),
    Case(
        "condstore-search-bad",
        "BAD to UID SEARCH MODSEQ though CONDSTORE is advertised (feedback scan)",
        "",
        "triaged",
        refusal=refuse_if("SEARCH MODSEQ", "BAD Unknown search key MODSEQ"),
        says=("UID SEARCH MODSEQ", "Unknown search key"),
        between=user_changes_a_keyword,
        cycles=2,
        feedback=True,
    ),
    Case(
        "create-alreadyexists",
        "CREATE answers NO [ALREADYEXISTS] for a folder LIST does not show",
        "Dovecot ('Mailbox already exists'), Gmail ('Duplicate folder name')",
        "triaged",
        hide_destination,
        before=create_destination,
    ),
    Case(
        "separator-dot",
        "hierarchy separator '.'",
        "Courier, older Cyrus, hMailServer",
        "triaged",
        delimiter=".",
    ),
    Case(
        "namespace-inbox-prefix",
        "personal namespace 'INBOX.': the user's folders live under INBOX",
        "Cyrus (standard namespace, Debian's default), Courier",
        "triaged",
        delimiter=".",
        prefix="INBOX.",
    ),
    Case(
        "namespace-bad",
        "BAD to NAMESPACE though NAMESPACE is advertised",
        "",
        "triaged",
        refusal=lambda: refuse("NAMESPACE", "BAD Unknown command"),
        says=("NAMESPACE", "Unknown command"),
    ),
    Case(
        "separator-nil",
        "hierarchy separator NIL (a flat namespace)",
        "",
        "triaged",
        delimiter=None,
    ),
    Case(
        "bye-mid-fetch",
        "* BYE and a closed connection instead of the FETCH answer",
        "Gmail ('* BYE System Error'), Exchange Online",
        "triaged",
        fixed(limited(on("UID FETCH", lambda _answer: BYE))),
    ),
    Case(
        "bye-after-move",
        "* BYE after carrying out UID MOVE, before its tagged OK",
        "",
        "triaged",
        fixed(limited(on("UID MOVE", lambda _answer: BYE))),
    ),
]


# -- the harness ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peer() -> Iterator[HostilePeer]:
    server = HostilePeer([], PASSWORD)
    with stamina.set_testing(True, attempts=3):  # retries as in production, without waits
        yield server
    server.close()


_serial = iter(range(10_000))


@dataclass
class Hostile:
    peer: HostilePeer
    user: str
    workdir: Path

    @property
    def mail(self) -> PeerUser:
        return PeerUser(self.peer, self.user)

    def once(self) -> dict[str, CycleReport]:
        """One ``cleaninbox once``: a fresh service over the settings, as the CLI runs it."""
        service = Service(load_settings(self.workdir / "cleaninbox.yaml"))
        try:
            return service.once()
        finally:
            service.close()

    def seed(self, count: int, prefix: str, *, no_message_id: bool = False) -> dict[str, Seed]:
        """Deliver ``count`` messages, each named by a seed header; the last one without a
        Message-ID if asked."""
        seeds: dict[str, Seed] = {}
        rng = random.Random(prefix)
        queries = ["my card was stolen", "I was charged twice", "where is my transfer"]
        for n in range(count):
            name = f"{prefix}-{n}"
            message_id = f"<{name}@hostile.example>"
            raw = render_email(queries[n % 3], rng, style="plain", message_id=message_id)
            raw = SEED_HEADER + f": {name}\n".encode() + raw
            if no_message_id and n == count - 1:
                raw = re.sub(rb"(?im)^message-id:[^\n]*\n", b"", raw)
                message_id = ""
            raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            self.mail.append(raw)
            seeds[name] = Seed(name, message_id, hashlib.sha256(raw).hexdigest())
        return seeds

    def problems(self, seeds: dict[str, Seed]) -> dict[str, int]:
        found = examine(self.mail, self.workdir, seeds, destinations={DESTINATION}, account="work")
        return dict(found.counts)

    def snapshot(self) -> tuple[int, str]:
        rows, _pending = journal(self.workdir, "work")
        mail = {f: sorted(self.mail.messages(f).items(), key=str) for f in self.mail.folders()}
        return len(rows), repr(mail)


def hostile_account(peer: HostilePeer, bundle: Path, workdir: Path, **account: Any) -> Hostile:
    """A new user on the peer and a daemon working directory whose one account is it."""
    user = f"user{next(_serial)}"
    peer.add_user(user)
    settings = imap_account(
        user, peer.port, tls="none", allow_plaintext=True, timeout=5, folders=["INBOX"]
    )
    write_daemon_settings(
        workdir, bundle, [{**settings, **account}], log_format="json", classifier=NEVER_ABSTAIN
    )
    return Hostile(peer, user, workdir)


@pytest.fixture
def hostile(peer: HostilePeer, tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)

    def configure(**account: Any) -> Hostile:
        return hostile_account(peer, tiny_bundle, tmp_path, **account)

    yield configure
    peer.deviations.clear()
    peer.refusals.clear()
    peer.delimiter, peer.capabilities, peer.prefix = "/", CAPABILITIES, ""


def rendered(event: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in event.items())


def assert_no_traceback(events: list[dict[str, Any]]) -> None:
    for event in events:
        assert not {"exc_info", "exception", "stack"} & set(event), rendered(event)
        assert event.get("log_level") not in ("critical", "exception"), rendered(event)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_server(case: Case, hostile: Callable[..., Hostile]) -> None:
    run = hostile(feedback=case.feedback)
    server, user = run.peer, run.user
    server.delimiter, server.capabilities = case.delimiter, case.capabilities
    server.prefix = case.prefix
    assert not any(r.error for r in run.once().values())  # first start: the mark is set
    if case.before is not None:
        case.before(run)
    seeds = run.seed(6, case.id, no_message_id=case.no_message_id)
    acted_before, deviated_before = len(server.acted), server.rewritten + server.refused
    if case.deviation is not None:
        server.deviations.append(case.deviation(server, user))
    if case.refusal is not None:
        server.refusals.append(case.refusal())

    with capture_logs() as events:
        reports = []
        for cycle in range(case.cycles):
            if cycle and case.between is not None:
                case.between(run)
            reports += run.once().values()  # no exception escapes: no crash
    server.deviations.clear()
    server.refusals.clear()
    if case.deviation is not None or case.refusal is not None:
        assert server.rewritten + server.refused > deviated_before, "the server never deviated"
    assert_no_traceback(events)
    acted = {(f, u) for who, _v, f, u in server.acted[acted_before:] if who == user}
    inbox = server.server_name("INBOX")
    tainted = {(f, u) for f, u in server.tainted_for(user) if f == inbox}
    held = {u for _f, u in tainted}

    # -- the hostile cycle ----------------------------------------------------------------------
    errors = [r.error for r in reports if r.error]
    if case.outcome == "account":
        assert errors and all(case.says and case.says[0] in e for e in errors), errors
    else:
        assert not errors, errors
    if case.outcome in ("held", "account", "later"):
        assert not acted & tainted, f"acted on unsure messages: {sorted(acted & tainted)}"
    if case.outcome in ("account", "later"):
        assert not acted, f"acted although the cycle could not go on: {sorted(acted)}"
    if case.outcome == "held":
        assert held, "the deviation touched no message"
        decided = {row["uid"] for row in journal(run.workdir, "work")[0]}
        assert not held & decided, "an unsure message was decided"
    if case.outcome == "triaged":
        assert run.problems(seeds) == {}, "the invariant after the hostile cycle"
    if case.outcome == "refused":
        assert_refused(run, seeds)
    if case.says is not None:
        command, words = case.says
        quoting = [rendered(e) for e in events if words in rendered(e)]
        expected = case.lines or {"held": len(held), "refused": len(seeds)}.get(case.outcome, 1)
        assert len(quoting) == expected, (expected, quoting)
        assert all(command in line for line in quoting), quoting

    # -- the same server, behaving: the job gets done, exactly once -----------------------------
    late = run.seed(1, f"{case.id}-late")  # filed: the high-water mark was not poisoned
    reports = list(run.once().values())
    assert not any(r.error for r in reports), reports
    if case.outcome == "refused":
        assert_refused(run, seeds)
    else:
        assert run.problems(seeds) == {}
    assert run.problems(late) == {}
    before = run.snapshot()
    run.once()
    assert run.snapshot() == before, "a rerun acted"


def assert_refused(run: Hostile, seeds: dict[str, Seed]) -> None:
    """A refused action: each message is where it was, once and whole, and its decision
    failed with the server's reason. (The invariant checker expects no destination on a
    message left in its folder; a refused move keeps the one it was meant for, so its
    "state" count is not used here.)"""
    counts = run.problems(seeds)
    assert counts.keys() <= {"state"}, counts
    rows = {r["message_id"]: r for r in journal(run.workdir, "work")[0]}
    where = locate(run.mail)  # type: ignore[arg-type]
    for seed in seeds.values():
        assert [copy[0] for copy in where[seed.name]] == ["INBOX"], where[seed.name]
        row = rows[seed.message_id]
        assert row["status"] == "failed" and row["reason"], row


# -- mutation mode ------------------------------------------------------------------------------

#: Invariant findings that must stay at zero: the issue's "lost 0 / duplicated 0 / altered
#: 0", and nothing left \\Deleted, misrouted, pending or disagreeing with the state.
MUST_BE_ZERO = ("lost", "duplicated", "changed", "deleted", "misrouted", "pending", "state")


@dataclass
class Tally:
    """What mutated cycles did: answers mutated (by mutation), crashes (an exception out of
    `once`), tracebacks (logged), and the invariant's findings after a clean cycle (counts
    by kind, and one line per problem)."""

    runs: int = 0
    mutated: Counter[str] = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)
    findings: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.runs += other.runs
        self.mutated.update(other.mutated)
        self.crashes += other.crashes
        self.tracebacks += other.tracebacks
        self.findings.update(other.findings)
        self.problems += other.problems


Plan = dict[int, tuple[str, int]]


def mutated_run(run: Hostile, plans: list[Plan], messages: int = 20) -> Tally:
    """One service, as ``cleaninbox run`` keeps it: a first start, then per plan
    ``messages`` new mails, a cycle whose answers the plan mutates
    (:class:`tests.hostile_peer.Mutator`), a cycle against the same server behaving, and
    the invariant over those mails. The connection is closed after each cycle, as the
    service does between polls."""
    tally = Tally()
    service = Service(load_settings(run.workdir / "cleaninbox.yaml"))

    def cycle(mutator: Mutator | None = None) -> list[dict[str, Any]]:
        run.peer.deviations[:] = [mutator] if mutator else []
        try:
            with capture_logs() as events:
                service.once()
        except Exception:  # a crash: what the CLI would show as a traceback
            tally.crashes.append(traceback.format_exc())
        finally:
            run.peer.deviations.clear()
            service.mailbox("work").close()
        return events

    try:
        cycle()
        for n, plan in enumerate(plans):
            seeds = run.seed(messages, f"{run.user}-{n}")
            mutator = Mutator(plan)
            events = cycle(mutator) + cycle()
            tally.runs += 1
            tally.mutated.update(mutator.applied)
            tally.tracebacks += [
                rendered(e) for e in events if {"exc_info", "exception", "stack"} & set(e)
            ]
            found = examine(
                run.mail, run.workdir, seeds, destinations={DESTINATION}, account="work"
            )
            tally.findings.update(found.counts)
            tally.problems += [f"{run.user} {sorted(plan.items())}: {p}" for p in found.problems]
    finally:
        service.close()
    return tally


MUTATION = st.tuples(st.integers(0, 30), st.sampled_from(sorted(MUTATIONS)), st.integers(0, 2**20))


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=st.lists(MUTATION, min_size=1, max_size=4, unique_by=lambda m: m[0]))
def test_mutated_answers_of_a_20_message_cycle(
    plan: list[tuple[int, str, int]],
    peer: HostilePeer,
    tiny_bundle: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hypothesis corrupts answers of a normal cycle (benchmarks/hostile_imap.py runs
    10,000 and more): never a crash or a traceback, nothing lost, duplicated or altered."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    run = hostile_account(peer, tiny_bundle, tmp_path_factory.mktemp("mutated"))
    tally = mutated_run(run, [{index: (kind, seed) for index, kind, seed in plan}])
    assert not tally.crashes, tally.crashes[0]
    assert not tally.tracebacks, tally.tracebacks[0]
    assert not {k: v for k, v in tally.findings.items() if k in MUST_BE_ZERO}, tally.problems


def test_catalogue_is_documented() -> None:
    """At least 30 deviations, each with a behaviour and a contract outcome."""
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    assert all(c.behaviour and c.outcome for c in CASES)
    assert all(c.says for c in CASES if c.outcome in ("held", "account", "refused"))


def test_once_prints_no_traceback_for_issue_16(hostile: Callable[..., Hostile]) -> None:
    """The issue's report, through the real CLI: STATUS answering HIGHESTMODSEQ without a
    number made `cleaninbox once` die with a TypeError traceback; now the mail is filed,
    CONDSTORE is dropped with one line, and `check-config --connect` shows it."""
    run = hostile()
    env = {PASSWORD_ENV: PASSWORD}
    assert cli(run.workdir, "once", env=env, check=False).returncode == 0  # first start
    seeds = run.seed(3, "issue16")
    run.peer.deviations.append(
        sub("STATUS", rb"HIGHESTMODSEQ \d+", b"HIGHESTMODSEQ NIL")(run.peer, run.user)
    )
    result = cli(run.workdir, "once", env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.count("capability_broken") == 1, result.stderr
    assert run.problems(seeds) == {}
    check = cli(run.workdir, "check-config", "--connect", env=env, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "CONDSTORE no" in check.stdout, check.stdout
