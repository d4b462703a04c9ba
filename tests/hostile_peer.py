"""A scripted IMAP4rev1 server whose answers can be rewritten: the hostile-server harness
(issue 16; docs/reliability.md, "Hostile servers: the contract").

The peer keeps each user's folders and messages in memory and answers what a triage cycle
sends (CAPABILITY, LOGIN, ENABLE, LIST, SELECT/EXAMINE, STATUS, UID SEARCH/FETCH/STORE,
UID MOVE and the COPY fallback, UID EXPUNGE, EXPUNGE, CREATE, SUBSCRIBE, NOOP, LOGOUT) the
way a standards-faithful server would, in plain text on 127.0.0.1 (accounts use
``tls: none``, which the settings allow to a loopback host).

Every answer is built first as it should be, a list of complete responses (untagged ones,
then the tagged one; literals inside), and then passed through the peer's
``deviations``: small functions ``(command, answer) -> answer`` that rewrite it the way
some real server does. An empty element (:data:`CLOSE`) in an answer closes the
connection there. A server that refuses a command does not carry it out: ``refusals``
are asked first and answer NO or BAD instead.

The peer records what it was sent (``commands``), which messages a rewritten FETCH
answer concerned (``tainted``: their identity or content was not what the server holds)
and which messages a command changed (``acted``), so that a test can assert the daemon
never acted on a message it could not be sure of.

The command-line tokenizer and the UID-set reader come from the Gmail peer
(tests/gmail_peer.py).
"""

from __future__ import annotations

import contextlib
import fnmatch
import random
import re
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tests.gmail_peer import tokens, uid_set

#: An answer: untagged responses then the tagged one, each complete (CRLF, literals).
Answer = list[bytes]
#: A deviation: the command (without its tag) and the normal answer -> the answer sent.
Deviation = Callable[[str, Answer], Answer]
#: A refusal: the command -> the tagged status to answer instead of doing it ("BAD
#: Unknown command", "NO [OVERQUOTA] ..."), or None to do it.
Refusal = Callable[[str], str | None]
#: In an answer: close the connection here (a server that died or said BYE).
CLOSE = b""

CAPABILITIES = (
    "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UNSELECT CHILDREN UIDPLUS MOVE "
    "CONDSTORE SPECIAL-USE"
)
PERMANENT = "\\Answered \\Flagged \\Deleted \\Seen \\Draft"


@dataclass
class Message:
    raw: bytes
    flags: set[str] = field(default_factory=set)
    when: datetime = field(default_factory=lambda: datetime.now(UTC))
    modseq: int = 1


@dataclass
class Folder:
    uidvalidity: int
    uidnext: int = 1
    messages: dict[int, Message] = field(default_factory=dict)

    def add(self, message: Message) -> int:
        uid = self.uidnext
        self.messages[uid] = message
        self.uidnext += 1
        return uid

    def seq(self, uid: int) -> int:
        return sorted(self.messages).index(uid) + 1


class Mailstore:
    """One user's folders, by their names on the server (with the peer's separator)."""

    def __init__(self, serial: int) -> None:
        self.serial = serial
        self.folders: dict[str, Folder] = {"INBOX": Folder(1000 * serial + 1)}
        self.modseq = 1

    def create(self, name: str) -> Folder:
        return self.folders.setdefault(name, Folder(1000 * self.serial + 1 + len(self.folders)))

    def bump(self, message: Message) -> None:
        self.modseq += 1
        message.modseq = self.modseq


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _imap_date(when: datetime) -> str:
    return when.strftime("%d-%b-%Y %H:%M:%S +0000")


