//! `bench run`: the rounds (pgbench beside each configuration, scenario by scenario), the
//! sweep, the overload check and the live upgrade, gathered into a [`Report`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use api::users::cursor::Cursor;
use sea_orm::sqlx::{self, Connection, Executor, PgConnection};

use crate::configs::{Config, config};
use crate::load::Measured;
use crate::postgres::Settings;
use crate::scenarios::Scenario;
use crate::service::Service;
use crate::{
    Common, RunArgs, cache, data, explain, instructions, load, middleware, pgbouncer, postgres,
    replica, scenarios, seed, service,
};

/// Everything one run measured.
pub struct Report {
    pub users: u64,
    pub connections: u32,
    pub seconds: u64,
    pub rounds: usize,
    /// Each configuration's name and the PostgreSQL settings it ran on.
    pub configs: Vec<(String, Settings)>,
    pub scenarios: Vec<String>,
    /// (config, scenario) -> one sample per round.
    pub service: BTreeMap<(String, String), Vec<Sample>>,
    /// (PostgreSQL settings, scenario) -> one pgbench measurement per round.
    pub pgbench: BTreeMap<(Settings, String), Vec<Measured>>,
    pub sweep: BTreeMap<(u32, String), Vec<Sample>>,
    /// Get by id with the shipped settings at `high_connections`, one sample per round.
    pub high: Vec<Sample>,
    pub high_connections: u32,
    /// `optimize_indexes` applied under a write load.
    pub upgrade: Option<Upgrade>,
    /// Each middleware's cost, in-process, and the calls per round it was measured over.
    pub middleware: Vec<middleware::Cost>,
    pub middleware_calls: u32,
    /// (build, instructions per request by scenario), with `--instructions`.
    pub instructions: Vec<(String, Vec<instructions::Counted>)>,
    pub explain: Vec<explain::Timing>,
    /// Redis memory per user, by id and by email, after the `cached` warm-up (bytes).
    pub cache_bytes_per_user: Vec<f64>,
}

#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub load: Measured,
    pub rss_mib: f64,
    /// Cores the service used on average.
    pub cpu: f64,
    /// With the cache on: reads it answered, of all reads asked of it.
    pub hit_ratio: Option<f64>,
}

pub(crate) struct Bench<'a> {
    common: &'a Common,
    run: &'a RunArgs,
    dir: tempfile::TempDir,
    tag: String,
    /// The bench's Redis, when a configuration has the cache on.
    redis: Option<cache::Server>,
    /// Redis memory per user after each warm-up.
    cache_bytes_per_user: std::sync::Mutex<Vec<f64>>,
}

