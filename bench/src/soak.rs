//! `bench soak`: the mix at a set rate for minutes, RSS sampled, written to SOAK.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::rounds::Bench;
use crate::service::Service;
use crate::{Common, RunArgs, load, seed, service};

/// Runs the mix at about `rate` requests per second for `minutes`, sampling the service's RSS
/// every 10 s, and writes SOAK.md.
pub(crate) async fn soak(
    common: &Common,
    rate: u32,
    minutes: u64,
    connections: u32,
    binary: PathBuf,
    out: &Path,
) -> Result<()> {
    let run = RunArgs {
        skip_seed: true,
        seconds: minutes * 60,
        rounds: 1,
        connections,
        high_connections: 0,
        configs: vec!["tuned".into()],
        sweep: Vec::new(),
        scenarios: Vec::new(),
        binary,
        builds: Vec::new(),
        instructions: false,
        out: out.to_owned(),
    };
    let bench = Bench::new(common, &run, None)?;
    let url = seed::with_database(&common.database_url, &common.database);
    let service = Service::start(&std::fs::canonicalize(&run.binary)?, &url, &[]).await?;
    // Each connection waits connections/rate seconds between requests (less its own latency,
    // which wrk does not subtract: the achieved rate is a little under the target).
    let delay_ms = (u64::from(connections) * 1000 / u64::from(rate.max(1))).max(1);
    let script = bench.paced_script("mix", &url, delay_ms).await?;
    let target = format!("http://{}", service::PUBLIC);
    let duration = Duration::from_secs(minutes * 60);
    let load = tokio::spawn({
        let script = script.clone();
        async move { load::wrk(&script, &target, connections, 2, duration).await }
    });
    let mut samples = Vec::new();
    let started = std::time::Instant::now();
    while !load.is_finished() {
        samples.push((
            started.elapsed().as_secs(),
            service.rss() as f64 / (1024.0 * 1024.0),
        ));
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let measured = load.await??;
    service.stop().await?;
    let mut md = format!(
        "# Soak\n\n{minutes} minutes of the 80/20 mix at a target of {rate} req/s ({connections} connections, {delay_ms} ms between requests on each), configuration `tuned`, {} users.\n\n\
         - achieved: {:.0} req/s\n- errors: {}\n- p50: {:.2} ms, p99: {:.2} ms\n\n| seconds | RSS MiB |\n| ---: | ---: |\n",
        common.users, measured.requests_per_sec, measured.errors, measured.p50_ms, measured.p99_ms
    );
    for (at, rss) in &samples {
        md.push_str(&format!("| {at} | {rss:.1} |\n"));
    }
    crate::report::save(out, "SOAK.md", &md)?;
    println!("{md}");
    Ok(())
}
