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
