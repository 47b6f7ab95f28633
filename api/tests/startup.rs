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
