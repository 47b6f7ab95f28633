//! The named configurations a run measures: which database, environment and binary each is.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::postgres::Settings;
use crate::{RunArgs, cache};

/// A named configuration: which database, which environment, which binary.
pub struct Config {
    pub name: String,
    pub indexed: bool,
    /// What PostgreSQL runs with while this configuration is measured.
    pub postgres: Settings,
    pub env: Vec<(String, String)>,
    /// Another build of the service (`--build`); `None`: `--binary`.
    pub binary: Option<PathBuf>,
    /// The service connects through the bench's PgBouncer (transaction mode).
    pub pgbouncer: bool,
    /// The service reads from the bench's streaming replica (`DATABASE_READ_URL`).
    pub replica: bool,
    /// The service's connections to PostgreSQL use TLS (`sslmode=require`).
    pub tls: bool,
}

pub(crate) fn config(name: &str, run: &RunArgs) -> Result<Config> {
    let env = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    if let Some((_, binary)) = run.builds.iter().find(|(build, _)| build == name) {
        return Ok(Config {
            name: name.into(),
            indexed: true,
            postgres: Settings::Server,
            env: Vec::new(),
            binary: Some(binary.clone()),
            pgbouncer: false,
            replica: false,
            tls: false,
        });
    }
    Ok(match name {
        // The service as it was: default pool of 10, no indexes, a ping before every checkout.
        "before" => Config {
            name: name.into(),
            indexed: false,
            postgres: Settings::Server,
            binary: None,
            pgbouncer: false,
            replica: false,
            tls: false,
            env: env(&[
                ("DB_MAX_CONNECTIONS", "10"),
                ("DB_MIN_CONNECTIONS", "0"),
                ("DB_TEST_BEFORE_ACQUIRE", "always"),
            ]),
        },
        // The original tuning plan exactly (docs/architecture.md): 50/5, 3 s, 10 min, 30 min,
        // connection test before acquisition.
        "plan1" => Config {
            name: name.into(),
            indexed: true,
            postgres: Settings::Server,
            binary: None,
            pgbouncer: false,
            replica: false,
            tls: false,
            env: env(&[
                ("DB_MAX_CONNECTIONS", "50"),
                ("DB_MIN_CONNECTIONS", "5"),
                ("DB_ACQUIRE_TIMEOUT_SECS", "3"),
                ("DB_IDLE_TIMEOUT_SECS", "600"),
                ("DB_MAX_LIFETIME_SECS", "1800"),
                ("DB_TEST_BEFORE_ACQUIRE", "always"),
            ]),
        },
        // The shipped defaults (docs/configuration.md).
        "tuned" => Config {
            name: name.into(),
            indexed: true,
            postgres: Settings::Server,
            env: Vec::new(),
            binary: None,
            pgbouncer: false,
            replica: false,
            tls: false,
        },
        // The shipped defaults with unnamed statements only, the statement timeout left to the
        // server: what those cost, directly.
        "unprepared" => Config {
            name: name.into(),
            indexed: true,
            postgres: Settings::Server,
            env: env(&[
                ("DB_PREPARED_STATEMENTS", "false"),
                ("DB_STATEMENT_TIMEOUT_MS", "0"),
            ]),
            binary: None,
            pgbouncer: false,
            replica: false,
            tls: false,
        },
        // `unprepared` through PgBouncer in transaction mode (the bench's own, port 16432).
        "pgbouncer" => Config {
            name: name.into(),
            pgbouncer: true,
            ..config("unprepared", run)?
        },
        // The shipped defaults over TLS to PostgreSQL (`sslmode=require`): what encryption
        // costs, against `tuned` in the same run.
        "tls" => Config {
            name: name.into(),
            tls: true,
            ..config("tuned", run)?
        },
        // The shipped defaults reading from the bench's streaming replica of the local
        // PostgreSQL (on the same machine: what routing costs, not what a second host adds).
        "replica" => Config {
            name: name.into(),
            replica: true,
            ..config("tuned", run)?
        },
        // The shipped defaults with the cache on (the bench's own Redis, warmed with every
        // user by id and by email before the scenarios; the skewed one starts cold).
        "cached" => Config {
            name: name.into(),
            indexed: true,
            postgres: Settings::Server,
            env: env(&[("REDIS_URL", &cache::url())]),
            binary: None,
            pgbouncer: false,
            replica: false,
            tls: false,
        },
        // The shipped defaults with PostgreSQL tuned as docker-compose.yml tunes it (ALTER
        // SYSTEM and a restart of the local cluster; undone at the end of the run).
        "tuned-pg" => Config {
            name: name.into(),
            indexed: true,
            postgres: Settings::Compose,
            env: Vec::new(),
            binary: None,
            pgbouncer: false,
            replica: false,
            tls: false,
        },
        // The cache on, with N connections per lane (`cached-pool-N`).
        other if other.starts_with("cached-pool-") => {
            let mut pool = config(&other["cached-".len()..], run)?;
            pool.name = name.into();
            pool.env.push(("REDIS_URL".into(), cache::url()));
            pool
        }
        other => {
            let numbered = |prefix: &str| {
                other
                    .strip_prefix(prefix)
                    .and_then(|n| n.parse::<u32>().ok())
            };
            let env = if let Some(size) = numbered("pool-") {
                // N connections for point reads and N for writes (and one for scans), all open:
                // on PostgreSQL the warm connections carry the load (pipelined), so the minimum
                // is what is measured.
                vec![
                    ("DB_MAX_CONNECTIONS".into(), (2 * size + 1).to_string()),
                    ("DB_MIN_CONNECTIONS".into(), (2 * size + 1).to_string()),
                    ("DB_READ_CONNECTIONS".into(), size.to_string()),
                ]
            } else if let Some(warm) = numbered("warm-") {
                // N warm connections (`DB_MIN_CONNECTIONS`): one for point reads, one for
                // scans, the rest for writes.
                vec![("DB_MIN_CONNECTIONS".into(), warm.to_string())]
            } else {
                bail!(
                    "unknown configuration {other}: before, plan1, tuned, tuned-pg, tls, cached, pool-N, cached-pool-N, warm-N, pgbouncer, unprepared, replica or a --build name"
                )
            };
            Config {
                name: name.into(),
                env,
                ..config("tuned", run)?
            }
        }
    })
}
