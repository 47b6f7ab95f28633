//! The served OpenAPI document is the committed `openapi.json`: frontend teams regenerate
//! clients on purpose, never by surprise. After an intended change to the API, refresh it:
//! `UPDATE_OPENAPI=1 cargo test -p api --test it openapi`, and commit the file.

use crate::common::{Backend, TestApp, body};
use serde_json::Value;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.json");

#[tokio::test]
async fn served_spec_is_the_committed_one() {
    // The committed contract is production's: tokens configured.
    let app = TestApp::with(Backend::Sqlite, &[("API_TOKENS", "a-token")]).await;
    let response = app.client.get("/openapi.json").send().await;
    response.assert_status_is_ok();
    let served: Value = body(response).await;
    assert_eq!(
        served,
        serde_json::from_str::<Value>(&api::openapi_spec()).unwrap()
    );

    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        let pretty = serde_json::to_string_pretty(&served).unwrap() + "\n";
        std::fs::write(COMMITTED, pretty).expect("write openapi.json");
    }
    let committed = std::fs::read_to_string(COMMITTED).expect("openapi.json is committed");
    let committed: Value = serde_json::from_str(&committed).expect("openapi.json is JSON");
    assert!(
        served == committed,
        "the API's spec differs from the committed openapi.json; if the change is intended, run \
         `UPDATE_OPENAPI=1 cargo test -p api --test it openapi` and commit openapi.json"
    );
}

#[test]
fn every_operation_has_an_id_and_declares_its_problems() {
    let spec: Value = serde_json::from_str(&api::openapi_spec()).unwrap();
    let servers: Vec<&str> = spec["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|server| server["url"].as_str().unwrap())
        .collect();
    assert_eq!(servers, ["/"], "the root: paths are written in full");
    let mut ids = Vec::new();
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            ids.push(
                operation["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path}"))
                    .to_owned(),
            );
            for (status, response) in operation["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/problem+json"]["schema"]["$ref"];
                    assert_eq!(
                        schema, "#/components/schemas/Problem",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    ids.sort();
    assert_eq!(
        ids,
        [
            "createUser",
            "deleteUser",
            "getUser",
            "listUserChanges",
            "listUsers",
            "live",
            "lookupUserByEmail",
            "ready",
            "updateUser"
        ]
    );
    let errors = |path: &str, method: &str| -> Vec<String> {
        spec["paths"][path][method]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    for status in ["409", "413", "503"] {
        assert!(errors("/api/v1/users", "post").contains(&status.to_owned()));
    }
    for status in ["404", "409", "412"] {
        assert!(errors("/api/v1/users/{id}", "patch").contains(&status.to_owned()));
    }
    assert!(errors("/api/v1/users/{id}", "get").contains(&"304".to_owned()));
}

/// The first-column names (`| `name` | ...`) of the table under `## {section}` in docs/api.md,
/// with the row's other cells.
fn documented(section: &str) -> Vec<(String, Vec<String>)> {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md"))
        .expect("docs/api.md");
    let heading = format!("## {section}");
    page.lines()
        .skip_while(|line| *line != heading)
        .skip(1)
        .take_while(|line| !line.starts_with("## "))
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|row| {
            let (name, rest) = row.split_once('`')?;
            let cells = rest.split('|').map(|cell| cell.trim().to_owned()).collect();
            Some((name.to_owned(), cells))
        })
        .collect()
}

/// docs/api.md is what client authors read: it must name exactly the operations of the spec
/// and exactly the error codes the service answers, with their statuses.
#[test]
fn the_api_page_and_the_spec_agree() {
    let spec: Value = serde_json::from_str(&api::openapi_spec()).unwrap();
    let mut in_spec: Vec<String> = spec["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|operations| operations.as_object().unwrap().values())
        .map(|operation| operation["operationId"].as_str().unwrap().to_owned())
        .collect();
    in_spec.sort();
    let mut on_page: Vec<String> = documented("Operations")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    on_page.sort();
    assert_eq!(on_page, in_spec, "docs/api.md's operations");

    let mut codes: Vec<(String, String)> = api::http::error::ErrorCode::all()
        .map(|code| {
            let row = code.row();
            (row.code.to_owned(), row.status.as_u16().to_string())
        })
        .collect();
    codes.sort();
    let mut on_page: Vec<(String, String)> = documented("Errors")
        .into_iter()
        .map(|(code, cells)| (code, cells.get(1).cloned().unwrap_or_default()))
        .collect();
    on_page.sort();
    assert_eq!(on_page, codes, "docs/api.md's error codes and statuses");

    // Every status an operation declares has its code on the page.
    for operations in spec["paths"].as_object().unwrap().values() {
        for operation in operations.as_object().unwrap().values() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                if let Some(code) = response["description"]
                    .as_str()
                    .and_then(|text| text.strip_prefix('`'))
                    .and_then(|text| text.split_once('`'))
                    .map(|(code, _)| code)
                {
                    assert!(
                        codes.iter().any(|(c, s)| c == code && s == status),
                        "{code} ({status}) of the spec is on the page"
                    );
                }
            }
        }
    }
}