def _header(raw: bytes, name: bytes) -> bytes:
    """The lines of header ``name`` (with continuations), then the blank line."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    out, inside = [], False
    for line in head:
        if line[:1] in (b" ", b"\t"):
            if inside:
                out.append(line)
            continue
        inside = line.lower().startswith(name.lower() + b":")
        if inside:
            out.append(line)
    return b"".join(line + b"\r\n" for line in out) + b"\r\n"


class HostilePeer:
    """The server. ``delimiter``: the hierarchy separator LIST reports (None: NIL, a flat
    namespace); ``capabilities``: what it advertises after login."""

    def __init__(
        self,
        users: Iterable[str],
        password: str,
        *,
        delimiter: str | None = "/",
        capabilities: str = CAPABILITIES,
    ) -> None:
        self.password = password
        self.delimiter = delimiter
        #: The personal namespace's prefix NAMESPACE announces ("INBOX." on Cyrus's
        #: standard namespace and Courier); the user's folders other than INBOX live under it.
        self.prefix = ""
        self.capabilities = capabilities
        self.stores = {user: Mailstore(n + 1) for n, user in enumerate(users)}
        self.deviations: list[Deviation] = []
        self.refusals: list[Refusal] = []
        self.commands: list[str] = []
        self.answers = 0  # answers sent
        self.rewritten = 0  # answers a deviation changed
        self.refused = 0  # commands a refusal answered
        self.tainted: set[tuple[str, str, int]] = set()  # (user, folder, uid)
        self.acted: list[tuple[str, str, str, int]] = []  # (user, verb, folder, uid)
        self.lock = threading.RLock()
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = int(self.server.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.server.close()

    def add_user(self, user: str) -> Mailstore:
        with self.lock:
            return self.stores.setdefault(user, Mailstore(len(self.stores) + 1))

    def server_name(self, folder: str) -> str:
        """A rules folder ('/' separated) as this server names it."""
        if folder.upper() == "INBOX":
            return folder
        native = folder if self.delimiter in (None, "/") else folder.replace("/", self.delimiter)
        return self.prefix + native

    def rules_name(self, name: str) -> str:
        if self.prefix and name.startswith(self.prefix):
            name = name[len(self.prefix) :]
        return name if self.delimiter in (None, "/") else name.replace(self.delimiter, "/")

    def deliver(self, user: str, raw: bytes, folder: str = "INBOX") -> int:
        with self.lock:
            store, message = self.stores[user], Message(raw)
            store.bump(message)
            return store.create(self.server_name(folder)).add(message)

    def tainted_for(self, user: str) -> set[tuple[str, int]]:
        with self.lock:
            return {(folder, uid) for who, folder, uid in self.tainted if who == user}

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=_Session(self, conn).run, daemon=True).start()

    def answer(self, session: _Session, tag: str, command: str, normal: Answer) -> Answer:
        """Pass the normal answer through the deviations; remember what they changed."""
        sent = normal
        for deviation in list(self.deviations):
            sent = deviation(command, sent)
        self.answers += 1
        if sent != normal:
            self.rewritten += 1
            if session.user is not None and command.upper().startswith("UID FETCH"):
                self._taint(session, command, normal, sent)
        return [tag.encode() + r[5:] if r.startswith(b"{TAG} ") else r for r in sent]

    def _taint(self, session: _Session, command: str, normal: Answer, sent: Answer) -> None:
        """A FETCH answer about a message that differs from the normal one: its response
        is gone or changed, or another one claims its UID."""
        assert session.user is not None and session.selected is not None
        asked = set(uid_set(command.split()[2], sorted(session.box().messages)))
        claims = {int(m[1]) for r in sent if r not in normal and (m := fetch_uid(r))}
        lost = {int(m[1]) for r in normal if r not in sent and (m := fetch_uid(r))}
        for uid in (claims | lost) & asked:
            self.tainted.add((session.user, session.selected, uid))


def fetch_uid(response: bytes) -> re.Match[bytes] | None:
    """The UID item of a ``* n FETCH`` response (None: not a FETCH, or no UID)."""
    if not re.match(rb"\* \d+ FETCH ", response):
        return None
    return re.search(rb"[( ]UID (\d+)", response.split(b"\r\n", 1)[0])


class _Session:
    def __init__(self, peer: HostilePeer, conn: socket.socket) -> None:
        self.peer = peer
        self.conn = conn
        self.file = conn.makefile("rb")
        self.user: str | None = None
        self.selected: str | None = None
        self.read_only = False

    def box(self) -> Folder:
        assert self.user is not None and self.selected is not None
        return self.peer.stores[self.user].folders[self.selected]

    def run(self) -> None:
        with contextlib.suppress(OSError), self.conn:
            self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conn.sendall(b"* OK hostile peer ready\r\n")
            while line := self.file.readline():
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                tag, _, command = text.partition(" ")
                with self.peer.lock:
                    self.peer.commands.append(
                        "LOGIN" if command.upper().startswith("LOGIN") else command
                    )
                    refused = next(filter(None, (r(command) for r in self.peer.refusals)), None)
                    self.peer.refused += refused is not None
                    normal = self.command(command) if refused is None else self.no(refused, "")
                    answer = self.peer.answer(self, tag, command, normal)
                closing = CLOSE in answer
                # One write per answer (and no Nagle delay): a small answer split over
                # several writes waits for the client's delayed ACK.
                self.conn.sendall(b"".join(answer[: answer.index(CLOSE)] if closing else answer))
                if closing or command.upper().startswith("LOGOUT"):
                    return

    def command(self, command: str) -> Answer:
        verb, _, args = command.partition(" ")
        verb = verb.upper()
        if verb == "UID":
            sub, _, args = args.partition(" ")
            verb = f"UID_{sub.upper()}"
        handler = getattr(self, f"do_{verb.lower()}", None)
        if handler is None or (self.user is None and verb not in ("CAPABILITY", "LOGIN")):
            return [b"{TAG} BAD Unknown command or not allowed now\r\n"]
        if verb.startswith("UID_") and self.selected is None:
            return [b"{TAG} BAD No mailbox selected\r\n"]
        answer: Answer = handler(tokens(args))
        return answer

    @staticmethod
    def ok(text: str = "Completed", *untagged: str | bytes) -> Answer:
        lines = [u.encode() if isinstance(u, str) else u for u in untagged]
        return [*lines, f"{{TAG}} OK {text}\r\n".encode()]

    @staticmethod
    def no(text: str, status: str = "NO ") -> Answer:
        return [f"{{TAG}} {status}{text}\r\n".encode()]

    # -- not selected ------------------------------------------------------------------------

    def do_capability(self, _args: list[object]) -> Answer:
        caps = self.peer.capabilities if self.user else "IMAP4rev1 AUTH=PLAIN"
        return self.ok("Capability completed", f"* CAPABILITY {caps}\r\n")

    def do_login(self, args: list[object]) -> Answer:
        user, password = str(args[0]), str(args[1])
        if user not in self.peer.stores or password != self.peer.password:
            return self.no("[AUTHENTICATIONFAILED] Authentication failed.")
        self.user = user
        return self.ok("Logged in")

    def do_enable(self, args: list[object]) -> Answer:
        return self.ok("Enabled", f"* ENABLED {' '.join(map(str, args))}\r\n")

    def do_noop(self, _args: list[object]) -> Answer:
        return self.ok("NOOP completed")

    def do_logout(self, _args: list[object]) -> Answer:
        return self.ok("Logout completed", "* BYE Logging out\r\n")

    def do_namespace(self, _args: list[object]) -> Answer:
        delimiter = _quote(self.peer.delimiter) if self.peer.delimiter else "NIL"
        personal = f"(({_quote(self.peer.prefix)} {delimiter}))"
        return self.ok("Namespace completed", f"* NAMESPACE {personal} NIL NIL\r\n")

    def do_list(self, args: list[object]) -> Answer:
        reference, pattern = str(args[0]), str(args[1])
        delimiter = _quote(self.peer.delimiter) if self.peer.delimiter else "NIL"
        if pattern == "":
            return self.ok("List completed", f"* LIST (\\Noselect) {delimiter} {_quote('')}\r\n")
        wanted = re.compile(fnmatch.translate(reference + pattern.replace("%", "*")))
        assert self.user is not None
        lines = [
            f"* LIST (\\HasNoChildren) {delimiter} {_quote(name)}\r\n"
            for name in sorted(self.peer.stores[self.user].folders)
            if wanted.match(name)
        ]
        return self.ok("List completed", *lines)

    def do_create(self, args: list[object]) -> Answer:
        assert self.user is not None
        store = self.peer.stores[self.user]
        name = str(args[0])
        if name in store.folders:
            return self.no("[ALREADYEXISTS] Mailbox already exists")
        store.create(name)
        return self.ok("Create completed")

    def do_subscribe(self, _args: list[object]) -> Answer:
        return self.ok("Subscribe completed")

    def do_status(self, args: list[object]) -> Answer:
        assert self.user is not None
        name = str(args[0])
        box = self.peer.stores[self.user].folders.get(name)
        if box is None:
            return self.no("[NONEXISTENT] Mailbox doesn't exist")
        wanted = args[1] if isinstance(args[1], list) else [args[1]]
        values = {
            "MESSAGES": len(box.messages),
            "UIDNEXT": box.uidnext,
            "UIDVALIDITY": box.uidvalidity,
            "UNSEEN": sum("\\Seen" not in m.flags for m in box.messages.values()),
            "HIGHESTMODSEQ": max((m.modseq for m in box.messages.values()), default=1),
        }
        items = " ".join(f"{w} {values[str(w).upper()]}" for w in wanted)
        return self.ok("Status completed", f"* STATUS {_quote(name)} ({items})\r\n")

    def do_select(self, args: list[object], read_only: bool = False) -> Answer:
        assert self.user is not None
        name = str(args[0])
        box = self.peer.stores[self.user].folders.get(name)
        if box is None:
            self.selected = None
            return self.no("[NONEXISTENT] Mailbox doesn't exist")
        self.selected, self.read_only = name, read_only
        modseq = max((m.modseq for m in box.messages.values()), default=1)
        return self.ok(
            f"[{'READ-ONLY' if read_only else 'READ-WRITE'}] Select completed",
            f"* FLAGS ({PERMANENT})\r\n",
            f"* OK [PERMANENTFLAGS ({PERMANENT} \\*)] Flags permitted.\r\n",
            f"* {len(box.messages)} EXISTS\r\n",
            "* 0 RECENT\r\n",
            f"* OK [UIDVALIDITY {box.uidvalidity}] UIDs valid\r\n",
            f"* OK [UIDNEXT {box.uidnext}] Predicted next UID\r\n",
            f"* OK [HIGHESTMODSEQ {modseq}] Highest\r\n",
        )

    def do_examine(self, args: list[object]) -> Answer:
        return self.do_select(args, read_only=True)

    def do_unselect(self, _args: list[object]) -> Answer:
        self.selected = None
        return self.ok("Unselect completed")

    # -- selected ----------------------------------------------------------------------------

    def _uids(self, spec: object) -> list[int]:
        return uid_set(str(spec), sorted(self.box().messages))

    def do_uid_search(self, args: list[object]) -> Answer:
        box = self.box()
        words = [str(a) for a in args]
        if words and words[0].upper() == "CHARSET":
            words = words[2:]
        key = words[0].upper() if words else "ALL"
        found = sorted(box.messages)
        if key == "UID":
            found = self._uids(words[1])
        elif key == "HEADER":
            want = words[2].lower().encode()
            found = [
                u for u in found if want in _header(box.messages[u].raw, words[1].encode()).lower()
            ]
        elif key == "SINCE":
            since = datetime.strptime(words[1], "%d-%b-%Y").date()
            found = [u for u in found if box.messages[u].when.date() >= since]
        elif key == "MODSEQ":
            found = [u for u in found if box.messages[u].modseq >= int(words[1])]
        line = "* SEARCH" + "".join(f" {u}" for u in found) + "\r\n"
        return self.ok("Search completed", line)

    def _item(self, uid: int, message: Message, item: str) -> bytes:
        name = item.upper()
        if name == "UID":
            return b""
        if name == "FLAGS":
            return f"FLAGS ({' '.join(sorted(message.flags))})".encode()
        if name == "RFC822.SIZE":
            return f"RFC822.SIZE {len(message.raw)}".encode()
        if name == "INTERNALDATE":
            return f'INTERNALDATE "{_imap_date(message.when)}"'.encode()
        if name == "MODSEQ":
            return f"MODSEQ ({message.modseq})".encode()
        section = re.fullmatch(r"BODY(?:\.PEEK)?\[(.*?)\](?:<(\d+)\.(\d+)>)?", item, re.I)
        assert section is not None, item
        part, start, length = section.groups()
        if part.upper().startswith("HEADER.FIELDS"):
            data = _header(message.raw, b"Message-ID")
            label = "BODY[HEADER.FIELDS (MESSAGE-ID)]"
        else:
            data, label = message.raw, "BODY[]"
        if start is not None:
            data = data[int(start) : int(start) + int(length)]
            label += f"<{start}>"
        return f"{label} {{{len(data)}}}\r\n".encode() + data

    def do_uid_fetch(self, args: list[object]) -> Answer:
        box = self.box()
        items = args[1] if isinstance(args[1], list) else [args[1]]
        responses = []
        for uid in self._uids(args[0]):
            message = box.messages[uid]
            parts = [f"UID {uid}".encode()]
            parts += [p for p in (self._item(uid, message, str(i)) for i in items) if p]
            responses.append(b"* %d FETCH (" % box.seq(uid) + b" ".join(parts) + b")\r\n")
        return self.ok("Fetch completed", *responses)

    def _act(self, verb: str, uids: Iterable[int]) -> None:
        assert self.user is not None and self.selected is not None
        self.peer.acted += [(self.user, verb, self.selected, uid) for uid in uids]

    def do_uid_store(self, args: list[object]) -> Answer:
        if self.read_only:
            return self.no("[READ-ONLY] Mailbox is read-only")
        assert self.user is not None
        box, store = self.box(), self.peer.stores[self.user]
        what = str(args[1]).upper()
        flags = {str(f) for f in (args[2] if isinstance(args[2], list) else [args[2]])}
        uids = self._uids(args[0])
        self._act("STORE", uids)
        untagged = []
        for uid in uids:
            message = box.messages[uid]
            before = set(message.flags)
            if what.startswith("+"):
                message.flags |= flags
            elif what.startswith("-"):
                message.flags -= flags
            else:
                message.flags = set(flags)
            if message.flags != before:
                store.bump(message)
            if not what.endswith(".SILENT"):
                flags = " ".join(sorted(message.flags))
                untagged.append(f"* {box.seq(uid)} FETCH (UID {uid} FLAGS ({flags}))\r\n")
        return self.ok("Store completed", *untagged)

    def _copy(self, args: list[object], verb: str) -> tuple[list[int], str] | None:
        """Copy the UIDs in args[0] to the folder args[1]: (the UIDs, a COPYUID code)."""
        assert self.user is not None
        target = self.peer.stores[self.user].folders.get(str(args[1]))
        if target is None:
            return None
        box, uids = self.box(), self._uids(args[0])
        self._act(verb, uids)
        copied = []
        for uid in uids:
            original = box.messages[uid]
            copy = Message(original.raw, set(original.flags), original.when)
            self.peer.stores[self.user].bump(copy)
            copied.append(target.add(copy))
        listed = ",".join(map(str, uids)), ",".join(map(str, copied))
        return uids, f"[COPYUID {target.uidvalidity} {listed[0]} {listed[1]}]"

    def do_uid_copy(self, args: list[object]) -> Answer:
        done = self._copy(args, "COPY")
        if done is None:
            return self.no("[TRYCREATE] Mailbox doesn't exist")
        uids, code = done
        return self.ok(f"{code} Copy completed" if uids else "No messages found")

    def do_uid_move(self, args: list[object]) -> Answer:
        done = self._copy(args, "MOVE")
        if done is None:
            return self.no("[TRYCREATE] Mailbox doesn't exist")
        uids, code = done
        if not uids:
            return self.ok("No messages found")
        return self.ok("Move completed", f"* OK {code} Moved\r\n", *self._expunge(uids))

    def _expunge(self, uids: Iterable[int]) -> list[bytes]:
        """Remove these UIDs; their EXPUNGE responses (highest first: numbers stay valid)."""
        box = self.box()
        out = []
        for uid in sorted(uids, reverse=True):
            out.append(b"* %d EXPUNGE\r\n" % box.seq(uid))
            del box.messages[uid]
        return out

    def do_uid_expunge(self, args: list[object]) -> Answer:
        box = self.box()
        doomed = [u for u in self._uids(args[0]) if "\\Deleted" in box.messages[u].flags]
        self._act("EXPUNGE", doomed)
        return self.ok("Expunge completed", *self._expunge(doomed))

    def do_expunge(self, _args: list[object]) -> Answer:
        box = self.box()
        doomed = [u for u, m in box.messages.items() if "\\Deleted" in m.flags]
        self._act("EXPUNGE", doomed)
        return self.ok("Expunge completed", *self._expunge(doomed))


# -- what a test reads back -------------------------------------------------------------------


@dataclass
class PeerUser:
    """A user's mail as the invariant checker (tests/reliability/invariant.py) reads a
    Dovecot user's: folder names in rules form, Message-ID -> uid, flags, raw."""

    peer: HostilePeer
    name: str

    def folders(self) -> list[str]:
        with self.peer.lock:
            return [self.peer.rules_name(n) for n in self.peer.stores[self.name].folders]

    def messages(self, folder: str) -> dict[str, dict[str, object]]:
        with self.peer.lock:
            box = self.peer.stores[self.name].folders.get(self.peer.server_name(folder))
            if box is None:
                return {}
            out: dict[str, dict[str, object]] = {}
            for uid, message in sorted(box.messages.items()):
                found = _header(message.raw, b"Message-ID").split(b":", 1)
                mid = found[1].strip().decode() if len(found) == 2 else f"uid-{uid}"
                out[mid] = {"uid": uid, "flags": set(message.flags), "raw": message.raw}
            return out

    def append(self, raw: bytes, folder: str = "INBOX") -> int:
        return self.peer.deliver(self.name, raw, folder)


