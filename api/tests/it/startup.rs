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
