"""Maildir++ backend (stdlib ``mailbox``): the embedded local store.

For users of mbsync/offlineimap and for the demo. ``INBOX`` is the root; ``Triage/Cards``
is the Maildir++ folder ``.Triage.Cards``. Maildir has no UIDs, so each folder keeps a
``cleaninbox-uidlist`` (like Dovecot's ``dovecot-uidlist``) assigning ascending UIDs to
message keys. A move is one ``rename`` (atomic: the message is never in two places or
none). Keywords use Dovecot's ``dovecot-keywords`` convention (letters a-z in the info
field), so Dovecot serving the same Maildir shows them.
"""

from __future__ import annotations

import contextlib
import json
import mailbox
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path

from daemon.config.settings import Account
from daemon.errors import ConfigError, MailboxError
from daemon.mailbox.base import Capabilities, FetchedMessage, FolderStatus, Identity, Mailbox

UIDLIST = "cleaninbox-uidlist"
KEYWORDS = "dovecot-keywords"
SYSTEM = {"\\Seen": "S", "\\Flagged": "F", "\\Answered": "R", "\\Draft": "D", "\\Deleted": "T"}
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class _Folder:
    """One Maildir folder with its UID list and keyword table."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.box = mailbox.Maildir(str(path), factory=None, create=False)
        self._load_uids()

    def _load_uids(self) -> None:
        file = self.path / UIDLIST
        if file.is_file():
            data = json.loads(file.read_text(encoding="utf-8"))
            self.uidvalidity = int(data["uidvalidity"])
            self.next_uid = int(data["next"])
            self.uids: dict[str, int] = {str(k): int(v) for k, v in data["keys"].items()}
        else:
            self.uidvalidity = int(time.time())
            self.next_uid = 1
            self.uids = {}
            self._save_uids()

    def _save_uids(self) -> None:
        data = {"uidvalidity": self.uidvalidity, "next": self.next_uid, "keys": self.uids}
        _atomic_write(self.path / UIDLIST, json.dumps(data))

    def refresh(self) -> dict[int, str]:
        """Assign UIDs to new keys (oldest delivery first); forget vanished ones."""
        self.box = mailbox.Maildir(str(self.path), factory=None, create=False)
        keys = set(self.box.keys())
        changed = False
        for key in [k for k in self.uids if k not in keys]:
            del self.uids[key]
            changed = True
        new = [k for k in keys if k not in self.uids]
        if new:

            def delivered(key: str) -> tuple[float, str]:
                try:
                    return (self.box.get_message(key).get_date(), key)
                except (KeyError, OSError):
                    return (0.0, key)

            for key in sorted(new, key=delivered):
                self.uids[key] = self.next_uid
                self.next_uid += 1
            changed = True
        if changed:
            self._save_uids()
        return {uid: key for key, uid in self.uids.items()}

    def keywords(self) -> list[str]:
        file = self.path / KEYWORDS
        if not file.is_file():
            return []
        table: dict[int, str] = {}
        for line in file.read_text(encoding="utf-8").splitlines():
            index, _, name = line.partition(" ")
            if index.isdigit() and name:
                table[int(index)] = name
        return [table[i] for i in sorted(table)]

    def _write_keywords(self, names: list[str]) -> None:
        _atomic_write(self.path / KEYWORDS, "".join(f"{i} {n}\n" for i, n in enumerate(names)))

    def letter(self, keyword: str) -> str:
        """The info-field letter for ``keyword`` in this folder, assigning one if needed.

        Maildir has 26 keyword letters per folder; when all are taken, a letter that no
        message in the folder carries any more is reused.
        """
        names = self.keywords()
        if keyword in names:
            return LETTERS[names.index(keyword)]
        if len(names) < len(LETTERS):
            names.append(keyword)
            self._write_keywords(names)
            return LETTERS[len(names) - 1]
        used: set[str] = set()
        for key in self.box.iterkeys():
            try:
                used.update(self.box.get_message(key).get_flags())
            except KeyError:
                continue
        for index, letter in enumerate(LETTERS):
            if letter not in used:
                names[index] = keyword
                self._write_keywords(names)
                return letter
        raise MailboxError(
            f"Maildir folder {self.path}: all {len(LETTERS)} keyword letters are in use; "
            f"cannot add {keyword!r}"
        )

    def file_of(self, key: str) -> Path:
        msg = self.box.get_message(key)
        info = msg.get_info()
        name = key + (self.box.colon + info if info else "")
        return self.path / msg.get_subdir() / name


def _present(
    handle: _Folder, mapping: Mapping[int, str], uids: Sequence[int]
) -> Iterator[tuple[int, str, mailbox.MaildirMessage, Path]]:
    """(uid, key, message, file) of each of ``uids`` still in the folder; another client
    may have moved or deleted any of them since ``mapping`` was read."""
    for uid in uids:
        key = mapping.get(uid)
        if key is None:
            continue
        try:
            yield uid, key, handle.box.get_message(key), handle.file_of(key)
        except (KeyError, FileNotFoundError):
            continue


class MaildirMailbox(Mailbox):
    def __init__(self, account: Account) -> None:
        if account.path is None:
            raise ConfigError(f"account {account.name}: path is required for kind: maildir")
        self.account = account.name
        self.root = account.path
        self._folders: dict[str, _Folder] = {}

    def _dir(self, folder: str) -> Path:
        if folder.upper() == "INBOX":
            return self.root
        return self.root / ("." + folder.replace("/", "."))

    def _folder(self, folder: str) -> _Folder:
        cached = self._folders.get(folder)
        if cached is not None:
            return cached
        path = self._dir(folder)
        if not (path / "cur").is_dir():
            raise MailboxError(f"account {self.account}: Maildir folder {path} does not exist")
        try:
            handle = _Folder(path)
        except (OSError, ValueError, KeyError) as exc:
            raise MailboxError(f"account {self.account}: Maildir folder {path}: {exc}") from exc
        self._folders[folder] = handle
        return handle

    def open(self) -> None:
        if not (self.root / "cur").is_dir():
            raise MailboxError(
                f"account {self.account}: {self.root} is not a Maildir (no cur/ directory)"
            )

    def close(self) -> None:
        self._folders.clear()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            move=True, uidplus=True, condstore=False, keywords=True, names=frozenset({"MAILDIR"})
        )

    def list_folders(self) -> list[str]:
        names = ["INBOX"]
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") and (entry / "cur").is_dir():
                names.append(entry.name[1:].replace(".", "/"))
        return names

    def folder_exists(self, folder: str) -> bool:
        return (self._dir(folder) / "cur").is_dir()

    def ensure_folder(self, folder: str) -> None:
        path = self._dir(folder)
        if (path / "cur").is_dir():
            return
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        (path / "maildirfolder").touch()

    def select(self, folder: str) -> FolderStatus:
        handle = self._folder(folder)
        mapping = handle.refresh()
        return FolderStatus(handle.uidvalidity, handle.next_uid, len(mapping))

    def status(self, folder: str) -> FolderStatus:
        return self.select(folder)

    def uids_above(self, folder: str, uid: int) -> list[int]:
        return sorted(u for u in self._folder(folder).refresh() if u > uid)

    def uids_since(self, folder: str, since: str | None) -> list[int]:
        handle = self._folder(folder)
        mapping = handle.refresh()
        if since is None:
            return sorted(mapping)
        cutoff = datetime.combine(date.fromisoformat(since), datetime.min.time(), UTC).timestamp()
        out = []
        for uid, key in mapping.items():
            try:
                if handle.box.get_message(key).get_date() >= cutoff:
                    out.append(uid)
            except KeyError:
                continue
        return sorted(out)

    def _flags_of(self, handle: _Folder, msg: mailbox.MaildirMessage) -> tuple[str, ...]:
        letters = msg.get_flags()
        names = handle.keywords()
        flags = [name for name, letter in SYSTEM.items() if letter in letters]
        flags += [
            names[LETTERS.index(c)]
            for c in letters
            if c in LETTERS and LETTERS.index(c) < len(names)
        ]
        return tuple(flags)

    def existing(self, folder: str, uids: Sequence[int]) -> set[int]:
        return set(uids) & set(self._folder(folder).refresh())

    def fetch(self, folder: str, uids: Sequence[int], max_bytes: int) -> list[FetchedMessage]:
        handle = self._folder(folder)
        mapping = handle.refresh()
        out = []
        for uid in uids:
            key = mapping.get(uid)
            if key is None:
                continue
            try:
                path = handle.file_of(key)
                size = path.stat().st_size
                with path.open("rb") as f:
                    raw = f.read(max_bytes)
                msg = handle.box.get_message(key)
            except (KeyError, FileNotFoundError):
                continue  # removed meanwhile
            out.append(
                FetchedMessage(
                    uid=uid,
                    raw=raw,
                    size=size,
                    flags=self._flags_of(handle, msg),
                    internal_date=datetime.fromtimestamp(msg.get_date(), UTC).isoformat(),
                )
            )
        return out

    def message_ids(self, folder: str, uids: Sequence[int]) -> dict[int, str | None]:
        handle = self._folder(folder)
        mapping = handle.refresh()
        out: dict[int, str | None] = {}
        for uid in uids:
            key = mapping.get(uid)
            if key is None:
                continue
            try:
                with handle.file_of(key).open("rb") as f:
                    head = f.read(64 * 1024).split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
            except (KeyError, FileNotFoundError):
                continue
            import email

            value = email.message_from_bytes(head + b"\n\n").get("Message-ID")
            out[uid] = " ".join(str(value).split()) if value else None
        return out

    def identify(self, folder: str, uids: Sequence[int]) -> dict[int, Identity]:
        handle = self._folder(folder)
        mapping = handle.refresh()
        ids = self.message_ids(folder, uids)
        out: dict[int, Identity] = {}
        for uid, message_id in ids.items():
            try:
                when = datetime.fromtimestamp(handle.box.get_message(mapping[uid]).get_date(), UTC)
            except KeyError:
                continue
            out[uid] = Identity(message_id, when)
        return out

    def message_ids_from(self, folder: str, uid: int) -> dict[int, str | None]:
        return self.message_ids(folder, [u for u in self._folder(folder).refresh() if u >= uid])

    def find_message_id(self, folder: str, message_id: str) -> list[int]:
        mapping = self._folder(folder).refresh()
        ids = self.message_ids(folder, sorted(mapping))
        return sorted(uid for uid, mid in ids.items() if mid == message_id)

    def _set(self, folder: str, uids: Sequence[int], flags: Sequence[str], add: bool) -> None:
        handle = self._folder(folder)
        mapping = handle.refresh()
        letters = []
        for flag in flags:
            letters.append(SYSTEM[flag] if flag in SYSTEM else handle.letter(flag))
        for _uid, key, msg, old in _present(handle, mapping, uids):
            current = set(msg.get_flags())
            wanted = current | set(letters) if add else current - set(letters)
            if wanted == current:
                continue
            # Flags live in the file name: rename cur/KEY:2,FLAGS (atomic).
            new = self._dir(folder) / "cur" / f"{key}{handle.box.colon}2,{''.join(sorted(wanted))}"
            os.rename(old, new)
        handle.box = mailbox.Maildir(str(handle.path), factory=None, create=False)

    def add_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str]) -> None:
        self._set(folder, uids, flags, add=True)

    def remove_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str]) -> None:
        self._set(folder, uids, flags, add=False)

    def _transfer(
        self,
        folder: str,
        uids: Sequence[int],
        destination: str,
        keep: bool,
        extra: Mapping[int, Sequence[str]] | None = None,
    ) -> None:
        source = self._folder(folder)
        mapping = source.refresh()
        self.ensure_folder(destination)
        target = self._folder(destination)
        src_keywords = source.keywords()
        for uid, key, msg, path in _present(source, mapping, uids):
            # Keyword letters are per folder: translate them for the destination.
            letters = ""
            for c in msg.get_flags():
                if c in LETTERS:
                    index = LETTERS.index(c)
                    if index < len(src_keywords):
                        letters += target.letter(src_keywords[index])
                else:
                    letters += c
            for flag in (extra or {}).get(uid, ()):
                letters += SYSTEM[flag] if flag in SYSTEM else target.letter(flag)
            info = "2," + "".join(sorted(set(letters)))
            new_key = key if not keep else f"{key}.c{int(time.time() * 1e6)}"
            dest = target.path / "cur" / f"{new_key}{target.box.colon}{info}"
            if keep:
                tmp = target.path / "tmp" / new_key
                with path.open("rb") as src, tmp.open("wb") as out:
                    out.write(src.read())
                    out.flush()
                    os.fsync(out.fileno())
                os.rename(tmp, dest)
            else:
                os.rename(path, dest)
        source.refresh()
        target.refresh()

    def copy(self, folder: str, uids: Sequence[int], destination: str) -> None:
        self._transfer(folder, uids, destination, keep=True)

    def move(self, folder: str, uids: Sequence[int], destination: str) -> None:
        self._transfer(folder, uids, destination, keep=False)

    def tag_and_move(
        self, folder: str, flags_by_uid: Mapping[int, Sequence[str]], destination: str
    ) -> None:
        """Move, writing the new flags in the destination (one rename per message): the
        source folder's 26 keyword letters are never spent on messages that leave."""
        self._transfer(folder, list(flags_by_uid), destination, keep=False, extra=flags_by_uid)

    def delete(self, folder: str, uids: Sequence[int]) -> None:
        handle = self._folder(folder)
        mapping = handle.refresh()
        for uid in uids:
            key = mapping.get(uid)
            if key is not None:
                with contextlib.suppress(KeyError):
                    handle.box.remove(key)
        handle.refresh()

    def append(self, folder: str, raw: bytes, flags: Sequence[str] = ()) -> None:
        self.ensure_folder(folder)
        handle = self._folder(folder)
        msg = mailbox.MaildirMessage(raw)
        letters = "".join(SYSTEM.get(f, "") for f in flags)
        if letters:
            msg.set_subdir("cur")
            msg.set_flags(letters)
        handle.box.add(msg)
        handle.refresh()