# -- building deviations ---------------------------------------------------------------------

_LITERAL = re.compile(rb"\{(\d+)\}\r\n")


def segments(response: bytes) -> list[tuple[bytes, bool]]:
    """A response cut into text and literal data: [(bytes, is_literal), ...]."""
    out: list[tuple[bytes, bool]] = []
    at = 0
    while found := _LITERAL.search(response, at):
        end = found.end() + int(found[1])
        out += [(response[at : found.end()], False), (response[found.end() : end], True)]
        at = end
    return [*out, (response[at:], False)]


def text_sub(pattern: bytes, replacement: bytes, response: bytes, count: int = 0) -> bytes:
    """``re.sub`` on a response's text, never inside its literals (mail stays whole)."""
    return b"".join(
        data if literal else re.sub(pattern, replacement, data, count=count)
        for data, literal in segments(response)
    )


def literal_sub(label: bytes, change: Callable[[bytes], bytes | None], response: bytes) -> bytes:
    """Replace the literal that follows ``label`` (e.g. ``BODY[]<0>``) with ``change(data)``,
    its length announced again; None makes the item NIL."""
    parts = segments(response)
    for at in range(len(parts) - 1):
        text, data = parts[at][0], parts[at + 1][0]
        head = re.search(re.escape(label) + rb" \{\d+\}\r\n$", text)
        if head and parts[at + 1][1]:
            new = change(data)
            announced = b" NIL" if new is None else b" {%d}\r\n" % len(new)
            parts[at] = (text[: head.start() + len(label)] + announced, False)
            parts[at + 1] = (new or b"", True)
            break
    return b"".join(data for data, _literal in parts)


