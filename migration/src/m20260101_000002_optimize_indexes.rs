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

use crate::online_index::{Index, create_all, drop_all};

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
        create_all(manager, &INDEXES).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, &INDEXES).await
    }
}
