"""What must hold once the core has settled, whatever happened before (the in-process
counterpart of tests/reliability/invariant.py):

* every message is in exactly one place, byte-identical and not marked \\Deleted: its
  rule's destination, or its source folder when it was left alone, abstained or failed;
* each copy folder its plan names holds exactly one copy, and no other folder any;
* the flags and keywords its plan set are on it (and no others);
* every message has exactly one triage decision, with the expected final status, and none
  is pending;
* another cycle changes nothing on the server and records nothing (nothing is acted on
  twice).
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.core.harness import World

SOURCE = "INBOX"


@dataclass(frozen=True)
class Expect:
    folder: str = SOURCE
    flags: frozenset[str] = frozenset()
    copies: tuple[str, ...] = ()
    status: str = "done"
    #: A failed action may have partly happened (flags stored, a copy made) before the
    #: server refused the rest: then flags are not compared and a copy may be missing.
    partial: bool = False


def problems(world: World, originals: dict[str, bytes], expected: dict[str, Expect]) -> list[str]:
    """Every way the server and the state disagree with ``expected`` (message-id keyed)."""
    found: list[str] = []
    located = world.server.locate()
    copy_folders = {c for e in expected.values() for c in e.copies}
    for stranger in sorted(set(located) - set(expected)):
        found.append(f"unexpected message {stranger!r} in {[f for f, _ in located[stranger]]}")
    decisions = world.store.history(account=world.account.name, kind="triage")
    for message_id, expect in sorted(expected.items()):
        places = located.get(message_id, [])
        kept = [(f, m) for f, m in places if f not in copy_folders]
        if len(kept) != 1:
            found.append(f"{message_id}: in {[f for f, _ in kept]}, expected {expect.folder}")
        else:
            folder, stored = kept[0]
            if folder != expect.folder:
                found.append(f"{message_id}: in {folder}, expected {expect.folder}")
            if stored.raw != originals[message_id]:
                found.append(f"{message_id}: bytes changed")
            if stored.flags != set(expect.flags) and not expect.partial:
                found.append(
                    f"{message_id}: flags {sorted(stored.flags)} != {sorted(expect.flags)}"
                )
        for copy_folder in sorted(copy_folders):
            count = sum(1 for f, _ in places if f == copy_folder)
            wanted = {int(copy_folder in expect.copies)} | ({0} if expect.partial else set())
            if count not in wanted:
                found.append(f"{message_id}: {count} copies in {copy_folder}")
        mine = [d for d in decisions if d.message_id == message_id]
        if len(mine) != 1:
            found.append(f"{message_id}: {len(mine)} triage decisions")
        elif mine[0].status != expect.status:
            found.append(f"{message_id}: status {mine[0].status} ({mine[0].reason})")
        elif expect.folder != SOURCE and mine[0].destination != expect.folder:
            found.append(f"{message_id}: recorded destination {mine[0].destination}")
        elif mine[0].status == "failed" and not mine[0].reason:
            found.append(f"{message_id}: failed without a reason")
    pending = world.store.pending()
    if pending:
        found.append(f"{len(pending)} decision(s) still pending: {[d.id for d in pending]}")
    return found


def rerun_changes(world: World) -> str | None:
    """Run one more cycle; what it changed (None when nothing)."""
    before = world.server.snapshot()
    count = len(world.store.history())
    report = world.cycle()
    if world.server.snapshot() != before:
        return "the server changed"
    if len(world.store.history()) != count or report.new or report.reconciled:
        return f"new decisions: {report}"
    return None


def check(world: World, originals: dict[str, bytes], expected: dict[str, Expect]) -> None:
    found = problems(world, originals, expected)
    assert not found, "\n".join(found)
    changed = rerun_changes(world)
    assert changed is None, changed
