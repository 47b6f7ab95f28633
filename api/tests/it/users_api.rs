//! The HTTP contract (docs/api.md), on SQLite, on PostgreSQL, and on PostgreSQL through
//! PgBouncer in transaction mode (`DB_PREPARED_STATEMENTS=false`).

use crate::common::{Backend, TestApp, assert_invalid, assert_problem, body};
use poem::http::StatusCode;
use serde_json::{Value, json};

on_every_backend!(
    create_returns_the_user_with_location_and_etag,
    duplicate_email_in_any_case_is_a_conflict,
    invalid_bodies_are_rejected_and_change_nothing,
    lengths_count_characters_not_bytes,
    body_over_64_kib_is_413,
    get_honours_if_none_match,
    unknown_and_malformed_ids,
    lookup_by_email_ignores_case,
    list_pages_newest_first_with_opaque_cursor,
    list_rejects_bad_parameters,
    name_prefix_matches_case_insensitively_and_literally,
    updated_since_lists_changes_oldest_first,
    patch_changes_only_given_fields,
    patch_honours_if_match,
    patch_rejects_null_and_conflicts,
    delete_honours_if_match,
    unknown_routes_and_methods_are_problems,
    health_probes_answer,
    docs_and_spec_are_served,
    writes_answer_with_a_consistency_token,
);

async fn list(app: &TestApp, query: &str) -> Value {
    let response = app
        .client
        .get(format!("/api/v1/users?{query}"))
        .send()
        .await;
    response.assert_status_is_ok();
    body(response).await
}

fn emails(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["email"].as_str().unwrap().to_owned())
        .collect()
}

