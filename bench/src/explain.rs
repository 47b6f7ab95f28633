//! Query times with and without the indexes (EXPLAIN ANALYZE), and keyset against OFFSET
//! pagination at the same depth.

use anyhow::{Context, Result};
use sea_orm::sqlx::{self, Connection, PgConnection};
use serde_json::Value;

use crate::data;

pub struct Timing {
    pub query: String,
    /// Execution time on the indexed database (best of three), in ms.
    pub indexed_ms: f64,
    /// The same on the database without the indexes; `None` where not compared.
    pub unindexed_ms: Option<f64>,
}

const COLUMNS: &str = "id, email, name, created_at, updated_at, version";

pub async fn compare(indexed_url: &str, noidx_url: &str, users: u64) -> Result<Vec<Timing>> {
    let n = (users / 3).max(1);
    let deep = (users / 2).max(1);
    let queries = [
        (
            "get by id",
            format!(
                "SELECT {COLUMNS} FROM users WHERE id = '{}' LIMIT 1",
                data::id(n)
            ),
        ),
        (
            "lookup by email",
            format!(
                "SELECT {COLUMNS} FROM users WHERE lower(email) = lower('USER{n}@example.com') LIMIT 1"
            ),
        ),
        (
            "list first page",
            format!("SELECT {COLUMNS} FROM users ORDER BY created_at DESC, id DESC LIMIT 51"),
        ),
        (
            "list deep page (keyset)",
            format!(
                "SELECT {COLUMNS} FROM users WHERE (created_at, id) < ('{}', '{}') ORDER BY created_at DESC, id DESC LIMIT 51",
                data::created_at(deep).to_rfc3339(),
                data::id(deep)
            ),
        ),
        (
            "name prefix 'gra'",
            format!(
                "SELECT {COLUMNS} FROM users WHERE lower(name) ~>=~ lower('gra') AND lower(name) ~<~ (lower('gra') || chr(1114111)) ORDER BY created_at DESC, id DESC LIMIT 51"
            ),
        ),
        (
            "updated since (last 1000 changes)",
            format!(
                "SELECT {COLUMNS} FROM users WHERE updated_at >= '{}' ORDER BY updated_at, id LIMIT 51",
                data::created_at(users.saturating_sub(1000).max(1)).to_rfc3339()
            ),
        ),
    ];
    let mut indexed = PgConnection::connect(indexed_url)
        .await
        .context("connect")?;
    let mut noidx = PgConnection::connect(noidx_url).await.context("connect")?;
    // Else a sequential scan starts where the previous one stopped (synchronized scans), and a
    // repeated `LIMIT 1` lookup finds its row at once: every scan must start at block 0.
    for conn in [&mut indexed, &mut noidx] {
        sqlx::query("SET synchronize_seqscans = off")
            .execute(&mut *conn)
            .await?;
    }
    let mut timings = Vec::new();
    for (name, sql) in &queries {
        timings.push(Timing {
            query: (*name).to_owned(),
            indexed_ms: best_of_three(&mut indexed, sql).await?,
            unindexed_ms: Some(best_of_three(&mut noidx, sql).await?),
        });
    }
    let offset = format!(
        "SELECT {COLUMNS} FROM users ORDER BY created_at DESC, id DESC OFFSET {} LIMIT 51",
        users - deep
    );
    timings.push(Timing {
        query: format!(
            "list deep page (OFFSET {}, same depth as keyset)",
            users - deep
        ),
        indexed_ms: best_of_three(&mut indexed, &offset).await?,
        unindexed_ms: None,
    });
    indexed.close().await?;
    noidx.close().await?;
    Ok(timings)
}

async fn best_of_three(conn: &mut PgConnection, sql: &str) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let (plan,): (Value,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, FORMAT JSON) {sql}"
        )))
        .fetch_one(&mut *conn)
        .await
        .with_context(|| sql.to_owned())?;
        let ms = plan[0]["Execution Time"].as_f64().unwrap_or(f64::MAX);
        best = best.min(ms);
    }
    Ok(best)
}
