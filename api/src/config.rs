//! The service configuration: read once from the environment at start-up into typed values.
//!
//! Every variable, its default and meaning are in docs/configuration.md (a test keeps that table,
//! `.env.example` and this parser naming the same variables). A bad value is a [`ConfigError`]
//! naming the variable, the value and what was expected, so start-up fails with one readable
//! line.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
pub use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

pub use observability::telemetry::LogFormat;

pub use migration::DEFAULT_DATABASE_URL;

/// Everything that holds a secret (a URL's password, a token) is a [`SecretString`] or a
/// [`TokenDigest`]: `Debug` of a `Config` shows neither.
#[derive(Clone, Debug)]
pub struct Config {
    pub database_url: SecretString,
    /// Migrations and their lock go here when set (the database itself, where `DATABASE_URL`
    /// leads through a pooler); else to `DATABASE_URL`.
    pub migration_url: Option<SecretString>,
    /// How long an instance waits for another's migrations before it gives up.
    pub migration_lock_timeout: Duration,
    /// `application_name` of every PostgreSQL connection whose URL names none.
    pub application_name: String,
    pub pool: PoolConfig,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub connections: ConnectionLimits,
    /// A request (body read included) taking longer is answered 408 (body incomplete) or 503
    /// (handler), and its work dropped.
    pub request_timeout: Duration,
    pub run_migrations: bool,
    pub log_format: LogFormat,
    pub otel_endpoint: Option<String>,
    pub otel_service_name: String,
    pub shutdown_grace: Duration,
    pub api_tokens: Vec<TokenDigest>,
    pub api_read_tokens: Vec<TokenDigest>,
    /// Peers whose `Forwarded` / `X-Forwarded-For` are believed (the load balancer's
    /// addresses); empty: the client is the peer.
    pub trusted_proxies: Vec<IpNet>,
    pub cors_allowed_origins: Vec<String>,
    pub rate_limit_per_second: Option<NonZeroU32>,
    /// How long the change feed keeps deletions (tombstones); an older token is 410.
    pub changes_retention: Duration,
    /// How long an idempotency key's answer is kept (and a repeat answered from it).
    pub idempotency_ttl: Duration,
    /// `None`: no cache, every read goes to the database.
    pub cache: Option<CacheConfig>,
    /// `None`: no replica, every statement goes to `DATABASE_URL`.
    pub replica: Option<ReplicaConfig>,
}

/// A streaming replica of the primary, for reads.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// `postgres://` or `postgresql://`; its pool has the primary's `DB_*` settings.
    pub url: SecretString,
    /// Reads go to the replica only while it is at most this far behind the primary.
    pub max_lag: Duration,
}

/// The Redis cache in front of reads by id and by email.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// `redis://` or `rediss://`, with the password when Redis asks for one.
    pub url: SecretString,
    /// `rediss://`: the CA certificates (PEM) that sign the server's, in place of the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// The lifetime of an entry (and of a deleted user's tombstone).
    pub ttl: Duration,
    /// A cache call slower than this is abandoned and the request goes to the database.
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub max_connections: u32,
    pub min_connections: u32,
    /// PostgreSQL: how many of the connections carry reads; writes go to the others.
    pub read_connections: u32,
    pub acquire_timeout: Duration,
    /// `None` keeps idle connections open forever.
    pub idle_timeout: Option<Duration>,
    /// `None` never recycles a connection for its age.
    pub max_lifetime: Option<Duration>,
    pub health_check: HealthCheck,
    /// PostgreSQL only; `None` leaves the server's setting alone.
    pub statement_timeout: Option<Duration>,
    /// PostgreSQL: named statements, prepared once per connection. `false`: unnamed statements
    /// only (each parsed with its values), which poolers in transaction mode can carry.
    pub prepared_statements: bool,
    pub metrics_interval: Duration,
    pub slow_query: Duration,
}

impl PoolConfig {
    /// How long a statement sent to PostgreSQL may go unanswered before the connection is
    /// given up (enforced client-side: a server that stopped answering enforces no
    /// `statement_timeout`): a second past the statement timeout, or the acquire timeout
    /// without one.
    pub fn answer_within(&self) -> Duration {
        self.statement_timeout
            .map_or(self.acquire_timeout, |timeout| {
                timeout + Duration::from_secs(1)
            })
    }
}