async fn create_returns_the_user_with_location_and_etag(backend: Backend) {
    let app = TestApp::new(backend).await;
    let response = app.create("Ada@Example.com", "  Ada Lovelace \n").await;
    response.assert_status(StatusCode::CREATED);
    response.assert_header("etag", "\"1\"");
    let location = response.0.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    let user = body(response).await;
    assert_eq!(
        location,
        format!("/api/v1/users/{}", user["id"].as_str().unwrap())
    );
    assert_eq!(user["email"], "Ada@Example.com", "stored as given");
    assert_eq!(user["name"], "Ada Lovelace", "stored trimmed");
    assert_eq!(user["version"], 1);
    assert_eq!(user["created_at"], user["updated_at"]);
    let id = uuid::Uuid::parse_str(user["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7, "ids are UUID v7");
    let created =
        chrono::DateTime::parse_from_rfc3339(user["created_at"].as_str().unwrap()).unwrap();
    assert_eq!(created.offset().local_minus_utc(), 0, "times are UTC");

    let fetched = app.client.get(&location).send().await;
    fetched.assert_status_is_ok();
    assert_eq!(body(fetched).await, user);
}

async fn duplicate_email_in_any_case_is_a_conflict(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create_ok("grace@example.com", "Grace").await;
    let problem = assert_problem(
        app.create("GRACE@Example.COM", "Other").await,
        409,
        "email_taken",
    )
    .await;
    assert_eq!(problem["type"], "urn:user-service:problem:email_taken");
    let page = list(&app, "").await;
    assert_eq!(emails(&page), ["grace@example.com"]);
}

async fn invalid_bodies_are_rejected_and_change_nothing(backend: Backend) {
    let app = TestApp::new(backend).await;
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        (
            "not an email",
            json!({"email": "not-an-email", "name": "x"}),
            Some("email"),
        ),
        (
            "two @",
            json!({"email": "a@b@c", "name": "x"}),
            Some("email"),
        ),
        (
            "blank name",
            json!({"email": "a@example.com", "name": "   "}),
            Some("name"),
        ),
        (
            "empty name",
            json!({"email": "a@example.com", "name": ""}),
            Some("name"),
        ),
        (
            "NUL in name",
            json!({"email": "a@example.com", "name": "a\u{0}b"}),
            Some("name"),
        ),
        (
            "unknown field",
            json!({"email": "a@example.com", "name": "x", "admin": true}),
            None,
        ),
        ("missing name", json!({"email": "a@example.com"}), None),
        ("wrong type", json!({"email": 42, "name": "x"}), None),
        ("null body", Value::Null, None),
        ("array body", json!([]), None),
    ];
    for (case, payload, field) in cases {
        let response = app
            .client
            .post("/api/v1/users")
            .body_json(&payload)
            .send()
            .await;
        let problem = assert_problem(response, 400, "invalid_request").await;
        if let Some(field) = field {
            assert_eq!(problem["errors"][0]["field"], field, "{case}: {problem}");
        }
    }
    for raw in ["", "{", "{\"email\": \"a@example.com\", \"name\": \"x\""] {
        let response = app
            .client
            .post("/api/v1/users")
            .content_type("application/json")
            .body(raw)
            .send()
            .await;
        assert_problem(response, 400, "invalid_request").await;
    }
    let response = app
        .client
        .post("/api/v1/users")
        .content_type("text/plain")
        .body("email=a@example.com")
        .send()
        .await;
    assert_problem(response, 415, "unsupported_media_type").await;
    assert_eq!(
        list(&app, "").await["items"],
        json!([]),
        "nothing was created"
    );
}

async fn lengths_count_characters_not_bytes(backend: Backend) {
    let app = TestApp::new(backend).await;
    // 200 two-byte characters: 400 bytes, but within the 200-character limit.
    app.create_ok("long@example.com", &"é".repeat(200)).await;
    let too_long = app.create("longer@example.com", &"é".repeat(201)).await;
    assert_problem(too_long, 400, "invalid_request").await;
    let local = "a".repeat(64);
    let label = "b".repeat(61);
    let email_254 = format!("{local}@{label}.{label}.{label}.{}", "c".repeat(3));
    assert_eq!(email_254.chars().count(), 254);
    app.create_ok(&email_254, "max").await;
    let email_255 = format!("{local}@{label}.{label}.{label}.{}", "c".repeat(4));
    assert_problem(app.create(&email_255, "over").await, 400, "invalid_request").await;
}

async fn body_over_64_kib_is_413(backend: Backend) {
    let app = TestApp::new(backend).await;
    let padding = " ".repeat(64 * 1024);
    let payload = format!("{{\"email\": \"big@example.com\", \"name\": \"x\"{padding}}}");
    let response = app
        .client
        .post("/api/v1/users")
        .content_type("application/json")
        .body(payload)
        .send()
        .await;
    assert_problem(response, 413, "payload_too_large").await;
    assert_eq!(list(&app, "").await["items"], json!([]));
}

async fn get_honours_if_none_match(backend: Backend) {
    let app = TestApp::new(backend).await;
    let user = app.create_ok("etag@example.com", "Etag").await;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap());
    for matching in ["\"1\"", "W/\"1\"", "\"7\", \"1\"", "*"] {
        let response = app
            .client
            .get(&path)
            .header("if-none-match", matching)
            .send()
            .await;
        response.assert_status(StatusCode::NOT_MODIFIED);
        response.assert_header("etag", "\"1\"");
    }
    let response = app
        .client
        .get(&path)
        .header("if-none-match", "\"2\"")
        .send()
        .await;
    response.assert_status_is_ok();
    response.assert_header("etag", "\"1\"");
}

async fn unknown_and_malformed_ids(backend: Backend) {
    let app = TestApp::new(backend).await;
    let unknown = format!("/api/v1/users/{}", uuid::Uuid::now_v7());
    assert_problem(app.client.get(&unknown).send().await, 404, "user_not_found").await;
    let patch = app
        .client
        .patch(&unknown)
        .body_json(&json!({"name": "x"}))
        .send()
        .await;
    assert_problem(patch, 404, "user_not_found").await;
    let patch = app
        .client
        .patch(&unknown)
        .header("if-match", "\"1\"")
        .body_json(&json!({"name": "x"}))
        .send()
        .await;
    assert_problem(patch, 404, "user_not_found").await;
    assert_problem(
        app.client.delete(&unknown).send().await,
        404,
        "user_not_found",
    )
    .await;
    let delete = app
        .client
        .delete(&unknown)
        .header("if-match", "\"1\"")
        .send()
        .await;
    assert_problem(delete, 404, "user_not_found").await;
    for malformed in ["not-a-uuid", "123", "01a218ec-9c64-70ea-8825-97e197bfd45"] {
        let response = app
            .client
            .get(format!("/api/v1/users/{malformed}"))
            .send()
            .await;
        assert_problem(response, 400, "invalid_request").await;
    }
}

