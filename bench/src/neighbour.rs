//! The unhappy path under load: one client searching names beside many reading by id (the
//! slow neighbour), the name searches' own latency whatever the prefix, and how long callers
//! wait behind a table lock (the bounded wait).
//!
//! The table: `old` users named "Perf Person N", then `new` newer users with other names
//! sharing real stems ("Mar", "Jo", "Al"), as sign-ups drift: the shape where newest-first
//! prefix search had no good plan. This build and each `--build` run the same rounds; within a
//! round, alone and with the neighbour alternate (the order flips every round), so a ratio's two
//! numbers are measured seconds apart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::{self, Connection, Executor, PgConnection};

use crate::load::{self, Measured};
use crate::seed::{recreate, with_database};
use crate::service::{self, Service};

/// The neighbour's searches, one at a time, at most this often.
const SEARCH_EVERY: Duration = Duration::from_millis(50);
/// Its two searches: a stem shared by every old user, and one old user under it.
const NEIGHBOUR_SEARCHES: [&str; 2] = ["Perf", "Perf%20Person%2099999"];
/// The prefixes timed alone: the shared stem, a rare name under it, a stem of the newer users,
/// an absent one, one letter.
const TIMED_PREFIXES: [&str; 5] = ["Perf", "Perf%20Person%2099999", "Mar", "zzzz", "p"];
/// The bounded-wait check: the numbers.
const ACQUIRE_TIMEOUT_SECS: &str = "1";
const STATEMENT_TIMEOUT_MS: &str = "2000";
const LOCK_HELD: Duration = Duration::from_secs(6);
const LOCKED_REQUESTS: usize = 12;

#[derive(clap::Args)]
pub struct Settings {
    #[arg(long, env = "BENCH_DATABASE_URL", default_value = crate::DEFAULT_URL)]
    database_url: String,
    #[arg(long, default_value = "userbench_neighbour")]
    database: String,
    /// Older users, all named "Perf Person N".
    #[arg(long, default_value_t = 100_000)]
    old: u64,
    /// Newer users, with other names.
    #[arg(long, default_value_t = 100_000)]
    new: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 16)]
    connections: u32,
    #[arg(long, default_value = "target/release/api")]
    binary: PathBuf,
    /// Another build measured the same way, `NAME=PATH` (repeatable).
    #[arg(long = "build", value_parser = crate::parse_build)]
    builds: Vec<(String, PathBuf)>,
    #[arg(long)]
    skip_seed: bool,
    #[arg(long, default_value = "bench/neighbour")]
    out: PathBuf,
}

struct Round {
    alone: Measured,
    beside: Measured,
    /// The neighbour's search latencies during `beside`, in ms.
    searches: Vec<f64>,
}

struct BuildResult {
    name: String,
    rounds: Vec<Round>,
    /// Per prefix: the median of five searches alone, in ms.
    prefixes: Vec<(String, f64)>,
    /// The locked requests: status and wait.
    locked: Vec<(u16, Duration)>,
}

pub async fn run(settings: &Settings) -> Result<()> {
    let url = with_database(&settings.database_url, &settings.database);
    if !settings.skip_seed {
        seed(settings, &url).await?;
    }
    let dir = tempfile::tempdir()?;
    let ids = dir.path().join("ids.txt");
    write_ids(&url, &ids).await?;
    let script = dir.path().join("get_by_id.lua");
    std::fs::write(
        &script,
        crate::wrk_script(include_str!("../scripts/get_by_id.lua"))
            .replace("{{IDS}}", &ids.display().to_string()),
    )?;
    let binaries = std::iter::once(("this build".to_owned(), settings.binary.clone()))
        .chain(settings.builds.iter().cloned());
    let mut results = Vec::new();
    for (name, binary) in binaries {
        eprintln!("neighbour: {name}");
        results.push(measure_build(settings, &url, &name, &binary, &script).await?);
    }
    crate::report::save(&settings.out, "RESULTS.md", &report(settings, &results))
}

