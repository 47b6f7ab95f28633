//! The indexes that make every query of the api an index scan (the email index, which is also
//! a uniqueness constraint, comes with the table in the first migration).
//!
//! It lands on a live table, so each index is built online ([`crate::online_index`]).
//!
//! Written as SQL rather than with sea-query's index builder: the two `lower(...)` indexes are
//! expression indexes, which sea-query cannot build for SQLite, and `text_pattern_ops` has no
//! builder at all. SQLite gets the nearest equivalent: the same expressions with its default
//! BINARY collation, which already compares byte-wise as `text_pattern_ops` does.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::online_index::{
    Index, build_concurrently, dedicated, drop_concurrently, with_lock_retries,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Case-insensitive prefix search. `text_pattern_ops` because a default-opclass btree on
/// `lower(name)` cannot serve a prefix range under a non-C collation. (`name_order_index`
/// replaces it.)
pub const NAME_PREFIX: Index = Index {
    name: "users_name_lower_prefix_idx",
    postgres: "ON users (lower(name) text_pattern_ops)",
    sqlite: "ON users (lower(name))",
};

const INDEXES: [Index; 3] = [
    NAME_PREFIX,
    // Keyset pagination, newest first (scanned backwards).
    Index {
        name: "users_created_at_id_idx",
        postgres: "ON users (created_at, id)",
        sqlite: "ON users (created_at, id)",
    },
    // Incremental sync by `updated_since`, oldest change first.
    Index {
        name: "users_updated_at_id_idx",
        postgres: "ON users (updated_at, id)",
        sqlite: "ON users (updated_at, id)",
    },
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// `CREATE INDEX CONCURRENTLY` cannot run inside a transaction.
    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            let db = manager.get_connection();
            for index in &INDEXES {
                db.execute_unprepared(&format!(
                    "CREATE INDEX IF NOT EXISTS {} {}",
                    index.name, index.sqlite
                ))
                .await?;
            }
            return Ok(());
        }
        let mut conn = dedicated(manager).await?;
        for index in &INDEXES {
            build_concurrently(&mut conn, index).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            let db = manager.get_connection();
            for index in &INDEXES {
                db.execute_unprepared(&format!("DROP INDEX IF EXISTS {}", index.name))
                    .await?;
            }
            return Ok(());
        }
        let mut conn = dedicated(manager).await?;
        for index in &INDEXES {
            with_lock_retries(&mut conn, &drop_concurrently(index.name)).await?;
        }
        Ok(())
    }
}
