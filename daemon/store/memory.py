"""The correction memory's rows (``memory``): kept per account (or in the shared pool,
account ``*``), bounded per account, least recently used first to go."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from daemon.store.records import SHARED_MEMORY, MemoryEntry, utcnow
from daemon.store.repository import Repository
from daemon.store.schema import corrections, memory, memory_seen


class MemoryRepository(Repository):
    """Remember, look up, use, forget and re-embed correction memory entries."""

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
    ) -> int:
        """Add an entry (replacing the one of the same correction: the user moved the
        message again); past ``max_entries`` for the account, the least recently used
        go. Returns the new entry's id."""
        with self.database.transaction() as conn:
            if account != SHARED_MEMORY:
                self._fenced(conn, [account])
            if correction_id is not None:
                conn.execute(sa.delete(memory).where(memory.c.correction_id == correction_id))
            entry_id = int(
                conn.execute(
                    sa.insert(memory)
                    .values(
                        account=account,
                        correction_id=correction_id,
                        text=text,
                        said=said,
                        confident=confident,
                        chosen=chosen,
                        model_version=model_version,
                        embedding=embedding,
                        created_at=utcnow(),
                        uses=0,
                    )
                    .returning(memory.c.id)
                ).scalar_one()
            )
            keep = (
                sa.select(memory.c.id)
                .where(memory.c.account == account)
                .order_by(
                    sa.func.coalesce(memory.c.used_at, memory.c.created_at).desc(),
                    memory.c.id.desc(),
                )
                .limit(max_entries)
            )
            conn.execute(
                sa.delete(memory).where(memory.c.account == account, memory.c.id.not_in(keep))
            )
        return entry_id

    def memory_entries(
        self, accounts: Sequence[str] | None = None, model_version: str | None = None
    ) -> list[MemoryEntry]:
        """Entries of ``accounts`` (all when None), of one model version if given."""
        query = sa.select(memory).order_by(memory.c.id)
        if accounts is not None:
            query = query.where(memory.c.account.in_(list(accounts)))
        if model_version is not None:
            query = query.where(memory.c.model_version == model_version)
        return [MemoryEntry(**row) for row in self.database.rows(query)]

    def memory_signature(self, accounts: Sequence[str] | None, model_version: str) -> str:
        """Changes whenever an entry of ``accounts`` under ``model_version`` is added,
        replaced or removed (entries are never edited in place, only replaced)."""
        query = sa.select(sa.func.count().label("n"), sa.func.max(memory.c.id).label("top")).where(
            memory.c.model_version == model_version
        )
        if accounts is not None:
            query = query.where(memory.c.account.in_(list(accounts)))
        row = self.database.rows(query)[0]
        return f"{row['n']}:{row['top']}"

    def memory_counts(self, model_version: str | None = None) -> dict[str, int]:
        """Entries per account (of one model version if given)."""
        query = sa.select(memory.c.account, sa.func.count().label("n")).group_by(memory.c.account)
        if model_version is not None:
            query = query.where(memory.c.model_version == model_version)
        return {r["account"]: int(r["n"]) for r in self.database.rows(query)}

    def count_seen(self, account: str, counts: Mapping[str, int]) -> None:
        """Add sure decisions the model made, per intent it said (the remap rule's
        denominator; not fenced: a count, not an action on the mailbox)."""
        if not counts:
            return
        with self.database.transaction(journal=False) as conn:
            dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
            for said, n in sorted(counts.items()):
                statement = dialect.insert(memory_seen).values(account=account, said=said, seen=n)
                conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=["account", "said"],
                        set_={"seen": memory_seen.c.seen + statement.excluded.seen},
                    )
                )

    def seen_counts(self, accounts: Sequence[str] | None = None) -> dict[str, int]:
        """Sure decisions per intent the model said, summed over ``accounts`` (all: None)."""
        query = sa.select(memory_seen.c.said, sa.func.sum(memory_seen.c.seen).label("n")).group_by(
            memory_seen.c.said
        )
        if accounts is not None:
            query = query.where(memory_seen.c.account.in_(list(accounts)))
        return {r["said"]: int(r["n"]) for r in self.database.rows(query)}

    def used_memory(self, entry_ids: Sequence[int]) -> None:
        """The memory decided by these entries now (least recently used go first)."""
        if not entry_ids:
            return
        with self.database.transaction(journal=False) as conn:
            conn.execute(
                sa.update(memory)
                .where(memory.c.id.in_(sorted(set(entry_ids))))
                .values(uses=memory.c.uses + 1, used_at=utcnow())
            )

    def forget(self, entry_id: int) -> MemoryEntry | None:
        """Remove an entry and the correction it came from (retraining will not learn it
        either); None when there is no such entry."""
        with self.database.transaction() as conn:
            row = conn.execute(sa.select(memory).where(memory.c.id == entry_id)).mappings().first()
            if row is None:
                return None
            entry = MemoryEntry(**row)
            conn.execute(sa.delete(memory).where(memory.c.id == entry_id))
            if entry.correction_id is not None:
                conn.execute(sa.delete(corrections).where(corrections.c.id == entry.correction_id))
        return entry

    def forget_all(self, account: str | None = None) -> int:
        """Clear the memory (of one account, or all of it) and the corrections its
        entries came from; how many entries went."""
        with self.database.transaction() as conn:
            where = [] if account is None else [memory.c.account == account]
            rows = conn.execute(sa.select(memory.c.id, memory.c.correction_id).where(*where)).all()
            conn.execute(sa.delete(memory).where(*where))
            linked = [r.correction_id for r in rows if r.correction_id is not None]
            for start in range(0, len(linked), 500):
                chunk = linked[start : start + 500]
                conn.execute(sa.delete(corrections).where(corrections.c.id.in_(chunk)))
        return len(rows)

    def withdraw_corrections(self, decision_ids: Sequence[int]) -> int:
        """The user put corrected messages back where CleanInbox filed them: their
        corrections and memory entries go. Returns how many there were."""
        found = self._rows_in(
            lambda chunk: sa.select(corrections.c.id, corrections.c.account).where(
                corrections.c.decision_id.in_(chunk)
            ),
            sorted(set(decision_ids)),
        )
        if not found:
            return 0
        ids = [int(r["id"]) for r in found]
        with self.database.transaction() as conn:
            self._fenced(conn, sorted({str(r["account"]) for r in found}))
            conn.execute(sa.delete(memory).where(memory.c.correction_id.in_(ids)))
            conn.execute(sa.delete(corrections).where(corrections.c.id.in_(ids)))
        return len(ids)

    def reembed_memory(
        self,
        updates: Sequence[tuple[int, str, bool, bytes]],
        dropped: Sequence[int],
        model_version: str,
    ) -> None:
        """After a new model: entries ``(id, said, confident, embedding)`` now under
        ``model_version``; ``dropped`` ones (the new model gets them right) removed. Not
        fenced: every replica computes the same rows from the same texts and model."""
        with self.database.transaction() as conn:
            for entry_id, said, confident, embedding in updates:
                conn.execute(
                    sa.update(memory)
                    .where(memory.c.id == entry_id)
                    .values(
                        said=said,
                        confident=confident,
                        embedding=embedding,
                        model_version=model_version,
                    )
                )
            if dropped:
                conn.execute(sa.delete(memory).where(memory.c.id.in_(list(dropped))))