def on(prefix: str, rewrite: Callable[[Answer], Answer]) -> Deviation:
    """A deviation that rewrites the answers to commands starting with ``prefix``."""

    def deviation(command: str, answer: Answer) -> Answer:
        return rewrite(answer) if command.upper().startswith(prefix.upper()) else answer

    return deviation


def each(change: Callable[[bytes], bytes]) -> Callable[[Answer], Answer]:
    """Apply ``change`` to every response of an answer."""
    return lambda answer: [change(r) for r in answer]


def limited(deviation: Deviation, times: int = 1) -> Deviation:
    """``deviation`` for the first ``times`` answers it changes, then the normal answers."""
    left = [times]

    def once(command: str, answer: Answer) -> Answer:
        if left[0] <= 0:
            return answer
        sent = deviation(command, answer)
        left[0] -= sent != answer
        return sent

    return once


def tagged(answer: Answer, line: str) -> Answer:
    """The answer with its tagged response replaced by ``line`` ("NO ...", "BAD ...")."""
    return [*answer[:-1], f"{{TAG}} {line}\r\n".encode()]


def refuse(prefix: str, status: str, times: int | None = None) -> Refusal:
    """Answer ``status`` ("BAD Unknown command") to commands starting with ``prefix``
    (the first ``times`` of them), without carrying them out."""
    left = [times]

    def refusal(command: str) -> str | None:
        if not command.upper().startswith(prefix.upper()) or left[0] == 0:
            return None
        left[0] = None if left[0] is None else left[0] - 1
        return status

    return refusal