async fn seed(settings: &Settings, url: &str) -> Result<()> {
    let database = &settings.database;
    recreate(&settings.database_url, database).await?;
    let db = sea_orm::Database::connect(url).await?;
    Migrator::up(&db, None).await?;
    db.close().await?;
    eprintln!(
        "seeding {database}: {} old, {} new users",
        settings.old, settings.new
    );
    let mut conn = PgConnection::connect(url).await?;
    let (old, new) = (settings.old, settings.new);
    conn.execute(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (id, email, name, created_at, updated_at, version)
         SELECT gen_random_uuid(), 'perf' || g || '@example.com', 'Perf Person ' || g,
                t, t, 1
         FROM generate_series(1, {old}) AS g,
              LATERAL (SELECT now() - interval '400 days' + g * interval '1 second' AS t) AS at;
         INSERT INTO users (id, email, name, created_at, updated_at, version)
         SELECT gen_random_uuid(), 'new' || g || '@example.com',
                (ARRAY['Maria', 'Mark', 'Martin', 'Marta', 'John', 'Jonas', 'Jose', 'Joanna',
                       'Ali', 'Alice', 'Alan', 'Anna', 'Peter', 'Paula'])[1 + g % 14]
                    || ' ' || left(md5(g::text), 8),
                t, t, 1
         FROM generate_series(1, {new}) AS g,
              LATERAL (SELECT now() - interval '100 days' + g * interval '10 ms' AS t) AS at;
         -- The prefix index the name-order migration replaced, so a build from before it
         -- (a `--build`) searches as it did on its own schema.
         CREATE INDEX users_name_lower_prefix_idx ON users (lower(name) text_pattern_ops);"
    )))
    .await?;
    conn.execute("VACUUM ANALYZE users").await?;
    Ok(())
}

async fn write_ids(url: &str, path: &Path) -> Result<()> {
    let mut conn = PgConnection::connect(url).await?;
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id::text FROM users ORDER BY random() LIMIT 20000")
            .fetch_all(&mut conn)
            .await?;
    std::fs::write(path, ids.join("\n") + "\n")?;
    Ok(())
}

async fn measure_build(
    settings: &Settings,
    url: &str,
    name: &str,
    binary: &Path,
    script: &Path,
) -> Result<BuildResult> {
    let service = Service::start(binary, url, &[]).await?;
    let base = format!("http://{}", service::PUBLIC);
    let addr = service::PUBLIC.parse()?;
    // Warm: plans, connections, pages.
    load::wrk(
        script,
        &base,
        settings.connections,
        2,
        Duration::from_secs(2),
    )
    .await?;
    let mut prefixes = Vec::new();
    for prefix in TIMED_PREFIXES {
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            service::get(addr, &format!("/api/v1/users?name_prefix={prefix}")).await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        prefixes.push((prefix.replace("%20", " "), median(&mut times)));
    }
    let duration = Duration::from_secs(settings.seconds);
    let mut rounds = Vec::new();
    for round in 0..settings.rounds {
        let alone_first = round % 2 == 0;
        let mut alone = None;
        let mut beside = None;
        for with_neighbour in [!alone_first, alone_first] {
            if with_neighbour {
                let stop = Arc::new(AtomicBool::new(false));
                let neighbour = tokio::spawn(neighbour(addr, Arc::clone(&stop)));
                let measured = load::wrk(script, &base, settings.connections, 2, duration).await;
                stop.store(true, Ordering::Release);
                beside = Some((measured?, neighbour.await??));
            } else {
                alone = Some(load::wrk(script, &base, settings.connections, 2, duration).await?);
            }
        }
        let (beside, searches) = beside.expect("measured");
        rounds.push(Round {
            alone: alone.expect("measured"),
            beside,
            searches,
        });
    }
    service.stop().await?;
    let locked = behind_a_lock(url, binary).await?;
    Ok(BuildResult {
        name: name.to_owned(),
        rounds,
        prefixes,
        locked,
    })
}

/// Searches in a loop, one at a time and at most one per [`SEARCH_EVERY`], until `stop`; the
/// latencies in ms.
async fn neighbour(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> Result<Vec<f64>> {
    let mut latencies = Vec::new();
    for prefix in NEIGHBOUR_SEARCHES.iter().cycle() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let started = Instant::now();
        service::get(addr, &format!("/api/v1/users?name_prefix={prefix}")).await?;
        let took = started.elapsed();
        latencies.push(took.as_secs_f64() * 1000.0);
        tokio::time::sleep(SEARCH_EVERY.saturating_sub(took)).await;
    }
    Ok(latencies)
}