async fn lookup_by_email_ignores_case(backend: Backend) {
    let app = TestApp::new(backend).await;
    let user = app.create_ok("Linus@Example.org", "Linus").await;
    app.create_ok("other@example.org", "Other").await;
    let response = app
        .client
        .get("/api/v1/users/lookup")
        .query("email", &"lINUS@example.ORG")
        .send()
        .await;
    response.assert_status_is_ok();
    response.assert_header("etag", "\"1\"");
    assert_eq!(body(response).await, user);
    let missing = app
        .client
        .get("/api/v1/users/lookup")
        .query("email", &"nobody@example.org")
        .send()
        .await;
    let problem = assert_problem(missing, 404, "user_not_found").await;
    assert_eq!(problem["detail"], "no user has this email");
    let absent = app.client.get("/api/v1/users/lookup").send().await;
    assert_problem(absent, 400, "invalid_request").await;
    let empty = app.client.get("/api/v1/users/lookup?email=").send().await;
    let problem = assert_problem(empty, 400, "invalid_request").await;
    assert_eq!(problem["errors"][0]["field"], "email", "{problem}");
}

async fn list_pages_newest_first_with_opaque_cursor(backend: Backend) {
    let app = TestApp::new(backend).await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(
            app.create_ok(&format!("user{i}@example.com"), &format!("User {i}"))
                .await,
        );
    }
    let mut seen = Vec::new();
    let mut query = "limit=3".to_owned();
    let mut sizes = Vec::new();
    loop {
        let page = list(&app, &query).await;
        sizes.push(page["items"].as_array().unwrap().len());
        seen.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=3&cursor={cursor}"),
            None => {
                assert!(
                    page["next_cursor"].is_null(),
                    "next_cursor is null on the last page"
                );
                break;
            }
        }
    }
    assert_eq!(sizes, [3, 3, 1]);
    created.reverse();
    assert_eq!(seen, created, "newest first, each user once");
    let default = list(&app, "").await;
    assert_eq!(
        default["items"].as_array().unwrap().len(),
        7,
        "default limit is 50"
    );
    assert!(default["next_cursor"].is_null());
    let exact = list(&app, "limit=7").await;
    assert!(
        exact["next_cursor"].is_null(),
        "no empty last page when the page is exactly full"
    );
}

async fn list_rejects_bad_parameters(backend: Backend) {
    let app = TestApp::new(backend).await;
    for query in [
        "limit=0",
        "limit=201",
        "limit=-1",
        "limit=ten",
        "cursor=not-a-cursor",
        "cursor=AAAA",
        "cursor=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "cursor=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%2B",
        "updated_since=yesterday",
        "name_prefix=",
    ] {
        let response = app
            .client
            .get(format!("/api/v1/users?{query}"))
            .send()
            .await;
        assert_problem(response, 400, "invalid_request").await;
    }
    let bad_cursor = app.client.get("/api/v1/users?cursor=AAAA").send().await;
    let problem = assert_problem(bad_cursor, 400, "invalid_request").await;
    assert_eq!(problem["errors"][0]["field"], "cursor");
    assert_eq!(list(&app, "limit=200").await["items"], json!([]));
}

