//! Idempotency keys of the writes (`Idempotency-Key` on create and update): each key, once its
//! write succeeded, with the answer it got (the user as written), so a retry is answered the
//! same without running again. A row is written by the statement (PostgreSQL) or the
//! transaction (SQLite) of its write: never one without the other.
//!
//! `key_hash` digests the caller (token or address) and the key, so the table holds neither;
//! `fingerprint` digests the request, so the same key with another request is refused. The
//! answer's columns are nullable: SQLite claims the key before the write fills them, inside
//! one transaction, so no reader ever sees a row without them.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .col(text(IdempotencyKeys::KeyHash).primary_key())
                    .col(text(IdempotencyKeys::Fingerprint))
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
        // The background purge finds expired keys by it, a batch at a time.
        manager
            .create_index(
                Index::create()
                    .name("idempotency_keys_expires_idx")
                    .table(IdempotencyKeys::Table)
                    .col(IdempotencyKeys::ExpiresAtSecs)
                    .to_owned(),
            )
            .await
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
