"""Hostile messages, generated (never stored): huge, deep, wide, broken and lying mail."""

from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import Callable

CRLF = b"\r\n"


def _head(subject: bytes, extra: bytes = b"") -> bytes:
    return (
        b"From: attacker@example.org\r\nTo: support@bank.example\r\nSubject: "
        + subject
        + b"\r\nMessage-ID: <"
        + subject.replace(b" ", b"-")[:40]
        + b"@hostile.example>\r\n"
        + extra
    )


def with_attachment(size: int, name: str = "big.bin") -> bytes:
    payload = base64.encodebytes(b"\x00" * size)
    return (
        _head(
            f"attachment {size}".encode(),
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n",
        )
        + CRLF
        + b"--B\r\nContent-Type: text/plain\r\n\r\nMy card was stolen, see file.\r\n"
        + b"--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition: "
        + f"attachment; filename={name}\r\nContent-Transfer-Encoding: base64\r\n\r\n".encode()
        + payload.replace(b"\n", CRLF)
        + b"--B--\r\n"
    )


def zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.bin", b"\x00" * (200 * 1024 * 1024))  # ~200 KB compressed
    data = base64.encodebytes(buffer.getvalue()).replace(b"\n", CRLF)
    return (
        _head(b"zip bomb", b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=Z\r\n")
        + CRLF
        + b"--Z\r\nContent-Type: text/plain\r\n\r\nPlease check the attached statement.\r\n"
        + b"--Z\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; "
        b"filename=statement.zip\r\nContent-Transfer-Encoding: base64\r\n\r\n" + data + b"--Z--\r\n"
    )


def nested(depth: int) -> bytes:
    body = b"Content-Type: text/plain\r\n\r\nwhere is my transfer\r\n"
    for level in range(depth):
        b = f"n{level}".encode()
        body = (
            b"Content-Type: multipart/mixed; boundary="
            + b
            + b"\r\n\r\n--"
            + b
            + CRLF
            + body
            + CRLF
            + b"--"
            + b
            + b"--\r\n"
        )
    return _head(f"nested {depth}".encode(), b"MIME-Version: 1.0\r\n") + body


def many_parts(count: int) -> bytes:
    parts = b"".join(
        b"--P\r\nContent-Type: text/plain\r\n\r\npart " + str(i).encode() + CRLF
        for i in range(count)
    )
    return (
        _head(
            f"parts {count}".encode(),
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=P\r\n",
        )
        + CRLF
        + parts
        + b"--P--\r\n"
    )


def long_header_line(size: int) -> bytes:
    return _head(b"long header", b"X-Long: " + b"a" * size + CRLF) + CRLF + b"card blocked\r\n"


def many_headers(count: int) -> bytes:
    headers = b"".join(b"X-H" + str(i).encode() + b": v\r\n" for i in range(count))
    return _head(b"many headers", headers) + CRLF + b"I need a refund\r\n"


def charset(declared: str, body: bytes, subject: bytes = b"charset") -> bytes:
    return (
        _head(subject, f"Content-Type: text/plain; charset={declared}\r\n".encode())
        + CRLF
        + body
        + CRLF
    )


def missing_boundary() -> bytes:
    return (
        _head(b"missing boundary", b"Content-Type: multipart/mixed; boundary=NOPE\r\n")
        + CRLF
        + b"This text never sees its boundary. My top up failed.\r\n"
    )


def duplicate_boundary() -> bytes:
    return (
        _head(b"duplicate boundary", b"Content-Type: multipart/alternative; boundary=D\r\n")
        + CRLF
        + b"--D\r\n--D\r\nContent-Type: text/plain\r\n\r\nfirst\r\n--D\r\n--D\r\n"
        b"Content-Type: text/plain\r\n\r\nsecond\r\n--D--\r\n--D--\r\n"
    )


CASES: dict[str, Callable[[], bytes]] = {
    "attachment_25mb": lambda: with_attachment(25 * 1024 * 1024),
    "attachment_100mb": lambda: with_attachment(100 * 1024 * 1024),
    "zip_bomb": zip_bomb,
    "nesting_100": lambda: nested(100),
    "nesting_10000": lambda: nested(10_000),
    "parts_10000": lambda: many_parts(10_000),
    "header_line_1mb": lambda: long_header_line(1024 * 1024),
    "headers_100000": lambda: many_headers(100_000),
    "charset_unknown": lambda: charset("x-klingon", b"my card was declined", b"unknown cs"),
    "charset_lying": lambda: charset("utf-8", "carte bloquée".encode("latin-1"), b"lying cs"),
    "invalid_utf8": lambda: charset("utf-8", b"\xff\xfe\xc3\x28 card \xa0\xa1", b"bad utf8"),
    "utf16_no_bom": lambda: charset("us-ascii", "my card is lost".encode("utf-16-le"), b"utf16"),
    "missing_boundary": missing_boundary,
    "duplicate_boundary": duplicate_boundary,
    "nul_bytes": lambda: charset("utf-8", b"card\x00 lost\x00\x00 help", b"nul\x00subject"),
    "empty": lambda: b"",
    "header_only": lambda: _head(b"header only"),
    "body_only": lambda: b"\r\nI just want my money back\r\n",
    "raw_utf8_header": lambda: charset("utf-8", b"ma carte", "Subject café ünïcode".encode()),
}