# -- mutation mode --------------------------------------------------------------------------------

#: Item names whose value a mutation drops, turns NIL or quotes.
_ITEM = re.compile(
    rb"(?:UIDNEXT|UIDVALIDITY|MESSAGES|HIGHESTMODSEQ|RFC822\.SIZE|UID|MODSEQ) \d+"
    rb"|FLAGS \([^)]*\)|INTERNALDATE \"[^\"]*\""
)
_NUMBER = re.compile(rb"(?<=[ \[(])\d+(?=[ )\]\r])")
_UNSOLICITED = [
    b"* %d EXISTS\r\n",
    b"* %d EXPUNGE\r\n",
    b"* %d RECENT\r\n",
    b"* %d FETCH (FLAGS (\\Seen))\r\n",
    b"* OK [ALERT] System maintenance in %d minutes\r\n",
    b'* STATUS "INBOX" (MESSAGES %d)\r\n',
    b"* SEARCH %d\r\n",
    b"* CAPABILITY IMAP4rev1\r\n",
]


def _text_spans(answer: Answer, pattern: re.Pattern[bytes]) -> list[tuple[int, int, int]]:
    """(response, start, end) of each match of ``pattern`` in the untagged responses'
    text (never inside a literal)."""
    spans = []
    for at, response in enumerate(answer[:-1]):
        offset = 0
        for data, literal in segments(response):
            if not literal:
                spans += [
                    (at, offset + m.start(), offset + m.end()) for m in pattern.finditer(data)
                ]
            offset += len(data)
    return spans


