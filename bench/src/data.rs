//! The seeded users, as functions of their number `n` (1-based), so that the load scripts
//! (wrk's Lua, pgbench's SQL) can name any seeded user without a list of ids.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// `created_at` of user 0 (milliseconds since the epoch) and the gap between users.
pub const BASE_MS: i64 = 1_700_000_000_000;
pub const STEP_MS: i64 = 1_000;

pub const FIRST_NAMES: [&str; 16] = [
    "Ada",
    "Alan",
    "Barbara",
    "Claude",
    "Donald",
    "Edsger",
    "Frances",
    "Grace",
    "Hedy",
    "Ivan",
    "John",
    "Katherine",
    "Leslie",
    "Margaret",
    "Niklaus",
    "Radia",
];
pub const LAST_NAMES: [&str; 8] = [
    "Lovelace", "Turing", "Liskov", "Shannon", "Knuth", "Dijkstra", "Allen", "Hopper",
];
/// Name prefixes the search scenario asks for (lower case; the API is case-insensitive).
pub const PREFIXES: [&str; 8] = ["ada", "ala", "bar", "cla", "gra", "hed", "mar", "rad"];

pub fn created_ms(n: u64) -> i64 {
    BASE_MS + n as i64 * STEP_MS
}

/// A UUID v7 whose time is the user's `created_at` and whose random bits are `n`.
pub fn id(n: u64) -> Uuid {
    let ms = created_ms(n) as u64;
    let text = format!("{:08x}-{:04x}-7000-8000-{:012x}", ms >> 16, ms & 0xffff, n);
    Uuid::parse_str(&text).expect("a well-formed UUID")
}

pub fn email(n: u64) -> String {
    format!("user{n}@example.com")
}

pub fn name(n: u64) -> String {
    let first = FIRST_NAMES[(n % FIRST_NAMES.len() as u64) as usize];
    let last = LAST_NAMES[((n / FIRST_NAMES.len() as u64) % LAST_NAMES.len() as u64) as usize];
    format!("{first} {last} {n}")
}

pub fn created_at(n: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(created_ms(n)).expect("in range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v7_and_time_ordered() {
        assert_eq!(id(1).get_version_num(), 7);
        assert!(id(1) < id(2) && id(2) < id(1_000_000));
        assert_eq!(
            id(42).to_string(),
            format!(
                "{:08x}-{:04x}-7000-8000-00000000002a",
                created_ms(42) >> 16,
                created_ms(42) & 0xffff
            )
        );
    }
}
