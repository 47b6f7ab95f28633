//! Every statement the repository issues uses an index on PostgreSQL, on a table big enough
//! (60k rows, analysed) that the planner would otherwise scan it; in the custom plan a first
//! execution gets and in the generic plan a prepared statement settles on after five.

use std::sync::{Arc, Mutex};

use crate::common::{Backend, TestDb, test_config};
use api::db::Freshness;
use api::http::auth::Principal;
use api::http::idempotency::IdempotencyKey;
use api::users::cursor::Cursor;
use api::users::idempotency::KeyClaim;
use api::users::repository::{
    ListQuery, NewUser, Precondition, UserChanges, UserRepository, Written, statements,
};
use sea_orm::sea_query::{PostgresQueryBuilder, QueryBuilder, Value};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, QueryTrait, Statement,
};
use serde_json::Value as Json;

const ROWS: u32 = 60_000;

async fn seed(db: &DatabaseConnection) {
    db.execute_unprepared(&format!(
        "INSERT INTO users (id, email, name, created_at, updated_at, version)
         SELECT gen_random_uuid(), 'user' || g || '@example.com',
                CASE WHEN g % 6 = 0 THEN 'Common ' ELSE '' END || md5(g::text) || ' Name',
                now() - g * interval '1 second', now() - (g % 5000) * interval '1 minute', 1
         FROM generate_series(1, {ROWS}) AS g;
         INSERT INTO user_tombstones (id, version, change_position, deleted_at_secs)
         SELECT gen_random_uuid(), 2, g, extract(epoch FROM now())::bigint - g
         FROM generate_series(1, {ROWS} / 3) AS g;
         INSERT INTO idempotency_keys (key_hash, fingerprint, expires_at_secs)
         SELECT md5(g::text)::uuid, md5(g::text)::uuid, extract(epoch FROM now())::bigint + g - 1000
         FROM generate_series(1, {ROWS} / 3) AS g;
         ANALYZE users;
         ANALYZE user_tombstones;
         ANALYZE idempotency_keys;"
    ))
    .await
    .expect("seed users");
}

