//! The change feed (`GET /api/v1/users/changes`): every write stamps the row with a position
//! in commit order, and every delete leaves a tombstone, both by triggers, so no statement of
//! the service (nor of anyone else writing the table) can forget them.
//!
//! PostgreSQL: the position is the writing transaction's id (`pg_current_xact_id()`, 64-bit,
//! never wrapping): the column's default on insert (no trigger: creates keep 96% of their rate),
//! a trigger on update unless the writer set it itself (updates keep 88%: bench/feed/README.md).
//! The service's statements never name the column, so they run on every schema version. A transaction's id is taken before it commits, so ids are not in commit
//! order; but every id below a snapshot's `xmin` belongs to a transaction that has ended, so a
//! reader that returns only positions below its snapshot's `xmin`, and next time starts there,
//! never skips a commit (the high-water mark of event stores such as Marten). A long transaction
//! holds `xmin` back: the feed then waits, it does not lose.
//!
//! SQLite: one writer at a time, so a counter bumped inside each write is in commit order.
//!
//! Deletion's version is the deleted user's plus one, so applying changes by version converges.
//! Rows from before this migration have position 0: a feed from the start returns them first.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES_UP: &str = r#"
-- Rows from before have 0 (a constant default: no table rewrite); new rows their writer's id.
ALTER TABLE users ADD COLUMN change_position bigint NOT NULL DEFAULT 0;
ALTER TABLE users ALTER COLUMN change_position SET DEFAULT pg_current_xact_id()::text::bigint;

CREATE TABLE user_tombstones (
    id uuid PRIMARY KEY,
    version bigint NOT NULL,
    change_position bigint NOT NULL,
    deleted_at_secs bigint NOT NULL
);
CREATE INDEX user_tombstones_change_idx ON user_tombstones (change_position, id);
CREATE INDEX user_tombstones_deleted_at_idx ON user_tombstones (deleted_at_secs);

-- Tombstones purged so far end below this position: an older feed token is expired.
CREATE TABLE change_feed (
    id smallint PRIMARY KEY CHECK (id = 1),
    purged_below bigint NOT NULL
);
INSERT INTO change_feed VALUES (1, 0);

CREATE FUNCTION users_change_position() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.change_position := pg_current_xact_id()::text::bigint;
    RETURN NEW;
END $$;
CREATE TRIGGER users_change_position BEFORE UPDATE ON users
    FOR EACH ROW WHEN (NEW.change_position = OLD.change_position)
    EXECUTE FUNCTION users_change_position();

CREATE FUNCTION users_tombstone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO user_tombstones (id, version, change_position, deleted_at_secs)
    VALUES (OLD.id, OLD.version + 1, pg_current_xact_id()::text::bigint,
            extract(epoch FROM now())::bigint)
    ON CONFLICT (id) DO NOTHING;
    RETURN OLD;
END $$;
CREATE TRIGGER users_tombstone AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION users_tombstone();
"#;

const POSTGRES_DOWN: &str = r#"
DROP TRIGGER IF EXISTS users_tombstone ON users;
DROP FUNCTION IF EXISTS users_tombstone();
DROP TRIGGER IF EXISTS users_change_position ON users;
DROP FUNCTION IF EXISTS users_change_position();
DROP TABLE IF EXISTS change_feed;
DROP TABLE IF EXISTS user_tombstones;
ALTER TABLE users DROP COLUMN IF EXISTS change_position;
"#;

/// SQLite runs one statement per call.
const SQLITE_UP: [&str; 9] = [
    "ALTER TABLE users ADD COLUMN change_position INTEGER NOT NULL DEFAULT 0",
    "CREATE TABLE user_tombstones (id uuid_text PRIMARY KEY, version INTEGER NOT NULL, \
     change_position INTEGER NOT NULL, deleted_at_secs INTEGER NOT NULL)",
    "CREATE INDEX user_tombstones_change_idx ON user_tombstones (change_position, id)",
    "CREATE INDEX user_tombstones_deleted_at_idx ON user_tombstones (deleted_at_secs)",
    "CREATE TABLE change_feed (id INTEGER PRIMARY KEY CHECK (id = 1), \
     purged_below INTEGER NOT NULL, position INTEGER NOT NULL)",
    "INSERT INTO change_feed VALUES (1, 0, 0)",
    // The trigger's own UPDATE sets only change_position, so it does not fire again.
    "CREATE TRIGGER users_change_insert AFTER INSERT ON users BEGIN \
     UPDATE change_feed SET position = position + 1 WHERE id = 1; \
     UPDATE users SET change_position = (SELECT position FROM change_feed WHERE id = 1) \
     WHERE id = NEW.id; END",
    "CREATE TRIGGER users_change_update AFTER UPDATE OF email, name, version ON users BEGIN \
     UPDATE change_feed SET position = position + 1 WHERE id = 1; \
     UPDATE users SET change_position = (SELECT position FROM change_feed WHERE id = 1) \
     WHERE id = NEW.id; END",
    "CREATE TRIGGER users_tombstone AFTER DELETE ON users BEGIN \
     UPDATE change_feed SET position = position + 1 WHERE id = 1; \
     INSERT OR IGNORE INTO user_tombstones (id, version, change_position, deleted_at_secs) \
     VALUES (OLD.id, OLD.version + 1, (SELECT position FROM change_feed WHERE id = 1), \
     unixepoch()); END",
];

const SQLITE_DOWN: [&str; 6] = [
    "DROP TRIGGER IF EXISTS users_tombstone",
    "DROP TRIGGER IF EXISTS users_change_update",
    "DROP TRIGGER IF EXISTS users_change_insert",
    "DROP TABLE IF EXISTS change_feed",
    "DROP TABLE IF EXISTS user_tombstones",
    "ALTER TABLE users DROP COLUMN change_position",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run(manager, POSTGRES_UP, &SQLITE_UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run(manager, POSTGRES_DOWN, &SQLITE_DOWN).await
    }
}

async fn run(manager: &SchemaManager<'_>, postgres: &str, sqlite: &[&str]) -> Result<(), DbErr> {
    let db = manager.get_connection();
    if manager.get_database_backend() == DbBackend::Postgres {
        db.execute_unprepared(postgres).await?;
        return Ok(());
    }
    for statement in sqlite {
        db.execute_unprepared(statement).await?;
    }
    Ok(())
}
