//! The load generators: wrk (closed loop, fixed connections) against the service, and
//! pgbench (prepared statements, the same client count) against the same database.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::process::Command;

#[derive(Clone, Copy, Debug, Default)]
pub struct Measured {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
}

pub async fn wrk(
    script: &Path,
    url: &str,
    connections: u32,
    threads: u32,
    duration: Duration,
) -> Result<Measured> {
    let output = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--timeout=10s")
        .arg("-s")
        .arg(script)
        .arg(url)
        .output()
        .await
        .context("run wrk (Debian package wrk)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(json) = stdout
        .lines()
        .find_map(|line| line.strip_prefix("WRK_JSON "))
    else {
        bail!(
            "wrk printed no summary: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let summary: Value = serde_json::from_str(json)?;
    let number = |key: &str| summary[key].as_f64().unwrap_or(0.0);
    Ok(Measured {
        requests_per_sec: number("requests") / (number("duration_us") / 1e6),
        p50_ms: number("p50_us") / 1000.0,
        p99_ms: number("p99_us") / 1000.0,
        max_ms: number("max_us") / 1000.0,
        errors: (number("socket_errors") + number("http_errors")) as u64,
    })
}

pub async fn pgbench(
    scripts: &[(std::path::PathBuf, u32)],
    protocol: &str,
    database_url: &str,
    clients: u32,
    threads: u32,
    duration: Duration,
) -> Result<Measured> {
    let mut command = Command::new("pgbench");
    command
        .args(["-n", "-M", protocol])
        .arg(format!("-c{clients}"))
        .arg(format!("-j{threads}"))
        .arg(format!("-T{}", duration.as_secs().max(1)))
        .env("PGSSLMODE", "disable");
    for (script, weight) in scripts {
        command
            .arg("-f")
            .arg(format!("{}@{weight}", script.display()));
    }
    let output = command
        .arg(database_url)
        .output()
        .await
        .context("run pgbench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let value_after = |marker: &str| -> f64 {
        stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(marker))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let failed = value_after("number of failed transactions:");
    Ok(Measured {
        requests_per_sec: value_after("tps ="),
        p50_ms: value_after("latency average ="),
        p99_ms: 0.0,
        max_ms: 0.0,
        errors: failed as u64,
    })
}
