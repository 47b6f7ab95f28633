//! The change feed's consumer side: how many changes a second one consumer reads through the
//! service, catching up from no token (every user there is), page by page, following `next`.
//! Writes `bench/feed/CONSUMER.md`; what the feed costs on writes is pgbench's measure
//! (bench/feed/README.md) and the keyed writes' is the run's `create keyed`/`update keyed`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::{self, Connection, Executor, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::seed::{recreate, with_database};
use crate::service::{self, Service};

#[derive(clap::Args)]
pub struct Settings {
    #[arg(long, env = "BENCH_DATABASE_URL", default_value = crate::DEFAULT_URL)]
    database_url: String,
    #[arg(long, default_value = "userbench_feed_consumer")]
    database: String,
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Page sizes to read with, each a pass per round.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    limits: Vec<u32>,
    #[arg(long, default_value = "target/release/api")]
    binary: PathBuf,
    #[arg(long)]
    skip_seed: bool,
    #[arg(long, default_value = "bench/feed")]
    out: PathBuf,
}

pub async fn run(settings: &Settings) -> Result<()> {
    let url = with_database(&settings.database_url, &settings.database);
    if !settings.skip_seed {
        seed(settings, &url).await?;
    }
    let service = Service::start(&settings.binary, &url, &[]).await?;
    let mut rates: Vec<(u32, Vec<f64>)> =
        settings.limits.iter().map(|l| (*l, Vec::new())).collect();
    for round in 0..settings.rounds {
        for (limit, samples) in &mut rates {
            let started = Instant::now();
            let changes = catch_up(*limit).await?;
            if changes < settings.users {
                bail!(
                    "the feed gave {changes} changes of {} users",
                    settings.users
                );
            }
            let rate = changes as f64 / started.elapsed().as_secs_f64();
            eprintln!("  round {round}: limit {limit}: {changes} changes, {rate:.0} changes/s");
            samples.push(rate);
        }
    }
    service.stop().await?;
    std::fs::create_dir_all(&settings.out)?;
    let path = settings.out.join("CONSUMER.md");
    std::fs::write(&path, report(settings, &rates))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

async fn seed(settings: &Settings, url: &str) -> Result<()> {
    recreate(&settings.database_url, &settings.database).await?;
    let db = sea_orm::Database::connect(url).await?;
    Migrator::up(&db, None).await?;
    db.close().await?;
    eprintln!("seeding {}: {} users", settings.database, settings.users);
    let mut conn = PgConnection::connect(url).await?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (id, email, name, created_at, updated_at, version)
         SELECT gen_random_uuid(), 'feed' || g || '@example.com', 'Feed Person ' || g,
                now(), now(), 1
         FROM generate_series(1, {}) AS g",
        settings.users
    )))
    .await?;
    // Alone: VACUUM cannot run in the implicit transaction of several statements.
    conn.execute("VACUUM ANALYZE users").await?;
    Ok(())
}

/// Reads the feed from the start until a page is empty; the changes read.
async fn catch_up(limit: u32) -> Result<u64> {
    let mut since = String::new();
    let mut changes = 0;
    loop {
        let query = match since.as_str() {
            "" => format!("?limit={limit}"),
            token => format!("?since={token}&limit={limit}"),
        };
        let page = get_json(&format!("/api/v1/users/changes{query}")).await?;
        let count = page["changes"].as_array().context("changes")?.len() as u64;
        since = page["next"].as_str().context("next")?.to_owned();
        if count == 0 {
            return Ok(changes);
        }
        changes += count;
    }
}

/// One GET on a kept-alive-free connection (a connect per page of up to a thousand changes is
/// noise), its JSON body.
async fn get_json(path: &str) -> Result<serde_json::Value> {
    let mut stream = TcpStream::connect(service::PUBLIC).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("a response head")?;
    if !response.starts_with(b"HTTP/1.1 200") {
        bail!("{}", String::from_utf8_lossy(&response[..split]));
    }
    Ok(serde_json::from_slice(&response[split + 4..])?)
}

fn report(settings: &Settings, rates: &[(u32, Vec<f64>)]) -> String {
    let mut out = format!(
        "# The change feed to one consumer\n\n\
         Generated by `bench feed` on {} (commit `{}`): one consumer reads the feed of {} users \
         from no token through the service (shipped defaults, PostgreSQL), page after page, \
         following `next` until a page is empty; {} rounds. Changes per second:\n\n\
         | page size (`limit`) | per round | range |\n| ---: | --- | --- |\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        crate::report::commit(),
        settings.users,
        settings.rounds,
    );
    for (limit, samples) in rates {
        let per_round: Vec<String> = samples.iter().map(|r| format!("{r:.0}")).collect();
        let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = samples.iter().copied().fold(0.0, f64::max);
        out.push_str(&format!(
            "| {limit} | {} | {min:.0}-{max:.0} |\n",
            per_round.join(", ")
        ));
    }
    out
}
