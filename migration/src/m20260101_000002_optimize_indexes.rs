//! The indexes that make every query of the api an index scan (the email index, which is also
//! a uniqueness constraint, comes with the table in the first migration).
//!
//! Written as SQL rather than with sea-query's index builder: the two `lower(...)` indexes are
//! expression indexes, which sea-query cannot build for SQLite, and `text_pattern_ops` has no
//! builder at all. SQLite gets the nearest equivalent: the same expressions with its default
//! BINARY collation, which already compares byte-wise as `text_pattern_ops` does.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Keyset pagination, newest first (scanned backwards).
const CREATED: &str = "CREATE INDEX users_created_at_id_idx ON users (created_at, id)";
/// Incremental sync by `updated_since`, oldest change first.
const UPDATED: &str = "CREATE INDEX users_updated_at_id_idx ON users (updated_at, id)";
/// Case-insensitive prefix search. `text_pattern_ops` because a default-opclass btree on
/// `lower(name)` cannot serve a prefix range under a non-C collation.
const NAME_POSTGRES: &str =
    "CREATE INDEX users_name_lower_prefix_idx ON users (lower(name) text_pattern_ops)";
const NAME_SQLITE: &str = "CREATE INDEX users_name_lower_prefix_idx ON users (lower(name))";

const INDEXES: [&str; 3] = [
    "users_name_lower_prefix_idx",
    "users_created_at_id_idx",
    "users_updated_at_id_idx",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let name = match manager.get_database_backend() {
            DbBackend::Postgres => NAME_POSTGRES,
            _ => NAME_SQLITE,
        };
        let db = manager.get_connection();
        for statement in [name, CREATED, UPDATED] {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for index in INDEXES {
            db.execute_unprepared(&format!("DROP INDEX IF EXISTS {index}"))
                .await?;
        }
        Ok(())
    }
}