pub(crate) async fn measure(common: &Common, run: &RunArgs) -> Result<Report> {
    if !run.binary.exists() {
        let status = std::process::Command::new("cargo")
            .args(["build", "--release", "-p", "api"])
            .status()?;
        if !status.success() {
            bail!("cargo build --release -p api failed");
        }
    }
    let redis = match run.configs.iter().any(|name| name.starts_with("cached")) {
        true => Some(cache::Server::start().await?),
        false => None,
    };
    let _bouncer = match run.configs.iter().any(|name| name == "pgbouncer") {
        true => Some(pgbouncer::start(&testkit::user_of(&common.database_url)).await?),
        false => None,
    };
    let _replica = match run.configs.iter().any(|name| name == "replica") {
        true => Some(replica::Server::start()?),
        false => None,
    };
    let bench = Bench::new(common, run, redis)?;
    let indexed_url = seed::with_database(&common.database_url, &common.database);
    let noidx_url =
        seed::with_database(&common.database_url, &format!("{}_noidx", common.database));
    let scenarios: Vec<Scenario> = scenarios::all(common.users)
        .into_iter()
        .filter(|s| run.scenarios.is_empty() || run.scenarios.iter().any(|name| name == s.name))
        .collect();
    let configs: Vec<Config> = run
        .configs
        .iter()
        .map(|name| config(name, run))
        .collect::<Result<_>>()?;
    let mut report = Report {
        users: common.users,
        connections: run.connections,
        seconds: run.seconds,
        rounds: run.rounds,
        configs: configs
            .iter()
            .map(|c| (c.name.clone(), c.postgres))
            .collect(),
        scenarios: scenarios.iter().map(|s| s.name.to_owned()).collect(),
        service: BTreeMap::new(),
        pgbench: BTreeMap::new(),
        sweep: BTreeMap::new(),
        high: Vec::new(),
        high_connections: run.high_connections,
        upgrade: None,
        middleware: Vec::new(),
        middleware_calls: 0,
        instructions: Vec::new(),
        explain: explain::compare(&indexed_url, &noidx_url, common.users).await?,
        cache_bytes_per_user: Vec::new(),
    };
    let urls = Urls {
        indexed: indexed_url,
        noidx: noidx_url,
    };
    // Only a run that measures another PostgreSQL tuning touches the server's settings.
    let mut switch = match configs.iter().any(|c| c.postgres != Settings::Server) {
        true => Some(postgres::Switch::new(&common.database_url).await?),
        false => None,
    };
    let mut rounds = Ok(());
    for round in 0..run.rounds {
        rounds = bench
            .round(round, &configs, &scenarios, &urls, &mut switch, &mut report)
            .await;
        if rounds.is_err() {
            break;
        }
    }
    // The server gets its own settings back whatever happened.
    if let Some(switch) = &mut switch {
        switch.set(Settings::Server).await?;
    }
    rounds?;
    report.cache_bytes_per_user = bench.cache_bytes_per_user.lock().unwrap().clone();
    eprintln!("each middleware's cost, in-process");
    // Fewer calls on a seconds-long run (the smoke): it proves the measurement, no more.
    report.middleware_calls = if run.seconds >= 5 {
        middleware::CALLS
    } else {
        middleware::CALLS / 40
    };
    report.middleware = {
        let (url, calls) = (urls.indexed.clone(), report.middleware_calls);
        // A runtime of its own on a thread of its own: the measurement times that thread.
        std::thread::spawn(move || middleware::measure(&url, data::id(1), calls))
            .join()
            .map_err(|_| anyhow::anyhow!("the middleware measurement panicked"))??
    };
    if run.instructions {
        let kept = ["get by id", "lookup by email", "list first page", "create"];
        let mut scripts = Vec::new();
        for scenario in scenarios.iter().filter(|s| kept.contains(&s.name)) {
            let warm = bench.script(scenario.lua, &urls.indexed).await?;
            let warm = std::fs::copy(&warm, warm.with_extension("warm.lua"))
                .map(|_| warm.with_extension("warm.lua"))?;
            scripts.push((
                scenario.service_only(),
                warm,
                bench.script(scenario.lua, &urls.indexed).await?,
            ));
        }
        let mut builds = vec![("tuned".to_owned(), run.binary.clone())];
        builds.extend(run.builds.iter().cloned());
        for (name, binary) in builds {
            eprintln!("instructions per request: {name}");
            let binary = std::fs::canonicalize(&binary).context("the api binary")?;
            let counted = instructions::count(&binary, &urls.indexed, &scripts, 10).await?;
            restore(&urls.indexed).await?;
            report.instructions.push((name, counted));
        }
    }
    if configs.iter().any(|c| c.name == "before") {
        eprintln!("the upgrade: the index migrations under a write load");
        report.upgrade = Some(bench.upgrade(&urls.noidx).await?);
    }
    Ok(report)
}

/// The upgrade from `before` to the indexed schema on a live, loaded table.
pub struct Upgrade {
    /// Creates on the `before` database with nothing else going on.
    pub quiet: Measured,
    /// The same while `optimize_indexes` applies.
    pub during: Measured,
    pub migration: Duration,
}

/// The two seeded databases.
struct Urls {
    indexed: String,
    noidx: String,
}

impl<'a> Bench<'a> {
    pub(crate) fn new(
        common: &'a Common,
        run: &'a RunArgs,
        redis: Option<cache::Server>,
    ) -> Result<Self> {
        Ok(Bench {
            common,
            run,
            dir: tempfile::tempdir()?,
            tag: chrono::Utc::now().timestamp().to_string(),
            redis,
            cache_bytes_per_user: Default::default(),
        })
    }
}