/// A connection that records every statement it runs.
async fn recording(url: &str) -> (DatabaseConnection, Arc<Mutex<Vec<Statement>>>) {
    let mut options = ConnectOptions::new(url);
    options.max_connections(1).sqlx_logging(false);
    let mut db = Database::connect(options).await.expect("connect");
    let statements = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&statements);
    db.set_metric_callback(move |info| sink.lock().unwrap().push(info.statement.clone()));
    (db, statements)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_repository_statement_uses_an_index() {
    let test_db = TestDb::new(Backend::Postgres).await;
    let (db, statements) = recording(test_db.url()).await;
    seed(&db).await;
    let deep: (String, chrono::DateTime<chrono::Utc>, uuid::Uuid) = {
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT name, created_at, id FROM users ORDER BY created_at DESC, id DESC OFFSET 40000 LIMIT 1",
            ))
            .await
            .unwrap()
            .unwrap();
        (
            row.try_get("", "name").unwrap(),
            row.try_get("", "created_at").unwrap(),
            row.try_get("", "id").unwrap(),
        )
    };
    statements.lock().unwrap().clear();

    // The service's own data path, recording every prepared statement it runs.
    let service_db = api::db::Database::connect(&test_config(test_db.url(), &[]))
        .await
        .expect("connect");
    let recorded = Arc::clone(&statements);
    service_db
        .pg
        .as_ref()
        .expect("PostgreSQL runs on the pipelines")
        .set_metric_callback(move |info| {
            if info.prepared {
                recorded
                    .lock()
                    .unwrap()
                    .push(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        info.sql,
                        info.values.to_vec(),
                    ));
            }
        });
    let repository = UserRepository::new(&service_db);
    let probe = || NewUser {
        email: "probe@example.com".into(),
        name: "Probe".into(),
    };
    let Written::Fresh(user) = repository.create(probe(), None).await.unwrap() else {
        panic!("created")
    };
    // Keyed writes, and a keyed create whose email is taken (the key is then looked up).
    let claim = |key: &str| {
        let new = probe();
        KeyClaim::new(
            &Principal::Client(None),
            &IdempotencyKey::parse(key.to_owned()).unwrap(),
            &new.keyed(),
            std::time::Duration::from_secs(60),
        )
    };
    repository
        .create(probe(), Some(&claim("taken")))
        .await
        .unwrap_err();
    let other = NewUser {
        email: "keyed@example.com".into(),
        ..probe()
    };
    repository
        .create(other, Some(&claim("create")))
        .await
        .unwrap();
    repository
        .find_by_id(user.id, Freshness::Any)
        .await
        .unwrap();
    repository
        .find_by_email("PROBE@example.com", Freshness::Any)
        .await
        .unwrap();
    let deep_cursor = Cursor {
        at: deep.1,
        id: deep.2,
        name: String::new(),
    };
    let name_cursor = Cursor {
        name: deep.0.clone(),
        ..deep_cursor.clone()
    };
    let since = deep.1 - chrono::Duration::hours(24);
    let prefix = deep.0[..3].to_owned();
    for (after, name_prefix, updated_since) in [
        (None, None, None),
        (Some(deep_cursor.clone()), None, None),
        (None, Some(prefix.clone()), None),
        (Some(name_cursor.clone()), Some(prefix.clone()), None),
        (None, None, Some(since)),
        (Some(deep_cursor.clone()), None, Some(since)),
    ] {
        repository
            .list(
                ListQuery {
                    limit: 50,
                    after,
                    name_prefix,
                    updated_since,
                },
                Freshness::Any,
            )
            .await
            .unwrap();
    }
    let rename = || UserChanges {
        name: Some("Renamed".into()),
        ..Default::default()
    };
    repository
        .update(user.id, rename(), Precondition::Any, None)
        .await
        .unwrap();
    repository
        .update(
            user.id,
            rename(),
            Precondition::OneOf(vec![2]),
            Some(&claim("update")),
        )
        .await
        .unwrap();
    // A stale version: the update matches nothing, then the version is read back.
    assert!(
        repository
            .update(user.id, rename(), Precondition::OneOf(vec![1]), None)
            .await
            .is_err()
    );
    repository
        .delete(user.id, Precondition::OneOf(vec![3]))
        .await
        .unwrap();
    repository
        .delete(user.id, Precondition::Any)
        .await
        .unwrap_err();

    // The change feed from the start and from a token, and the tombstones' purge.
    let first = repository.changes(None, 100, Freshness::Any).await.unwrap();
    repository
        .changes(Some(first.next), 100, Freshness::Any)
        .await
        .unwrap();
    repository
        .purge_tombstones(std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    repository.purge_idempotency_keys().await.unwrap();

    let statements = statements.lock().unwrap().clone();
    // Name searches in bounded time whatever the prefix: a stem 10,000 users share, a rare
    // name under it, an absent one, one letter; first pages and deep ones. Each reads one range
    // of the name index and at most a page and a half of rows (in the index's order, or the
    // few matches of a rare prefix, then sorted), in the custom plan and in the generic one.
    let mut search_failures = Vec::new();
    let rare = format!("common {}", &deep_common(&db).await[..12]);
    for name_prefix in ["COMMON", &rare, "zzzz-absent", "c", &prefix] {
        for after in [None, Some(name_cursor.clone())] {
            let query = ListQuery {
                limit: 50,
                after,
                name_prefix: Some(name_prefix.to_owned()),
                updated_since: None,
            };
            let statement =
                statements::list(DbBackend::Postgres, &query).build(DbBackend::Postgres);
            for generic in [false, true] {
                let plan = explain_analyze(&db, &statement, generic).await;
                let (mut names, mut scans) = (Vec::new(), Vec::new());
                index_names(&plan, &mut names);
                sequential_scans(&plan, &mut scans);
                if !scans.is_empty()
                    || rows_read(&plan) > 75
                    || !names.iter().any(|n| n == "users_name_lower_id_idx")
                {
                    search_failures.push(format!(
                        "prefix {name_prefix} ({}): {}\n{}",
                        if generic { "generic" } else { "custom" },
                        statement.sql,
                        serde_json::to_string_pretty(&plan).unwrap()
                    ));
                }
            }
        }
    }
    assert!(
        search_failures.is_empty(),
        "name searches that do not read one range of the name index:\n{}",
        search_failures.join("\n\n")
    );

    assert!(
        statements.len() >= 18,
        "recorded {} statements",
        statements.len()
    );
    let mut failures = Vec::new();
    for (i, statement) in statements.iter().enumerate() {
        for generic in [false, true] {
            let plan = explain(&db, statement, i, generic).await;
            let mut names = Vec::new();
            index_names(&plan, &mut names);
            let mut scans = Vec::new();
            sequential_scans(&plan, &mut scans);
            let expected = expected_index(&statement.sql);
            let right_index = expected.is_none_or(|index| names.iter().any(|name| name == index));
            if !scans.is_empty() || !right_index {
                failures.push(format!(
                    "{} plan of {}\n{}",
                    if generic { "generic" } else { "custom" },
                    statement.sql,
                    serde_json::to_string_pretty(&plan).unwrap()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "statements without an index:\n{}",
        failures.join("\n\n")
    );
}

/// EXPLAINs `statement` with its values, as a custom plan or (via PREPARE with
/// `plan_cache_mode = force_generic_plan`) as the generic plan of a prepared statement.
async fn explain(db: &DatabaseConnection, statement: &Statement, i: usize, generic: bool) -> Json {
    let values: Vec<Value> = statement.values.clone().map(|v| v.0).unwrap_or_default();
    let literals: Vec<String> = values
        .iter()
        .map(|v| PostgresQueryBuilder.value_to_string(v))
        .collect();
    let sql = if generic {
        let types: Vec<&str> = values.iter().map(pg_type).collect();
        db.execute_unprepared("SET plan_cache_mode = force_generic_plan")
            .await
            .unwrap();
        let types = if types.is_empty() {
            String::new()
        } else {
            format!(" ({})", types.join(", "))
        };
        db.execute_unprepared(&format!("PREPARE probe_{i}{types} AS {}", statement.sql))
            .await
            .unwrap_or_else(|e| panic!("PREPARE {}: {e}", statement.sql));
        if literals.is_empty() {
            format!("EXPLAIN (FORMAT JSON) EXECUTE probe_{i}")
        } else {
            format!(
                "EXPLAIN (FORMAT JSON) EXECUTE probe_{i}({})",
                literals.join(", ")
            )
        }
    } else {
        db.execute_unprepared("SET plan_cache_mode = auto")
            .await
            .unwrap();
        format!("EXPLAIN (FORMAT JSON) {}", statement.sql)
    };
    let explained = if generic {
        Statement::from_string(DbBackend::Postgres, sql)
    } else {
        Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
    };
    let row = db.query_one_raw(explained).await.unwrap().unwrap();
    let plan: Json = row.try_get("", "QUERY PLAN").unwrap();
    if generic {
        db.execute_unprepared(&format!("DEALLOCATE probe_{i}"))
            .await
            .unwrap();
    }
    plan
}

fn pg_type(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "text",
        Value::Uuid(_) => "uuid",
        Value::ChronoDateTimeUtc(_) => "timestamptz",
        Value::BigInt(_) | Value::BigUnsigned(_) => "int8",
        Value::Int(_) | Value::Unsigned(_) => "int4",
        other => panic!("no PostgreSQL type for {other:?}"),
    }
}

/// The name of a user deep in the shared stem, case-folded.
async fn deep_common(db: &DatabaseConnection) -> String {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT lower(name) AS name FROM users WHERE name LIKE 'Common %' \
             ORDER BY id OFFSET 5000 LIMIT 1",
        ))
        .await
        .unwrap()
        .unwrap();
    let name: String = row.try_get("", "name").unwrap();
    name["common ".len()..].to_owned()
}

/// EXPLAIN ANALYZE of `statement`, as a custom or a generic plan.
async fn explain_analyze(db: &DatabaseConnection, statement: &Statement, generic: bool) -> Json {
    let mode = if generic {
        "force_generic_plan"
    } else {
        "force_custom_plan"
    };
    db.execute_unprepared(&format!("SET plan_cache_mode = {mode}"))
        .await
        .unwrap();
    // A prepared statement, as the service runs it (sqlx prepares every statement it is given
    // with values).
    let explained = Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!("EXPLAIN (ANALYZE, FORMAT JSON) {}", statement.sql),
        statement.values.clone().map(|v| v.0).unwrap_or_default(),
    );
    let row = db.query_one_raw(explained).await.unwrap().unwrap();
    db.execute_unprepared("SET plan_cache_mode = auto")
        .await
        .unwrap();
    row.try_get("", "QUERY PLAN").unwrap()
}

