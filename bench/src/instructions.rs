//! Instructions per request, whole and by layer: the release service under callgrind, driven
//! by wrk on one connection. Instruction counts do not depend on what else the shared cores do
//! (timings on this machine drift by 15%), so a layer's cost can be read to the percent and
//! compared across builds. Only the service's own user-space work is counted: PostgreSQL, the
//! kernel and wrk are not.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::scenarios::Scenario;
use crate::service::{self, Service};

/// Where the instructions go: functions whose inclusive counts (with everything they call)
/// callgrind_annotate reports. With LTO most middleware is inlined into poem's wrappers (and
/// the outer layers' counts come out inconsistent), so the layers here are the ones that keep
/// a name; `bench run` measures each middleware apart in-process. Each entry sums its patterns, each pattern's largest count (a function appears
/// once per source file it was inlined from).
const LAYERS: &[(&str, &[&str])] = &[
    (
        "routing, the operation, the repository",
        &[
            "<poem::route::router::Route as poem::endpoint::endpoint::Endpoint>::call::{{closure}} [",
        ],
    ),
    (
        "the repository (statement building, the call, the rows)",
        &[
            "api::users::repository::UserRepository::find_by_id::{{closure}} [",
            "api::users::repository::UserRepository::find_by_email::{{closure}} [",
            "api::users::repository::UserRepository::list::{{closure}} [",
            "api::users::repository::UserRepository::create::{{closure}} [",
        ],
    ),
    (
        "PostgreSQL connection task (tokio-postgres)",
        &["<tokio_postgres::connection::Connection<S,T> as core::future::future::Future>::poll ["],
    ),
    (
        "malloc and free (glibc)",
        &["malloc.c:malloc [", "malloc.c:free ["],
    ),
    ("memcpy", &["__memcpy_avx_unaligned_erms ["]),
];

pub struct Counted {
    pub scenario: String,
    pub requests: u64,
    pub total: f64,
    /// (layer, instructions per request); `None` where the function was not seen.
    pub layers: Vec<(&'static str, Option<f64>)>,
}

/// Runs each scenario for `seconds` on one connection against `binary` under callgrind.
pub async fn count(
    binary: &Path,
    database_url: &str,
    scripts: &[(Scenario, PathBuf, PathBuf)],
    seconds: u64,
) -> Result<Vec<Counted>> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("callgrind.out");
    let wrapper = [
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        "--instr-atstart=no".to_owned(),
        format!("--callgrind-out-file={}", out.display()),
    ];
    let service = Service::start_under(&wrapper, binary, database_url, &[]).await?;
    let pid = service.pid().to_string();
    let target = format!("http://{}", service::PUBLIC);
    let mut counted = Vec::new();
    for (scenario, warm, script) in scripts {
        // Warm: statements prepared, caches filled (a script of its own: creates never repeat
        // an email).
        crate::load::wrk(warm, &target, 1, 1, Duration::from_secs(2)).await?;
        control(&["--zero", &pid]).await?;
        control(&["--instr=on", &pid]).await?;
        let measured =
            crate::load::wrk(script, &target, 1, 1, Duration::from_secs(seconds)).await?;
        control(&["--instr=off", &pid]).await?;
        control(&["--dump", &pid]).await?;
        let requests = (measured.requests_per_sec * seconds as f64).round() as u64;
        if requests == 0 || measured.errors > 0 {
            bail!("{}: {measured:?} under callgrind", scenario.name);
        }
        let dump = newest_dump(dir.path())?;
        counted.push(read(scenario.name, &dump, requests).await?);
        std::fs::remove_file(dump)?;
    }
    service.stop().await?;
    Ok(counted)
}

async fn control(args: &[&str]) -> Result<()> {
    let status = Command::new("callgrind_control")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .context("callgrind_control (Debian package valgrind)")?;
    if !status.success() {
        bail!("callgrind_control {args:?}: {status}");
    }
    Ok(())
}

fn newest_dump(dir: &Path) -> Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| path.to_string_lossy().contains("callgrind.out"))
        .max_by_key(|path| path.metadata().and_then(|m| m.modified()).ok())
        .context("callgrind wrote no dump")
}

/// The dump's total and each layer's largest inclusive count (a function appears once per
/// source file it was inlined from), per request.
async fn read(scenario: &str, dump: &Path, requests: u64) -> Result<Counted> {
    let output = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(dump)
        .output()
        .await
        .context("callgrind_annotate")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<(f64, &str)> = text
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let (count, rest) = line.split_once(' ')?;
            let count: f64 = count.replace(',', "").parse().ok()?;
            Some((count, rest))
        })
        .collect();
    let total = rows
        .iter()
        .find(|(_, rest)| rest.contains("PROGRAM TOTALS"))
        .map(|(count, _)| *count)
        .context("callgrind_annotate printed no total")?;
    let per_request = |count: f64| count / requests as f64;
    let layers = LAYERS
        .iter()
        .map(|(layer, patterns)| {
            let largest = |pattern: &str| {
                rows.iter()
                    .filter(|(_, rest)| rest.contains(pattern))
                    .map(|(count, _)| *count)
                    .reduce(f64::max)
            };
            let found: Vec<f64> = patterns.iter().filter_map(|p| largest(p)).collect();
            let sum = (!found.is_empty()).then(|| found.iter().sum::<f64>());
            (*layer, sum.map(per_request))
        })
        .collect();
    Ok(Counted {
        scenario: scenario.to_owned(),
        requests,
        total: per_request(total),
        layers,
    })
}

/// One table per build: instructions per request, by layer, for each scenario.
pub fn markdown(builds: &[(String, Vec<Counted>)]) -> Result<String> {
    let mut md = String::new();
    writeln!(
        md,
        "## Instructions per request (callgrind, one connection)\n\nThe service's own user-space instructions per request, thousands; a layer's count includes the layers inside it. Deterministic: the same build and requests count the same whatever the machine is doing.\n"
    )?;
    let Some((_, first)) = builds.first() else {
        return Ok(md);
    };
    let scenarios: Vec<&str> = first.iter().map(|c| c.scenario.as_str()).collect();
    let mut header = "| layer |".to_owned();
    let mut rule = "| --- |".to_owned();
    for (build, _) in builds {
        for scenario in &scenarios {
            header.push_str(&format!(" {scenario} ({build}) |"));
            rule.push_str(" ---: |");
        }
    }
    writeln!(md, "{header}\n{rule}")?;
    let cell = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{:.1}", v / 1000.0));
    let mut row = "| **whole request** |".to_owned();
    for (_, counted) in builds {
        for c in counted {
            row.push_str(&format!(" **{}** |", cell(Some(c.total))));
        }
    }
    writeln!(md, "{row}")?;
    for (i, (layer, _)) in LAYERS.iter().enumerate() {
        let mut row = format!("| {layer} |");
        for (_, counted) in builds {
            for c in counted {
                row.push_str(&format!(" {} |", cell(c.layers[i].1)));
            }
        }
        writeln!(md, "{row}")?;
    }
    writeln!(md)?;
    Ok(md)
}