/// The SHA-256 digest of an API token: all the service keeps of it, from the moment it is
/// read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

/// What one client connection may hold of the public listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request head must arrive within this, else the connection is closed (slowloris).
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub idle_timeout: Duration,
    /// Connections beyond this wait in the listen backlog.
    pub max_connections: u32,
}

/// When the pool pings a connection before handing it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthCheck {
    /// Ping every checkout: a round trip per request.
    Always,
    /// Ping only connections idle for at least this long: the ones a server, proxy or
    /// firewall may have dropped meanwhile.
    IfIdleFor(Duration),
    Never,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {variable}={value:?}: expected {expected}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    pub expected: String,
}

impl Config {
    /// Reads the process environment (after `.env`, when present, has been loaded into it).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, so tests can supply variables without
    /// touching the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let database_url = env.database_url()?;
        let migration_url = env.migration_url(&database_url)?.map(SecretString::from);
        Ok(Self {
            pool: PoolConfig::parse(&env)?,
            cache: CacheConfig::parse(&env)?,
            replica: ReplicaConfig::parse(&env, &database_url)?,
            connections: ConnectionLimits::parse(&env)?,
            log_format: env.choice(
                "LOG_FORMAT",
                &[("pretty", LogFormat::Pretty), ("json", LogFormat::Json)],
            )?,
            database_url: database_url.into(),
            migration_url,
            migration_lock_timeout: env.secs("DB_MIGRATION_LOCK_TIMEOUT_SECS", 300, 1)?,
            application_name: env
                .raw("DB_APPLICATION_NAME")
                .unwrap_or_else(|| "user-service".to_owned()),
            http_addr: env.parsed(
                "HTTP_ADDR",
                "127.0.0.1:8080",
                "a socket address such as 127.0.0.1:8080",
            )?,
            admin_addr: env.parsed(
                "ADMIN_ADDR",
                "127.0.0.1:9464",
                "a socket address such as 127.0.0.1:9464",
            )?,
            request_timeout: env.secs("HTTP_REQUEST_TIMEOUT_SECS", 30, 1)?,
            run_migrations: env.boolean("RUN_MIGRATIONS", true)?,
            otel_endpoint: env.raw("OTEL_EXPORTER_OTLP_ENDPOINT"),
            otel_service_name: env
                .raw("OTEL_SERVICE_NAME")
                .unwrap_or_else(|| "user-service".to_owned()),
            shutdown_grace: env.secs("SHUTDOWN_GRACE_SECS", 20, 0)?,
            changes_retention: Duration::from_secs(
                u64::from(env.number("CHANGES_RETENTION_HOURS", 168, 1, 87_600)?) * 3600,
            ),
            idempotency_ttl: env.secs("IDEMPOTENCY_TTL_SECS", 86_400, 1)?,
            api_tokens: env.tokens(("API_TOKENS", "API_TOKENS_FILE"))?,
            api_read_tokens: env.tokens(("API_READ_TOKENS", "API_READ_TOKENS_FILE"))?,
            trusted_proxies: env.networks("TRUSTED_PROXIES")?,
            cors_allowed_origins: env.list("CORS_ALLOWED_ORIGINS"),
            rate_limit_per_second: match env.raw("RATE_LIMIT_PER_SECOND") {
                None => None,
                Some(_) => NonZeroU32::new(env.number("RATE_LIMIT_PER_SECOND", 0, 1, 1_000_000)?),
            },
        })
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url.expose_secret().starts_with("sqlite:")
    }
}

