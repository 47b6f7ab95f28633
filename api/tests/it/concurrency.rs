//! Races: the database, not a pre-check, decides; and no acknowledged update is lost.

use crate::common::{Backend, TestApp, assert_problem, body};
use futures::future::join_all;
use poem::http::StatusCode;
use serde_json::json;

on_every_backend!(
    one_of_fifty_racing_creates_wins,
    one_of_two_writers_holding_one_etag_wins,
    unconditional_concurrent_updates_are_all_counted,
);

async fn one_of_fifty_racing_creates_wins(backend: Backend) {
    let app = TestApp::new(backend).await;
    let emails: Vec<String> = (0..50)
        .map(|i| {
            // The same address in 50 different spellings of case: bit k of i upper-cases
            // the k-th letter of "racexa".
            "race@example.com"
                .chars()
                .enumerate()
                .map(|(at, c)| {
                    let letter = if at < 4 { at } else { at.wrapping_sub(1) };
                    if letter < 6 && (i >> letter) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect()
        })
        .collect();
    let distinct: std::collections::HashSet<&String> = emails.iter().collect();
    assert_eq!(distinct.len(), 50, "50 distinct spellings");
    let responses = join_all(emails.iter().map(|email| app.create(email, "Racer"))).await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.0.status().as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 409).count(),
        49,
        "{statuses:?}"
    );
    for response in responses {
        if response.0.status() == StatusCode::CONFLICT {
            assert_problem(response, 409, "email_taken").await;
        }
    }
    let page = body(app.client.get("/api/v1/users").send().await).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
}

async fn one_of_two_writers_holding_one_etag_wins(backend: Backend) {
    let app = TestApp::new(backend).await;
    for round in 0..10 {
        let user = app
            .create_ok(&format!("writer{round}@example.com"), "Original")
            .await;
        let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap());
        let write = |name: &'static str| {
            app.client
                .patch(&path)
                .header("if-match", "\"1\"")
                .body_json(&json!({ "name": name }))
                .send()
        };
        let (first, second) = tokio::join!(write("First"), write("Second"));
        let mut outcomes = [first.0.status().as_u16(), second.0.status().as_u16()];
        let winner = if outcomes[0] == 200 {
            "First"
        } else {
            "Second"
        };
        outcomes.sort();
        assert_eq!(outcomes, [200, 412], "round {round}");
        let current = body(app.client.get(&path).send().await).await;
        assert_eq!(current["version"], 2, "exactly one update applied");
        assert_eq!(
            current["name"], winner,
            "the acknowledged update is the one stored"
        );
    }
}

async fn unconditional_concurrent_updates_are_all_counted(backend: Backend) {
    let app = TestApp::new(backend).await;
    let user = app.create_ok("counter@example.com", "Counter").await;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap());
    let writes = (0..20).map(|i| {
        app.client
            .patch(&path)
            .body_json(&json!({ "name": format!("N{i}") }))
            .send()
    });
    let responses = join_all(writes).await;
    let mut versions: Vec<i64> = Vec::new();
    for response in responses {
        response.assert_status_is_ok();
        versions.push(body(response).await["version"].as_i64().unwrap());
    }
    versions.sort();
    assert_eq!(
        versions,
        (2..=21).collect::<Vec<_>>(),
        "each acknowledged update got its own version"
    );
    let current = body(app.client.get(&path).send().await).await;
    assert_eq!(current["version"], 21);
}
