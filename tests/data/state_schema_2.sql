-- A state database as CleanInbox wrote it before Alembic (PRAGMA user_version 2): the
-- legacy migrations 1 and 2, kept verbatim to test the upgrade path.
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
PRAGMA user_version = 2;
