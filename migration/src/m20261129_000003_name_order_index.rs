//! Name searches in bounded time: a prefix search lists its matches by case-folded name, then
//! id, so one range of one index answers it whatever the prefix. The index that only served
//! the prefix range (`text_pattern_ops`, no id) goes: the new one serves the range and the
//! order. Built online, as every index change ([`crate::online_index`]).
//!
//! `COLLATE "C"` compares the folded names byte-wise, as `text_pattern_ops` did, so a prefix is
//! one contiguous range under any database collation; the `id` column makes the keyset unique.
//! SQLite's default collation already compares byte-wise.

use sea_orm_migration::prelude::*;

use crate::m20260101_000002_optimize_indexes::NAME_PREFIX;
use crate::online_index::{Index, create_all, drop_all};

#[derive(DeriveMigrationName)]
pub struct Migration;

const NAME_ORDER: Index = Index {
    name: "users_name_lower_id_idx",
    postgres: r#"ON users ((lower(name) COLLATE "C"), id)"#,
    sqlite: "ON users (lower(name), id)",
};

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// `CREATE INDEX CONCURRENTLY` cannot run inside a transaction.
    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }

    /// The new index first, so searches always have one.
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        replace(manager, &NAME_ORDER, &NAME_PREFIX).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        replace(manager, &NAME_PREFIX, &NAME_ORDER).await
    }
}

/// Builds `new`, then drops `old`.
async fn replace(manager: &SchemaManager<'_>, new: &Index, old: &Index) -> Result<(), DbErr> {
    create_all(manager, std::slice::from_ref(new)).await?;
    drop_all(manager, std::slice::from_ref(old)).await
}