async fn name_prefix_matches_case_insensitively_and_literally(backend: Backend) {
    let app = TestApp::new(backend).await;
    for (email, name) in [
        ("a@example.com", "Alice"),
        ("b@example.com", "alfred"),
        ("c@example.com", "ALBERT"),
        ("d@example.com", "Bob"),
        ("e@example.com", "Al_x"),
        ("f@example.com", "Al%y"),
        ("g@example.com", "Malice"),
        ("h@example.com", "ALICE"),
    ] {
        app.create_ok(email, name).await;
    }
    // By case-folded name, compared by code point, then id (so "ALICE" after "Alice", created
    // later): in one page, and one user per page.
    let by_name = ["Al%y", "Al_x", "ALBERT", "alfred", "Alice", "ALICE"];
    let names = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|user| user["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&list(&app, "name_prefix=aL&limit=200").await),
        by_name
    );
    let mut paged = Vec::new();
    let mut query = "name_prefix=aL&limit=1".to_owned();
    loop {
        let page = list(&app, &query).await;
        paged.extend(names(&page));
        let Some(cursor) = page["next_cursor"].as_str() else {
            break;
        };
        query = format!("name_prefix=aL&limit=1&cursor={cursor}");
    }
    assert_eq!(paged, by_name);
    assert_eq!(
        emails(&list(&app, "name_prefix=al_").await),
        ["e@example.com"],
        "_ is literal"
    );
    assert_eq!(
        emails(&list(&app, "name_prefix=al%25").await),
        ["f@example.com"],
        "% is literal"
    );
    assert_eq!(
        emails(&list(&app, "name_prefix=zz").await),
        Vec::<String>::new()
    );

    let first = list(&app, "name_prefix=al&limit=2").await;
    let cursor = first["next_cursor"]
        .as_str()
        .expect("more pages")
        .to_owned();
    let rest = list(&app, &format!("name_prefix=al&limit=10&cursor={cursor}")).await;
    let mut all = emails(&first);
    all.extend(emails(&rest));
    all.sort();
    assert_eq!(
        all,
        [
            "a@example.com",
            "b@example.com",
            "c@example.com",
            "e@example.com",
            "f@example.com",
            "h@example.com"
        ]
    );
}

async fn updated_since_lists_changes_oldest_first(backend: Backend) {
    let app = TestApp::new(backend).await;
    let a = app.create_ok("a@example.com", "A").await;
    let b = app.create_ok("b@example.com", "B").await;
    app.create_ok("c@example.com", "C").await;
    let since = b["updated_at"].as_str().unwrap();
    let page = list(&app, &format!("updated_since={}", urlencode(since))).await;
    let listed = emails(&page);
    assert!(
        listed.contains(&"b@example.com".to_owned()),
        "at or after: {listed:?}"
    );
    assert!(listed.contains(&"c@example.com".to_owned()));

    let path = format!("/api/v1/users/{}", a["id"].as_str().unwrap());
    app.client
        .patch(&path)
        .body_json(&json!({"name": "A2"}))
        .send()
        .await
        .assert_status_is_ok();
    let page = list(&app, &format!("updated_since={}&limit=1", urlencode(since))).await;
    let mut synced = emails(&page);
    let mut cursor = page["next_cursor"].as_str().map(str::to_owned);
    while let Some(next) = cursor {
        let page = list(
            &app,
            &format!("updated_since={}&limit=1&cursor={next}", urlencode(since)),
        )
        .await;
        synced.extend(emails(&page));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(
        synced.last().map(String::as_str),
        Some("a@example.com"),
        "latest change last: {synced:?}"
    );
    assert_eq!(synced.len(), 3);

    let future = list(&app, "updated_since=2999-01-01T00:00:00Z").await;
    assert_eq!(future["items"], json!([]));
    // With updated_since, a cursor is a position in the updated order.
    let first = list(&app, &format!("updated_since={}&limit=2", urlencode(since))).await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let rest = list(
        &app,
        &format!("updated_since={}&limit=2&cursor={cursor}", urlencode(since)),
    )
    .await;
    assert_eq!(emails(&rest), [synced[2].clone()]);
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

async fn patch_changes_only_given_fields(backend: Backend) {
    let app = TestApp::new(backend).await;
    let user = app.create_ok("patch@example.com", "Before").await;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap());
    let response = app
        .client
        .patch(&path)
        .body_json(&json!({"name": "  After "}))
        .send()
        .await;
    response.assert_status_is_ok();
    response.assert_header("etag", "\"2\"");
    let updated = body(response).await;
    assert_eq!(updated["name"], "After");
    assert_eq!(updated["email"], "patch@example.com", "absent fields stay");
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["created_at"], user["created_at"]);
    assert!(updated["updated_at"].as_str() >= user["updated_at"].as_str());

    let response = app
        .client
        .patch(&path)
        .body_json(&json!({"email": "New@Example.com"}))
        .send()
        .await;
    response.assert_status_is_ok();
    let updated = body(response).await;
    assert_eq!(
        (updated["email"].as_str(), updated["name"].as_str()),
        (Some("New@Example.com"), Some("After"))
    );
    assert_eq!(updated["version"], 3);

    // An empty object changes nothing and keeps the version.
    let response = app.client.patch(&path).body_json(&json!({})).send().await;
    response.assert_status_is_ok();
    response.assert_header("etag", "\"3\"");
    let fetched = body(app.client.get(&path).send().await).await;
    assert_eq!(fetched, updated);
}

