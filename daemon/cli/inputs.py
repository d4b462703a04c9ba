"""Texts to classify from files: ``.txt`` (one a line), ``.jsonl`` (``{"text": ...}``), ``.eml``."""

from __future__ import annotations

import json
from pathlib import Path

from daemon.errors import ConfigError
from daemon.model.text import email_to_text

SUFFIXES = (".txt", ".jsonl", ".eml")


def read_inputs(path: Path) -> list[str]:
    """Model input texts from one file; every problem names the file (and line)."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(
            f"{path}: unsupported input type {suffix or '(none)'!r}; use .txt, .jsonl or .eml"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    if suffix == ".eml":
        extracted = email_to_text(data)
        if extracted.skipped:
            raise ConfigError(f"{path}: no text to classify ({extracted.skip_reason})")
        return [extracted.text]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    lines = text.splitlines()
    if suffix == ".txt":
        return [line.strip() for line in lines if line.strip()]
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: invalid JSON: {exc.msg}") from exc
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ConfigError(f'{path}:{number}: expected an object with a string "text" field')
        texts.append(record["text"])
    return texts
