//! The change feed reads users in `(change_position, id)` order from a token on: one index
//! range. Built online, as every index on the live table ([`crate::online_index`]).

use sea_orm_migration::prelude::*;

use crate::online_index::{Index, create_all, drop_all};

#[derive(DeriveMigrationName)]
pub struct Migration;

pub const CHANGE_ORDER: Index = Index {
    name: "users_change_position_id_idx",
    postgres: "ON users (change_position, id)",
    sqlite: "ON users (change_position, id)",
};

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// `CREATE INDEX CONCURRENTLY` cannot run inside a transaction.
    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_all(manager, &[CHANGE_ORDER]).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, &[CHANGE_ORDER]).await
    }
}
