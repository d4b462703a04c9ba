"""Email to model input (docs/architecture.md).

One function, :func:`email_to_text`, used by the daemon, by ``cleaninbox classify`` on
``.eml`` files, by the HTTP API and by the evaluation that renders test queries as
emails. Hostile input gives a best-effort text or a recorded skip reason, never a crash.
"""

from __future__ import annotations

import contextlib
import email
import email.header
import email.policy
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from functools import lru_cache
from typing import Any

from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning, XMLParsedAsHTMLWarning
from mailparser_reply import EmailReplyParser

#: Version of the recipe that turns an email into model input; recorded in every bundle.
TEXT_RECIPE = "email-v1"

MAX_INPUT_BYTES = 1 << 20  # parse at most this much of a message
MAX_PART_BYTES = 256 * 1024  # decode at most this much of the chosen body part
MAX_BODY_CHARS = 8_000  # reply/signature stripping works on at most this much
MAX_TEXT_CHARS = 2_000  # model input cap (the tokenizer truncates far earlier)
MAX_DEPTH = 30
MAX_PARTS = 500

_REPLY_PREFIX = re.compile(r"^\s*((re|fwd?|aw|wg|sv|vs|tr)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_GREETING = re.compile(
    r"^(hi|hello|hey|dear|good\s+(morning|afternoon|evening)|greetings|to whom it may concern)"
    r"\b[^\n]{0,40}$",
    re.IGNORECASE,
)
_CLOSING = re.compile(
    r"^(thanks?( you)?( so much| very much| in advance)?|many thanks|thx|cheers|regards|"
    r"best( regards| wishes)?|kind regards|sincerely|yours( truly| sincerely)?)[\s,.!]*$",
    re.IGNORECASE,
)
_WS = re.compile(r"[ \t\r\f\v\u00a0\u200b]+")
_QUOTE_SELECTOR = (
    "blockquote, div.gmail_quote, div.moz-cite-prefix, div#appendonsend, div#divRplyFwdMsg, "
    "div.gmail_signature"
)
_BLOCK_TAGS = ("p", "div", "li", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol")


@dataclass(frozen=True)
class EmailText:
    """The model input extracted from one email, or why there is none."""

    text: str
    subject: str
    body: str
    message_id: str | None
    source: str | None  # "text/plain", "text/html" or None
    skip_reason: str | None = None
    truncated: bool = False
    sender: str = ""
    recipients: str = ""

    @property
    def skipped(self) -> bool:
        return self.skip_reason is not None


def _decode_header(value: Any) -> str:
    """Best-effort RFC 2047/2231 decoding of one header value."""
    if value is None:
        return ""
    try:
        text = str(value)
    except Exception:
        return ""
    if "=?" in text:
        try:
            parts = email.header.decode_header(text)
            text = "".join(
                chunk.decode(_charset(cs), errors="replace") if isinstance(chunk, bytes) else chunk
                for chunk, cs in parts
            )
        except Exception:
            pass
    return " ".join(text.replace("\x00", "").split())


def _charset(name: str | None) -> str:
    if not name:
        return "utf-8"
    try:
        return "".join(name.split()).strip("\"'").lower() or "utf-8"
    except Exception:
        return "utf-8"


def _decode_bytes(data: bytes, charset: str | None) -> str:
    declared = _charset(charset)
    if declared.startswith("utf-16") or (
        len(data) >= 4
        and data.count(b"\x00") > len(data) // 4
        and declared in ("utf-8", "us-ascii")
    ):
        # UTF-16 without a BOM shows up as every other byte NUL.
        for candidate in ("utf-16-le", "utf-16-be") if data[1:2] == b"\x00" else ("utf-16-be",):
            with contextlib.suppress(UnicodeDecodeError):
                return data.decode(candidate)
    for candidate in (declared, "utf-8"):
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("cp1252" if declared != "cp1252" else "latin-1", errors="replace")


def _walk(msg: Message) -> Iterator[tuple[Message, int]]:
    """Iterative, depth- and count-capped walk over MIME leaves."""
    stack: list[tuple[Message, int]] = [(msg, 0)]
    seen = 0
    while stack and seen < MAX_PARTS:
        part, depth = stack.pop()
        seen += 1
        if part.is_multipart():
            if depth >= MAX_DEPTH:
                continue
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend(
                    (sub, depth + 1) for sub in reversed(payload) if isinstance(sub, Message)
                )
            continue
        yield part, depth


def _is_attachment(part: Message) -> bool:
    try:
        disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
    except Exception:
        return False
    return disposition == "attachment"


def _part_text(part: Message) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if payload is None:
        raw = part.get_payload()
        payload = raw.encode("utf-8", "replace") if isinstance(raw, str) else b""
    if not isinstance(payload, bytes):
        return ""
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    return _decode_bytes(payload[:MAX_PART_BYTES], charset).replace("\x00", "")


def html_to_text(html: str) -> str:
    """Visible text of an HTML body, without quoted replies, scripts or styles."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        soup = BeautifulSoup(html, "html.parser")
    for name in ("script", "style", "head", "title", "noscript", "template"):
        for tag in soup.find_all(name):
            tag.decompose()
    for tag in soup.select(_QUOTE_SELECTOR):
        tag.decompose()
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for tag in soup.find_all(_BLOCK_TAGS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    return soup.get_text()


@lru_cache(maxsize=1)
def _reply_parser() -> EmailReplyParser:
    return EmailReplyParser(languages=["en"])


def strip_reply_and_signature(body: str) -> str:
    """The newest reply only: quoted text, signatures, greetings and closings removed."""
    body = body[:MAX_BODY_CHARS]
    try:
        parsed = _reply_parser().read(body)
        latest = parsed.replies[0].body if parsed.replies else body
    except Exception:
        latest = body
    if not latest.strip():
        latest = body
    lines = [line.strip() for line in latest.splitlines()]
    lines = [line for line in lines if line and not line.startswith(">")]
    if lines and _GREETING.match(lines[0]) and len(lines) > 1:
        lines = lines[1:]
    # A closing ("Thanks,", "Kind regards,") and the short name/signature lines after it.
    for i in range(len(lines) - 1, max(0, len(lines) - 6), -1):
        if _CLOSING.match(lines[i]) and all(len(line) <= 60 for line in lines[i + 1 :]):
            lines = lines[:i]
            break
    return "\n".join(lines)


def normalise_whitespace(text: str) -> str:
    return " ".join(_WS.sub(" ", text).split())


def compose(subject: str, body: str) -> str:
    """The model input: the subject (reply prefixes removed) then the body, one line."""
    subject = _REPLY_PREFIX.sub("", normalise_whitespace(subject)).rstrip(".…").strip()
    body = normalise_whitespace(body)
    if subject and body and subject.lower() not in body.lower():
        sep = " " if subject[-1] in ".?!:" else ". "
        text = f"{subject}{sep}{body}"
    else:
        text = body or subject
    return text[:MAX_TEXT_CHARS]


def parse_message(raw: bytes) -> Message:
    return email.message_from_bytes(raw[:MAX_INPUT_BYTES], policy=email.policy.compat32)


def _unparsed(raw: bytes | Message, reason: str) -> EmailText:
    """A skip result that still carries the headers the audit log needs, read from the
    header block alone (which the MIME parser never reached)."""
    if not isinstance(raw, bytes):
        return EmailText("", "", "", None, None, reason)
    head = raw[:MAX_PART_BYTES].replace(b"\r\n", b"\n").split(b"\n\n", 1)[0] + b"\n\n"
    try:
        headers = email.message_from_bytes(head, policy=email.policy.compat32)
    except Exception:
        return EmailText("", "", "", None, None, reason)
    return EmailText(
        "",
        _decode_header(headers.get("Subject"))[:500],
        "",
        _decode_header(headers.get("Message-ID")) or None,
        None,
        reason,
        sender=_decode_header(headers.get("From"))[:500],
    )


def email_to_text(raw: bytes | Message) -> EmailText:
    """Extract the model input from an email (bytes as fetched, or a parsed message)."""
    truncated = isinstance(raw, bytes) and len(raw) > MAX_INPUT_BYTES
    try:
        msg = parse_message(raw) if isinstance(raw, bytes) else raw
    except RecursionError:
        return _unparsed(raw, "MIME structure nested too deeply to parse")
    except Exception as exc:
        return _unparsed(raw, f"unparseable message: {type(exc).__name__}")
    subject = _decode_header(msg.get("Subject"))[:500]
    message_id = _decode_header(msg.get("Message-ID")) or None
    sender = _decode_header(msg.get("From"))[:500]
    recipients = ", ".join(
        _decode_header(v)[:500] for key in ("To", "Cc") for v in (msg.get_all(key) or [])
    )

    plain: str | None = None
    html: str | None = None
    try:
        for part, _depth in _walk(msg):
            if _is_attachment(part):
                continue
            ctype = (part.get_content_type() or "text/plain").lower()
            if ctype == "text/plain" and plain is None:
                text = _part_text(part)
                if text.strip():
                    plain = text
            elif ctype == "text/html" and html is None:
                text = _part_text(part)
                if text.strip():
                    html = text
            if plain is not None:
                break
    except RecursionError:
        return EmailText(
            "",
            subject,
            "",
            message_id,
            None,
            "MIME structure nested too deeply",
            truncated,
            sender,
            recipients,
        )

    source: str | None
    if plain is not None:
        body, source = plain, "text/plain"
    elif html is not None:
        try:
            body, source = html_to_text(html), "text/html"
        except RecursionError:
            body, source = "", "text/html"
    else:
        body, source = "", None
    body = strip_reply_and_signature(body) if body.strip() else ""
    text = compose(subject, body)
    if not text:
        reason = "no text body and no subject" if source is None else "empty text body and subject"
        return EmailText(
            "", subject, body, message_id, source, reason, truncated, sender, recipients
        )
    return EmailText(text, subject, body, message_id, source, None, truncated, sender, recipients)
