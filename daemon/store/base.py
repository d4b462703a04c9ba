"""The store as the rest of the daemon sees it: the interface a second database implements.

:class:`daemon.store.state.StateStore` (SQLite) is today's implementation. Every write
is one transaction; :meth:`Store.record` is the write-ahead step and must be durable
when it returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from daemon.store.records import (
    Correction,
    Decision,
    FolderState,
    MemoryEntry,
    NewDecision,
    Status,
)


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
    ) -> tuple[int, bool]: ...

    def corrections(self, account: str | None = None) -> list[Correction]: ...

    # -- the correction memory ------------------------------------------------------------
    def remember(
        self,
        *,
        account: str,
        text: str,
        said: str,
        confident: bool,
        chosen: str,
        model_version: str,
        embedding: bytes,
        max_entries: int,
        correction_id: int | None = None,
    ) -> int: ...

    def memory_entries(
        self, accounts: Sequence[str] | None = None, model_version: str | None = None
    ) -> list[MemoryEntry]: ...

    def memory_signature(self, accounts: Sequence[str] | None, model_version: str) -> str: ...

    def memory_counts(self, model_version: str | None = None) -> dict[str, int]: ...

    def count_seen(self, account: str, counts: Mapping[str, int]) -> None: ...

    def seen_counts(self, accounts: Sequence[str] | None = None) -> dict[str, int]: ...

    def used_memory(self, entry_ids: Sequence[int]) -> None: ...

    def forget(self, entry_id: int) -> MemoryEntry | None: ...

    def forget_all(self, account: str | None = None) -> int: ...

    def withdraw_corrections(self, decision_ids: Sequence[int]) -> int: ...

    def reembed_memory(
        self,
        updates: Sequence[tuple[int, str, bool, bytes]],
        dropped: Sequence[int],
        model_version: str,
    ) -> None: ...

    # -- operations ------------------------------------------------------------------------
    def backup(self, target: Path) -> int: ...

    def close(self) -> None: ...