async fn patch_honours_if_match(backend: Backend) {
    let app = TestApp::new(backend).await;
    let user = app.create_ok("match@example.com", "Match").await;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap());
    let patch = |if_match: &'static str, name: &'static str| {
        app.client
            .patch(&path)
            .header("if-match", if_match)
            .body_json(&json!({ "name": name }))
            .send()
    };
    patch("\"1\"", "One").await.assert_status_is_ok();
    assert_problem(patch("\"1\"", "Stale").await, 412, "version_mismatch").await;
    assert_problem(patch("W/\"2\"", "Weak").await, 412, "version_mismatch").await;
    assert_problem(patch("\"abc\"", "Opaque").await, 412, "version_mismatch").await;
    assert_problem(patch("garbage", "Garbage").await, 400, "invalid_request").await;
    let binary = app
        .client
        .patch(&path)
        .header(
            "if-match",
            poem::http::HeaderValue::from_bytes(b"\"\xc2\x84\"").unwrap(),
        )
        .body_json(&json!({"name": "Binary"}))
        .send()
        .await;
    assert_problem(binary, 400, "invalid_request").await;
    patch("\"9\", \"2\"", "Two").await.assert_status_is_ok();
    patch("*", "Any").await.assert_status_is_ok();
    let current = body(app.client.get(&path).send().await).await;
    assert_eq!(
        (current["name"].as_str(), current["version"].as_i64()),
        (Some("Any"), Some(4))
    );
    let empty = app
        .client
        .patch(&path)
        .header("if-match", "\"1\"")
        .body_json(&json!({}))
        .send()
        .await;
    assert_problem(empty, 412, "version_mismatch").await;
}

async fn patch_rejects_null_and_conflicts(backend: Backend) {
    let app = TestApp::new(backend).await;
    app.create_ok("taken@example.com", "Taken").await;
    let user = app.create_ok("mine@example.com", "Mine").await;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap());
    for payload in [
        json!({"name": null}),
        json!({"email": null}),
        json!({"name": "  "}),
        json!({"email": "nope"}),
        json!({"nickname": "x"}),
        Value::Null,
    ] {
        let response = app.client.patch(&path).body_json(&payload).send().await;
        assert_problem(response, 400, "invalid_request").await;
    }
    let empty = app
        .client
        .patch(&path)
        .content_type("application/json")
        .body("")
        .send()
        .await;
    assert_problem(empty, 400, "invalid_request").await;
    let conflict = app
        .client
        .patch(&path)
        .body_json(&json!({"email": "TAKEN@example.com"}))
        .send()
        .await;
    assert_problem(conflict, 409, "email_taken").await;
    let unchanged = body(app.client.get(&path).send().await).await;
    assert_eq!(unchanged, user, "rejected updates change nothing");
    // Changing only the case of one's own email is allowed.
    let recase = app
        .client
        .patch(&path)
        .body_json(&json!({"email": "MINE@example.com"}))
        .send()
        .await;
    recase.assert_status_is_ok();
}

