//! The benchmark scenarios: the wrk request function that drives the service, and the
//! pgbench script that runs the same statement the service's repository issues, prepared.

use crate::statements::pgbench::{
    create, get_by_id, list_deep, list_first, lookup, name_prefix, update,
};

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

impl Scenario {
    /// It creates users (removed after it, so the next scenario sees the seeded data).
    pub fn creates(&self) -> bool {
        matches!(self.lua, "create" | "create_keyed" | "mix")
    }

    /// It sends `Idempotency-Key`: it needs the keys' table, which `before`'s database (the
    /// first migration only) does not have.
    pub fn keyed(&self) -> bool {
        self.lua.ends_with("_keyed")
    }

    /// It updates users with `If-Match` (their versions are read before it).
    pub fn updates(lua: &str) -> bool {
        matches!(lua, "update" | "update_keyed" | "mix")
    }

    /// The same scenario without its pgbench ceiling, for runs that measure the service only.
    pub fn service_only(&self) -> Scenario {
        Scenario {
            name: self.name,
            lua: self.lua,
            pgbench: Vec::new(),
            protocol: self.protocol,
        }
    }
}

/// How many users (the first ones) the update scenarios touch: all of them. Each wrk thread
/// walks its share in turn, sending the version it expects in `If-Match`; a walk that wrapped
/// around sent a stale version now and then (the few 412s of earlier runs, about one per
/// thread per wrap, in every build). A walk through every user does not wrap.
pub fn update_users(users: u64) -> u64 {
    users
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
        // The writes with an `Idempotency-Key` each: the key's cost is their rate against the
        // unkeyed ones' (the same statements for pgbench).
        Scenario {
            name: "create keyed",
            lua: "create_keyed",
            pgbench: one(create()),
            protocol: "prepared",
        },
        Scenario {
            name: "update keyed",
            lua: "update_keyed",
            pgbench: one(update(update_users(users))),
            protocol: "prepared",
        },
        // The same SELECT as get by id for pgbench (its order of users does not matter to it);
        // the service with the cache starts this one cold: its hit ratio is the measure.
        Scenario {
            name: "zipf get by id",
            lua: "zipf_get_by_id",
            pgbench: one(get_by_id(users)),
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
