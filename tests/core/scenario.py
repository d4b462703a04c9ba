"""The mixed batch most core tests triage, and where each message must end up.

It exercises every kind of plan the rules produce: a move, a move with a continuing rule's
flag, copies plus a move, a tag-only rule, mark-read plus a move, an abstention (tagged
for review), an out-of-scope message (left alone) and a message with no text (skipped).
"""

from __future__ import annotations

from dataclasses import replace

from tests.core.harness import World, message, mid
from tests.core.invariants import Expect

COPIES = ("Archive/Transfers", "Archive/All")
SERVERS = {  # capability sets: MOVE, COPY + UID EXPUNGE (UIDPLUS), neither
    "move": {"move": True, "uidplus": True},
    "copy": {"move": False, "uidplus": True},
    "no-safe-move": {"move": False, "uidplus": False},
}

MIXED: dict[str, tuple[str, Expect]] = {
    "card": (
        "Where is my new card",
        Expect("Triage/Cards", frozenset({"$intent_card_arrival"})),
    ),
    "stolen": (
        "My card was stolen last night",
        Expect(
            "Triage/Cards",
            frozenset({"$intent_lost_or_stolen_card", "$urgent", "\\Flagged"}),
        ),
    ),
    "transfer": (
        "My transfer has not arrived",
        Expect("Triage/Transfers", frozenset({"$intent_transfer_timing"}), COPIES),
    ),
    "fee": (
        "There is a fee I do not recognise",
        Expect("INBOX", frozenset({"$intent_extra_charge_on_statement", "\\Flagged"})),
    ),
    "topup": (
        "My top up failed again",
        Expect("Triage/TopUps", frozenset({"$intent_top_up_failed", "\\Seen"})),
    ),
    "unsure": ("Can you help me with this?", Expect("INBOX", frozenset({"$triage_review"}))),
    "news": ("Our monthly newsletter is out", Expect("INBOX")),
    "empty": ("", Expect("INBOX", status="skipped")),
    "transfer2": (
        "A second transfer is missing",
        Expect("Triage/Transfers", frozenset({"$intent_transfer_timing"}), COPIES),
    ),
}


def deliver(world: World, names: list[str] | None = None) -> dict[str, bytes]:
    """Deliver messages of :data:`MIXED` to INBOX; their bytes by Message-ID."""
    originals: dict[str, bytes] = {}
    for name in names or list(MIXED):
        raw = message(name, MIXED[name][0])
        world.server.deliver(raw)
        originals[mid(name)] = raw
    return originals


def expected(kind: str = "move", names: list[str] | None = None) -> dict[str, Expect]:
    """Where each message ends on a server of capability set ``kind``: without MOVE or
    UIDPLUS nothing is moved (the flags are still set and copies still made)."""
    out = {}
    for name in names or list(MIXED):
        expect = MIXED[name][1]
        if kind == "no-safe-move" and expect.folder != "INBOX":
            expect = replace(expect, folder="INBOX")
        out[mid(name)] = expect
    return out
