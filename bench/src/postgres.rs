//! The PostgreSQL server settings a configuration runs on: the server as it is, or tuned as
//! docker-compose.yml tunes it. Switching is `ALTER SYSTEM` and a restart of the local cluster;
//! the server's own `postgresql.auto.conf` values are put back at the end.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sea_orm::sqlx::{self, Connection, PgConnection};

/// Which settings PostgreSQL runs with during a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Settings {
    /// As the server was found (Debian's defaults on a fresh machine).
    Server,
    /// The `-c name=value` arguments of docker-compose.yml's `postgres` service.
    Compose,
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Settings::Server => "server",
            Settings::Compose => "compose",
        })
    }
}

/// The `-c name=value` pairs of the compose file's `postgres` command: the one place the tuned
/// settings are written.
pub fn compose_settings() -> Result<Vec<(String, String)>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let compose: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(path).context("docker-compose.yml")?)?;
    let command = compose["services"]["postgres"]["command"]
        .as_sequence()
        .context("docker-compose.yml: services.postgres.command is a list")?;
    let words: Vec<&str> = command.iter().filter_map(|w| w.as_str()).collect();
    let settings: Vec<(String, String)> = words
        .windows(2)
        .filter(|pair| pair[0] == "-c")
        .filter_map(|pair| pair[1].split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    if settings.is_empty() {
        bail!("docker-compose.yml: no -c settings in services.postgres.command");
    }
    Ok(settings)
}

/// Switches the local cluster between [`Settings`], restarting it only when they change.
pub struct Switch {
    admin_url: String,
    compose: Vec<(String, String)>,
    /// The server's own `postgresql.auto.conf` value of each compose setting, if any.
    found: Vec<(String, Option<String>)>,
    current: Settings,
}

impl Switch {
    pub async fn new(admin_url: &str) -> Result<Self> {
        let compose = compose_settings()?;
        let mut conn = PgConnection::connect(admin_url).await?;
        let mut found = Vec::new();
        for (name, _) in &compose {
            let value: Option<String> = sqlx::query_scalar(
                "SELECT setting FROM pg_file_settings \
                 WHERE name = $1 AND sourcefile LIKE '%postgresql.auto.conf' AND applied",
            )
            .bind(name)
            .fetch_optional(&mut conn)
            .await?;
            found.push((name.clone(), value));
        }
        conn.close().await?;
        Ok(Switch {
            admin_url: admin_url.to_owned(),
            compose,
            found,
            current: Settings::Server,
        })
    }

    /// Applies `settings` and restarts the cluster, unless they are in place already.
    pub async fn set(&mut self, settings: Settings) -> Result<()> {
        if settings == self.current {
            return Ok(());
        }
        eprintln!("PostgreSQL settings: {settings} (ALTER SYSTEM, restart)");
        let applied = self.apply(settings).await;
        if applied.is_err() && settings != Settings::Server {
            // Half applied is the worst state to leave a server in.
            self.apply(Settings::Server).await?;
            self.current = Settings::Server;
        }
        applied
    }

    /// An extension's settings (`pg_stat_statements.track`) exist only once its library is
    /// loaded: they are set after the restart that loads it, and reset before the one that
    /// unloads it.
    async fn apply(&mut self, settings: Settings) -> Result<()> {
        let is_extension = |name: &str| name.contains('.');
        let statements = |extension: bool| -> Vec<String> {
            match settings {
                Settings::Compose => self
                    .compose
                    .iter()
                    .filter(|(name, _)| is_extension(name) == extension)
                    .map(|(name, value)| format!("ALTER SYSTEM SET {name} = '{value}'"))
                    .collect(),
                Settings::Server => self
                    .found
                    .iter()
                    .filter(|(name, _)| is_extension(name) == extension)
                    .map(|(name, value)| match value {
                        Some(value) => format!("ALTER SYSTEM SET {name} = '{value}'"),
                        None => format!("ALTER SYSTEM RESET {name}"),
                    })
                    .collect(),
            }
        };
        let (before, after) = match settings {
            Settings::Compose => (statements(false), statements(true)),
            Settings::Server => {
                let mut before = statements(true);
                before.extend(statements(false));
                (before, Vec::new())
            }
        };
        self.execute(&before).await?;
        self.restart().await?;
        self.execute(&after).await?;
        if !after.is_empty() {
            self.execute(&["SELECT pg_reload_conf()".to_owned()])
                .await?;
        }
        self.current = settings;
        Ok(())
    }

    async fn execute(&self, statements: &[String]) -> Result<()> {
        let mut conn = PgConnection::connect(&self.admin_url).await?;
        for statement in statements {
            sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                .execute(&mut conn)
                .await
                .with_context(|| statement.clone())?;
        }
        conn.close().await?;
        Ok(())
    }

    async fn restart(&self) -> Result<()> {
        let mut conn = PgConnection::connect(&self.admin_url).await?;
        // Debian names its clusters "<major>/<name>": what pg_ctlcluster takes.
        let cluster: String = sqlx::query_scalar("SELECT current_setting('cluster_name')")
            .fetch_one(&mut conn)
            .await?;
        conn.close().await?;
        let (version, name) = cluster.split_once('/').context(
            "a restart needs Debian's pg_ctlcluster and cluster_name = '<major>/<name>'",
        )?;
        let status = tokio::process::Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", version, name, "restart"])
            .status()
            .await
            .context("pg_ctlcluster")?;
        if !status.success() {
            bail!("pg_ctlcluster {version} {name} restart: {status}");
        }
        for _ in 0..100 {
            if let Ok(conn) = PgConnection::connect(&self.admin_url).await {
                conn.close().await?;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("PostgreSQL did not come back after the restart")
    }

    pub fn current(&self) -> Settings {
        self.current
    }
}
