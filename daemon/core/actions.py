"""What CleanInbox does to one message: the plan, its stored form, and its operations.

A :class:`Plan` is produced by the rules (what to do), completed by the cycle with what
the server looked like just before acting (the message's flags, each destination's
UIDNEXT), journaled as ``pending`` before the first command is sent, and then

- **applied** by the cycle (:func:`apply_plans`, batched over many messages),
- **settled** after a crash by recovery (:func:`settle`: finish it or find it finished),
- **reverted** by undo (:func:`revert`),

so that what an action means on the server is defined here and nowhere else. The stored
JSON has one schema (:data:`SCHEMA`), written by :meth:`Plan.to_json` and read by
:meth:`Plan.from_json`; older stored plans are read as well.

Order on the server: keywords and flags, then copies, then the move. A message that only
moves carries its flags with it (``tag_and_move``: on Maildir the flags are written in the
destination); a message that is also copied is flagged before the copies, so that every
copy has the flags too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal

from daemon.errors import ConnectionLostError, MailboxError
from daemon.mailbox.base import Mailbox
from daemon.store.records import Decision

#: Version of the stored plan JSON. 1: written before this module (no ``v`` key; the
#: cycle added ``flags_before`` and ``dest_uidnext``); 2: the same keys plus ``v``.
SCHEMA = 2

VANISHED = "vanished: another client moved or deleted it after it was fetched; nothing was done"
Kind = Literal["move", "copy", "tag", "none"]
Outcome = Literal["completed", "redone", "vanished", "source_gone"]


@dataclass(frozen=True)
class Plan:
    """What to do to one message, and what the server looked like before it was done."""

    rule: str
    keywords: tuple[str, ...] = ()
    flag: bool = False
    mark_read: bool = False
    copies: tuple[str, ...] = ()
    move: str | None = None
    abstained: bool = False
    #: The message's flags when it was decided: undo removes only what CleanInbox added.
    flags_before: tuple[str, ...] = ()
    #: UIDNEXT of each destination just before acting: recovery tells our copies (at or
    #: above it) from older messages with the same Message-ID.
    dest_uidnext: Mapping[str, int] = field(default_factory=dict)

    # -- what it is ------------------------------------------------------------------------

    @property
    def is_noop(self) -> bool:
        return not (self.keywords or self.flag or self.mark_read or self.copies or self.move)

    @property
    def destinations(self) -> list[str]:
        """Every folder the message will be in afterwards, besides where it is."""
        return [*self.copies, *([self.move] if self.move else [])]

    @property
    def flags(self) -> list[str]:
        """The IMAP flags and keywords the plan sets on the message."""
        return [
            *self.keywords,
            *(["\\Flagged"] if self.flag else []),
            *(["\\Seen"] if self.mark_read else []),
        ]

    @property
    def kinds(self) -> list[str]:
        """One metric label per action (``cleaninbox_actions_total``)."""
        kinds = ["keyword"] * len(self.keywords)
        kinds += ["flag"] if self.flag else []
        kinds += ["mark_read"] if self.mark_read else []
        kinds += ["copy"] * len(self.copies)
        kinds += ["move"] if self.move else []
        return kinds

    @property
    def kind(self) -> Kind:
        """The plan summed up in one word (the ``action`` label of the message metrics)."""
        if self.move:
            return "move"
        if self.copies:
            return "copy"
        if self.keywords or self.flag or self.mark_read:
            return "tag"
        return "none"

    def describe(self) -> str:
        """One line for logs, the audit log and dry runs."""
        parts = [f"keyword {k}" for k in self.keywords]
        parts += ["flag"] if self.flag else []
        parts += ["mark read"] if self.mark_read else []
        parts += [f"copy to {c}" for c in self.copies]
        parts += [f"move to {self.move}"] if self.move else []
        return ", ".join(parts) if parts else "leave alone"

    # -- building it -----------------------------------------------------------------------

    def without_move(self) -> Plan:
        return replace(self, move=None)

    def before_acting(self, flags: Sequence[str], dest_uidnext: Mapping[str, int]) -> Plan:
        """The plan with what recovery and undo need to know about the server before it."""
        return replace(
            self,
            flags_before=tuple(flags),
            dest_uidnext={d: dest_uidnext[d] for d in self.destinations if d in dest_uidnext},
        )

    # -- the stored form -------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "v": SCHEMA,
            "rule": self.rule,
            "keywords": list(self.keywords),
            "flag": self.flag,
            "mark_read": self.mark_read,
            "copies": list(self.copies),
            "move": self.move,
            "abstained": self.abstained,
            "flags_before": list(self.flags_before),
            "dest_uidnext": dict(self.dest_uidnext),
        }

    @classmethod
    def of(cls, decision: Decision) -> Plan:
        """The plan journaled with ``decision`` (a bare one if it had none)."""
        return cls.from_json(decision.plan) if decision.plan else cls(rule=decision.rule or "?")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        """A stored plan of any schema up to :data:`SCHEMA`."""
        version = int(data.get("v", 1))
        if version > SCHEMA:
            raise ValueError(f"plan schema {version} is newer than this CleanInbox ({SCHEMA})")
        uidnext = data.get("dest_uidnext") or {}
        return cls(
            rule=str(data["rule"]),
            keywords=tuple(data.get("keywords", [])),
            flag=bool(data.get("flag", False)),
            mark_read=bool(data.get("mark_read", False)),
            copies=tuple(data.get("copies", [])),
            move=data.get("move"),
            abstained=bool(data.get("abstained", False)),
            flags_before=tuple(data.get("flags_before", [])),
            # version 1 stored null for destinations it never looked at
            dest_uidnext={str(k): int(v) for k, v in uidnext.items() if v is not None},
        )


# -- apply: the cycle, many messages at once ------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One message a plan is applied to."""

    uid: int
    plan: Plan
    message_id: str | None = None


