"""The state database's schema, as numbered migrations (``PRAGMA user_version``).

A migration is applied once, in one transaction, in order; a database newer than this
CleanInbox is refused. Never edit a released migration: add the next one.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: folders and decisions
    """
    CREATE TABLE folders (
        account TEXT NOT NULL,
        folder TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        high_water INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (account, folder)
    );
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL DEFAULT 'triage',
        account TEXT NOT NULL,
        folder TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        message_id TEXT,
        size INTEGER,
        internal_date TEXT,
        intent TEXT,
        confidence REAL,
        abstain INTEGER,
        top_k TEXT,
        model_version TEXT,
        rule TEXT,
        action TEXT,
        plan TEXT,
        destination TEXT,
        dest_uidnext INTEGER,
        status TEXT NOT NULL,
        reason TEXT,
        text TEXT,
        undo_of INTEGER REFERENCES decisions(id),
        created_at TEXT NOT NULL,
        done_at TEXT
    );
    CREATE UNIQUE INDEX decisions_message
        ON decisions(account, folder, uidvalidity, uid) WHERE kind = 'triage';
    CREATE INDEX decisions_status ON decisions(status);
    CREATE INDEX decisions_created ON decisions(created_at);
    CREATE INDEX decisions_message_id ON decisions(message_id);
    """,
    # 2: learning from corrections: where each triage folder was last looked at, and the
    # corrections found there (a message the user moved into another triage folder)
    """
    CREATE TABLE watched (
        account TEXT NOT NULL,
        folder TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        uidnext INTEGER NOT NULL,
        highestmodseq INTEGER,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (account, folder)
    );
    CREATE TABLE corrections (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account TEXT NOT NULL,
        decision_id INTEGER NOT NULL UNIQUE REFERENCES decisions(id),
        message_id TEXT,
        text TEXT NOT NULL,
        predicted TEXT,
        corrected TEXT NOT NULL,
        folder TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX corrections_created ON corrections(created_at);
    """,
    # 3: the plan is one versioned record (daemon/core/actions.py): stored plans get their
    # schema version, and dest_uidnext (kept in the plan as well) leaves the table
    """
    UPDATE decisions SET plan = json_set(plan, '$.v', 2) WHERE plan IS NOT NULL;
    ALTER TABLE decisions DROP COLUMN dest_uidnext;
    """,
]
