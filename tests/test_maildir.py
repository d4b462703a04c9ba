"""The Maildir backend: stable UIDs, atomic moves, Dovecot-compatible keywords."""

from __future__ import annotations

import mailbox
import random
from pathlib import Path

from daemon.config.settings import Account
from daemon.mailbox.maildir import MaildirMailbox
from daemon.model.samples import render_email


def make(tmp_path: Path, n: int) -> tuple[MaildirMailbox, list[bytes]]:
    root = tmp_path / "mail"
    box = mailbox.Maildir(str(root), create=True)
    raws = [render_email(f"query {i}", random.Random(i), style="plain") for i in range(n)]
    for raw in raws:
        box.add(raw)
    backend = MaildirMailbox(Account(name="m", kind="maildir", path=root))
    backend.open()
    return backend, raws


def test_uids_are_stable_and_ascending(tmp_path: Path) -> None:
    backend, raws = make(tmp_path, 3)
    status = backend.select("INBOX")
    assert status.exists == 3
    assert status.uidnext == 4
    assert backend.uids_above("INBOX", 0) == [1, 2, 3]
    fetched = backend.fetch("INBOX", [1, 2, 3], 1 << 20)
    assert sorted(m.raw for m in fetched) == sorted(raws)
    again = MaildirMailbox(Account(name="m", kind="maildir", path=tmp_path / "mail"))
    assert again.uids_above("INBOX", 1) == [2, 3]
    assert again.select("INBOX").uidvalidity == status.uidvalidity


def test_move_copy_keywords_and_flags(tmp_path: Path) -> None:
    backend, _raws = make(tmp_path, 3)
    backend.select("INBOX")
    backend.add_flags("INBOX", [1, 2], ["$intent_card_arrival", "\\Flagged"])
    assert set(backend.fetch("INBOX", [1], 100)[0].flags) == {"$intent_card_arrival", "\\Flagged"}
    backend.copy("INBOX", [2], "Boss")
    backend.move("INBOX", [1, 2], "Triage/Cards")
    assert backend.uids_above("INBOX", 0) == [3]
    moved = backend.fetch("Triage/Cards", backend.uids_above("Triage/Cards", 0), 100)
    assert len(moved) == 2
    assert all("$intent_card_arrival" in m.flags for m in moved)
    assert (tmp_path / "mail" / ".Triage.Cards" / "dovecot-keywords").read_text() == (
        "0 $intent_card_arrival\n"
    )
    assert len(backend.uids_above("Boss", 0)) == 1
    assert "Triage/Cards" in backend.list_folders()
    mid = backend.message_ids("Triage/Cards", backend.uids_above("Triage/Cards", 0))
    some = next(iter(mid.values()))
    assert some is not None
    assert backend.find_message_id("Triage/Cards", some)
    backend.remove_flags("Triage/Cards", backend.uids_above("Triage/Cards", 0), ["\\Flagged"])
    assert all("\\Flagged" not in m.flags for m in backend.fetch("Triage/Cards", [1, 2], 100))


def test_fetch_is_capped_and_never_marks_read(tmp_path: Path) -> None:
    backend, raws = make(tmp_path, 1)
    backend.select("INBOX")
    (msg,) = backend.fetch("INBOX", [1], 50)
    assert len(msg.raw) == 50
    assert msg.size == len(raws[0])
    assert msg.truncated
    assert "\\Seen" not in backend.fetch("INBOX", [1], 50)[0].flags


def test_tag_and_move_writes_flags_in_the_destination(tmp_path: Path) -> None:
    backend, _raws = make(tmp_path, 40)
    backend.select("INBOX")
    flags = {uid: [f"$intent_{uid}", "\\Flagged"] for uid in range(1, 41)}
    backend.tag_and_move("INBOX", dict(list(flags.items())[:20]), "A")
    backend.tag_and_move("INBOX", dict(list(flags.items())[20:]), "B")
    assert not (tmp_path / "mail" / "dovecot-keywords").exists()  # INBOX spent no letters
    for folder, count in (("A", 20), ("B", 20)):
        moved = backend.fetch(folder, backend.uids_above(folder, 0), 100)
        assert len(moved) == count
        assert all(
            "\\Flagged" in m.flags and any(f.startswith("$intent_") for f in m.flags) for m in moved
        )


def test_keyword_letters_are_reused_once_free(tmp_path: Path) -> None:
    backend, _raws = make(tmp_path, 30)
    backend.select("INBOX")
    for uid in range(1, 27):  # 26 distinct keywords fill the table
        backend.add_flags("INBOX", [uid], [f"$k{uid}"])
    backend.move("INBOX", list(range(1, 27)), "Done")  # their letters are free again
    backend.add_flags("INBOX", [27, 28], ["$fresh"])
    assert "$fresh" in backend.fetch("INBOX", [27], 100)[0].flags
    done = backend.fetch("Done", backend.uids_above("Done", 0), 100)
    assert sorted(f for m in done for f in m.flags) == sorted(f"$k{u}" for u in range(1, 27))
