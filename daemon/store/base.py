"""The store as the rest of the daemon sees it: the interface a second database implements.

:class:`daemon.store.state.StateStore` (SQLite) is today's implementation. Every write
is one transaction; :meth:`Store.record` is the write-ahead step and must be durable
when it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from daemon.store.records import Correction, Decision, FolderState, NewDecision, Status


class Store(Protocol):
    # -- folders ---------------------------------------------------------------------------
    def folder(self, account: str, folder: str) -> FolderState | None: ...

    def set_folder(self, account: str, folder: str, uidvalidity: int, high_water: int) -> None: ...

    def watched(self, account: str, folder: str) -> tuple[int, int, int | None] | None: ...

    def set_watched(
        self,
        account: str,
        folder: str,
        uidvalidity: int,
        uidnext: int,
        highestmodseq: int | None = None,
    ) -> None: ...

    # -- the journal -----------------------------------------------------------------------
    def record(self, decisions: Sequence[NewDecision]) -> list[int]: ...

    def finish(self, ids: Sequence[int], status: Status, reason: str | None = None) -> None: ...

    def finish_each(self, results: Sequence[tuple[int, Status, str | None]]) -> None: ...

    def known_uids(
        self, account: str, folder: str, uidvalidity: int, uids: Sequence[int]
    ) -> set[int]: ...

    def pending(self, account: str | None = None) -> list[Decision]: ...

    def get(self, decision_id: int) -> Decision | None: ...

    def history(
        self,
        account: str | None = None,
        since: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> list[Decision]: ...

    def undone_ids(self) -> set[int]: ...

    def decided_message_ids(self, account: str, message_ids: Sequence[str]) -> set[str]: ...

    def undone_message_ids(self, account: str, message_ids: Sequence[str]) -> set[str]: ...

    def filed(self, account: str, message_ids: Sequence[str]) -> dict[str, Decision]: ...

    def counts(self) -> dict[str, int]: ...

    # -- corrections -----------------------------------------------------------------------
    def add_correction(
        self, decision: Decision, corrected: str, folder: str, text: str
    ) -> bool: ...

    def corrections(self, account: str | None = None) -> list[Correction]: ...

    # -- operations ------------------------------------------------------------------------
    def backup(self, target: Path) -> int: ...

    def close(self) -> None: ...
