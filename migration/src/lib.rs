//! Schema migrations of the user service, in order. The api applies them at start when
//! `RUN_MIGRATIONS` is true; `cargo run -p migration -- up|down|status|fresh` runs them by hand.

pub use sea_orm_migration::prelude::*;

/// Where the service and this CLI keep the data when `DATABASE_URL` is unset: an embedded
/// SQLite file, created on first use, so a fresh clone runs with no server.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/users.db?mode=rwc";

mod m20260101_000001_create_users;
mod m20260101_000002_optimize_indexes;
mod m20261129_000003_name_order_index;
mod m20261130_000004_change_feed;
mod m20261130_000005_change_position_index;
mod m20261130_000006_idempotency_keys;
mod online_index;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20260101_000001_create_users::Migration),
            Box::new(m20260101_000002_optimize_indexes::Migration),
            Box::new(m20261129_000003_name_order_index::Migration),
            Box::new(m20261130_000004_change_feed::Migration),
            Box::new(m20261130_000005_change_position_index::Migration),
            Box::new(m20261130_000006_idempotency_keys::Migration),
        ]
    }
}

/// Only the table (with its unique email index): the schema before `optimize_indexes`, for
/// benchmarks that measure what the optimization indexes buy.
pub struct MigratorWithoutIndexes;

#[async_trait::async_trait]
impl MigratorTrait for MigratorWithoutIndexes {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20260101_000001_create_users::Migration)]
    }
}
