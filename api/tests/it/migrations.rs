//! What each migration guarantees on its own.

use crate::common::{Backend, TestDb};
use migration::{MigratorTrait, MigratorWithoutIndexes};
use sea_orm::{ConnectionTrait, Database};

on_both_backends!(emails_are_unique_from_the_first_migration_on);

/// Uniqueness is correctness, not an optimization: the table's own migration enforces it, so
/// no database (the bench's "before" one included) ever holds two users with one email.
async fn emails_are_unique_from_the_first_migration_on(backend: Backend) {
    let test_db = TestDb::empty(backend).await;
    let db = Database::connect(test_db.url()).await.unwrap();
    MigratorWithoutIndexes::up(&db, None).await.unwrap();
    let insert = |id: &str, email: &str| {
        format!(
            "INSERT INTO users (id, email, name, created_at, updated_at, version) \
             VALUES ('{id}', '{email}', 'Ada', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', 1)"
        )
    };
    db.execute_unprepared(&insert(
        "0195e3a0-0000-7000-8000-000000000001",
        "Ada@Example.com",
    ))
    .await
    .unwrap();
    let duplicate = db
        .execute_unprepared(&insert(
            "0195e3a0-0000-7000-8000-000000000002",
            "ada@example.COM",
        ))
        .await;
    assert!(
        duplicate.is_err(),
        "a second user with the same email in another case was stored"
    );
    db.close().await.unwrap();
}