/// The most rows any scan node of an analysed plan read.
fn rows_read(plan: &Json) -> u64 {
    match plan {
        Json::Object(node) => {
            let own = match node.get("Node Type").and_then(Json::as_str) {
                Some(kind) if kind.contains("Scan") => {
                    let rows = node.get("Actual Rows").and_then(Json::as_u64).unwrap_or(0);
                    let loops = node.get("Actual Loops").and_then(Json::as_u64).unwrap_or(1);
                    rows * loops
                }
                _ => 0,
            };
            node.values().map(rows_read).fold(own, u64::max)
        }
        Json::Array(items) => items.iter().map(rows_read).max().unwrap_or(0),
        _ => 0,
    }
}

fn sequential_scans(plan: &Json, found: &mut Vec<String>) {
    match plan {
        Json::Object(node) => {
            let relation = node.get("Relation Name").and_then(Json::as_str);
            // `change_feed` is one row by construction: a scan of it is its one page.
            if node.get("Node Type").and_then(Json::as_str) == Some("Seq Scan")
                && relation != Some("change_feed")
            {
                found.push(relation.unwrap_or("?").to_owned());
            }
            node.values()
                .for_each(|child| sequential_scans(child, found));
        }
        Json::Array(items) => items
            .iter()
            .for_each(|child| sequential_scans(child, found)),
        _ => {}
    }
}

