//! The binary refuses a bad configuration with one line on stderr, not a panic trace.

use std::process::Command;

#[test]
fn bad_configuration_stops_startup_with_one_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_api"))
        .env("DB_MAX_CONNECTIONS", "lots")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .output()
        .expect("run the api binary");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("DB_MAX_CONNECTIONS") && stderr.contains("lots"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Pretty logs written to a file or a pipe carry no ANSI colour codes: only a terminal gets
/// colours.
#[test]
fn pretty_logs_into_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_api"))
        .current_dir(dir.path())
        .env("LOG_FORMAT", "pretty")
        .env("RUST_LOG", "info")
        // Nothing listens on port 1: start-up fails and logs why, through the log layer.
        .env(
            "DATABASE_URL",
            "postgres://nobody@127.0.0.1:1/users?sslmode=disable",
        )
        .env("DB_ACQUIRE_TIMEOUT_SECS", "1")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .output()
        .expect("run the api binary");
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("cannot connect to the database"),
        "{stdout}"
    );
    assert!(
        !stdout.contains('\u{1b}'),
        "colour codes in a pipe: {stdout:?}"
    );
}

/// A database that cannot be reached stops start-up with one line naming `host:port` and the
/// cause (refused, a name that does not resolve), never the password (before: "pool timed out
/// while waiting for an open connection").
#[test]
fn an_unreachable_database_is_named_with_its_cause() {
    let cases = [
        (
            "postgres://nobody:canary-password@127.0.0.1:1/users?sslmode=disable",
            "127.0.0.1:1",
            "refused",
        ),
        (
            "postgres://nobody:canary-password@db.invalid:5432/users",
            "db.invalid:5432",
            "error connecting to server: ",
        ),
    ];
    for (url, endpoint, cause) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_api"))
            .env("DATABASE_URL", url)
            .env("DB_ACQUIRE_TIMEOUT_SECS", "1")
            .env("LOG_FORMAT", "json")
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("ADMIN_ADDR", "127.0.0.1:0")
            .output()
            .expect("run the api binary");
        assert_eq!(output.status.code(), Some(1));
        let logged = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(
            logged.contains(endpoint) && logged.contains(cause),
            "{endpoint}, {cause}: {logged}"
        );
        assert!(!logged.contains("canary-password"), "{logged}");
    }
}

/// A failed readiness probe answers a bare 503 (a load balancer learns nothing of the
/// topology) and logs the database's `host:port` and the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_readiness_probe_logs_the_server_and_the_cause() {
    use crate::common::binary::{Binary, exchange};
    use crate::common::replica::{ReplicaPair, Server};

    let pair = ReplicaPair::start();
    let url = pair.primary_url();
    let endpoint = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let service = Binary::start(&url, &[("DB_ACQUIRE_TIMEOUT_SECS", "1")], None).await;
    let probe = "GET /health/ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let ready = exchange(service.public, probe).await.unwrap();
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    pair.stop(Server::Primary);
    let unready = exchange(service.public, probe).await.unwrap();
    assert!(unready.starts_with("HTTP/1.1 503"), "{unready}");
    assert!(
        !unready.contains(&endpoint),
        "the answer names no server: {unready}"
    );
    let logs = service.stop().await;
    let line = logs
        .lines()
        .find(|line| line.contains("not ready"))
        .unwrap_or_else(|| panic!("a WARN for the failed probe in {logs}"));
    assert!(line.contains(&endpoint), "{line}");
    assert!(line.contains("\"error\""), "the cause: {line}");
}