impl Bench<'_> {
    /// Creates through the service on the `before` database, once alone and once while the
    /// index migrations apply (from its second second on); then they are rolled back, so the
    /// database is `before` again.
    async fn upgrade(&self, url: &str) -> Result<Upgrade> {
        use migration::{Migrator, MigratorTrait};
        let duration = Duration::from_secs(self.run.seconds.max(5));
        let binary = std::fs::canonicalize(&self.run.binary).context("the api binary")?;
        let service = Service::start(&binary, url, &[]).await?;
        let target = format!("http://{}", service::PUBLIC);
        let script = self.script("create", url).await?;
        let connections = self.run.connections;
        let quiet = load::wrk(&script, &target, connections, 2, duration).await?;
        // A script of its own: new emails, not the first run's again.
        let script = self.script("create", url).await?;
        let load = tokio::spawn({
            let target = target.clone();
            async move { load::wrk(&script, &target, connections, 2, duration).await }
        });
        // Lets the load reach its pace first: a measurement offset, not a synchronisation.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let db = sea_orm::Database::connect(url).await?;
        let started = std::time::Instant::now();
        Migrator::up(&db, None).await?;
        let migration = started.elapsed();
        let during = load.await??;
        service.stop().await?;
        // Every migration after the table's (`MigratorWithoutIndexes`).
        let index_migrations = Migrator::migrations().len() - 1;
        Migrator::down(&db, Some(index_migrations as u32)).await?;
        db.close().await?;
        restore(url).await?;
        eprintln!(
            "  creates alone p99 {:.2} ms max {:.2} ms; during the upgrade ({:.1} s) p99 {:.2} ms max {:.2} ms, errors {}",
            quiet.p99_ms,
            quiet.max_ms,
            migration.as_secs_f64(),
            during.p99_ms,
            during.max_ms,
            during.errors
        );
        Ok(Upgrade {
            quiet,
            during,
            migration,
        })
    }

    /// One round: for each PostgreSQL tuning in use, each scenario on pgbench and then on each
    /// configuration; then, on the server's own settings, the overload check and the pool sweep.
    async fn round(
        &self,
        round: usize,
        configs: &[Config],
        scenarios: &[Scenario],
        urls: &Urls,
        switch: &mut Option<postgres::Switch>,
        report: &mut Report,
    ) -> Result<()> {
        let duration = Duration::from_secs(self.run.seconds);
        let progress = |what: &str| eprintln!("round {} / {}: {what}", round + 1, self.run.rounds);
        let mut tunings: Vec<Settings> = configs.iter().map(|c| c.postgres).collect();
        tunings.sort();
        tunings.dedup();
        // The tuning already in place goes first: one restart per round fewer.
        if let Some(current) = switch.as_ref().map(postgres::Switch::current) {
            tunings.sort_by_key(|t| *t != current);
        }
        // Scenario by scenario, pgbench right beside the configurations it is the ceiling of:
        // this machine's speed drifts by a quarter within a run, and a ratio of two numbers
        // measured minutes apart carried the drift (bench/history/final-100k-drift.md). Odd
        // rounds take the configurations in reverse, so none is always first after pgbench.
        let mut ordered: Vec<&Config> = configs.iter().collect();
        if round % 2 == 1 {
            ordered.reverse();
        }
        for tuning in tunings {
            if let Some(switch) = switch.as_mut() {
                switch.set(tuning).await?;
            }
            for scenario in scenarios {
                progress(&format!("{} ({tuning} settings)", scenario.name));
                let measured = self.pgbench(scenario, &urls.indexed, duration).await?;
                report
                    .pgbench
                    .entry((tuning, scenario.name.to_owned()))
                    .or_default()
                    .push(measured);
                // A keyed scenario needs the keys' table, which `before`'s database lacks.
                let runs = ordered
                    .iter()
                    .filter(|c| c.postgres == tuning && (c.indexed || !scenario.keyed()));
                for config in runs {
                    let through_bouncer = pgbouncer::url_of(&urls.indexed);
                    let url = if config.pgbouncer {
                        &through_bouncer
                    } else if config.indexed {
                        &urls.indexed
                    } else {
                        &urls.noidx
                    };
                    let encrypted = url.replace("sslmode=disable", "sslmode=require");
                    let url = if config.tls { &encrypted } else { url };
                    let mut env = config.env.clone();
                    if config.replica {
                        env.push(("DATABASE_READ_URL".into(), replica::url_of(url)));
                    }
                    for (scenario, sample) in self
                        .service_run_at(
                            config.binary.as_ref().unwrap_or(&self.run.binary),
                            url,
                            &env,
                            std::slice::from_ref(scenario),
                            duration,
                            self.run.connections,
                        )
                        .await?
                    {
                        report
                            .service
                            .entry((config.name.clone(), scenario))
                            .or_default()
                            .push(sample);
                    }
                }
            }
        }
        if let Some(switch) = switch.as_mut() {
            switch.set(Settings::Server).await?;
        }
        let get_by_id: Vec<Scenario> = scenarios
            .iter()
            .filter(|s| s.name == "get by id")
            .map(Scenario::service_only)
            .collect();
        if self.run.high_connections > 0 && configs.iter().any(|c| c.name == "tuned") {
            progress(&format!("{} connections", self.run.high_connections));
            for (_, sample) in self
                .service_run_at(
                    &self.run.binary,
                    &urls.indexed,
                    &[],
                    &get_by_id,
                    duration,
                    self.run.high_connections,
                )
                .await?
            {
                report.high.push(sample);
            }
        }
        // The sweep drives the service only: its pgbench ceiling is the scenarios' own.
        let sweep_scenarios: Vec<Scenario> = scenarios
            .iter()
            .filter(|s| matches!(s.name, "get by id" | "create" | "mix 80/20"))
            .map(Scenario::service_only)
            .collect();
        for &size in &self.run.sweep {
            progress(&format!("pool {size}"));
            let env = config(&format!("pool-{size}"), self.run)?.env;
            for (scenario, sample) in self
                .service_run(&urls.indexed, &env, &sweep_scenarios, duration)
                .await?
            {
                report
                    .sweep
                    .entry((size, scenario))
                    .or_default()
                    .push(sample);
            }
        }
        Ok(())
    }
}

