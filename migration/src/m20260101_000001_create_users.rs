//! The `users` table, with what is correctness rather than speed: emails are unique
//! case-insensitively from the first migration on.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Case-insensitive uniqueness of emails (it also serves the lookup by email). SQL rather than
/// sea-query's index builder, which cannot build an expression index for SQLite.
const EMAIL_UNIQUE: &str =
    "CREATE UNIQUE INDEX IF NOT EXISTS users_email_lower_key ON users (lower(email))";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .if_not_exists()
                    .col(uuid(Users::Id).primary_key())
                    .col(text(Users::Email))
                    .col(text(Users::Name))
                    .col(timestamp_with_time_zone(Users::CreatedAt))
                    .col(timestamp_with_time_zone(Users::UpdatedAt))
                    .col(big_integer(Users::Version))
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(EMAIL_UNIQUE)
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Users::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Email,
    Name,
    CreatedAt,
    UpdatedAt,
    Version,
}
