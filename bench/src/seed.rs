//! Seeding: a fresh database, the schema, N users by COPY, then the indexes (building them
//! after the load is several times faster than maintaining them during it), then ANALYZE.

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use migration::{Migrator, MigratorTrait, MigratorWithoutIndexes};
use sea_orm::sqlx::{self, Connection, Executor, PgConnection};

use crate::data;

const CHUNK: u64 = 20_000;

/// `url` with its database name replaced.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, ""), |(b, q)| (b, q));
    let cut = base
        .rfind('/')
        .filter(|&i| i > "postgres://".len())
        .unwrap_or(base.len());
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{}/{database}{query}", &base[..cut])
}

/// Drops `database` if it exists and creates it empty; its URL.
pub async fn recreate(admin_url: &str, database: &str) -> Result<String> {
    let mut admin = PgConnection::connect(admin_url)
        .await
        .context("connect to PostgreSQL")?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
        )))
        .await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .await?;
    admin.close().await?;
    Ok(with_database(admin_url, database))
}

pub async fn seed(admin_url: &str, database: &str, users: u64, indexes: bool) -> Result<()> {
    let url = recreate(admin_url, database).await?;
    let db = sea_orm::Database::connect(&url).await?;
    MigratorWithoutIndexes::up(&db, None).await?;

    let bar = ProgressBar::new(users).with_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} users ({per_sec}, {eta})")?
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("seeding {database}"));
    let mut conn = PgConnection::connect(&url).await?;
    let mut next = 1;
    while next <= users {
        let last = (next + CHUNK - 1).min(users);
        let mut rows = String::with_capacity(((last - next + 1) * 120) as usize);
        for n in next..=last {
            let at = data::created_at(n).to_rfc3339();
            rows.push_str(&format!(
                "{}\t{}\t{}\t{at}\t{at}\t1\n",
                data::id(n),
                data::email(n),
                data::name(n)
            ));
        }
        let mut copy = conn
            .copy_in_raw("COPY users (id, email, name, created_at, updated_at, version) FROM STDIN")
            .await?;
        copy.send(rows.into_bytes()).await?;
        copy.finish().await?;
        bar.inc(last - next + 1);
        next = last + 1;
    }
    bar.finish();
    if indexes {
        eprintln!("building the indexes of optimize_indexes...");
        Migrator::up(&db, None).await?;
    }
    conn.execute("VACUUM ANALYZE users").await?;
    db.close().await?;
    Ok(())
}
