//! `bench`: seeds PostgreSQL, runs the release service under wrk with named configurations,
//! runs pgbench on the same statements for the ceiling, and writes bench/RESULTS.md and a
//! chart. See bench/README.md.

mod cache;
mod configs;
mod data;
mod explain;
mod feed;
mod instructions;
mod load;
mod middleware;
mod neighbour;
mod pgbouncer;
mod postgres;
mod replica;
mod report;
mod rounds;
mod scenarios;
mod scrape;
mod seed;
mod service;
mod smoke;
mod soak;
mod statements;
mod summary;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks user-service against pgbench on the same database")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create and fill the benchmark databases (with and without the optimize_indexes indexes).
    Seed {
        #[command(flatten)]
        common: Common,
    },
    /// Seed (unless --skip-seed), then measure every configuration and write the report.
    Run {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Ten minutes of the mix at a set rate on the seeded database: RSS over time, errors, p99.
    Soak {
        #[command(flatten)]
        common: Common,
        /// Requests per second to aim at (about half the peak the bench measured).
        #[arg(long)]
        rate: u32,
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        #[arg(long, default_value_t = 32)]
        connections: u32,
        #[arg(long, default_value = "target/release/api")]
        binary: PathBuf,
        /// Where SOAK.md goes.
        #[arg(long, default_value = "bench")]
        out: PathBuf,
    },
    /// Only the EXPLAIN ANALYZE comparison of the seeded databases, printed as Markdown.
    Explain {
        #[command(flatten)]
        common: Common,
    },
    /// One client searching names beside many reading by id, name searches alone, and waits
    /// behind a table lock (`neighbour/RESULTS.md`).
    Neighbour(neighbour::Settings),
    /// One consumer catching up on the change feed: changes per second (`feed/CONSUMER.md`).
    Feed(feed::Settings),
    /// Every run's ratios in one table (`SUMMARY.md`), from the `RESULTS.md` files.
    Summary,
    /// A few seconds on a small database: proves the tool works, measures nothing (CI).
    Smoke {
        /// The api binary to run (a debug build is fine here).
        #[arg(long, default_value = "target/debug/api")]
        binary: PathBuf,
        #[arg(long, env = "BENCH_DATABASE_URL", default_value = DEFAULT_URL)]
        database_url: String,
    },
}

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable";

#[derive(Args, Clone)]
struct Common {
    /// Users to seed.
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// An admin connection (TLS off, so neither side pays for it).
    #[arg(long, env = "BENCH_DATABASE_URL", default_value = DEFAULT_URL)]
    database_url: String,
    /// Name of the indexed database; `<name>_noidx` holds the same users without the indexes.
    #[arg(long, default_value = "userbench")]
    database: String,
}

#[derive(Args, Clone)]
struct RunArgs {
    #[arg(long)]
    skip_seed: bool,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds of A B C ... alternation; medians are reported.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Concurrent connections of wrk and clients of pgbench.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Client connections of the overload check (get by id, shipped settings); 0 to skip.
    #[arg(long, default_value_t = 256)]
    high_connections: u32,
    /// Configurations, in order: before, plan1, tuned, tuned-pg, tls, cached, pool-N, cached-pool-N, warm-N,
    /// pgbouncer, unprepared, replica, or the name of a `--build`.
    #[arg(long, value_delimiter = ',', default_value = "before,plan1,tuned")]
    configs: Vec<String>,
    /// Connections per lane to sweep (N for reads and N for writes; get by id, create and mix,
    /// with the shipped settings otherwise); `--sweep` alone to skip.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1,2,4,8,16")]
    sweep: Vec<u32>,
    /// Only these scenarios (default: all).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// The release api binary (built first with `cargo build --release -p api`).
    #[arg(long, default_value = "target/release/api")]
    binary: PathBuf,
    /// Another build as a configuration of its own, `NAME=PATH` (repeatable): the shipped
    /// defaults on that binary, e.g. the commit before a data-path change.
    #[arg(long = "build", value_parser = parse_build)]
    builds: Vec<(String, PathBuf)>,
    /// Also count instructions per request under callgrind (get by id, lookup, list, create;
    /// `--binary` and every `--build`): a few minutes more.
    #[arg(long)]
    instructions: bool,
    /// Where RESULTS.md and results.svg go.
    #[arg(long, default_value = "bench")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Seed { common } => seed_both(&common).await,
        Command::Run { common, run } => {
            if !run.skip_seed {
                seed_both(&common).await?;
            }
            let report = measure(&common, &run).await?;
            report::write(&run.out, &report)
        }
        Command::Smoke {
            binary,
            database_url,
        } => smoke(binary, database_url).await,
        Command::Neighbour(settings) => neighbour::run(&settings).await,
        Command::Feed(settings) => feed::run(&settings).await,
        Command::Summary => summary::write(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))),
        Command::Explain { common } => {
            let indexed = seed::with_database(&common.database_url, &common.database);
            let noidx =
                seed::with_database(&common.database_url, &format!("{}_noidx", common.database));
            print!(
                "{}",
                report::explain_table(&explain::compare(&indexed, &noidx, common.users).await?)
            );
            Ok(())
        }
        Command::Soak {
            common,
            rate,
            minutes,
            connections,
            binary,
            out,
        } => soak(&common, rate, minutes, connections, binary, &out).await,
    }
}

async fn seed_both(common: &Common) -> Result<()> {
    seed::seed(&common.database_url, &common.database, common.users, true).await?;
    seed::seed(
        &common.database_url,
        &format!("{}_noidx", common.database),
        common.users,
        false,
    )
    .await
}

pub fn parse_build(text: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = text
        .split_once('=')
        .ok_or_else(|| format!("{text}: expected NAME=PATH"))?;
    Ok((name.to_owned(), PathBuf::from(path)))
}

use rounds::measure;
pub use rounds::{Report, Sample, Upgrade, wrk_script};
use smoke::smoke;
use soak::soak;
