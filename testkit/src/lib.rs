//! Servers the tests and the benchmark start for themselves, written once for both. Never a
//! dependency of the service.

pub mod pgbouncer;

/// The user of a `postgres://user[:password]@host/...` URL (`postgres` when it names none).
pub fn user_of(url: &str) -> String {
    url.split("://")
        .nth(1)
        .and_then(|rest| rest.split_once('@'))
        .and_then(|(credentials, _)| credentials.split(':').next())
        .unwrap_or("postgres")
        .to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_user_of_a_url() {
        assert_eq!(super::user_of("postgres://bench:pw@h:5432/db"), "bench");
        assert_eq!(
            super::user_of("postgres://bench@h/db?sslmode=disable"),
            "bench"
        );
        assert_eq!(super::user_of("postgres://h/db"), "postgres");
    }
}