def apply_plans(
    mailbox: Mailbox,
    folder: str,
    targets: Sequence[Target],
    on_error: Callable[[str], None] = lambda _kind: None,
) -> dict[int, str | None]:
    """Apply plans in few commands; returns the reason for each UID that failed, or None
    where what the server did is not known (the decision stays pending for recovery).

    Flags first (one STORE per distinct set), then copies, then each destination's moves
    together with the flags of the messages that go there. Messages another client moved
    or deleted since they were fetched are not acted on (:data:`VANISHED`). A lost
    connection propagates: the journal keeps those decisions pending for recovery.
    ``on_error(kind)`` is told of every failed command (flag, copy or move).

    Without MOVE, a move is COPY, STORE \\Deleted, UID EXPUNGE: when a step after the COPY
    is refused, the copy is taken back (:func:`_take_back`) so that a failed move leaves
    the message where it was, once.
    """
    flagged_here: dict[tuple[str, ...], list[Target]] = defaultdict(list)
    copies: dict[str, list[Target]] = defaultdict(list)
    moves: dict[str, list[Target]] = defaultdict(list)
    for target in targets:
        plan = target.plan
        flags = tuple(sorted(set(plan.flags)))
        if flags and not (plan.move and not plan.copies):
            flagged_here[flags].append(target)
        for destination in plan.copies:
            copies[destination].append(target)
        if plan.move:
            moves[plan.move].append(target)
    present = mailbox.existing(folder, [t.uid for t in targets])
    failed: dict[int, str | None] = {t.uid: VANISHED for t in targets if t.uid not in present}

    def attempt(
        kind: str, where: str, group: list[Target], run: Callable[[list[int]], None]
    ) -> list[int]:
        live = [t.uid for t in group if t.uid not in failed]
        if not live:
            return []
        try:
            run(live)
        except ConnectionLostError:
            raise
        except MailboxError as exc:
            on_error(kind)
            failed.update(dict.fromkeys(live, f"{kind} {where} failed: {exc}"))
            return live
        return []

    for flags, group in flagged_here.items():
        attempt("flag", " ".join(flags), group, partial(_flag, mailbox, folder, list(flags)))
    for destination, group in copies.items():
        attempt("copy", destination, group, partial(mailbox.copy, folder, destination=destination))
    for destination, group in moves.items():
        carried = {t.uid: [] if t.plan.copies else t.plan.flags for t in group}
        refused = attempt(
            "move", destination, group, partial(_move, mailbox, folder, destination, carried)
        )
        if refused and not mailbox.capabilities.move:
            for target in (t for t in group if t.uid in refused):
                try:
                    _take_back(mailbox, folder, destination, target)
                except ConnectionLostError:
                    raise
                except MailboxError:
                    failed[target.uid] = None  # in two places, maybe: recovery settles it
    return failed


def _flag(mailbox: Mailbox, folder: str, flags: list[str], uids: list[int]) -> None:
    mailbox.add_flags(folder, uids, flags)


def _move(
    mailbox: Mailbox, folder: str, destination: str, carried: dict[int, list[str]], uids: list[int]
) -> None:
    """Move ``uids`` with the flags each carries (none for messages flagged before copying)."""
    mailbox.tag_and_move(folder, {u: carried[u] for u in uids}, destination)


def _take_back(mailbox: Mailbox, folder: str, destination: str, target: Target) -> None:
    """Undo the part of a COPY + delete move that happened: the source's \\Deleted flag
    first (the original is whole again), then our copy in ``destination`` (at or above the
    UIDNEXT recorded before acting). A copy whose deletion is refused keeps no \\Deleted
    flag, so that recovery, finding it, can finish the move instead."""
    if target.message_id is None:
        return  # cannot be found again; the decision says the move failed
    if "\\Deleted" not in target.plan.flags_before:
        mailbox.remove_flags(folder, [target.uid], ["\\Deleted"])
    floor = target.plan.dest_uidnext.get(destination, 0)
    ours = [u for u in mailbox.find_message_id(destination, target.message_id) if u >= floor]
    try:
        mailbox.delete(destination, ours)
    except ConnectionLostError:
        raise
    except MailboxError:
        mailbox.remove_flags(destination, ours, ["\\Deleted"])
        raise


