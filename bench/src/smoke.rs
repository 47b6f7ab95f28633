//! `bench smoke`: seconds on a small database, every scenario once: proves the tool works
//! (CI), measures nothing.

use std::path::PathBuf;

use crate::rounds::measure;
use crate::{Common, RunArgs, report, seed_both};
use anyhow::{Context, Result, bail};
use sea_orm::sqlx::{self, Connection, PgConnection};

/// Seeds a small database, runs every scenario briefly on the given binary and pgbench once,
/// and fails unless each answered without errors.
pub(crate) async fn smoke(binary: PathBuf, database_url: String) -> Result<()> {
    let database = format!("userbench_smoke_{}", std::process::id());
    let common = Common {
        users: 20_000,
        database_url: database_url.clone(),
        database: database.clone(),
    };
    seed_both(&common).await?;
    let out = tempfile::tempdir()?;
    let run = RunArgs {
        skip_seed: true,
        seconds: 1,
        rounds: 1,
        connections: 4,
        high_connections: 8,
        configs: vec![
            "before".into(),
            "tuned".into(),
            "cached".into(),
            "pgbouncer".into(),
            "replica".into(),
        ],
        sweep: vec![1],
        scenarios: Vec::new(),
        binary,
        builds: Vec::new(),
        instructions: false,
        out: out.path().to_owned(),
    };
    let result = measure(&common, &run).await;
    let mut admin = PgConnection::connect(&database_url).await?;
    for name in [database.clone(), format!("{database}_noidx")] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
    }
    let report = result?;
    report::write(&run.out, &report)?;
    for ((config, scenario), samples) in &report.service {
        let sample = samples[0];
        if sample.load.requests_per_sec <= 0.0 || sample.load.errors > 0 {
            bail!("{config} / {scenario}: {:?}", sample.load);
        }
    }
    let cached_get = report
        .service
        .get(&("cached".to_owned(), "get by id".to_owned()))
        .and_then(|samples| samples[0].hit_ratio);
    // The smoke's warm-up is cut short: some reads hit, not all.
    if !cached_get.is_some_and(|ratio| ratio > 0.0) {
        bail!("cached / get by id: hit ratio {cached_get:?} after the warm-up");
    }
    for ((_, scenario), runs) in &report.pgbench {
        if runs[0].requests_per_sec <= 0.0 {
            bail!("pgbench {scenario}: {:?}", runs[0]);
        }
    }
    for file in ["RESULTS.md", "results.svg"] {
        let written =
            std::fs::metadata(out.path().join(file)).with_context(|| format!("{file} written"))?;
        if written.len() == 0 {
            bail!("{file} is empty");
        }
    }
    println!(
        "bench smoke: {} scenarios x {} configurations ran without errors",
        report.scenarios.len(),
        report.configs.len()
    );
    Ok(())
}
