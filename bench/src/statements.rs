//! The statements the bench runs, taken from the service's repository
//! (`api::users::repository::statements`) so the bench measures exactly what the service runs:
//! as pgbench scripts (placeholders bound to pgbench expressions) and as plain SQL with literal
//! values, for EXPLAIN.

use api::users::cursor::Cursor;
use api::users::repository::{ListQuery, UserChanges, statements};
use chrono::{DateTime, Utc};
use entity::users;
use sea_orm::sea_query::{PostgresQueryBuilder, QueryBuilder, Value};
use sea_orm::{DbBackend, QueryTrait, Statement};
use uuid::Uuid;

use crate::data;

/// Page size of the listing scenarios (the API's default).
pub const PAGE: u64 = 50;

/// Stand-ins that mark the values a pgbench script replaces with its own expressions.
const SOME_ID: Uuid = Uuid::from_u128(0x0123_4567_89ab_7def_8123_4567_89ab_cdef);
const SOME_EMAIL: &str = "stand-in@example.com";
const SOME_PREFIX: &str = "stand-in";

fn some_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_000_000_000, 0).expect("a valid time")
}

pub fn find_by_id(id: Uuid) -> Statement {
    statements::find_by_id(id).build(DbBackend::Postgres)
}

pub fn find_by_email(email: &str) -> Statement {
    statements::find_by_email(email).build(DbBackend::Postgres)
}

pub fn list(after: Option<Cursor>, name_prefix: Option<&str>) -> Statement {
    list_query(&ListQuery {
        limit: PAGE,
        after,
        name_prefix: name_prefix.map(str::to_owned),
        updated_since: None,
    })
}

pub fn list_query(query: &ListQuery) -> Statement {
    statements::list(DbBackend::Postgres, query).build(DbBackend::Postgres)
}

pub fn insert(user: &users::Model) -> Statement {
    statements::insert(user).build(DbBackend::Postgres)
}

/// The rename the update scenario sends.
pub fn rename(id: Uuid, name: &str, at: DateTime<Utc>) -> Statement {
    let changes = UserChanges {
        email: None,
        name: Some(name.to_owned()),
    };
    let (sql, values) =
        statements::update_returning(id, changes, None, at).build(PostgresQueryBuilder);
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// pgbench's script of each statement, one per scenario.
pub mod pgbench {
    use super::*;

    /// The id of user `:n`, computed in SQL exactly as `data::id` computes it.
    fn id_of(var: &str) -> String {
        let ms = format!(
            "({} + CAST(:{var} AS bigint) * {})",
            data::BASE_MS,
            data::STEP_MS
        );
        format!(
            "CAST(lpad(to_hex({ms} >> 16), 8, '0') || lpad(to_hex({ms} & 65535), 4, '0') || '70008000' || lpad(to_hex(CAST(:{var} AS bigint)), 12, '0') AS uuid)"
        )
    }

    pub fn get_by_id(users: u64) -> String {
        format!(
            "\\set n random(1, {users})\n{};\n",
            bind(&find_by_id(SOME_ID), &[(Value::from(SOME_ID), id_of("n"))])
        )
    }

    pub fn lookup(users: u64) -> String {
        format!(
            "\\set n random(1, {users})\n{};\n",
            bind(
                &find_by_email(SOME_EMAIL),
                &[(
                    Value::from(SOME_EMAIL),
                    "'User' || :n || '@example.com'".to_owned()
                )]
            )
        )
    }

    pub fn list_first() -> String {
        format!("{};\n", bind(&list(None, None), &[]))
    }

    pub fn list_deep(depth_n: u64) -> String {
        let after = Cursor {
            at: data::created_at(depth_n),
            id: data::id(depth_n),
            name: String::new(),
        };
        format!("{};\n", bind(&list(Some(after), None), &[]))
    }

    pub fn name_prefix() -> String {
        let prefixes: Vec<String> = data::PREFIXES.iter().map(|p| format!("'{p}'")).collect();
        let prefix = format!("(ARRAY[{}])[:k]", prefixes.join(", "));
        format!(
            "\\set k random(1, {})\n{};\n",
            data::PREFIXES.len(),
            bind(
                &list(None, Some(SOME_PREFIX)),
                &[(Value::from(SOME_PREFIX), prefix)]
            )
        )
    }

    pub fn create() -> String {
        let user = users::Model {
            id: SOME_ID,
            email: SOME_EMAIL.to_owned(),
            name: "Bench User".to_owned(),
            created_at: some_time(),
            updated_at: some_time(),
            version: 1,
        };
        format!(
            "\\set r random(1, 1000000000000)\n{};\n",
            bind(
                &insert(&user),
                &[
                    (Value::from(SOME_ID), "gen_random_uuid()".to_owned()),
                    (
                        Value::from(SOME_EMAIL),
                        "'pgbench-' || :client_id || '-' || :r || '@example.com'".to_owned()
                    ),
                    (Value::from(some_time()), "now()".to_owned()),
                ]
            )
        )
    }

    pub fn update(update_users: u64) -> String {
        format!(
            "\\set n random(1, {update_users})\n{};\n",
            bind(
                &rename(SOME_ID, "Bench Renamed", some_time()),
                &[
                    (Value::from(SOME_ID), id_of("n")),
                    (Value::from(some_time()), "now()".to_owned()),
                ]
            )
        )
    }
}

/// The statement as plain SQL, its values written as literals.
pub fn literal(statement: &Statement) -> String {
    bind(statement, &[])
}

/// Replaces each `$n` of `statement` by the expression given for its value, else by the value
/// as a SQL literal.
fn bind(statement: &Statement, expressions: &[(Value, String)]) -> String {
    let values = statement
        .values
        .as_ref()
        .map(|values| values.0.as_slice())
        .unwrap_or_default();
    let substitute = |index: usize| -> String {
        let value = &values[index - 1];
        expressions
            .iter()
            .find(|(stand_in, _)| stand_in == value)
            .map(|(_, expression)| expression.clone())
            .unwrap_or_else(|| PostgresQueryBuilder.value_to_string(value))
    };
    let mut sql = String::with_capacity(statement.sql.len());
    let mut chars = statement.sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut digits = String::new();
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                digits.push(d);
            }
            sql.push_str(&substitute(digits.parse().expect("digits")));
        } else {
            sql.push(c);
        }
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_ins_become_pgbench_expressions_and_the_rest_literals() {
        let script = pgbench::get_by_id(10);
        assert!(
            script.contains(r#"WHERE "users"."id" = CAST(lpad"#),
            "{script}"
        );
        assert!(script.contains("LIMIT 1"), "{script}");
        assert!(!script.contains('$'), "{script}");
        let update = pgbench::update(10);
        assert!(
            update.contains("'Bench Renamed'") && update.contains("now()"),
            "{update}"
        );
        assert!(update.contains("RETURNING"), "{update}");
        let search = pgbench::name_prefix();
        assert_eq!(search.matches("(ARRAY[").count(), 2, "{search}");
    }
}
