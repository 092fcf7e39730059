"""The history schema, versioned with PRAGMA user_version; each migration runs once, in order."""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: conversations, one row per turn, one row per platform message seen
    """
    CREATE TABLE conversations (
        id            INTEGER PRIMARY KEY,
        platform      TEXT NOT NULL,
        workspace     TEXT NOT NULL,
        channel       TEXT NOT NULL,
        thread        TEXT NOT NULL,
        history_start INTEGER NOT NULL DEFAULT 0,  -- turns with a larger id make the history
        created_at    REAL NOT NULL,
        UNIQUE (platform, workspace, channel, thread)
    );
    CREATE TABLE turns (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        speaker         TEXT NOT NULL CHECK (speaker IN ('ユーザー', 'システム')),
        text            TEXT NOT NULL,
        created_at      REAL NOT NULL
    );
    CREATE INDEX turns_by_conversation ON turns (conversation_id, id);
    CREATE TABLE deliveries (
        platform        TEXT NOT NULL,
        delivery_key    TEXT NOT NULL,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        turn_id         INTEGER REFERENCES turns(id) ON DELETE SET NULL,
        received_at     REAL NOT NULL,
        PRIMARY KEY (platform, delivery_key)
    ) WITHOUT ROWID;
    """,
    # 2: a delivery stored as thread history (the bot joining mid-way) rather than claimed by
    # its own event: that event may still arrive and must be answered, once
    """
    ALTER TABLE deliveries ADD COLUMN imported INTEGER NOT NULL DEFAULT 0;
    """,
    # (private data) who wrote each user turn (the platform's user id; NULL for the bot's turns
    # and for turns stored before this), so one person's messages can be exported or forgotten;
    # and turns by age, for RETENTION_DAYS. Touches only `turns`: independent of other migrations
    """
    ALTER TABLE turns ADD COLUMN author TEXT;
    CREATE INDEX turns_by_author ON turns (author) WHERE author IS NOT NULL;
    CREATE INDEX turns_by_age ON turns (created_at);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