async fn delete_honours_if_match(backend: Backend) {
    let app = TestApp::new(backend).await;
    let user = app.create_ok("gone@example.com", "Gone").await;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap());
    let stale = app
        .client
        .delete(&path)
        .header("if-match", "\"2\"")
        .send()
        .await;
    assert_problem(stale, 412, "version_mismatch").await;
    app.client.get(&path).send().await.assert_status_is_ok();
    let deleted = app
        .client
        .delete(&path)
        .header("if-match", "\"1\"")
        .send()
        .await;
    deleted.assert_status(StatusCode::NO_CONTENT);
    assert_problem(app.client.get(&path).send().await, 404, "user_not_found").await;
    assert_problem(app.client.delete(&path).send().await, 404, "user_not_found").await;
    // The email is free again.
    app.create_ok("GONE@example.com", "Back").await;
    let other = app.create_ok("plain@example.com", "Plain").await;
    let plain = app
        .client
        .delete(format!("/api/v1/users/{}", other["id"].as_str().unwrap()))
        .send()
        .await;
    plain.assert_status(StatusCode::NO_CONTENT);
}

async fn unknown_routes_and_methods_are_problems(backend: Backend) {
    let app = TestApp::new(backend).await;
    assert_problem(
        app.client.get("/api/v2/users").send().await,
        404,
        "not_found",
    )
    .await;
    assert_problem(
        app.client.put("/api/v1/users").send().await,
        405,
        "method_not_allowed",
    )
    .await;
}

async fn health_probes_answer(backend: Backend) {
    let app = TestApp::new(backend).await;
    let live = app.client.get("/health/live").send().await;
    live.assert_status_is_ok();
    assert_eq!(body(live).await, json!({"status": "ok"}));
    app.client
        .get("/health/ready")
        .send()
        .await
        .assert_status_is_ok();
}

async fn docs_and_spec_are_served(backend: Backend) {
    let app = TestApp::new(backend).await;
    let spec = app.client.get("/openapi.json").send().await;
    spec.assert_status_is_ok();
    let spec = body(spec).await;
    assert!(spec["paths"]["/api/v1/users/{id}"]["patch"].is_object());
    let docs = app.client.get("/docs").send().await;
    docs.assert_status_is_ok();
    assert!(
        docs.0
            .into_body()
            .into_string()
            .await
            .unwrap()
            .contains("swagger")
    );
}

/// Every 2xx write answers with a `Consistency-Token`, and every read takes one back; without
/// a replica every token reads the primary. A token no write gave is refused.
async fn writes_answer_with_a_consistency_token(backend: Backend) {
    let app = TestApp::new(backend).await;
    let token = |response: &poem::test::TestResponse| {
        response
            .0
            .headers()
            .get("consistency-token")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
            .expect("a Consistency-Token")
    };
    let created = app.create("token@example.com", "Token").await;
    created.assert_status(poem::http::StatusCode::CREATED);
    let mut tokens = vec![token(&created)];
    let user = body(created).await;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap());
    let updated = app
        .client
        .patch(&path)
        .body_json(&json!({ "name": "Tokened" }))
        .send()
        .await;
    updated.assert_status_is_ok();
    tokens.push(token(&updated));
    for token in &tokens {
        for read in [
            path.clone(),
            "/api/v1/users/lookup?email=token@example.com".to_owned(),
            "/api/v1/users".to_owned(),
        ] {
            let response = app
                .client
                .get(&read)
                .header("Consistency-Token", token)
                .send()
                .await;
            response.assert_status_is_ok();
        }
    }
    let deleted = app.client.delete(&path).send().await;
    deleted.assert_status(poem::http::StatusCode::NO_CONTENT);
    let gone = app
        .client
        .get(&path)
        .header("Consistency-Token", token(&deleted))
        .send()
        .await;
    assert_problem(gone, 404, "user_not_found").await;
    for bad in ["latest", "0/0/0", "1/g"] {
        let response = app
            .client
            .get("/api/v1/users")
            .header("Consistency-Token", bad)
            .send()
            .await;
        assert_invalid(response, "Consistency-Token").await;
    }
    // Not text at all: refused too, not read as absent.
    let binary = app
        .client
        .get("/api/v1/users")
        .header(
            "consistency-token",
            poem::http::HeaderValue::from_bytes(b"1/\xc2\x84").unwrap(),
        )
        .send()
        .await;
    assert_problem(binary, 400, "invalid_request").await;
}