/// The index a statement should be served by; `None` for an INSERT (keyed or not).
fn expected_index(sql: &str) -> Option<&'static str> {
    if sql.contains("FROM idempotency_keys WHERE key_hash") {
        Some("idempotency_keys_pkey")
    } else if sql.contains("FROM idempotency_keys WHERE expires_at_secs") {
        Some("idempotency_keys_expires_idx")
    } else if sql.starts_with("INSERT") || sql.starts_with("WITH written AS (INSERT") {
        // A create, keyed or not, reads nothing.
        None
    } else if sql.contains("pg_current_snapshot") {
        Some("users_change_position_id_idx")
    } else if sql.contains("FROM user_tombstones WHERE deleted_at_secs") {
        Some("user_tombstones_deleted_at_idx")
    } else if sql.contains("ORDER BY \"users\".\"updated_at\"") {
        Some("users_updated_at_id_idx")
    } else if sql.contains("ORDER BY lower(name)") {
        Some("users_name_lower_id_idx")
    } else if sql.contains("LOWER(\"email\")") {
        Some("users_email_lower_key")
    } else if sql.contains("\"users\".\"id\" = $") {
        Some("users_pkey")
    } else if sql.contains("ORDER BY \"users\".\"updated_at\"") {
        Some("users_updated_at_id_idx")
    } else if sql.contains("ORDER BY \"users\".\"created_at\"") {
        Some("users_created_at_id_idx")
    } else {
        panic!("no expected index for {sql}")
    }
}

fn index_names(plan: &Json, found: &mut Vec<String>) {
    match plan {
        Json::Object(node) => {
            if let Some(name) = node.get("Index Name").and_then(Json::as_str) {
                found.push(name.to_owned());
            }
            node.values().for_each(|child| index_names(child, found));
        }
        Json::Array(items) => items.iter().for_each(|child| index_names(child, found)),
        _ => {}
    }
}
