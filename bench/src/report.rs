//! bench/RESULTS.md and bench/results.svg from one run's measurements.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use crate::load::Measured;
use crate::postgres::Settings;
use crate::{Report, Sample};

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

fn geometric_mean(ratios: &[f64]) -> f64 {
    (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len().max(1) as f64).exp()
}

/// Medians over rounds of one (config, scenario).
#[derive(Clone, Copy)]
struct Summary {
    rps: f64,
    p50: f64,
    p99: f64,
    errors: u64,
    rss: f64,
    cpu: f64,
    hit_ratio: Option<f64>,
}

fn summarize(samples: &[Sample]) -> Summary {
    Summary {
        rps: median(samples.iter().map(|s| s.load.requests_per_sec).collect()),
        p50: median(samples.iter().map(|s| s.load.p50_ms).collect()),
        p99: median(samples.iter().map(|s| s.load.p99_ms).collect()),
        errors: samples.iter().map(|s| s.load.errors).sum(),
        rss: samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max),
        cpu: median(samples.iter().map(|s| s.cpu).collect()),
        hit_ratio: Some(median(samples.iter().filter_map(|s| s.hit_ratio).collect()))
            .filter(|ratio| !ratio.is_nan()),
    }
}

/// pgbench's median on `scenario` with PostgreSQL on `settings`.
fn pgbench_rps(report: &Report, settings: Settings, scenario: &str) -> f64 {
    median(
        report
            .pgbench
            .get(&(settings, scenario.to_owned()))
            .map(|runs| runs.iter().map(|m: &Measured| m.requests_per_sec).collect())
            .unwrap_or_default(),
    )
}

fn service(report: &Report, config: &str, scenario: &str) -> Option<Summary> {
    report
        .service
        .get(&(config.to_owned(), scenario.to_owned()))
        .map(|s| summarize(s))
}

/// The commit the bench was built from, short.
pub fn commit() -> String {
    command_output("git", &["rev-parse", "--short", "HEAD"])
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']))
        .unwrap_or("?");
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    format!(
        "{} cores ({model}), {memory} memory",
        command_output("nproc", &[])
    )
}

/// Writes a report `name` into `out` (made if missing) and says where.
pub fn save(out: &Path, name: &str, text: &str) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let path = out.join(name);
    std::fs::write(&path, text)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

pub fn write(out: &Path, report: &Report) -> Result<()> {
    let mut md = String::new();
    header(&mut md, report)?;
    configuration_tables(&mut md, report)?;
    let has = |c: &str| report.configs.iter().any(|(x, _)| x == c);
    if has("before") && has("plan1") {
        plan_comparison(&mut md, report)?;
    }
    if has("tuned") && has("tuned-pg") {
        postgres_tuning(&mut md, report)?;
    }
    if has("tuned") && has("cached") {
        cache_comparison(&mut md, report)?;
    }
    if !report.sweep.is_empty() {
        pool_sweep(&mut md, report)?;
    }
    md.push_str(&crate::middleware::markdown(
        &report.middleware,
        report.middleware_calls,
    )?);
    if !report.instructions.is_empty() {
        md.push_str(&crate::instructions::markdown(&report.instructions)?);
    }
    md.push_str(&explain_table(&report.explain));
    if let Some(upgrade) = &report.upgrade {
        upgrade_table(&mut md, upgrade)?;
    }
    if has("tuned") {
        targets(&mut md, report)?;
    }
    writeln!(
        md,
        "![requests per second by configuration and scenario](results.svg)"
    )?;
    save(out, "RESULTS.md", &md)?;
    chart(&out.join("results.svg"), report)
}

