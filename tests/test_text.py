"""Email to model input: the newest text, without quotes, signatures or markup."""

from __future__ import annotations

import random
from email.message import EmailMessage

import pytest

from daemon.model.samples import STYLES, render_email
from daemon.model.text import MAX_TEXT_CHARS, email_to_text


def message(body: str, subtype: str = "plain", subject: str = "Card", **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "a@example.org"
    msg["To"] = "support@bank.example"
    msg["Subject"] = subject
    msg["Message-ID"] = "<m1@example.org>"
    for key, value in headers.items():
        msg[key] = value
    msg.set_content(body, subtype=subtype)
    return bytes(msg)


@pytest.mark.parametrize("style", STYLES)
def test_rendered_emails_reduce_to_the_query(style: str) -> None:
    query = "I lost my card yesterday, can you block it?"
    for seed in range(5):
        out = email_to_text(render_email(query, random.Random(seed), style=style))
        assert query in out.text, (style, out.text)
        assert "Bank Support" not in out.text
        assert "wrote:" not in out.text
        assert "Sent from my iPhone" not in out.text
        assert "Regards" not in out.text


def test_quoted_reply_and_signature_are_stripped() -> None:
    body = (
        "Hi team,\n\nMy top-up failed twice today.\n\nThanks,\nJo\n--\nJo Bloggs\n"
        "+44 20 7946 0000\n\nOn Mon, 1 Jan 2026, Bank <b@bank> wrote:\n> old question\n"
    )
    out = email_to_text(message(body, subject="Re: Payment problem"))
    assert out.text == "Payment problem. My top-up failed twice today."
    # A subject the body already contains is not repeated.
    assert email_to_text(message(body, subject="Fwd: top-up")).text == (
        "My top-up failed twice today."
    )
    assert out.message_id == "<m1@example.org>"
    assert out.sender == "a@example.org"


def test_html_only_mail_is_converted_and_quotes_dropped() -> None:
    html = (
        "<html><head><style>p{color:red}</style><script>x()</script></head><body>"
        "<p>Why was I <b>charged</b> a fee?</p><div class='gmail_quote'>On Mon wrote:"
        "<blockquote>earlier</blockquote></div></body></html>"
    )
    out = email_to_text(message(html, subtype="html", subject="Billing"))
    assert out.source == "text/html"
    assert out.text == "Billing. Why was I charged a fee?"


def test_rfc2047_subject_and_charsets() -> None:
    raw = (
        b"Subject: =?utf-8?b?S2FydGUgZ2VzcGVycnQ=?=\r\nFrom: x@y\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nMeine Karte ist gesperrt, "
        b"bitte \xe4ndern.\r\n"
    )
    out = email_to_text(raw)
    assert out.subject == "Karte gesperrt"
    assert "bitte ändern" in out.text


def test_unknown_and_lying_charsets_do_not_crash() -> None:
    raw = (
        b"Subject: x\r\nContent-Type: text/plain; charset=x-klingon\r\n\r\n"
        b"caf\xc3\xa9 \xff\xfe broken\r\n"
    )
    assert "caf" in email_to_text(raw).text
    utf16 = "my card is blocked".encode("utf-16-le")
    raw16 = b"Subject: \r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + utf16
    assert email_to_text(raw16).text == "my card is blocked"


def test_skip_reasons_instead_of_crashes() -> None:
    assert email_to_text(b"").skip_reason == "no text body and no subject"
    header_only = email_to_text(b"Subject: \r\nFrom: a@b\r\n\r\n")
    assert header_only.skipped
    attachment = EmailMessage()
    attachment["Subject"] = ""
    attachment.set_content(b"\x00\x01", maintype="application", subtype="octet-stream")
    assert email_to_text(bytes(attachment)).skipped


def test_subject_only_mail_still_classifies() -> None:
    out = email_to_text(b"Subject: card not working\r\n\r\n")
    assert out.text == "card not working"
    assert not out.skipped


def test_text_is_capped() -> None:
    out = email_to_text(message("word " * 100_000))
    assert len(out.text) <= MAX_TEXT_CHARS


def test_deep_nesting_is_bounded() -> None:
    inner = b"Content-Type: text/plain\r\n\r\ndeep text\r\n"
    for i in range(200):
        b = f"b{i}".encode()
        inner = (
            b"Content-Type: multipart/mixed; boundary="
            + b
            + b"\r\n\r\n--"
            + b
            + b"\r\n"
            + inner
            + b"\r\n--"
            + b
            + b"--\r\n"
        )
    out = email_to_text(b"Subject: nest\r\n" + inner)
    assert out.text.startswith("nest")  # the body is too deep to reach; the subject remains
