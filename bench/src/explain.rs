//! Query times with and without the indexes (EXPLAIN ANALYZE), and keyset against OFFSET
//! pagination at the same depth.

use anyhow::{Context, Result};
use api::users::cursor::Cursor;
use api::users::repository::ListQuery;
use sea_orm::sqlx::{self, Connection, PgConnection};
use serde_json::Value;

use crate::{data, statements};

pub struct Timing {
    pub query: String,
    /// Execution time on the indexed database (best of three), in ms.
    pub indexed_ms: f64,
    /// The same on the database without the indexes; `None` where not compared.
    pub unindexed_ms: Option<f64>,
}

pub async fn compare(indexed_url: &str, noidx_url: &str, users: u64) -> Result<Vec<Timing>> {
    let n = (users / 3).max(1);
    let deep = (users / 2).max(1);
    let deep_cursor = Cursor {
        at: data::created_at(deep),
        id: data::id(deep),
        name: String::new(),
    };
    let recent = ListQuery {
        limit: statements::PAGE,
        after: None,
        name_prefix: None,
        updated_since: Some(data::created_at(users.saturating_sub(1000).max(1))),
    };
    let queries = [
        ("get by id", statements::find_by_id(data::id(n))),
        (
            "lookup by email",
            statements::find_by_email(&format!("USER{n}@example.com")),
        ),
        ("list first page", statements::list(None, None)),
        (
            "list deep page (keyset)",
            statements::list(Some(deep_cursor), None),
        ),
        ("name prefix 'gra'", statements::list(None, Some("gra"))),
        (
            "updated since (last 1000 changes)",
            statements::list_query(&recent),
        ),
    ]
    .map(|(name, statement)| (name, statements::literal(&statement)));
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
    // The first page's statement with an OFFSET to the deep page's depth: what keyset
    // pagination replaces.
    let first_page = statements::literal(&statements::list(None, None));
    let offset = first_page.replace(" LIMIT ", &format!(" OFFSET {} LIMIT ", users - deep));
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
