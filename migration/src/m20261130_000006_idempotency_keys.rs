//! Idempotency keys of the writes (`Idempotency-Key` on create and update): each key, once its
//! write succeeded, with the answer it got (the user as written), so a retry is answered the
//! same without running again. A row is written by the statement (PostgreSQL) or the
//! transaction (SQLite) of its write: never one without the other.
//!
//! `key_hash` digests the caller (token or address) and the key, so the table holds neither;
//! `fingerprint` digests the request, so the same key with another request is refused (both
//! 128 bits, as UUIDs: the narrowest index entry). The
//! answer's columns are nullable: SQLite claims the key before the write fills them, inside
//! one transaction, so no reader ever sees a row without them.

use sea_orm_migration::sea_orm::DbBackend;
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

const EXPIRES_BRIN: &str =
    "CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys USING brin (expires_at_secs)";
const EXPIRES_BTREE: &str =
    "CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at_secs)";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .col(uuid(IdempotencyKeys::KeyHash).primary_key())
                    .col(uuid(IdempotencyKeys::Fingerprint))
                    .col(big_integer(IdempotencyKeys::ExpiresAtSecs))
                    .col(uuid_null(IdempotencyKeys::Id))
                    .col(text_null(IdempotencyKeys::Email))
                    .col(text_null(IdempotencyKeys::Name))
                    .col(timestamp_with_time_zone_null(IdempotencyKeys::CreatedAt))
                    .col(timestamp_with_time_zone_null(IdempotencyKeys::UpdatedAt))
                    .col(big_integer_null(IdempotencyKeys::Version))
                    .to_owned(),
            )
            .await?;
        // The background purge finds expired keys by it, a batch at a time. PostgreSQL: a
        // BRIN index, next to free to keep (keys are written in expiry order), where a B-tree
        // is one more index entry per write.
        let index = match manager.get_database_backend() {
            DbBackend::Postgres => EXPIRES_BRIN,
            _ => EXPIRES_BTREE,
        };
        manager.get_connection().execute_unprepared(index).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(IdempotencyKeys::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    KeyHash,
    Fingerprint,
    ExpiresAtSecs,
    Id,
    Email,
    Name,
    CreatedAt,
    UpdatedAt,
    Version,
}