/// Where and how the run was made.
fn header(md: &mut String, report: &Report) -> Result<()> {
    writeln!(md, "# Benchmark results\n")?;
    writeln!(
        md,
        "Written by `cargo run --release -p bench -- run` (bench/README.md); rerun it to reproduce.\n"
    )?;
    writeln!(md, "- machine: {}", machine())?;
    writeln!(
        md,
        "- date: {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    )?;
    writeln!(md, "- commit: {}", commit())?;
    writeln!(
        md,
        "- PostgreSQL: {}",
        command_output("psql", &["--version"])
    )?;
    writeln!(
        md,
        "- {} users; wrk and pgbench closed loop at {} connections (2 threads each), {} s per measurement, {} rounds alternating the configurations; medians; TLS off on both sides\n",
        report.users, report.connections, report.seconds, report.rounds
    )?;
    writeln!(
        md,
        "The service, PostgreSQL and the load generator share the machine's cores: ratios measured in one run are what carries over, absolute numbers drift.\n"
    )?;

    Ok(())
}

/// One table per configuration: every scenario against pgbench.
fn configuration_tables(md: &mut String, report: &Report) -> Result<()> {
    for (config, settings) in &report.configs {
        writeln!(md, "## Configuration `{config}`\n")?;
        if *settings != Settings::Server {
            writeln!(
                md,
                "PostgreSQL on the {settings} settings; pgbench measured on the same.\n"
            )?;
        }
        writeln!(
            md,
            "| scenario | req/s | p50 ms | p99 ms | errors | RSS MiB | CPU (cores) | pgbench tps | service / pgbench |"
        )?;
        writeln!(
            md,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )?;
        for scenario in &report.scenarios {
            if let Some(s) = service(report, config, scenario) {
                let pg = pgbench_rps(report, *settings, scenario);
                writeln!(
                    md,
                    "| {scenario} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.2} | {:.0} | {:.2}x |",
                    s.rps,
                    s.p50,
                    s.p99,
                    s.errors,
                    s.rss,
                    s.cpu,
                    pg,
                    s.rps / pg
                )?;
            }
        }
        writeln!(md)?;
    }

    Ok(())
}

/// The cache on (`cached`, warm but for the skewed scenario) against the same build without
/// it (`tuned`) and against pgbench, measured side by side.
fn cache_comparison(md: &mut String, report: &Report) -> Result<()> {
    writeln!(
        md,
        "## The cache: `cached` against `tuned` and pgbench
"
    )?;
    writeln!(
        md,
        "`cached` is `tuned` with `REDIS_URL` set (the bench's own Redis on this machine), warmed \
         with every user by id and by email before the scenarios; `zipf get by id` starts cold \
         (Redis flushed): its hit ratio is that of a skewed load filling the cache. Hit ratio: \
         reads the cache answered, of the reads asked of it (`cache_requests_total`).\n"
    )?;
    writeln!(
        md,
        "| scenario | tuned req/s | cached req/s | cached / tuned | cached / pgbench | p99 tuned ms | p99 cached ms | hit ratio |"
    )?;
    writeln!(
        md,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for scenario in &report.scenarios {
        let (Some(tuned), Some(cached)) = (
            service(report, "tuned", scenario),
            service(report, "cached", scenario),
        ) else {
            continue;
        };
        let pg = pgbench_rps(report, Settings::Server, scenario);
        writeln!(
            md,
            "| {scenario} | {:.0} | {:.0} | {:.2}x | {:.2}x | {:.2} | {:.2} | {} |",
            tuned.rps,
            cached.rps,
            cached.rps / tuned.rps,
            cached.rps / pg,
            tuned.p99,
            cached.p99,
            cached
                .hit_ratio
                .map(|ratio| format!("{:.1}%", 100.0 * ratio))
                .unwrap_or_default()
        )?;
    }
    if !report.cache_bytes_per_user.is_empty() {
        writeln!(
            md,
            "\nRedis memory per cached user (its entry by id and its email's key, after the \
             warm-up; `used_memory` of `INFO memory`): {:.0} bytes, so {:.0} MiB per million \
             users.",
            median(report.cache_bytes_per_user.clone()),
            median(report.cache_bytes_per_user.clone()) * 1e6 / (1024.0 * 1024.0)
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// The original tuning plan (`plan1`) against the service before it (`before`).
fn plan_comparison(md: &mut String, report: &Report) -> Result<()> {
    writeln!(md, "## Does the tuning plan deliver 2-3x QPS?\n")?;
    writeln!(
        md,
        "| scenario | before req/s | plan1 req/s | plan1 / before | tuned / plan1 |"
    )?;
    writeln!(md, "| --- | ---: | ---: | ---: | ---: |")?;
    let mut ratios = Vec::new();
    for scenario in &report.scenarios {
        if let (Some(before), Some(plan1)) = (
            service(report, "before", scenario),
            service(report, "plan1", scenario),
        ) {
            let tuned = service(report, "tuned", scenario)
                .map(|t| format!("{:.2}x", t.rps / plan1.rps))
                .unwrap_or_default();
            let ratio = plan1.rps / before.rps;
            ratios.push(ratio);
            writeln!(
                md,
                "| {scenario} | {:.0} | {:.0} | {ratio:.2}x | {tuned} |",
                before.rps, plan1.rps
            )?;
        }
    }
    let geomean = geometric_mean(&ratios);
    writeln!(
        md,
        "\nGeometric mean of plan1 / before over the scenarios: **{geomean:.2}x**.\n"
    )?;
    Ok(())
}

/// The original tuning plan's PostgreSQL claim: the compose file's settings against the
/// server's own, for the service (`tuned-pg` against `tuned`) and for pgbench.
fn postgres_tuning(md: &mut String, report: &Report) -> Result<()> {
    writeln!(
        md,
        "## PostgreSQL tuned as docker-compose.yml against the server's own settings\n"
    )?;
    writeln!(
        md,
        "The same run restarts the local cluster with the compose file's `-c` settings (`ALTER SYSTEM`) for `tuned-pg` and its pgbench, and with its own for the rest.\n"
    )?;
    writeln!(
        md,
        "| scenario | service, server settings | service, compose settings | gain | pgbench, server settings | pgbench, compose settings | gain |"
    )?;
    writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")?;
    let mut gains = Vec::new();
    for scenario in &report.scenarios {
        if let (Some(server), Some(compose)) = (
            service(report, "tuned", scenario),
            service(report, "tuned-pg", scenario),
        ) {
            let pg_server = pgbench_rps(report, Settings::Server, scenario);
            let pg_compose = pgbench_rps(report, Settings::Compose, scenario);
            gains.push(compose.rps / server.rps);
            writeln!(
                md,
                "| {scenario} | {:.0} | {:.0} | {:+.0}% | {pg_server:.0} | {pg_compose:.0} | {:+.0}% |",
                server.rps,
                compose.rps,
                (compose.rps / server.rps - 1.0) * 100.0,
                (pg_compose / pg_server - 1.0) * 100.0
            )?;
        }
    }
    let geomean = geometric_mean(&gains);
    writeln!(
        md,
        "\nGeometric mean of the service's gain over the scenarios: **{:+.0}%**.\n",
        (geomean - 1.0) * 100.0
    )?;
    Ok(())
}

/// Get by id, create and the mix at each connection count, with their ratio to pgbench.
fn pool_sweep(md: &mut String, report: &Report) -> Result<()> {
    const SCENARIOS: [&str; 3] = ["get by id", "create", "mix 80/20"];
    writeln!(
        md,
        "## Connection sweep ({} client connections, shipped settings but N connections for point reads, N for writes and one for scans: `DB_READ_CONNECTIONS` = N, `DB_MIN_CONNECTIONS` = `DB_MAX_CONNECTIONS` = 2N + 1)\n",
        report.connections
    )?;
    let mut header = "| N |".to_owned();
    let mut rule = "| ---: |".to_owned();
    for scenario in SCENARIOS {
        header.push_str(&format!(" {scenario} req/s | p99 ms | / pgbench |"));
        rule.push_str(" ---: | ---: | ---: |");
    }
    writeln!(md, "{header}\n{rule}")?;
    let sizes: std::collections::BTreeSet<u32> =
        report.sweep.keys().map(|(size, _)| *size).collect();
    for size in sizes {
        let mut row = format!("| {size} |");
        for scenario in SCENARIOS {
            match report.sweep.get(&(size, scenario.to_owned())) {
                Some(samples) => {
                    let s = summarize(samples);
                    let pg = pgbench_rps(report, Settings::Server, scenario);
                    row.push_str(&format!(
                        " {:.0} | {:.2} | {:.2}x |",
                        s.rps,
                        s.p99,
                        s.rps / pg
                    ));
                }
                None => row.push_str(" - | - | - |"),
            }
        }
        writeln!(md, "{row}")?;
    }
    writeln!(md)?;
    Ok(())
}

/// Creates before and during `optimize_indexes` on the live `before` database.
fn upgrade_table(md: &mut String, upgrade: &crate::Upgrade) -> Result<()> {
    writeln!(
        md,
        "## The upgrade on a live table\n\n`optimize_indexes` applied to the `before` database (no optimization indexes) while creates run through the service; it took {:.1} s.\n",
        upgrade.migration.as_secs_f64()
    )?;
    writeln!(
        md,
        "| creates | req/s | p50 ms | p99 ms | max ms | errors |"
    )?;
    writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: |")?;
    for (what, m) in [
        ("alone", &upgrade.quiet),
        ("during the upgrade", &upgrade.during),
    ] {
        writeln!(
            md,
            "| {what} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            m.requests_per_sec, m.p50_ms, m.p99_ms, m.max_ms, m.errors
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// The performance targets, measured on the shipped defaults (`tuned`).
fn targets(md: &mut String, report: &Report) -> Result<()> {
    writeln!(md, "## Targets (configuration `tuned`)\n")?;
    writeln!(md, "| target | measured | met |")?;
    writeln!(md, "| --- | ---: | :---: |")?;
    let ratio = |scenario: &str| {
        service(report, "tuned", scenario)
            .map(|s| s.rps / pgbench_rps(report, Settings::Server, scenario))
    };
    let mut target =
        |what: &str, value: Option<f64>, unit: &str, ok: &dyn Fn(f64) -> bool| -> Result<()> {
            match value {
                Some(v) => writeln!(
                    md,
                    "| {what} | {v:.2}{unit} | {} |",
                    if ok(v) { "yes" } else { "no" }
                )?,
                None => writeln!(md, "| {what} | not measured | |")?,
            }
            Ok(())
        };
    // The floors the service is held to against pgbench on the same statements.
    for (scenario, floor) in [
        ("get by id", 0.7),
        ("lookup by email", 0.6),
        ("list first page", 0.7),
        ("name prefix", 0.6),
        ("create", 0.6),
        ("update", 0.6),
    ] {
        target(
            &format!("{scenario} >= {floor}x pgbench"),
            ratio(scenario),
            "x",
            &|v| v >= floor,
        )?;
    }
    let deep =
        service(report, "tuned", "list deep page").zip(service(report, "tuned", "list first page"));
    target(
        "deep-page p99 <= 1.5x first-page p99",
        deep.map(|(d, f)| d.p99 / f.p99),
        "x",
        &|v| v <= 1.5,
    )?;
    let max_rss = report
        .scenarios
        .iter()
        .filter_map(|s| service(report, "tuned", s))
        .map(|s| s.rss)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    target("RSS under load < 64 MiB", max_rss, " MiB", &|v| v < 64.0)?;
    target(
        &format!(
            "get by id p99 <= 5 ms at {} connections",
            report.connections
        ),
        service(report, "tuned", "get by id").map(|s| s.p99),
        " ms",
        &|v| v <= 5.0,
    )?;
    if let (false, Some(base)) = (
        report.high.is_empty(),
        service(report, "tuned", "get by id"),
    ) {
        let high = summarize(&report.high);
        target(
            &format!(
                "get by id at {} connections: no errors",
                report.high_connections
            ),
            Some(high.errors as f64),
            " errors",
            &|v| v == 0.0,
        )?;
        target(
            &format!(
                "get by id at {} connections within 10% of {}",
                report.high_connections, report.connections
            ),
            Some(high.rps / base.rps),
            "x",
            &|v| v >= 0.9,
        )?;
    }
    writeln!(md)?;
    Ok(())
}

pub fn explain_table(timings: &[crate::explain::Timing]) -> String {
    let mut md = String::from(
        "## Query times with and without the indexes (EXPLAIN ANALYZE, best of three)\n\n",
    );
    md.push_str(
        "| query | with indexes ms | without ms | speed-up |\n| --- | ---: | ---: | ---: |\n",
    );
    for timing in timings {
        match timing.unindexed_ms {
            Some(without) => md.push_str(&format!(
                "| {} | {:.3} | {:.3} | {:.0}x |\n",
                timing.query,
                timing.indexed_ms,
                without,
                without / timing.indexed_ms
            )),
            None => md.push_str(&format!(
                "| {} | {:.3} | | |\n",
                timing.query, timing.indexed_ms
            )),
        }
    }
    md.push('\n');
    md
}

fn chart(path: &Path, report: &Report) -> Result<()> {
    let mut series: Vec<(String, Vec<f64>)> = report
        .configs
        .iter()
        .map(|(config, _)| {
            let values = report
                .scenarios
                .iter()
                .map(|s| service(report, config, s).map_or(0.0, |s| s.rps))
                .collect();
            (config.clone(), values)
        })
        .collect();
    let mut tunings: Vec<Settings> = report.configs.iter().map(|(_, s)| *s).collect();
    tunings.sort();
    tunings.dedup();
    for tuning in tunings {
        let name = match tuning {
            Settings::Server => "pgbench".to_owned(),
            other => format!("pgbench ({other})"),
        };
        series.push((
            name,
            report
                .scenarios
                .iter()
                .map(|s| pgbench_rps(report, tuning, s))
                .map(|v| if v.is_nan() { 0.0 } else { v })
                .collect(),
        ));
    }
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let scenarios = report.scenarios.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "req/s by configuration and scenario ({} users, {} connections)",
                report.users, report.connections
            ),
            ("sans-serif", 20),
        )
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..scenarios as f64, 0f64..top)?;
    let names = report.scenarios.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(scenarios * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("requests per second")
        .draw()?;
    let width = 0.8 / series.len() as f64;
    for (j, (name, values)) in series.iter().enumerate() {
        let color = Palette99::pick(j).to_rgba();
        chart
            .draw_series(values.iter().enumerate().map(|(i, &v)| {
                let x0 = i as f64 + 0.1 + j as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], color.filled())
            }))?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