# -- settle: recovery, one journaled plan after a crash -------------------------------------


@dataclass(frozen=True)
class Journaled:
    """Where a pending decision's message was when its plan was journaled."""

    folder: str
    uidvalidity: int
    uid: int
    message_id: str | None

    @classmethod
    def of(cls, decision: Decision) -> Journaled:
        return cls(decision.folder, decision.uidvalidity, decision.uid, decision.message_id)


@dataclass(frozen=True)
class Settled:
    outcome: Outcome
    done: bool
    reason: str


def settle(mailbox: Mailbox, at: Journaled, plan: Plan) -> Settled:
    """Finish ``plan`` for a message it may already have been (partly) applied to.

    The message is found by UID while the folder keeps its UIDVALIDITY, else by
    Message-ID; in a destination, only a message at or above the UIDNEXT recorded before
    acting counts as ours. Every step is idempotent: a copy is made only if not there, and
    an interrupted retry that left two copies keeps one.
    """
    try:
        status = mailbox.select(at.folder)
    except ConnectionLostError:
        raise
    except MailboxError as exc:
        return Settled("source_gone", False, f"source folder unavailable: {exc}")
    present = _still_in_source(mailbox, at, status.uidvalidity)

    def ours(destination: str) -> list[int]:
        if not at.message_id or not mailbox.folder_exists(destination):
            return []
        floor = plan.dest_uidnext.get(destination, 0)
        found = [u for u in mailbox.find_message_id(destination, at.message_id) if u >= floor]
        if len(found) > 1 and mailbox.capabilities.uidplus:
            mailbox.delete(destination, found[1:])  # an interrupted, retried command: keep one
            found = found[:1]
        return found

    arrived = ours(plan.move) if plan.move else []
    if plan.move and arrived:
        if present:
            mailbox.delete(at.folder, present)
            if "\\Deleted" not in plan.flags_before:  # a refused take-back may have left it
                mailbox.remove_flags(plan.move, arrived, ["\\Deleted"])
            return Settled(
                "completed",
                True,
                "completed after restart: removed the source copy an interrupted move left behind",
            )
        return Settled("completed", True, "completed after restart: already at destination")
    if not present:
        return Settled(
            "vanished",
            False,
            "message left the source folder before the action completed "
            "(moved or deleted by another client)",
        )
    flags = plan.flags
    if not plan.move or plan.copies:
        mailbox.add_flags(at.folder, present, flags)
        flags = []
    for destination in plan.copies:
        mailbox.ensure_folder(destination)
        if not ours(destination):
            mailbox.copy(at.folder, present, destination)
    if plan.move:
        mailbox.ensure_folder(plan.move)
        mailbox.tag_and_move(at.folder, dict.fromkeys(present, flags), plan.move)
    return Settled("redone", True, "redone after restart")


def _still_in_source(mailbox: Mailbox, at: Journaled, uidvalidity: int) -> list[int]:
    if uidvalidity == at.uidvalidity:
        ids = mailbox.message_ids(at.folder, [at.uid])
        same = at.uid in ids and (at.message_id is None or ids[at.uid] == at.message_id)
        return [at.uid] if same else []
    return mailbox.find_message_id(at.folder, at.message_id) if at.message_id else []


# -- revert: undo ---------------------------------------------------------------------------


def revert(mailbox: Mailbox, at: Journaled, plan: Plan) -> str:
    """Put the message back as it was: remove what the plan added (keywords and flags it
    did not have before, the copies it made) and move it back to its source folder.
    Returns what was done; raises :class:`MailboxError` when the message is gone."""
    if not at.message_id:
        raise MailboxError("the message has no Message-ID, so it cannot be found again")
    where = plan.move or at.folder
    found = mailbox.find_message_id(where, at.message_id) if mailbox.folder_exists(where) else []
    if not found:
        raise MailboxError(f"message {at.message_id} is no longer in {where}")
    uid = found[-1]
    added = [f for f in plan.flags if f not in set(plan.flags_before)]
    mailbox.remove_flags(where, [uid], added)
    for copy_folder in plan.copies:
        if mailbox.folder_exists(copy_folder):
            copies = mailbox.find_message_id(copy_folder, at.message_id)
            if copies:
                mailbox.delete(copy_folder, copies[-1:])
    if plan.move:
        mailbox.move(where, [uid], at.folder)
        return f"moved back from {plan.move} to {at.folder}"
    return f"removed {', '.join(added) or 'nothing'} in {at.folder}"


def reverted(mailbox: Mailbox, at: Journaled, plan: Plan) -> bool:
    """Whether a plan's move was already put back: the message is in its source folder
    and no copy of ours is left in the destination (an undo interrupted after its move)."""
    if not plan.move or not at.message_id:
        return False
    back = mailbox.folder_exists(at.folder) and mailbox.find_message_id(at.folder, at.message_id)
    if not back:
        return False
    if not mailbox.folder_exists(plan.move):
        return True
    floor = plan.dest_uidnext.get(plan.move, 0)
    return not [u for u in mailbox.find_message_id(plan.move, at.message_id) if u >= floor]
