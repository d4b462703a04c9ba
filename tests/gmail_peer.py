"""A scripted IMAP peer that answers like Gmail, for the Gmail backend's tests.

No Gmail runs here, and no open-source server implements Google's IMAP extensions, so this
is the one fake server in the suite. It models what the backend relies on, each from
Google's documentation:

- Capabilities, ``X-GM-EXT-1``, ``X-GM-MSGID``, ``X-GM-LABELS`` in FETCH, STORE and SEARCH,
  labels as folders, ``\\Inbox`` as the INBOX label:
  https://developers.google.com/gmail/imap/imap-extensions
- A message is in a folder exactly when it carries that label; adding a label it has is a
  no-op; removing the label takes it out of that folder; ``[Gmail]/All Mail`` holds
  everything: https://support.google.com/mail/answer/78892 (labels vs folders) and the page
  above.
- 15 simultaneous IMAP connections per account, refused beyond that
  (https://support.google.com/mail/answer/7126229 "Too many simultaneous connections"),
  answered here as ``NO [ALERT] Too many simultaneous connections. (Failure)``, the text
  Gmail users report.
- Bandwidth limits answered ``NO [THROTTLED]`` (the response code Gmail uses when an
  account exceeds command or bandwidth limits; the exact wording is not documented).

It keeps one mailbox per user in memory and records every command it is sent, so tests
can assert what the daemon did on the wire (e.g. that it never sent EXPUNGE or MOVE).
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ALL_MAIL = "[Gmail]/All Mail"
_COMMON = "IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1"
CAPS_BEFORE = f"{_COMMON} SASL-IR AUTH=XOAUTH2 AUTH=PLAIN AUTH=OAUTHBEARER"
CAPS_AFTER = (
    f"{_COMMON} UIDPLUS COMPRESS=DEFLATE ENABLE MOVE CONDSTORE ESEARCH UTF8=ACCEPT "
    "LIST-EXTENDED LIST-STATUS LITERAL- SPECIAL-USE APPENDLIMIT=35651584"
)


@dataclass
class Message:
    msgid: int
    raw: bytes
    labels: set[str]
    flags: set[str] = field(default_factory=set)
    date: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class Folder:
    uidvalidity: int
    uidnext: int = 1
    uids: dict[int, int] = field(default_factory=dict)  # uid -> msgid


class Account:
    def __init__(self) -> None:
        self.messages: dict[int, Message] = {}
        self.folders: dict[str, Folder] = {"INBOX": Folder(1001), ALL_MAIL: Folder(1002)}
        self.next_msgid = 1_700_000_000_000_000_000

    def label_of(self, folder: str) -> str:
        return "\\Inbox" if folder == "INBOX" else folder

    def folder_of(self, label: str) -> str:
        return "INBOX" if label.lower() == "\\inbox" else label

    def place(self, msg: Message, folder: str) -> None:
        box = self.folders.setdefault(folder, Folder(2000 + len(self.folders)))
        if msg.msgid not in box.uids.values():
            box.uids[box.uidnext] = msg.msgid
            box.uidnext += 1

    def unplace(self, msg: Message, folder: str) -> None:
        box = self.folders.get(folder)
        if box is not None:
            for uid in [u for u, m in box.uids.items() if m == msg.msgid]:
                del box.uids[uid]

    def deliver(self, raw: bytes) -> int:
        msg = Message(self.next_msgid, raw, {"\\Inbox"})
        self.next_msgid += 1
        self.messages[msg.msgid] = msg
        self.place(msg, "INBOX")
        self.place(msg, ALL_MAIL)
        return msg.msgid

    def add_label(self, msg: Message, label: str) -> None:
        if label not in msg.labels:  # idempotent, as on Gmail
            msg.labels.add(label)
        self.place(msg, self.folder_of(label))

    def remove_label(self, msg: Message, label: str) -> None:
        msg.labels.discard(label)
        self.unplace(msg, self.folder_of(label))

    def where(self, msgid: int) -> set[str]:
        return {f for f, box in self.folders.items() if msgid in box.uids.values()}


def tokens(text: str) -> list[object]:
    """IMAP arguments: atoms (with [...] kept whole), "quoted", (lists)."""
    out: list[object] = []
    stack: list[list[object]] = [out]
    i = 0
    while i < len(text):
        c = text[i]
        if c == " ":
            i += 1
        elif c == "(":
            stack.append([])
            i += 1
        elif c == ")":
            done = stack.pop()
            stack[-1].append(done)
            i += 1
        elif c == '"':
            j, buf = i + 1, []
            while text[j] != '"':
                if text[j] == "\\":
                    j += 1
                buf.append(text[j])
                j += 1
            stack[-1].append("".join(buf))
            i = j + 1
        else:
            j, depth = i, 0
            while j < len(text) and (depth or text[j] not in " ()"):
                depth += text[j] == "["
                depth -= text[j] == "]"
                j += 1
            stack[-1].append(text[i:j])
            i = j
    return out


def uid_set(spec: str, known: list[int]) -> list[int]:
    top = max(known, default=0)
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        a = top if lo == "*" else int(lo)
        b = a if not hi else (max(top, a) if hi == "*" else int(hi))
        a, b = min(a, b), max(a, b)
        out.update(u for u in known if a <= u <= b)
    return sorted(out)


class GmailPeer:
    def __init__(
        self, users: dict[str, str], cert: Path, key: Path, *, max_connections: int = 15
    ) -> None:
        self.users = users
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        self.accounts = {name: Account() for name in users}
        self.max_connections = max_connections
        self.throttle_fetches = 0  # answer the next N UID FETCHes with NO [THROTTLED]
        self.commands: list[str] = []
        self.live: dict[str, int] = dict.fromkeys(users, 0)
        self.peak: dict[str, int] = dict.fromkeys(users, 0)
        self.lock = threading.RLock()
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = int(self.server.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.server.close()

    def sent(self, verb: str) -> int:
        with self.lock:
            return sum(1 for c in self.commands if c.upper().startswith(verb.upper()))

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            wrapped = self.tls.wrap_socket(conn, server_side=True)  # Gmail: port 993, TLS
        except (OSError, ssl.SSLError):
            conn.close()
            return
        _Session(self, wrapped).run()


class _Session:
    def __init__(self, peer: GmailPeer, conn: socket.socket) -> None:
        self.peer = peer
        self.conn = conn
        self.file = conn.makefile("rb")
        self.user: str | None = None
        self.selected: str | None = None

    def send(self, data: bytes | str) -> None:
        self.conn.sendall(data.encode() if isinstance(data, str) else data)

    def run(self) -> None:
        self.send("* OK Gimap ready for requests from 127.0.0.1 test\r\n")
        try:
            while True:
                line = self.file.readline()
                if not line:
                    return
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                tag, _, rest = text.partition(" ")
                with self.peer.lock:
                    self.peer.commands.append(
                        rest if not rest.upper().startswith("LOGIN") else "LOGIN"
                    )
                    if not self.command(tag, rest):
                        return
        except OSError:
            return
        finally:
            if self.user is not None:
                with self.peer.lock:
                    self.peer.live[self.user] -= 1
            with contextlib.suppress(OSError):
                self.conn.close()

    @property
    def account(self) -> Account:
        assert self.user is not None
        return self.peer.accounts[self.user]

    def command(self, tag: str, rest: str) -> bool:
        verb, _, args = rest.partition(" ")
        verb = verb.upper()
        if verb == "UID":
            sub, _, args = args.partition(" ")
            verb = f"UID {sub.upper()}"
        handler = getattr(self, "do_" + verb.lower().replace(" ", "_"), None)
        if handler is None:
            self.send(f"{tag} BAD Unknown command\r\n")
            return True
        result = handler(tag, tokens(args))
        return result is not False

    # -- connection state ------------------------------------------------------------------

    def do_capability(self, tag: str, _a: list[object]) -> None:
        self.send(
            f"* CAPABILITY {CAPS_AFTER if self.user else CAPS_BEFORE}\r\n"
            f"{tag} OK Thats all she wrote!\r\n"
        )

    def do_login(self, tag: str, a: list[object]) -> None:
        user, password = str(a[0]), str(a[1])
        if self.peer.users.get(user) != password:
            self.send(f"{tag} NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n")
            return
        peer = self.peer
        if peer.live[user] >= peer.max_connections:
            self.send(f"{tag} NO [ALERT] Too many simultaneous connections. (Failure)\r\n")
            return
        self.user = user
        peer.live[user] += 1
        peer.peak[user] = max(peer.peak[user], peer.live[user])
        self.send(f"{tag} OK [CAPABILITY {CAPS_AFTER}] {user} authenticated (Success)\r\n")

    def do_enable(self, tag: str, a: list[object]) -> None:
        self.send(f"* ENABLED {' '.join(str(x) for x in a)}\r\n{tag} OK Success\r\n")

    def do_noop(self, tag: str, _a: list[object]) -> None:
        self.send(f"{tag} OK Success\r\n")

    def do_logout(self, tag: str, _a: list[object]) -> bool:
        self.send(f"* BYE LOGOUT Requested\r\n{tag} OK 73 good day (Success)\r\n")
        return False

    def do_namespace(self, tag: str, _a: list[object]) -> None:
        self.send(f'* NAMESPACE (("" "/")) NIL NIL\r\n{tag} OK Success\r\n')

    def do_list(self, tag: str, a: list[object]) -> None:
        pattern = str(a[1])
        if pattern == "":
            self.send(f'* LIST (\\Noselect) "/" ""\r\n{tag} OK Success\r\n')
            return
        regex = re.compile(
            "^" + re.escape(pattern).replace(r"\*", ".*").replace("%", "[^/]*") + "$"
        )
        for name in sorted(self.account.folders):
            if regex.match(name):
                attrs = "\\HasNoChildren \\All" if name == ALL_MAIL else "\\HasNoChildren"
                self.send(f'* LIST ({attrs}) "/" "{name}"\r\n')
        self.send(f"{tag} OK Success\r\n")

    def do_create(self, tag: str, a: list[object]) -> None:
        name = str(a[0])
        if name in self.account.folders:
            self.send(f"{tag} NO [ALREADYEXISTS] Duplicate folder name {name} (Failure)\r\n")
            return
        self.account.folders[name] = Folder(3000 + len(self.account.folders))
        self.send(f"{tag} OK Success\r\n")

    def do_subscribe(self, tag: str, _a: list[object]) -> None:
        self.send(f"{tag} OK Success\r\n")

    def do_select(self, tag: str, a: list[object], readonly: bool = False) -> None:
        name = str(a[0])
        box = self.account.folders.get(name)
        if box is None:
            self.send(f"{tag} NO [NONEXISTENT] Unknown Mailbox: {name} (Failure)\r\n")
            return
        self.selected = name
        self.send(
            "* FLAGS (\\Answered \\Flagged \\Draft \\Deleted \\Seen $NotPhishing $Phishing)\r\n"
            "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Draft \\Deleted \\Seen "
            "$NotPhishing $Phishing \\*)] Flags permitted.\r\n"
            f"* OK [UIDVALIDITY {box.uidvalidity}] UIDs valid.\r\n"
            f"* {len(box.uids)} EXISTS\r\n* 0 RECENT\r\n"
            f"* OK [UIDNEXT {box.uidnext}] Predicted next UID.\r\n"
            f"* OK [HIGHESTMODSEQ 1000] \r\n"
            f"{tag} OK [{'READ-ONLY' if readonly else 'READ-WRITE'}] {name} selected. (Success)\r\n"
        )

    def do_examine(self, tag: str, a: list[object]) -> None:
        self.do_select(tag, a, readonly=True)

    def do_status(self, tag: str, a: list[object]) -> None:
        name = str(a[0])
        box = self.account.folders.get(name)
        if box is None:
            self.send(f"{tag} NO [NONEXISTENT] Unknown Mailbox: {name} (Failure)\r\n")
            return
        self.send(
            f'* STATUS "{name}" (MESSAGES {len(box.uids)} UIDNEXT {box.uidnext} '
            f"UIDVALIDITY {box.uidvalidity})\r\n{tag} OK Success\r\n"
        )

    # -- messages ----------------------------------------------------------------------------

    def _box(self) -> Folder:
        assert self.selected is not None
        return self.account.folders[self.selected]

    def do_uid_search(self, tag: str, a: list[object]) -> None:
        box = self._box()
        uids = sorted(box.uids)
        words = [str(x) for x in a]
        if words and words[0].upper() == "CHARSET":
            words = words[2:]
        key = words[0].upper() if words else "ALL"
        if key == "UID":
            found = uid_set(words[1], uids)
        elif key == "X-GM-MSGID":
            found = [u for u in uids if box.uids[u] == int(words[1])]
        elif key == "HEADER":
            needle = f"{words[1]}: {words[2]}".lower().encode()
            found = [u for u in uids if needle in self.account.messages[box.uids[u]].raw.lower()]
        else:
            found = uids
        self.send(
            f"* SEARCH {' '.join(map(str, found))}\r\n{tag} OK SEARCH completed (Success)\r\n"
        )

    def do_uid_fetch(self, tag: str, a: list[object]) -> None:
        peer = self.peer
        if peer.throttle_fetches > 0:
            peer.throttle_fetches -= 1
            self.send(
                f"{tag} NO [THROTTLED] Account exceeded command or bandwidth limits. (Failure)\r\n"
            )
            return
        box = self._box()
        order = sorted(box.uids)
        items = a[1] if isinstance(a[1], list) else [a[1]]
        for uid in uid_set(str(a[0]), order):
            msg = self.account.messages[box.uids[uid]]
            parts: list[bytes] = [f"UID {uid}".encode()]
            for item in (str(i) for i in items):
                name = item.upper()
                if name == "X-GM-MSGID":
                    parts.append(f"X-GM-MSGID {msg.msgid}".encode())
                elif name == "X-GM-LABELS":
                    labels = " ".join(
                        f'"{lab}"' if not lab.startswith("\\") else lab
                        for lab in sorted(msg.labels)
                    )
                    parts.append(f"X-GM-LABELS ({labels})".encode())
                elif name == "FLAGS":
                    parts.append(f"FLAGS ({' '.join(sorted(msg.flags))})".encode())
                elif name == "RFC822.SIZE":
                    parts.append(f"RFC822.SIZE {len(msg.raw)}".encode())
                elif name == "INTERNALDATE":
                    parts.append(
                        f'INTERNALDATE "{msg.date.strftime("%d-%b-%Y %H:%M:%S +0000")}"'.encode()
                    )
                elif name.startswith("BODY.PEEK[]"):
                    limit = re.search(r"<0\.(\d+)>", name)
                    data = msg.raw[: int(limit.group(1))] if limit else msg.raw
                    label = "BODY[]<0>" if limit else "BODY[]"
                    parts.append(f"{label} {{{len(data)}}}\r\n".encode() + data)
                elif name.startswith("BODY.PEEK[HEADER.FIELDS"):
                    head = msg.raw.split(b"\r\n\r\n", 1)[0]
                    lines = [
                        ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"message-id:")
                    ]
                    data = b"\r\n".join(lines) + b"\r\n\r\n"
                    parts.append(b"BODY[HEADER.FIELDS (MESSAGE-ID)] {%d}\r\n" % len(data) + data)
            seq = order.index(uid) + 1
            self.send(b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n")
        self.send(f"{tag} OK Success\r\n")

    def do_uid_store(self, tag: str, a: list[object]) -> None:
        box = self._box()
        what = str(a[1]).upper()
        values = [str(v) for v in (a[2] if isinstance(a[2], list) else [a[2]])]
        for uid in uid_set(str(a[0]), sorted(box.uids)):
            msg = self.account.messages[box.uids.get(uid, 0)] if uid in box.uids else None
            if msg is None:
                continue
            if what.startswith("+X-GM-LABELS"):
                for label in values:
                    self.account.add_label(msg, label)
            elif what.startswith("-X-GM-LABELS"):
                for label in values:
                    self.account.remove_label(msg, label)
            elif what.startswith("+FLAGS"):
                msg.flags.update(values)
            elif what.startswith("-FLAGS"):
                msg.flags.difference_update(values)
        self.send(f"{tag} OK Success\r\n")