def _replace_span(
    answer: Answer, rng: random.Random, pattern: re.Pattern[bytes], new: Callable[[bytes], bytes]
) -> Answer:
    spans = _text_spans(answer, pattern)
    if not spans:
        return answer
    at, start, end = rng.choice(spans)
    response = answer[at]
    changed = response[:start] + new(response[start:end]) + response[end:]
    return [*answer[:at], changed, *answer[at + 1 :]]


def _drop_item(answer: Answer, rng: random.Random) -> Answer:
    return _replace_span(answer, rng, _ITEM, lambda _old: b"")


def _nil_number(answer: Answer, rng: random.Random) -> Answer:
    return _replace_span(answer, rng, _NUMBER, lambda _old: b"NIL")


def _string_number(answer: Answer, rng: random.Random) -> Answer:
    return _replace_span(answer, rng, _NUMBER, lambda old: b'"' + old + b'"')


def _literals(answer: Answer) -> list[int]:
    return [at for at, r in enumerate(answer) if _LITERAL.search(r)]


def _truncated_literal(answer: Answer, rng: random.Random) -> Answer:
    """A literal cut short: announced anew (a partial answer), announced as before with
    fewer bytes behind it and the connection dropped, or announced shorter than sent."""
    holders = _literals(answer)
    if not holders:
        return answer
    at = rng.choice(holders)
    response = answer[at]
    parts = segments(response)
    literal = rng.choice([n for n, (_d, is_literal) in enumerate(parts) if is_literal])
    data = parts[literal][0]
    keep = rng.randint(0, max(0, len(data) - 1))
    how = rng.choice(["announced", "dropped", "lying"])
    before = b"".join(d for d, _l in parts[:literal])
    if how == "dropped":  # the server dies in the middle of the literal
        return [*answer[:at], before + data[:keep], CLOSE]
    # "announced": a consistent but short literal; "lying": all the data, half announced
    sent, announced = (data[:keep], keep) if how == "announced" else (data, len(data) // 2)
    head = _LITERAL.sub(b"{%d}\r\n" % announced, parts[literal - 1][0])
    parts[literal - 1], parts[literal] = (head, False), (sent, True)
    return [*answer[:at], b"".join(d for d, _l in parts), *answer[at + 1 :]]


def _reordered(answer: Answer, rng: random.Random) -> Answer:
    untagged = answer[:-1]
    if len(untagged) < 2:
        return answer
    rng.shuffle(untagged)
    return [*untagged, answer[-1]]


def _unsolicited(answer: Answer, rng: random.Random) -> Answer:
    response = rng.choice(_UNSOLICITED)
    line = response % rng.randint(1, 60) if b"%d" in response else response
    at = rng.randint(0, len(answer) - 1)
    return [*answer[:at], line, *answer[at:]]


def _duplicated_uid(answer: Answer, rng: random.Random) -> Answer:
    """A FETCH response sent twice, the copy claiming the same or another asked UID."""
    fetched = [at for at, r in enumerate(answer) if fetch_uid(r)]
    if not fetched:
        return answer
    at = rng.choice(fetched)
    other = fetch_uid(answer[rng.choice(fetched)])
    assert other is not None
    copy = text_sub(rb"([( ])UID \d+", rb"\g<1>UID " + other[1], answer[at], count=1)
    return [*answer[: at + 1], copy, *answer[at + 1 :]]


def _foreign_uid(answer: Answer, rng: random.Random) -> Answer:
    """A UID no one asked for: in a FETCH response, or added to a SEARCH answer."""
    uid = b"%d" % rng.choice([rng.randint(1, 40), rng.randint(10**5, 10**9)])
    fetched = [at for at, r in enumerate(answer) if fetch_uid(r)]
    if fetched:
        at = rng.choice(fetched)
        changed = text_sub(rb"([( ])UID \d+", rb"\g<1>UID " + uid, answer[at], count=1)
        return [*answer[:at], changed, *answer[at + 1 :]]
    searched = [at for at, r in enumerate(answer) if r.startswith(b"* SEARCH")]
    if not searched:
        return answer
    at = searched[0]
    return [*answer[:at], answer[at].rstrip(b"\r\n") + b" " + uid + b"\r\n", *answer[at + 1 :]]


MUTATIONS: dict[str, Callable[[Answer, random.Random], Answer]] = {
    "drop an item": _drop_item,
    "NIL for a number": _nil_number,
    "a string for a number": _string_number,
    "a truncated literal": _truncated_literal,
    "reordered untagged responses": _reordered,
    "an unsolicited untagged response": _unsolicited,
    "a duplicated UID": _duplicated_uid,
    "a foreign UID": _foreign_uid,
}


class Mutator:
    """A deviation that mutates chosen answers: ``plan`` maps the n-th answer (counted
    from 0 over everything the peer sends while it is installed) to a mutation and the
    seed of its choices; where that mutation finds nothing to change (no literal in the
    answer, say), the others are tried in a seeded order. ``applied`` counts the answers
    it changed, by the mutation that changed them."""

    def __init__(self, plan: dict[int, tuple[str, int]]) -> None:
        self.plan = plan
        self.seen = 0
        self.applied: dict[str, int] = {}

    def __call__(self, command: str, answer: Answer) -> Answer:
        index, self.seen = self.seen, self.seen + 1
        if index not in self.plan or not answer:
            return answer
        kind, seed = self.plan[index]
        rng = random.Random(seed)
        others = sorted(set(MUTATIONS) - {kind, "an unsolicited untagged response"})
        rng.shuffle(others)  # the one that fits any answer comes last
        for name in dict.fromkeys((kind, *others, "an unsolicited untagged response")):
            mutated = MUTATIONS[name](list(answer), rng)
            if mutated != answer:
                self.applied[name] = self.applied.get(name, 0) + 1
                return mutated
        return answer
