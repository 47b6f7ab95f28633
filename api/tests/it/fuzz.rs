//! Property tests of everything that parses client input: the cursor decoder, the ETag
//! headers, and the HTTP layer fed arbitrary bodies and query strings (on both backends: NUL
//! bytes, for one, are fine in SQLite and fatal in PostgreSQL). Nothing panics, nothing is a 5xx,
//! and every rejection is problem+json.

use crate::common::{Backend, TestApp, percent_encode};
use api::users::cursor::Cursor;
use api::users::etag::{EntityTags, if_match, none_match};
use proptest::prelude::*;
use serde_json::Value;

/// The strings the spec's cursor pattern admits (its anchors aside).
fn spec_cursor() -> impl Strategy<Value = String> {
    let pattern = api::users::cursor::PATTERN;
    proptest::string::string_regex(&pattern[1..pattern.len() - 1]).unwrap()
}

proptest! {
    #[test]
    fn the_cursor_decoder_never_panics(text in ".{0,80}") {
        let _ = Cursor::decode(&text);
    }

    #[test]
    fn every_string_the_spec_admits_is_a_cursor(text in spec_cursor()) {
        let cursor = Cursor::decode(&text);
        prop_assert!(cursor.is_ok());
        let cursor = cursor.unwrap();
        prop_assert_eq!(Cursor::decode(&cursor.encode()), Ok(cursor));
    }

    #[test]
    fn cursors_round_trip(micros in -200_000_000_000_000_000i64..8_000_000_000_000_000, id in any::<u128>(), name in "\\PC{0,200}") {
        let cursor = Cursor {
            at: chrono::DateTime::from_timestamp_micros(micros).unwrap(),
            id: uuid::Uuid::from_u128(id),
            name,
        };
        prop_assert_eq!(Cursor::decode(&cursor.encode()), Ok(cursor));
    }

    #[test]
    fn etag_headers_never_panic(header in ".{0,64}", version in any::<i64>()) {
        if let Ok(tags) = EntityTags::parse(header) {
            let _ = if_match(Some(&tags));
            let _ = none_match(Some(&tags), version);
        }
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,300}".prop_map(Value::String),
        "[a-z0-9.+_-]{1,20}@[a-z0-9-]{1,20}\\.[a-z]{2,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::hash_map(
                prop_oneof![
                    Just("email".to_owned()),
                    Just("name".to_owned()),
                    "[a-z]{1,8}".prop_map(String::from)
                ],
                inner,
                0..4
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// The response is a success, or a client error as problem+json; never a server error.
async fn assert_sane(
    response: poem::test::TestResponse,
    allowed: &[u16],
) -> Result<(), TestCaseError> {
    let status = response.0.status().as_u16();
    prop_assert!(allowed.contains(&status), "status {}", status);
    if status >= 400 {
        let content_type = response
            .0
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        prop_assert_eq!(content_type, "application/problem+json");
        let problem: Value = response.json().await.value().deserialize();
        prop_assert_eq!(problem["status"].as_u64(), Some(status as u64));
    }
    Ok(())
}

fn http_properties(backend: Backend, cases: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = runtime.block_on(TestApp::new(backend));
    let existing = runtime.block_on(app.create_ok("fuzz@example.com", "Fuzz"));
    let path = format!("/api/v1/users/{}", existing["id"].as_str().unwrap());
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };

    proptest!(config.clone(), |(body in json_value())| {
        runtime.block_on(async {
            let created = app.client.post("/api/v1/users").body_json(&body).send().await;
            assert_sane(created, &[201, 400, 409]).await?;
            let patched = app.client.patch(&path).body_json(&body).send().await;
            assert_sane(patched, &[200, 400, 409]).await
        })?;
    });

    proptest!(config.clone(), |(raw in prop::collection::vec(any::<u8>(), 0..200))| {
        runtime.block_on(async {
            let created = app.client.post("/api/v1/users").content_type("application/json").body(raw.clone()).send().await;
            assert_sane(created, &[201, 400, 409]).await
        })?;
    });

    // Every cursor the spec admits continues a search (a tampered one too: its name may hold
    // bytes no name holds, NUL among them, which PostgreSQL refuses in text).
    proptest!(config.clone(), |(cursor in spec_cursor(), prefix in "[a-zA-Z]{1,3}")| {
        runtime.block_on(async {
            let query = format!("/api/v1/users?name_prefix={prefix}&cursor={cursor}");
            assert_sane(app.client.get(query).send().await, &[200]).await
        })?;
    });

    proptest!(config, |(limit in ".{0,12}", cursor in ".{0,40}", prefix in ".{0,40}", since in ".{0,30}", email in ".{0,60}", id in ".{0,40}")| {
        runtime.block_on(async {
            let query = format!(
                "/api/v1/users?limit={}&cursor={}&name_prefix={}&updated_since={}",
                percent_encode(&limit), percent_encode(&cursor), percent_encode(&prefix), percent_encode(&since)
            );
            assert_sane(app.client.get(query).send().await, &[200, 400]).await?;
            let prefix_only = format!("/api/v1/users?name_prefix={}", percent_encode(&prefix));
            assert_sane(app.client.get(prefix_only).send().await, &[200, 400]).await?;
            let lookup = format!("/api/v1/users/lookup?email={}", percent_encode(&email));
            assert_sane(app.client.get(lookup).send().await, &[200, 400, 404]).await?;
            let by_id = format!("/api/v1/users/{}", percent_encode(&id));
            assert_sane(app.client.get(by_id).send().await, &[200, 400, 404]).await
        })?;
    });
}

#[test]
fn sqlite_http_input_never_breaks_the_service() {
    http_properties(Backend::Sqlite, 200);
}

#[test]
fn postgres_http_input_never_breaks_the_service() {
    http_properties(Backend::Postgres, 100);
}