fn nonzero(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

impl PoolConfig {
    fn parse(env: &Env<'_>) -> Result<Self, ConfigError> {
        let max_connections = env.number("DB_MAX_CONNECTIONS", 50, 1, 10_000)?;
        let min_connections = env.number("DB_MIN_CONNECTIONS", 5, 0, 10_000)?;
        if min_connections > max_connections {
            return Err(ConfigError {
                variable: "DB_MIN_CONNECTIONS",
                value: min_connections.to_string(),
                expected: format!("at most DB_MAX_CONNECTIONS ({max_connections})"),
            });
        }
        let test_idle = env.secs("DB_TEST_IDLE_SECS", 30, 0)?;
        let statement_timeout_ms = env.number("DB_STATEMENT_TIMEOUT_MS", 5000, 0, 3_600_000)?;
        Ok(PoolConfig {
            max_connections,
            min_connections,
            read_connections: env.number("DB_READ_CONNECTIONS", 1, 1, 10_000)?,
            acquire_timeout: env.secs("DB_ACQUIRE_TIMEOUT_SECS", 3, 1)?,
            idle_timeout: nonzero(env.secs("DB_IDLE_TIMEOUT_SECS", 600, 0)?),
            max_lifetime: nonzero(env.secs("DB_MAX_LIFETIME_SECS", 1800, 0)?),
            health_check: env.choice(
                "DB_TEST_BEFORE_ACQUIRE",
                &[
                    ("idle", HealthCheck::IfIdleFor(test_idle)),
                    ("always", HealthCheck::Always),
                    ("never", HealthCheck::Never),
                ],
            )?,
            statement_timeout: nonzero(Duration::from_millis(statement_timeout_ms.into())),
            prepared_statements: env.boolean("DB_PREPARED_STATEMENTS", true)?,
            metrics_interval: env.secs("DB_POOL_METRICS_INTERVAL_SECS", 10, 1)?,
            slow_query: Duration::from_millis(
                env.number("DB_SLOW_QUERY_MS", 200, 0, 3_600_000)?.into(),
            ),
        })
    }
}

impl CacheConfig {
    /// `None` without `REDIS_URL`; its settings are checked all the same, so a bad value is
    /// refused before it matters.
    fn parse(env: &Env<'_>) -> Result<Option<Self>, ConfigError> {
        let ttl = env.secs("CACHE_TTL_SECS", 300, 1)?;
        let timeout = Duration::from_millis(env.number("CACHE_TIMEOUT_MS", 50, 1, 60_000)?.into());
        let ca_file = env.raw("REDIS_CA_FILE").map(PathBuf::from);
        Ok(env.redis_url()?.map(|url| CacheConfig {
            url: url.into(),
            ca_file,
            ttl,
            timeout,
        }))
    }
}

impl ReplicaConfig {
    /// `None` without `DATABASE_READ_URL`; checked all the same, as the cache's settings are.
    fn parse(env: &Env<'_>, database_url: &str) -> Result<Option<Self>, ConfigError> {
        let max_lag =
            Duration::from_millis(env.number("DB_READ_MAX_LAG_MS", 1000, 0, 3_600_000)?.into());
        Ok(env.read_url(database_url)?.map(|url| ReplicaConfig {
            url: url.into(),
            max_lag,
        }))
    }
}

impl ConnectionLimits {
    fn parse(env: &Env<'_>) -> Result<Self, ConfigError> {
        Ok(ConnectionLimits {
            header_timeout: env.secs("HTTP_HEADER_TIMEOUT_SECS", 10, 1)?,
            idle_timeout: env.secs("HTTP_IDLE_TIMEOUT_SECS", 60, 1)?,
            max_connections: env.number("HTTP_MAX_CONNECTIONS", 10_000, 1, 1_000_000)?,
        })
    }
}

struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    /// The value, trimmed; an empty value counts as unset, as in most `.env` tooling.
    fn raw(&self, variable: &str) -> Option<String> {
        (self.0)(variable)
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
    }

    fn database_url(&self) -> Result<String, ConfigError> {
        let url = self.url(
            ("DATABASE_URL", "DATABASE_URL_FILE"),
            &["postgres://", "postgresql://", "sqlite:"],
            "a postgres://, postgresql:// or sqlite: URL",
        )?;
        Ok(url.unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned()))
    }

    /// The replica's URL: PostgreSQL, and only beside a PostgreSQL primary.
    fn read_url(&self, database_url: &str) -> Result<Option<String>, ConfigError> {
        self.postgres_only(
            ("DATABASE_READ_URL", "DATABASE_READ_URL_FILE"),
            database_url,
        )
    }

    /// The migrations' direct URL: PostgreSQL, and only beside a PostgreSQL primary.
    fn migration_url(&self, database_url: &str) -> Result<Option<String>, ConfigError> {
        self.postgres_only(
            ("DATABASE_MIGRATION_URL", "DATABASE_MIGRATION_URL_FILE"),
            database_url,
        )
    }

    fn postgres_only(
        &self,
        names: (&'static str, &'static str),
        database_url: &str,
    ) -> Result<Option<String>, ConfigError> {
        let url = self.url(
            names,
            &["postgres://", "postgresql://"],
            "a postgres:// or postgresql:// URL",
        )?;
        if url.is_some() && database_url.starts_with("sqlite:") {
            return Err(ConfigError {
                variable: names.0,
                value: "(set)".to_owned(),
                expected: "unset while DATABASE_URL is SQLite".to_owned(),
            });
        }
        Ok(url)
    }

    fn redis_url(&self) -> Result<Option<String>, ConfigError> {
        self.url(
            ("REDIS_URL", "REDIS_URL_FILE"),
            &["redis://", "rediss://"],
            "a redis:// or rediss:// URL",
        )
    }

    /// A secret given in `names.0`, or in the file `names.1` names (the Docker and Kubernetes
    /// secrets convention; one trailing newline is not part of it). Both set is an error.
    fn secret(&self, names: (&'static str, &'static str)) -> Result<Option<String>, ConfigError> {
        let (variable, file_variable) = names;
        match (self.raw(variable), self.raw(file_variable)) {
            (Some(_), Some(_)) => Err(ConfigError {
                variable,
                value: "(set)".to_owned(),
                expected: format!("{variable} or {file_variable}, not both"),
            }),
            (Some(value), None) => Ok(Some(value)),
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(value) => Ok(Some(value.trim().to_owned()).filter(|value| !value.is_empty())),
                Err(error) => Err(ConfigError {
                    variable: file_variable,
                    value: path,
                    expected: format!("a readable file ({error})"),
                }),
            },
            (None, None) => Ok(None),
        }
    }

    /// A secret URL with one of `schemes`, when set.
    fn url(
        &self,
        names: (&'static str, &'static str),
        schemes: &[&str],
        expected: &str,
    ) -> Result<Option<String>, ConfigError> {
        match self.secret(names)? {
            Some(url) if !schemes.iter().any(|scheme| url.starts_with(scheme)) => {
                Err(ConfigError {
                    variable: names.0,
                    // The URL may hold a password: show only its scheme.
                    value: url.split(':').next().unwrap_or_default().to_owned() + ":...",
                    expected: expected.to_owned(),
                })
            }
            url => Ok(url),
        }
    }

    /// Tokens, comma- or line-separated, digested as they are read.
    fn tokens(&self, names: (&'static str, &'static str)) -> Result<Vec<TokenDigest>, ConfigError> {
        Ok(self
            .secret(names)?
            .unwrap_or_default()
            .split([',', '\n'])
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .map(TokenDigest::of)
            .collect())
    }

    /// Comma-separated CIDRs (a bare address is one host).
    fn networks(&self, variable: &'static str) -> Result<Vec<IpNet>, ConfigError> {
        self.list(variable)
            .into_iter()
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| ConfigError {
                        variable,
                        value: item,
                        expected: "comma-separated addresses or CIDRs such as 10.0.0.0/8"
                            .to_owned(),
                    })
            })
            .collect()
    }

    fn number(
        &self,
        variable: &'static str,
        default: u32,
        min: u32,
        max: u32,
    ) -> Result<u32, ConfigError> {
        let Some(value) = self.raw(variable) else {
            return Ok(default);
        };
        value
            .parse::<u32>()
            .ok()
            .filter(|number| (min..=max).contains(number))
            .ok_or_else(|| ConfigError {
                variable,
                value,
                expected: format!("a whole number from {min} to {max}"),
            })
    }

    fn secs(
        &self,
        variable: &'static str,
        default: u32,
        min: u32,
    ) -> Result<Duration, ConfigError> {
        self.number(variable, default, min, 86_400 * 7)
            .map(|secs| Duration::from_secs(secs.into()))
    }

    /// One of `choices` by name; absent: the first.
    fn choice<T: Clone>(
        &self,
        variable: &'static str,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let Some(value) = self.raw(variable) else {
            return Ok(choices[0].1.clone());
        };
        choices
            .iter()
            .find(|(name, _)| *name == value)
            .map(|(_, choice)| choice.clone())
            .ok_or_else(|| ConfigError {
                variable,
                value,
                expected: format!(
                    "one of {}",
                    choices
                        .iter()
                        .map(|(name, _)| *name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    fn boolean(&self, variable: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(variable).map(|value| value.to_ascii_lowercase()) {
            None => Ok(default),
            Some(value) => match value.as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(ConfigError {
                    variable,
                    value,
                    expected: "true or false".to_owned(),
                }),
            },
        }
    }

    fn parsed<T: FromStr>(
        &self,
        variable: &'static str,
        default: &str,
        expected: &str,
    ) -> Result<T, ConfigError> {
        let value = self.raw(variable).unwrap_or_else(|| default.to_owned());
        value.parse().map_err(|_| ConfigError {
            variable,
            value,
            expected: expected.to_owned(),
        })
    }

    fn list(&self, variable: &str) -> Vec<String> {
        self.raw(variable)
            .map(|value| {
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn defaults_are_the_tuned_ones() {
        let config = parse(&[]).unwrap();
        assert_eq!(
            config.database_url.expose_secret(),
            "sqlite://data/users.db?mode=rwc"
        );
        assert!(config.migration_url.is_none());
        assert_eq!(config.migration_lock_timeout, Duration::from_secs(300));
        assert_eq!(config.application_name, "user-service");
        assert!(config.trusted_proxies.is_empty());
        let pool = &config.pool;
        assert_eq!((pool.max_connections, pool.min_connections), (50, 5));
        assert_eq!(pool.acquire_timeout, Duration::from_secs(3));
        assert_eq!(pool.idle_timeout, Some(Duration::from_secs(600)));
        assert_eq!(pool.max_lifetime, Some(Duration::from_secs(1800)));
        assert_eq!(
            pool.health_check,
            HealthCheck::IfIdleFor(Duration::from_secs(30))
        );
        assert_eq!(pool.statement_timeout, Some(Duration::from_millis(5000)));
        assert!(pool.prepared_statements);
        assert_eq!(pool.metrics_interval, Duration::from_secs(10));
        assert_eq!(pool.slow_query, Duration::from_millis(200));
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.admin_addr.to_string(), "127.0.0.1:9464");
        assert_eq!(
            config.connections,
            ConnectionLimits {
                header_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                max_connections: 10_000,
            }
        );
        assert_eq!(config.request_timeout, Duration::from_secs(30));
        assert!(config.run_migrations);
        assert_eq!(config.log_format, LogFormat::Pretty);
        assert_eq!(config.otel_endpoint, None);
        assert_eq!(config.otel_service_name, "user-service");
        assert_eq!(config.shutdown_grace, Duration::from_secs(20));
        assert_eq!(config.changes_retention, Duration::from_secs(168 * 3600));
        assert_eq!(config.idempotency_ttl, Duration::from_secs(86_400));
        assert!(config.api_tokens.is_empty() && config.api_read_tokens.is_empty());
        assert!(config.cors_allowed_origins.is_empty());
        assert_eq!(config.rate_limit_per_second, None);
        assert!(config.cache.is_none(), "no REDIS_URL, no cache");
        assert!(config.replica.is_none(), "no DATABASE_READ_URL, no replica");
    }

    #[test]
    fn every_variable_is_read() {
        let config = parse(&[
            ("DATABASE_URL", "postgres://u@localhost/db"),
            ("DB_MAX_CONNECTIONS", "8"),
            ("DB_MIN_CONNECTIONS", "2"),
            ("DB_ACQUIRE_TIMEOUT_SECS", "1"),
            ("DB_IDLE_TIMEOUT_SECS", "0"),
            ("DB_MAX_LIFETIME_SECS", "60"),
            ("DB_TEST_BEFORE_ACQUIRE", "always"),
            ("DB_STATEMENT_TIMEOUT_MS", "250"),
            ("DB_PREPARED_STATEMENTS", "false"),
            ("DB_POOL_METRICS_INTERVAL_SECS", "2"),
            ("DB_SLOW_QUERY_MS", "50"),
            ("HTTP_ADDR", "0.0.0.0:80"),
            ("ADMIN_ADDR", "[::1]:9000"),
            ("HTTP_HEADER_TIMEOUT_SECS", "5"),
            ("HTTP_REQUEST_TIMEOUT_SECS", "15"),
            ("HTTP_IDLE_TIMEOUT_SECS", "90"),
            ("HTTP_MAX_CONNECTIONS", "256"),
            ("RUN_MIGRATIONS", "false"),
            ("LOG_FORMAT", "json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_SERVICE_NAME", "users-eu"),
            ("SHUTDOWN_GRACE_SECS", "5"),
            ("API_TOKENS", "a, b,"),
            ("API_READ_TOKENS", "r"),
            ("CORS_ALLOWED_ORIGINS", "https://app.example.com"),
            ("RATE_LIMIT_PER_SECOND", "100"),
            ("REDIS_URL", "redis://:secret@cache:6379/0"),
            ("CACHE_TTL_SECS", "60"),
            ("CACHE_TIMEOUT_MS", "20"),
            ("DATABASE_READ_URL", "postgres://u@replica/db"),
            ("DB_READ_MAX_LAG_MS", "250"),
            ("DATABASE_MIGRATION_URL", "postgres://u@db:5432/db"),
            ("DB_MIGRATION_LOCK_TIMEOUT_SECS", "30"),
            ("DB_APPLICATION_NAME", "users-eu"),
            ("CHANGES_RETENTION_HOURS", "24"),
            ("IDEMPOTENCY_TTL_SECS", "3600"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1"),
            ("REDIS_CA_FILE", "/etc/ssl/redis-ca.pem"),
        ])
        .unwrap();
        assert!(!config.is_sqlite());
        assert_eq!(
            (config.pool.max_connections, config.pool.min_connections),
            (8, 2)
        );
        assert_eq!(
            config.pool.idle_timeout, None,
            "0 disables the idle timeout"
        );
        assert_eq!(config.pool.health_check, HealthCheck::Always);
        assert!(!config.pool.prepared_statements);
        assert_eq!(
            config.pool.statement_timeout,
            Some(Duration::from_millis(250))
        );
        assert_eq!(config.admin_addr.to_string(), "[::1]:9000");
        assert_eq!(
            config.connections,
            ConnectionLimits {
                header_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(90),
                max_connections: 256,
            }
        );
        assert_eq!(config.request_timeout, Duration::from_secs(15));
        assert!(!config.run_migrations);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(
            config.otel_endpoint.as_deref(),
            Some("http://collector:4317")
        );
        assert_eq!(
            config.api_tokens,
            [TokenDigest::of("a"), TokenDigest::of("b")]
        );
        assert_eq!(config.api_read_tokens, [TokenDigest::of("r")]);
        assert_eq!(
            config
                .migration_url
                .as_ref()
                .map(ExposeSecret::expose_secret),
            Some("postgres://u@db:5432/db")
        );
        assert_eq!(config.migration_lock_timeout, Duration::from_secs(30));
        assert_eq!(config.application_name, "users-eu");
        assert_eq!(config.changes_retention, Duration::from_secs(24 * 3600));
        assert_eq!(config.idempotency_ttl, Duration::from_secs(3600));
        assert_eq!(
            config.trusted_proxies,
            [
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.0.2.1/32".parse().unwrap()
            ]
        );
        assert_eq!(config.cors_allowed_origins, ["https://app.example.com"]);
        assert_eq!(config.rate_limit_per_second.map(NonZeroU32::get), Some(100));
        let cache = config.cache.expect("REDIS_URL set");
        assert_eq!(cache.url.expose_secret(), "redis://:secret@cache:6379/0");
        assert_eq!(cache.ca_file, Some(PathBuf::from("/etc/ssl/redis-ca.pem")));
        assert_eq!(cache.ttl, Duration::from_secs(60));
        assert_eq!(cache.timeout, Duration::from_millis(20));
        let defaults = parse(&[("REDIS_URL", "rediss://cache")])
            .unwrap()
            .cache
            .unwrap();
        assert_eq!(
            (defaults.ttl, defaults.timeout),
            (Duration::from_secs(300), Duration::from_millis(50))
        );
        let replica = config.replica.expect("DATABASE_READ_URL set");
        assert_eq!(replica.url.expose_secret(), "postgres://u@replica/db");
        assert_eq!(replica.max_lag, Duration::from_millis(250));
        let never = parse(&[
            ("DB_TEST_BEFORE_ACQUIRE", "never"),
            ("DB_TEST_IDLE_SECS", "5"),
        ])
        .unwrap();
        assert_eq!(never.pool.health_check, HealthCheck::Never);
        let idle = parse(&[("DB_TEST_IDLE_SECS", "5")]).unwrap();
        assert_eq!(
            idle.pool.health_check,
            HealthCheck::IfIdleFor(Duration::from_secs(5))
        );
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        let cases = [
            ("DATABASE_URL", "mysql://root@localhost/db"),
            ("DB_MAX_CONNECTIONS", "fifty"),
            ("DB_MAX_CONNECTIONS", "0"),
            ("DB_MAX_CONNECTIONS", "-1"),
            ("DB_MIN_CONNECTIONS", "1.5"),
            ("DB_ACQUIRE_TIMEOUT_SECS", "0"),
            ("DB_IDLE_TIMEOUT_SECS", "10m"),
            ("DB_MAX_LIFETIME_SECS", "forever"),
            ("DB_TEST_BEFORE_ACQUIRE", "sometimes"),
            ("DB_TEST_IDLE_SECS", "x"),
            ("DB_STATEMENT_TIMEOUT_MS", "5s"),
            ("DB_PREPARED_STATEMENTS", "sometimes"),
            ("DB_POOL_METRICS_INTERVAL_SECS", "0"),
            ("DB_SLOW_QUERY_MS", "slow"),
            ("HTTP_ADDR", "localhost"),
            ("ADMIN_ADDR", "9464"),
            ("HTTP_HEADER_TIMEOUT_SECS", "0"),
            ("HTTP_HEADER_TIMEOUT_SECS", "10s"),
            ("HTTP_REQUEST_TIMEOUT_SECS", "0"),
            ("HTTP_IDLE_TIMEOUT_SECS", "-1"),
            ("HTTP_MAX_CONNECTIONS", "0"),
            ("HTTP_MAX_CONNECTIONS", "lots"),
            ("RUN_MIGRATIONS", "maybe"),
            ("LOG_FORMAT", "xml"),
            ("SHUTDOWN_GRACE_SECS", "soon"),
            ("RATE_LIMIT_PER_SECOND", "0"),
            ("REDIS_URL", "memcached://cache:11211"),
            ("CACHE_TTL_SECS", "0"),
            ("CACHE_TIMEOUT_MS", "fast"),
            ("DATABASE_READ_URL", "sqlite://replica.db"),
            ("DB_READ_MAX_LAG_MS", "1s"),
            ("DATABASE_MIGRATION_URL", "mysql://db"),
            ("DB_MIGRATION_LOCK_TIMEOUT_SECS", "0"),
            ("CHANGES_RETENTION_HOURS", "0"),
            ("IDEMPOTENCY_TTL_SECS", "0"),
            ("TRUSTED_PROXIES", "10.0.0.0/33"),
            ("TRUSTED_PROXIES", "lb"),
            ("API_TOKENS_FILE", "/nonexistent/tokens"),
        ];
        for (variable, value) in cases {
            let error = parse(&[(variable, value)]).unwrap_err();
            assert_eq!(error.variable, variable, "{value}");
            let line = error.to_string();
            assert!(
                line.contains(variable) && line.contains("expected"),
                "{line}"
            );
            assert!(!line.contains('\n'), "one line: {line}");
        }
    }

    #[test]
    fn min_above_max_is_refused() {
        let error = parse(&[("DB_MAX_CONNECTIONS", "4"), ("DB_MIN_CONNECTIONS", "5")]).unwrap_err();
        assert_eq!(error.variable, "DB_MIN_CONNECTIONS");
        assert!(error.expected.contains("DB_MAX_CONNECTIONS (4)"));
    }

    /// The variables `Config` reads, as seen by its lookup.
    fn variables_read() -> std::collections::BTreeSet<String> {
        let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
        Config::from_lookup(|name| {
            seen.borrow_mut().insert(name.to_owned());
            None
        })
        .unwrap();
        seen.into_inner()
    }

    /// Variables documented and exampled that `Config` does not read itself.
    const READ_ELSEWHERE: [&str; 1] = [
        // By tracing-subscriber's filter.
        "RUST_LOG",
    ];

    fn repo_file(path: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn config_env_example_and_docs_name_the_same_variables() {
        let mut expected = variables_read();
        expected.extend(READ_ELSEWHERE.map(str::to_owned));
        // `.env.example`: `NAME=value`, or `# NAME=` for those unset by default.
        let example: std::collections::BTreeSet<String> = repo_file(".env.example")
            .lines()
            .map(|line| line.trim_start_matches("# "))
            .filter_map(|line| line.split_once('='))
            .map(|(name, _)| name)
            .filter(|name| {
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
            })
            .map(str::to_owned)
            .collect();
        assert_eq!(example, expected, ".env.example");
        // docs/configuration.md: the first column of its table, `| `NAME` | ...`.
        let documented: std::collections::BTreeSet<String> = repo_file("docs/configuration.md")
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split_once('`'))
            .map(|(name, _)| name.to_owned())
            .collect();
        assert_eq!(documented, expected, "docs/configuration.md");
    }

    #[test]
    fn a_bad_database_url_does_not_echo_its_password() {
        let error = parse(&[("DATABASE_URL", "mysql://root:secret@db/users")]).unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
        let error = parse(&[("REDIS_URL", "redis:/:secret@cache")]).unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
        let error = parse(&[("DATABASE_READ_URL", "mysql://u:secret@replica")]).unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[test]
    fn secrets_come_from_files_and_debug_shows_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let url = file("url", "postgres://u:canary-password@db/users\n");
        let tokens = file("tokens", "canary-token-1\ncanary-token-2,canary-token-3\n");
        let redis = file("redis", "redis://:canary-redis@cache");
        let config = parse(&[
            ("DATABASE_URL_FILE", &url),
            ("DATABASE_READ_URL_FILE", &url),
            ("DATABASE_MIGRATION_URL_FILE", &url),
            ("REDIS_URL_FILE", &redis),
            ("API_TOKENS_FILE", &tokens),
            ("API_READ_TOKENS", "canary-read"),
        ])
        .unwrap();
        assert_eq!(
            config.database_url.expose_secret(),
            "postgres://u:canary-password@db/users"
        );
        assert_eq!(config.api_tokens.len(), 3);
        assert_eq!(config.api_tokens[2], TokenDigest::of("canary-token-3"));
        let debug = format!("{config:?}");
        assert!(!debug.contains("canary"), "{debug}");
        let both = parse(&[
            ("DATABASE_URL", "sqlite::memory:"),
            ("DATABASE_URL_FILE", &url),
        ])
        .unwrap_err();
        assert_eq!(both.variable, "DATABASE_URL");
        assert!(both.expected.contains("not both"), "{both}");
    }

    #[test]
    fn a_replica_needs_a_postgresql_primary() {
        for variable in ["DATABASE_READ_URL", "DATABASE_MIGRATION_URL"] {
            let error = parse(&[(variable, "postgres://u@replica/db")]).unwrap_err();
            assert_eq!(error.variable, variable);
            assert!(error.expected.contains("SQLite"), "{error}");
        }
    }
}