impl Bench<'_> {
    /// Starts the service with `env`, warms it, then measures each scenario in turn.
    async fn service_run(
        &self,
        url: &str,
        env: &[(String, String)],
        scenarios: &[Scenario],
        duration: Duration,
    ) -> Result<Vec<(String, Sample)>> {
        self.service_run_at(
            &self.run.binary,
            url,
            env,
            scenarios,
            duration,
            self.run.connections,
        )
        .await
    }

    /// As [`Self::service_run`], with `binary` and `connections` client connections.
    async fn service_run_at(
        &self,
        binary: &Path,
        url: &str,
        env: &[(String, String)],
        scenarios: &[Scenario],
        duration: Duration,
        connections: u32,
    ) -> Result<Vec<(String, Sample)>> {
        let binary = std::fs::canonicalize(binary).context("the api binary")?;
        // The bench's own statements (versions, clean-up) go to PostgreSQL directly: through
        // PgBouncer in transaction mode, sqlx's named statements would collide.
        let direct = pgbouncer::direct_of(url);
        let redis = self
            .redis
            .as_ref()
            .filter(|_| env.iter().any(|(name, _)| name == "REDIS_URL"));
        let empty_cache = match redis {
            Some(redis) => {
                redis.flush()?;
                Some(redis.used_memory()?)
            }
            None => None,
        };
        let service = Service::start(&binary, url, env).await?;
        let target = format!("http://{}", service::PUBLIC);
        let warm = self.script("get_by_id", &direct).await?;
        load::wrk(&warm, &target, connections, 2, Duration::from_secs(2)).await?;
        if let (Some(redis), Some(empty)) = (redis, empty_cache) {
            // Every user by id and by email: its threads stop when done, but wrk itself runs
            // its whole duration, so that is sized for 10k requests a second (this machine
            // serves well over that). A seconds-long run (the smoke) only starts the walk.
            let users = self.common.users;
            let warm = self.script("warm", &direct).await?;
            let seconds = if self.run.seconds >= 5 {
                (2 * users / 10_000).max(2)
            } else {
                2
            };
            load::wrk(&warm, &target, connections, 2, Duration::from_secs(seconds)).await?;
            let per_user = redis.used_memory()?.saturating_sub(empty) as f64 / users as f64;
            eprintln!("  cache warm: {per_user:.0} bytes per user");
            self.cache_bytes_per_user.lock().unwrap().push(per_user);
        }
        let mut samples = Vec::new();
        for scenario in scenarios {
            let script = self.script(scenario.lua, &direct).await?;
            if let Some(redis) = redis.filter(|_| scenario.lua == "zipf_get_by_id") {
                redis.flush()?;
            }
            let replica = env.iter().any(|(name, _)| name == "DATABASE_READ_URL");
            let metrics_before = match redis.is_some() || replica {
                true => service.metrics().await?,
                false => String::new(),
            };
            let cpu_before = service.cpu_seconds();
            let measured = load::wrk(&script, &target, connections, 2, duration).await?;
            let cpu = (service.cpu_seconds() - cpu_before) / duration.as_secs_f64();
            let rss_mib = service.rss() as f64 / (1024.0 * 1024.0);
            let metrics_after = match redis.is_some() || replica {
                true => service.metrics().await?,
                false => String::new(),
            };
            let (hit_ratio, cache_failures) = match redis {
                Some(_) => (
                    cache::hit_ratio(&metrics_before, &metrics_after),
                    Some(cache::failures(&metrics_before, &metrics_after)),
                ),
                None => (None, None),
            };
            let reads = match replica {
                true => replica::summary(&metrics_before, &metrics_after),
                false => String::new(),
            };
            eprintln!(
                "  {:<16} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}  rss {:.0} MiB  cpu {:.2}{}{reads}",
                scenario.name,
                measured.requests_per_sec,
                measured.p50_ms,
                measured.p99_ms,
                measured.errors,
                rss_mib,
                cpu,
                hit_ratio
                    .zip(cache_failures)
                    .map(|(ratio, failures)| format!(
                        "  hits {:.1}%  cache errors+bypasses {failures:.0}",
                        100.0 * ratio
                    ))
                    .unwrap_or_default()
            );
            samples.push((
                scenario.name.to_owned(),
                Sample {
                    load: measured,
                    rss_mib,
                    cpu,
                    hit_ratio,
                },
            ));
            if scenario.creates() {
                // The next scenario measures the seeded data, not what this one added.
                restore(&direct).await?;
            }
        }
        service.stop().await?;
        restore(&direct).await?;
        Ok(samples)
    }

    /// The wrk script for one scenario, with the current versions of the users it updates.
    async fn script(&self, scenario: &str, url: &str) -> Result<PathBuf> {
        self.paced_script(scenario, url, 0).await
    }

    pub(crate) async fn paced_script(
        &self,
        scenario: &str,
        url: &str,
        delay_ms: u64,
    ) -> Result<PathBuf> {
        let updates = self.dir.path().join("updates.txt");
        if Scenario::updates(scenario) {
            write_versions(url, scenarios::update_users(self.common.users), &updates).await?;
        }
        let deep = scenarios::deep_user(self.common.users);
        let cursor = Cursor {
            at: data::created_at(deep),
            id: data::id(deep),
            name: String::new(),
        }
        .encode();
        let prefixes: Vec<String> = data::PREFIXES.iter().map(|p| format!("\"{p}\"")).collect();
        let lua = wrk_script(include_str!("../scripts/load.lua"))
            .replace("{{USERS}}", &self.common.users.to_string())
            .replace("{{BASE_MS}}", &data::BASE_MS.to_string())
            .replace("{{STEP_MS}}", &data::STEP_MS.to_string())
            // A fresh tag per script: creates never repeat an email of an earlier run.
            .replace(
                "{{TAG}}",
                &format!("{}{}", self.tag, chrono::Utc::now().timestamp_micros()),
            )
            .replace("{{THREADS}}", "2")
            .replace("{{PREFIXES}}", &prefixes.join(", "))
            .replace("{{FIRST_NAMES}}", &quoted(&data::FIRST_NAMES))
            .replace("{{LAST_NAMES}}", &quoted(&data::LAST_NAMES))
            .replace("{{DEEP_CURSOR}}", &cursor)
            .replace("{{UPDATE_FILE}}", &updates.display().to_string())
            .replace("{{DELAY_MS}}", &delay_ms.to_string())
            .replace("{{SCENARIO}}", scenario);
        let path = self.dir.path().join(format!("{scenario}.lua"));
        std::fs::write(&path, lua)?;
        Ok(path)
    }

    async fn pgbench(
        &self,
        scenario: &Scenario,
        url: &str,
        duration: Duration,
    ) -> Result<Measured> {
        let mut scripts = Vec::new();
        for (i, (sql, weight)) in scenario.pgbench.iter().enumerate() {
            let path = self.dir.path().join(format!("{}-{i}.sql", scenario.lua));
            std::fs::write(&path, sql)?;
            scripts.push((path, *weight));
        }
        load::pgbench(
            &scripts,
            scenario.protocol,
            url,
            self.run.connections,
            2,
            duration,
        )
        .await
    }
}

