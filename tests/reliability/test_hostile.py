"""Hostile input (issue 4): never a crash, a best-effort text or a recorded skip reason.

Every case is generated here, passed through the daemon's email-to-text function, and
then appended to a real Dovecot and triaged: the invariant holds (filed, or left in INBOX
with a recorded reason). The email-to-text function is also fuzzed with hypothesis.
"""

from __future__ import annotations

import hashlib
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.model.text import MAX_TEXT_CHARS, email_to_text
from tests.mail_fixtures import MailUser, cli
from tests.reliability.hostile import CASES
from tests.reliability.invariant import SEED_HEADER, Seed, check


@pytest.mark.parametrize("case", sorted(CASES))
def test_email_to_text_survives(case: str) -> None:
    raw = CASES[case]()
    out = email_to_text(raw)
    assert out.skipped or out.text  # a text or a reason, never neither
    assert len(out.text) <= MAX_TEXT_CHARS
    if out.skipped:
        assert out.skip_reason


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    out = email_to_text(raw)
    assert out.skipped or out.text
    assert "\x00" not in out.text


@settings(max_examples=200, deadline=None)
@given(
    subject=st.text(max_size=200),
    body=st.text(max_size=2000),
    subtype=st.sampled_from(["plain", "html"]),
    charset=st.sampled_from(["utf-8", "latin-1", "utf-16", "koi8-r", "ascii"]),
)
def test_fuzz_well_formed_messages(subject: str, body: str, subtype: str, charset: str) -> None:
    msg = EmailMessage()
    msg["Subject"] = " ".join(subject.split())  # (header values are single lines)
    try:
        msg.set_content(body, subtype=subtype, charset=charset)
    except (UnicodeEncodeError, LookupError):
        msg.set_content(body, subtype=subtype)
    try:
        raw = bytes(msg)
    except (UnicodeEncodeError, ValueError):
        return
    out = email_to_text(raw)
    assert out.skipped or out.text
    assert len(out.text) <= MAX_TEXT_CHARS


def test_hostile_mail_on_a_real_server(workdir: Path, mail_user: MailUser) -> None:
    cli(workdir, "once")
    with mail_user.client() as client:
        for case, make in sorted(CASES.items()):
            client.append("INBOX", SEED_HEADER + b": " + case.encode() + b"\r\n" + make())
    # Dovecot itself rewrites some input (NUL bytes become 0x80), so "byte-identical" is
    # measured against what the server stored, and Message-IDs are read as the daemon reads
    # them.
    seeds: dict[str, Seed] = {}
    for message in mail_user.messages("INBOX").values():
        raw = message["raw"]
        assert isinstance(raw, bytes)
        name = raw.split(b"\r\n", 1)[0].split(b":", 1)[1].strip().decode()
        seeds[name] = Seed(
            name, email_to_text(raw).message_id or "", hashlib.sha256(raw).hexdigest()
        )
    assert set(seeds) == set(CASES)
    cli(workdir, "once")
    check(mail_user, workdir, seeds, destinations={"Triage/All"})
