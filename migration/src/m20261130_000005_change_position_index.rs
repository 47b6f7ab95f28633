//! The change feed reads users in `(change_position, id)` order from a token on: one index
//! range. Built online, as every index on the live table ([`crate::online_index`]).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::online_index::{
    Index, build_concurrently, dedicated, drop_concurrently, with_lock_retries,
};

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
        if manager.get_database_backend() != DbBackend::Postgres {
            let sql = format!(
                "CREATE INDEX IF NOT EXISTS {} {}",
                CHANGE_ORDER.name, CHANGE_ORDER.sqlite
            );
            manager.get_connection().execute_unprepared(&sql).await?;
            return Ok(());
        }
        let mut conn = dedicated(manager).await?;
        build_concurrently(&mut conn, &CHANGE_ORDER).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            let sql = format!("DROP INDEX IF EXISTS {}", CHANGE_ORDER.name);
            manager.get_connection().execute_unprepared(&sql).await?;
            return Ok(());
        }
        let mut conn = dedicated(manager).await?;
        with_lock_retries(&mut conn, &drop_concurrently(CHANGE_ORDER.name)).await
    }
}