/// A wrk script with the summary every load ends with (`scripts/summary.lua`), which
/// [`load::wrk`] reads.
pub fn wrk_script(script: &str) -> String {
    format!("{script}\n{}", include_str!("../scripts/summary.lua"))
}

pub(crate) fn quoted(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("\"{w}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Removes the users the create scenarios added, so every measurement sees the seeded data.
/// They are the newest rows: left in place, they would sit in front of every newest-first scan
/// of later measurements (a name search walking `created_at` would first skip them all).
pub(crate) async fn restore(url: &str) -> Result<()> {
    let mut conn = PgConnection::connect(url).await?;
    conn.execute("DELETE FROM users WHERE email LIKE 'bench-%' OR email LIKE 'pgbench-%'")
        .await?;
    replicas_past_the_delete(&mut conn).await?;
    conn.execute("VACUUM ANALYZE users").await?;
    conn.close().await?;
    Ok(())
}

/// Waits until every streaming replica's `hot_standby_feedback` no longer holds back the rows
/// just deleted (VACUUM said "50000 are dead but not yet removable" while a slot's xmin did),
/// so VACUUM removes them, there too. A hot standby cannot mark dead index entries
/// itself: until VACUUM's removal reaches it, every index scan on it walks the deleted rows
/// (the newest-first list page walked ~2,500 buffers instead of 9 after 50k deleted rows:
/// bench/replica/RESULTS.md). Replicas whose feedback this role cannot see are not waited for.
async fn replicas_past_the_delete(conn: &mut PgConnection) -> Result<()> {
    let after: i64 = sqlx::query_scalar("SELECT txid_current() & 4294967295")
        .fetch_one(&mut *conn)
        .await?;
    for _ in 0..200 {
        // Through a slot, the feedback is the slot's xmin; without one, the sender's.
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM ( \
               SELECT xmin FROM pg_replication_slots \
               UNION ALL SELECT backend_xmin FROM pg_stat_replication \
             ) feedback WHERE xmin IS NOT NULL AND xmin::text::bigint <= $1",
        )
        .bind(after)
        .fetch_one(&mut *conn)
        .await?;
        if behind == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("  a replica's feedback still holds the deleted rows after 10 s: vacuuming anyway");
    Ok(())
}

/// Writes "n version" for each user the update scenarios touch, read from the database.
pub(crate) async fn write_versions(url: &str, users: u64, path: &Path) -> Result<()> {
    let mut conn = PgConnection::connect(url).await?;
    let ids: Vec<uuid::Uuid> = (1..=users).map(data::id).collect();
    let rows: Vec<(uuid::Uuid, i64)> =
        sqlx::query_as("SELECT id, version FROM users WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut conn)
            .await?;
    let versions: std::collections::HashMap<uuid::Uuid, i64> = rows.into_iter().collect();
    let mut lines = String::new();
    for (n, id) in (1..=users).zip(&ids) {
        if let Some(version) = versions.get(id) {
            lines.push_str(&format!("{n} {version}\n"));
        }
    }
    std::fs::write(path, lines)?;
    conn.close().await?;
    Ok(())
}