/// The bounded-wait case: a lock on `users` held for [`LOCK_HELD`], and
/// [`LOCKED_REQUESTS`] lists sent at once, with a 1 s acquire and a 2 s statement timeout.
async fn behind_a_lock(url: &str, binary: &Path) -> Result<Vec<(u16, Duration)>> {
    let env = [
        ("DB_ACQUIRE_TIMEOUT_SECS", ACQUIRE_TIMEOUT_SECS),
        ("DB_STATEMENT_TIMEOUT_MS", STATEMENT_TIMEOUT_MS),
    ]
    .map(|(key, value)| (key.to_owned(), value.to_owned()));
    let service = Service::start(binary, url, &env).await?;
    let addr: std::net::SocketAddr = service::PUBLIC.parse()?;
    let mut locker = PgConnection::connect(url).await?;
    locker.execute("BEGIN").await?;
    locker
        .execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await?;
    let locked_at = Instant::now();
    let requests: Vec<_> = (0..LOCKED_REQUESTS)
        .map(|_| {
            tokio::spawn(async move {
                let started = Instant::now();
                let status = service::get(addr, "/api/v1/users?limit=10").await?;
                anyhow::Ok((status, started.elapsed()))
            })
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await??);
    }
    tokio::time::sleep(LOCK_HELD.saturating_sub(locked_at.elapsed())).await;
    locker.execute("ROLLBACK").await?;
    service.stop().await?;
    Ok(answers)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(index).copied().unwrap_or(0.0)
}

fn range(values: impl Iterator<Item = f64>) -> String {
    let values: Vec<f64> = values.collect();
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{low:.2}-{high:.2}")
}

fn report(settings: &Settings, results: &[BuildResult]) -> String {
    let mut out = format!(
        "# The slow neighbour, searches and bounded waits\n\n\
         Written by `bench neighbour` on {} ({} cores): {} users named \"Perf Person N\", then \
         {} newer users with other names; GET by id of random users at {} connections for {} s, \
         alone and beside one client searching `name_prefix=Perf` and `Perf Person 99999` in \
         turn (one at a time, at most one per {} ms), {} rounds alternating. Ranges are \
         across rounds.\n\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        settings.old,
        settings.new,
        settings.connections,
        settings.seconds,
        SEARCH_EVERY.as_millis(),
        settings.rounds,
    );
    out.push_str(
        "| build | GET alone (req/s) | GET beside (req/s) | beside / alone | p99 alone (ms) | p99 beside (ms) | neighbour's searches p50 / max (ms) |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for result in results {
        let mut searches: Vec<f64> = result
            .rounds
            .iter()
            .flat_map(|round| round.searches.iter().copied())
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.1} / {:.1} |\n",
            result.name,
            range(
                result
                    .rounds
                    .iter()
                    .map(|r| r.alone.requests_per_sec / 1000.0)
            ) + "k",
            range(
                result
                    .rounds
                    .iter()
                    .map(|r| r.beside.requests_per_sec / 1000.0)
            ) + "k",
            range(
                result
                    .rounds
                    .iter()
                    .map(|r| r.beside.requests_per_sec / r.alone.requests_per_sec)
            ),
            range(result.rounds.iter().map(|r| r.alone.p99_ms)),
            range(result.rounds.iter().map(|r| r.beside.p99_ms)),
            percentile(&mut searches, 0.5),
            percentile(&mut searches, 1.0),
        ));
    }
    out.push_str("\n## Name searches alone (median of 5, through HTTP, ms)\n\n| build |");
    for prefix in TIMED_PREFIXES {
        out.push_str(&format!(" `{}` |", prefix.replace("%20", " ")));
    }
    out.push_str("\n| --- |");
    out.push_str(&" ---: |".repeat(TIMED_PREFIXES.len()));
    out.push('\n');
    for result in results {
        out.push_str(&format!("| {} |", result.name));
        for (_, ms) in &result.prefixes {
            out.push_str(&format!(" {ms:.1} |"));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "\n## Behind a table lock\n\n`DB_ACQUIRE_TIMEOUT_SECS={ACQUIRE_TIMEOUT_SECS}`, \
         `DB_STATEMENT_TIMEOUT_MS={STATEMENT_TIMEOUT_MS}`, `users` locked for {} s, {} lists \
         sent at once.\n\n| build | answers | longest wait (s) |\n| --- | --- | ---: |\n",
        LOCK_HELD.as_secs(),
        LOCKED_REQUESTS
    ));
    for result in results {
        let mut statuses: Vec<u16> = result.locked.iter().map(|(status, _)| *status).collect();
        statuses.sort();
        statuses.dedup();
        let counts: Vec<String> = statuses
            .iter()
            .map(|status| {
                let n = result.locked.iter().filter(|(s, _)| s == status).count();
                format!("{n} x {status}")
            })
            .collect();
        let longest = result
            .locked
            .iter()
            .map(|(_, waited)| waited.as_secs_f64())
            .fold(0.0, f64::max);
        out.push_str(&format!(
            "| {} | {} | {longest:.2} |\n",
            result.name,
            counts.join(", ")
        ));
    }
    out
}
