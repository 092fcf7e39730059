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
    # 3: who wrote each user turn (the platform's user id; NULL for the bot's turns
    # and for turns stored before this), so one person's messages can be exported or forgotten;
    # and turns by age, for RETENTION_DAYS. Touches only `turns`: independent of other migrations
    """
    ALTER TABLE turns ADD COLUMN author TEXT;
    CREATE INDEX turns_by_author ON turns (author) WHERE author IS NOT NULL;
    CREATE INDEX turns_by_age ON turns (created_at);
    """,
    # 4: delivery states, so a message is answered exactly once through crashes and restarts:
    # imported (read in with its thread) -> accepted (recorded, its text held in `text` until
    # the user turn is stored) -> answering (placeholder posted: `reply_ref` is its platform
    # handle; `final` is the answer to show once it is stored) -> answered (final text or a
    # notice shown). Rows from before this version were answered (or read in as history).
    """
    ALTER TABLE deliveries ADD COLUMN state TEXT NOT NULL DEFAULT 'answered'
        CHECK (state IN ('imported', 'accepted', 'answering', 'answered'));
    ALTER TABLE deliveries ADD COLUMN text TEXT;
    ALTER TABLE deliveries ADD COLUMN reply_ref TEXT;
    ALTER TABLE deliveries ADD COLUMN final TEXT;
    ALTER TABLE deliveries ADD COLUMN author TEXT;  -- the writer's user id, for its user turn
    UPDATE deliveries SET state = 'imported' WHERE imported = 1;
    CREATE INDEX deliveries_unfinished ON deliveries (platform, state, received_at)
        WHERE state IN ('accepted', 'answering');
    """,
    # 5: the buttons on an answer. `answer_id` is a message's answer turn; a regeneration is a
    # delivery of its own (`replaces`: the delivery whose answer it redoes, same user turn), and
    # the answer it replaces stays, marked `superseded` (left out of prompts). `asker`: who
    # asked about someone else's message (they may stop or redo it). One vote per
    # person per answer in `feedback`. Answers are found by their message (`reply_ref`).
    """
    ALTER TABLE turns ADD COLUMN superseded INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN answer_id INTEGER REFERENCES turns(id) ON DELETE SET NULL;
    ALTER TABLE deliveries ADD COLUMN replaces TEXT;
    ALTER TABLE deliveries ADD COLUMN asker TEXT;  -- who asked, when not the writer (`author`)
    CREATE INDEX deliveries_by_reply ON deliveries (platform, reply_ref)
        WHERE reply_ref IS NOT NULL;
    CREATE INDEX deliveries_by_answer ON deliveries (answer_id) WHERE answer_id IS NOT NULL;
    CREATE INDEX deliveries_by_conversation ON deliveries (conversation_id, state);
    CREATE TABLE feedback (
        platform     TEXT NOT NULL,
        delivery_key TEXT NOT NULL,
        user         TEXT NOT NULL,
        value        TEXT NOT NULL CHECK (value IN ('good', 'bad')),
        created_at   REAL NOT NULL,
        PRIMARY KEY (platform, delivery_key, user),
        FOREIGN KEY (platform, delivery_key) REFERENCES deliveries (platform, delivery_key)
            ON DELETE CASCADE
    ) WITHOUT ROWID;
    CREATE INDEX feedback_by_user ON feedback (user);
    """,
    # 6: deletion follows the text. `sources`: the platform messages a delivery's text was
    # taken from when it is not the delivery itself (「rinna に聞く」: the delivery is the button
    # press), so deleting or editing that message reaches the turn. `withdrawn`: the message
    # was deleted (or its writer forgotten) while it waited to be answered: its text is gone
    # and it is answered with a short notice, never sent to the model.
    """
    CREATE TABLE sources (
        platform     TEXT NOT NULL,
        source_key   TEXT NOT NULL,
        delivery_key TEXT NOT NULL,
        PRIMARY KEY (platform, source_key, delivery_key),
        FOREIGN KEY (platform, delivery_key) REFERENCES deliveries (platform, delivery_key)
            ON DELETE CASCADE
    ) WITHOUT ROWID;
    ALTER TABLE deliveries ADD COLUMN withdrawn INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX deliveries_waiting_by_author ON deliveries (author)
        WHERE turn_id IS NULL AND text IS NOT NULL;
    """,
    # 7 (issue 29): community settings. One row per
    # (scope, key) set by a community's admins (an empty part is a wider scope: a server is
    # ("discord", guild, "", "")); the host's defaults are never stored. `settings_audit` keeps
    # every change (old -> new, NULL: not set there) and who made it. Touches only its tables.
    """
    CREATE TABLE community_settings (
        platform   TEXT NOT NULL,
        workspace  TEXT NOT NULL,
        channel    TEXT NOT NULL,
        thread     TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      TEXT NOT NULL,
        updated_at REAL NOT NULL,
        updated_by TEXT NOT NULL,
        PRIMARY KEY (platform, workspace, channel, thread, key)
    ) WITHOUT ROWID;
    CREATE TABLE settings_audit (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        platform   TEXT NOT NULL,
        workspace  TEXT NOT NULL,
        channel    TEXT NOT NULL,
        thread     TEXT NOT NULL,
        key        TEXT NOT NULL,
        old        TEXT,
        new        TEXT,
        actor      TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX settings_audit_by_scope ON settings_audit (platform, workspace, channel,
                                                           thread, id);
    CREATE INDEX settings_audit_by_actor ON settings_audit (actor);
    """,
    # 8 (issue 28): a
    # conversation's rolling summary of the turns that fell out of the model's window. It
    # covers the turns with `history_start` < id <= `upto` (`since`: the history_start it was
    # written under; a reset makes it stale); deleting, editing or forgetting any turn it
    # covers deletes it in the same transaction (storage/summaries.py). `window_notices`: the
    # history_start under which the "earlier messages were not read" notice was shown (once
    # per conversation).
    # `summary_requests`: platform messages that asked for a summary (「要約」), written before
    # their delivery is recorded, so a restart finishes them as summaries.
    # New tables only: independent of the other migrations.
    """
    CREATE TABLE summaries (
        conversation_id INTEGER PRIMARY KEY REFERENCES conversations(id) ON DELETE CASCADE,
        text            TEXT NOT NULL,
        upto            INTEGER NOT NULL,
        since           INTEGER NOT NULL,
        created_at      REAL NOT NULL
    );
    CREATE TABLE summary_requests (  -- deliveries that ask for a summary, not an answer
        platform     TEXT NOT NULL,
        delivery_key TEXT NOT NULL,
        PRIMARY KEY (platform, delivery_key)
    ) WITHOUT ROWID;
    CREATE TABLE window_notices (
        conversation_id INTEGER PRIMARY KEY REFERENCES conversations(id) ON DELETE CASCADE,
        since           INTEGER NOT NULL
    );
    """,
    # 9 (issue 20; 7 on its branch before issues 27-29 took 7 and 8): a delivery is a state
    # machine (bot/ports/records.py, DeliveryState): the placeholder posted (shown), the user
    # turn stored (answering) and the answer stored (ready) become states of their own, each
    # reached by one checked transition, and a notice ends it as failed. `runner`: the
    # process answering it (`take`), so the store, not the process, says who answers. SQLite
    # cannot change a CHECK: the column is rebuilt. A reply ref
    # names its message uniquely within its platform: refs without a channel (a bare
    # message handle, unique only within its channel) get `channel/` in front, like the
    # refs that have one.
    """
    DROP INDEX deliveries_unfinished;
    DROP INDEX deliveries_by_conversation;
    ALTER TABLE deliveries ADD COLUMN state9 TEXT NOT NULL DEFAULT 'answered'
        CHECK (state9 IN ('imported', 'accepted', 'shown', 'answering', 'ready', 'answered',
                          'failed', 'withdrawn'));
    UPDATE deliveries SET state9 = CASE
        WHEN state IN ('imported', 'answered') THEN state
        WHEN withdrawn = 1 AND turn_id IS NULL THEN 'withdrawn'
        WHEN final IS NOT NULL THEN 'ready'
        WHEN state = 'accepted' THEN 'accepted'
        WHEN turn_id IS NULL THEN 'shown'
        ELSE 'answering' END;
    ALTER TABLE deliveries DROP COLUMN state;
    ALTER TABLE deliveries RENAME COLUMN state9 TO state;
    ALTER TABLE deliveries ADD COLUMN runner TEXT;
    CREATE INDEX deliveries_unfinished ON deliveries (platform, state, received_at)
        WHERE state IN ('accepted', 'shown', 'answering', 'ready', 'withdrawn');
    CREATE INDEX deliveries_by_conversation ON deliveries (conversation_id, state);
    UPDATE deliveries SET reply_ref = (SELECT channel FROM conversations
        WHERE conversations.id = deliveries.conversation_id) || '/' || reply_ref
        WHERE reply_ref IS NOT NULL AND instr(reply_ref, '/') = 0;
    """,
    # 10: the attached files of a message taken on but not read yet (names, one a line),
    # noted before its delivery is recorded and dropped once they are read, so a restart's
    # recovery can say which files it could not read rather than losing them silently.
    """
    CREATE TABLE unread_files (
        platform     TEXT NOT NULL,
        delivery_key TEXT NOT NULL,
        names        TEXT NOT NULL,
        PRIMARY KEY (platform, delivery_key)
    ) WITHOUT ROWID;
    """,
    # 11: nothing in SQLite (one process per file). PostgreSQL's 11 (storage/pg_schema.py)
    # adds what replicas share there: answer leases and person slots (storage/pg_replicas.py).
    "",
)

SCHEMA_VERSION = len(MIGRATIONS)
