"""Realistic emails rendered from short customer queries.

Used by the train/serve skew check, training-time augmentation, the demo Maildir, the
end-to-end benchmark and the tests. Deterministic for a given ``random.Random``.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from html import escape

STYLES = ("plain", "signature", "quoted_reply", "html_only", "alternative")

_SUBJECTS_GENERIC = (
    "Question",
    "Help needed",
    "Account query",
    "Quick question",
    "Urgent",
    "Support request",
    "Hello",
    "",
    "Re: Your recent enquiry",
    "Issue with my account",
    "Fwd: help",
    "Re: Case #{n}",
    "Customer enquiry",
    "Please help",
)
_GREETINGS = ("Hi,", "Hello,", "Dear Support Team,", "Hi there,", "Good morning,", "Hey,", "")
_OPENERS = ("", "", "", "I hope you can help me.", "I have a question.", "Sorry to bother you.")
_CLOSERS = (
    "",
    "",
    "Please get back to me as soon as possible.",
    "Thanks in advance for your help.",
    "Looking forward to hearing from you.",
)
_SIGNOFFS = ("Thanks,", "Best regards,", "Kind regards,", "Cheers,", "Regards,", "Thank you,")
_FIRST = ("Anna", "Ben", "Chloé", "David", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas")
_LAST = ("Smith", "Müller", "García", "Okafor", "Nguyen", "Kowalski", "Rossi", "Patel", "Berg")
_SIGNATURES = (
    "",
    "Sent from my iPhone",
    "--\n{name}\n+44 20 7946 0{n:03d}",
    "--\n{name}\nSenior Analyst | Example Ltd\nwww.example.com",
    "Get Outlook for Android",
)
_QUOTED = (
    "Thank you for contacting us. Could you tell us more about the problem you are seeing?",
    "Your request has been received. A member of our team will reply within 24 hours.",
    "We have updated your account as requested. Is there anything else we can help with?",
)


def _subject(query: str, rng: random.Random) -> str:
    if rng.random() < 0.3:
        words = query.split()
        head = " ".join(words[: rng.randint(3, 6)])
        return head.rstrip("?.!,") + ("..." if len(words) > 6 else "")
    return rng.choice(_SUBJECTS_GENERIC).format(n=rng.randint(1000, 99999))


def _body_lines(query: str, rng: random.Random, name: str, signature: bool) -> list[str]:
    lines: list[str] = []
    greeting = rng.choice(_GREETINGS)
    if greeting:
        lines += [greeting, ""]
    opener = rng.choice(_OPENERS)
    closer = rng.choice(_CLOSERS)
    lines.append(" ".join(part for part in (opener, query, closer) if part))
    lines += ["", rng.choice(_SIGNOFFS), name.split(maxsplit=1)[0]]
    if signature:
        sig = rng.choice(_SIGNATURES).format(name=name, n=rng.randint(0, 999))
        if sig:
            lines += ["", sig]
    return lines


def render_email(
    query: str,
    rng: random.Random,
    *,
    style: str | None = None,
    to: str = "support@bank.example",
    message_id: str | None = None,
    extra_headers: dict[str, str] | None = None,
    date: datetime | None = None,
) -> bytes:
    """One email (RFC 5322 bytes) whose newest text is ``query``."""
    style = style or rng.choice(STYLES)
    if style not in STYLES:
        raise ValueError(f"unknown email style {style!r}; known: {', '.join(STYLES)}")
    name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    msg = EmailMessage()
    user = name.split(maxsplit=1)[0].lower().replace("é", "e") + str(rng.randint(1, 999))
    msg["From"] = Address(display_name=name, username=user, domain="mail.example")
    msg["To"] = to
    subject = _subject(query, rng)
    if style == "quoted_reply" and not subject.lower().startswith("re:"):
        subject = f"Re: {subject or 'Your message'}"
    msg["Subject"] = subject
    when = date or datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 500_000))
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = message_id or make_msgid(domain="mail.example")
    for key, value in (extra_headers or {}).items():
        msg[key] = value
    lines = _body_lines(query, rng, name, signature=style != "plain")
    quoted: list[str] = []
    if style == "quoted_reply":
        stamp = format_datetime(when - timedelta(days=1))
        quoted = [
            "",
            f"On {stamp}, Bank Support <{to}> wrote:",
            *(f"> {line}" for line in ("Hello,", "", rng.choice(_QUOTED), "", "Bank Support")),
        ]
    plain = "\n".join(lines + quoted) + "\n"
    if style in ("html_only", "alternative"):
        paragraphs = "\n".join(f"<p>{escape(line)}</p>" if line else "<br>" for line in lines)
        html = (
            "<html><head><style>p{margin:0}</style></head><body>"
            f'<div dir="ltr">{paragraphs}</div>'
            '<div class="gmail_quote"><blockquote>Earlier message</blockquote></div>'
            "</body></html>\n"
        )
        if style == "html_only":
            msg.set_content(html, subtype="html")
        else:
            msg.set_content(plain)
            msg.add_alternative(html, subtype="html")
    else:
        msg.set_content(plain)
    return bytes(msg)


def render_corpus(queries: list[str], seed: int, style: str | None = None) -> list[bytes]:
    rng = random.Random(seed)
    return [render_email(q, rng, style=style) for q in queries]
