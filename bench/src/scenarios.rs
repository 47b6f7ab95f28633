//! The benchmark scenarios: the wrk request function that drives the service, and the
//! pgbench script that runs the same statement the service's repository issues, prepared.

use crate::data;

pub struct Scenario {
    pub name: &'static str,
    /// The request function of `scripts/load.lua`.
    pub lua: &'static str,
    /// pgbench scripts with their weights (`-f file@weight`).
    pub pgbench: Vec<(String, u32)>,
    /// pgbench's query protocol: `prepared`, or `extended` (unnamed statements, planned per
    /// execution) where the service runs the statement that way.
    pub protocol: &'static str,
}

const COLUMNS: &str = r#""users"."id", "users"."email", "users"."name", "users"."created_at", "users"."updated_at", "users"."version""#;

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

fn get_by_id(users: u64) -> String {
    format!(
        "\\set n random(1, {users})\nSELECT {COLUMNS} FROM \"users\" WHERE \"users\".\"id\" = {} LIMIT 1;\n",
        id_of("n")
    )
}

fn lookup(users: u64) -> String {
    format!(
        "\\set n random(1, {users})\nSELECT {COLUMNS} FROM \"users\" WHERE LOWER(\"email\") = LOWER('User' || :n || '@example.com') LIMIT 1;\n"
    )
}

fn list_first() -> String {
    format!(
        "SELECT {COLUMNS} FROM \"users\" ORDER BY \"users\".\"created_at\" DESC, \"users\".\"id\" DESC LIMIT 51;\n"
    )
}

fn list_deep(depth_n: u64) -> String {
    format!(
        "SELECT {COLUMNS} FROM \"users\" WHERE (\"created_at\", \"id\") < ('{}', '{}') ORDER BY \"users\".\"created_at\" DESC, \"users\".\"id\" DESC LIMIT 51;\n",
        data::created_at(depth_n).to_rfc3339(),
        data::id(depth_n)
    )
}

fn name_prefix() -> String {
    let prefixes: Vec<String> = data::PREFIXES.iter().map(|p| format!("'{p}'")).collect();
    let prefix = format!("(ARRAY[{}])[:k]", prefixes.join(", "));
    format!(
        "\\set k random(1, {})\nSELECT {COLUMNS} FROM \"users\" WHERE lower(name) ~>=~ lower({prefix}) AND lower(name) ~<~ (lower({prefix}) || chr(1114111)) ORDER BY \"users\".\"created_at\" DESC, \"users\".\"id\" DESC LIMIT 51;\n",
        data::PREFIXES.len()
    )
}

fn create() -> String {
    "\\set r random(1, 1000000000000)\nINSERT INTO \"users\" (\"id\", \"email\", \"name\", \"created_at\", \"updated_at\", \"version\") VALUES (gen_random_uuid(), 'pgbench-' || :client_id || '-' || :r || '@example.com', 'Bench User', now(), now(), 1) ON CONFLICT DO NOTHING;\n".to_owned()
}

fn update(update_users: u64) -> String {
    format!(
        "\\set n random(1, {update_users})\nUPDATE \"users\" SET \"updated_at\" = now(), \"version\" = \"version\" + 1, \"name\" = 'Bench Renamed' WHERE \"users\".\"id\" = {} RETURNING \"id\", \"email\", \"name\", \"created_at\", \"updated_at\", \"version\";\n",
        id_of("n")
    )
}

/// How many users (the first ones) the update scenarios touch.
pub fn update_users(users: u64) -> u64 {
    users.min(20_000)
}

/// Where the deep-page scenario starts: half-way through the newest-first listing.
pub fn deep_user(users: u64) -> u64 {
    users / 2
}

pub fn all(users: u64) -> Vec<Scenario> {
    let one = |sql: String| vec![(sql, 1)];
    vec![
        Scenario {
            name: "get by id",
            lua: "get_by_id",
            pgbench: one(get_by_id(users)),
            protocol: "prepared",
        },
        Scenario {
            name: "lookup by email",
            lua: "lookup_by_email",
            pgbench: one(lookup(users)),
            protocol: "prepared",
        },
        Scenario {
            name: "list first page",
            lua: "list_first_page",
            pgbench: one(list_first()),
            protocol: "prepared",
        },
        Scenario {
            name: "list deep page",
            lua: "list_deep_page",
            pgbench: one(list_deep(deep_user(users))),
            protocol: "prepared",
        },
        Scenario {
            name: "name prefix",
            lua: "name_prefix",
            pgbench: one(name_prefix()),
            protocol: "extended",
        },
        Scenario {
            name: "create",
            lua: "create",
            pgbench: one(create()),
            protocol: "prepared",
        },
        Scenario {
            name: "update",
            lua: "update",
            pgbench: one(update(update_users(users))),
            protocol: "prepared",
        },
        Scenario {
            name: "mix 80/20",
            lua: "mix",
            pgbench: vec![
                (get_by_id(users), 50),
                (lookup(users), 15),
                (list_first(), 10),
                (name_prefix(), 5),
                (update(update_users(users)), 15),
                (create(), 5),
            ],
            protocol: "prepared",
        },
    ]
}
