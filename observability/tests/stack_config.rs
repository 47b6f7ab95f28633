//! The docker-compose stack and the Grafana dashboards, checked by parsing them (no Docker
//! engine runs here). `promtool` checks the Prometheus config and rules in `.ci/run`; the
//! dashboards' queries run against a real Prometheus in the api's observability test.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn postgres_settings(compose: &Value) -> Vec<String> {
    compose["services"]["postgres"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap().to_owned())
        .collect()
}

/// The member names of a mapping.
fn keys(mapping: &Value) -> HashSet<&str> {
    mapping
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

#[test]
fn compose_has_every_service_with_health_and_storage() {
    let compose = yaml("docker-compose.yml");
    let services = keys(&compose["services"]);
    assert_eq!(
        services,
        HashSet::from([
            "postgres",
            "api",
            "prometheus",
            "grafana",
            "postgres-exporter",
            "redis",
            "redis-exporter",
            "jaeger",
            "postgres-replica",
            "pgbouncer",
            "api-scaled",
            "lb"
        ])
    );
    assert_eq!(
        compose["services"]["jaeger"]["profiles"][0], "tracing",
        "Jaeger runs only when asked for"
    );
    for service in ["postgres", "redis", "api", "prometheus", "grafana"] {
        assert!(
            compose["services"][service]["healthcheck"]["test"].is_array(),
            "{service} has a healthcheck"
        );
    }
    let volumes = keys(&compose["volumes"]);
    assert_eq!(
        volumes,
        HashSet::from([
            "postgres-data",
            "postgres-replica-data",
            "prometheus-data",
            "grafana-data"
        ])
    );
    let mounts = |service: &str| -> Vec<String> {
        compose["services"][service]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert!(mounts("postgres").contains(&"postgres-data:/var/lib/postgresql/data".to_owned()));
    assert!(
        mounts("prometheus").contains(&"./observability/prometheus:/etc/prometheus:ro".to_owned())
    );
    assert!(
        mounts("grafana").contains(
            &"./observability/grafana/provisioning:/etc/grafana/provisioning:ro".to_owned()
        )
    );
    assert!(
        mounts("grafana")
            .contains(&"./observability/grafana/dashboards:/etc/grafana/dashboards:ro".to_owned())
    );
    let mounted = [
        "prometheus",
        "grafana",
        "postgres",
        "postgres-replica",
        "pgbouncer",
        "lb",
    ];
    for mount in mounted.iter().flat_map(|service| mounts(service)) {
        if let Some(local) = mount.strip_prefix("./") {
            let local = local.split(':').next().unwrap();
            assert!(repo().join(local).exists(), "{local} exists");
        }
    }
}

/// The `scale` profile: a streaming replica, PgBouncer in transaction mode in front of it and
/// the primary, two stateless instances through it (unnamed statements, migrations left to
/// `api`, reads on the replica), a load balancer over them, and Prometheus scraping each.
#[test]
fn the_scale_profile_runs_many_instances_on_a_replica_through_pgbouncer() {
    let compose = yaml("docker-compose.yml");
    let service = |name: &str| &compose["services"][name];
    for name in ["postgres-replica", "pgbouncer", "api-scaled", "lb"] {
        assert_eq!(
            service(name)["profiles"][0],
            "scale",
            "{name} only in the profile"
        );
    }
    for name in ["postgres", "api", "redis", "prometheus", "grafana"] {
        assert!(service(name)["profiles"].is_null(), "{name} always runs");
    }

    let replica_script =
        std::fs::read_to_string(repo().join("deploy/postgres/replica.sh")).unwrap();
    assert!(
        replica_script.contains("pg_basebackup -h postgres"),
        "fed by the primary"
    );
    assert!(replica_script.contains(" -R "), "then streams from it");
    assert!(replica_script.contains("hot_standby=on"));
    let hba = std::fs::read_to_string(repo().join("deploy/postgres/pg_hba.conf")).unwrap();
    assert!(hba.lines().any(|line| line.starts_with("host replication")));
    assert!(
        postgres_settings(&compose).contains(&"hba_file=/etc/postgresql/pg_hba.conf".to_owned()),
        "the primary reads that pg_hba.conf"
    );

    let bouncer = std::fs::read_to_string(repo().join("deploy/pgbouncer/pgbouncer.ini")).unwrap();
    assert!(bouncer.contains("pool_mode = transaction"));
    assert!(bouncer.contains("users = host=postgres port=5432"));
    assert!(bouncer.contains("users_replica = host=postgres-replica port=5432"));

    let api = service("api-scaled");
    assert_eq!(api["deploy"]["replicas"], 2);
    assert_eq!(api["build"], ".", "the same image as api");
    let env = &api["environment"];
    let text = |key: &str| match &env[key] {
        Value::String(text) => text.clone(),
        other => other.as_i64().map(|n| n.to_string()).unwrap_or_default(),
    };
    assert!(secret(&compose, api, "DATABASE_URL").contains("@pgbouncer:6432/users?"));
    assert!(secret(&compose, api, "DATABASE_READ_URL").contains("@pgbouncer:6432/users_replica?"));
    assert!(
        secret(&compose, api, "DATABASE_MIGRATION_URL").contains("@postgres:5432/users?"),
        "migrations go to the database itself, not through PgBouncer"
    );
    assert_eq!(text("DB_PREPARED_STATEMENTS"), "false");
    assert_eq!(text("DB_STATEMENT_TIMEOUT_MS"), "0");
    assert_eq!(
        text("TRUSTED_PROXIES"),
        service("lb")["networks"]["default"]["ipv4_address"]
            .as_str()
            .unwrap(),
        "the instances believe the load balancer's X-Forwarded-For"
    );
    assert_eq!(
        text("REDIS_URL"),
        service("api")["environment"]["REDIS_URL"].as_str().unwrap()
    );
    assert_eq!(
        api["depends_on"]["api"]["condition"], "service_healthy",
        "migrated by api first"
    );

    let lb = std::fs::read_to_string(repo().join("deploy/nginx/lb.conf")).unwrap();
    assert!(lb.contains("server api-scaled:8080;"));
    assert!(lb.contains("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"));

    let prometheus = yaml("observability/prometheus/prometheus.yml");
    let job = prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|job| job["job_name"] == "user-service")
        .unwrap();
    let names = &job["dns_sd_configs"][0]["names"];
    assert_eq!(names[0], "api");
    assert_eq!(names[1], "api-scaled", "every instance scraped");
    assert_eq!(job["dns_sd_configs"][0]["port"], 9464);
}

/// What `service` gets as `variable`: through `variable_FILE`, a compose secret's file (the
/// variable itself emptied, so a `.env` cannot set both).
fn secret(compose: &Value, service: &Value, variable: &str) -> String {
    let env = &service["environment"];
    if let Some(plain) = env[variable].as_str().filter(|value| !value.is_empty()) {
        panic!("{variable} in plain sight: {plain}");
    }
    let path = env[format!("{variable}_FILE").as_str()]
        .as_str()
        .unwrap_or_else(|| panic!("{variable}_FILE"));
    let name = path
        .strip_prefix("/run/secrets/")
        .expect("a compose secret");
    assert!(
        service["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|secret| secret == name),
        "{name} granted"
    );
    let file = compose["secrets"][name]["file"].as_str().unwrap();
    let file = file
        .strip_prefix("${API_TOKENS_SECRET:-")
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or(file);
    std::fs::read_to_string(repo().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn api_waits_for_a_healthy_database_and_reads_env() {
    let compose = yaml("docker-compose.yml");
    let api = &compose["services"]["api"];
    assert_eq!(api["build"], ".");
    assert_eq!(
        api["depends_on"]["postgres"]["condition"],
        "service_healthy"
    );
    assert_eq!(api["env_file"][0]["path"], ".env");
    let url = secret(&compose, api, "DATABASE_URL");
    assert!(
        url.starts_with("postgres://") && url.contains("@postgres:5432/"),
        "{url}"
    );
    assert_eq!(api["environment"]["ADMIN_ADDR"], "0.0.0.0:9464");
    // The cache: the api's URL carries the password Redis requires, both from REDIS_PASSWORD.
    let redis_url = api["environment"]["REDIS_URL"].as_str().unwrap();
    assert!(
        redis_url.starts_with("redis://:${REDIS_PASSWORD") && redis_url.ends_with("@redis:6379/0"),
        "{redis_url}"
    );
    let redis = compose["services"]["redis"]["command"].as_array().unwrap();
    let requirepass = redis
        .iter()
        .position(|arg| arg == "--requirepass")
        .expect("Redis requires a password");
    assert!(
        redis[requirepass + 1]
            .as_str()
            .unwrap()
            .starts_with("${REDIS_PASSWORD")
    );
    assert_eq!(
        compose["services"]["redis-exporter"]["environment"]["REDIS_PASSWORD"],
        redis[requirepass + 1]
    );
    let tokens = secret(&compose, api, "API_TOKENS");
    assert!(!tokens.trim().is_empty(), "a token is configured");
    assert!(
        compose["secrets"]["api_tokens"]["file"]
            .as_str()
            .unwrap()
            .starts_with("${API_TOKENS_SECRET:-"),
        "overridable"
    );
    let example = std::fs::read_to_string(repo().join(".env.example")).unwrap();
    assert!(
        example
            .lines()
            .any(|l| l.starts_with("API_TOKENS=") && l.len() > "API_TOKENS=".len())
    );
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("a Dockerfile");
    assert!(dockerfile.matches("FROM ").count() >= 2, "multi-stage");
}

#[test]
fn postgres_is_tuned_without_giving_up_durability() {
    let compose = yaml("docker-compose.yml");
    let settings = postgres_settings(&compose);
    for expected in [
        "shared_buffers=256MB",
        "effective_cache_size=1GB",
        "work_mem=4MB",
        "synchronous_commit=on",
        "shared_preload_libraries=pg_stat_statements",
        "max_wal_size=4GB",
        "checkpoint_completion_target=0.9",
    ] {
        assert!(
            settings.iter().any(|s| s == expected),
            "{expected} in {settings:?}"
        );
    }
    for forbidden in [
        "fsync=off",
        "synchronous_commit=off",
        "full_page_writes=off",
    ] {
        assert!(!settings.iter().any(|s| s == forbidden), "{forbidden}");
    }
    let parallel: u32 = setting(&settings, "max_parallel_workers_per_gather")
        .parse()
        .unwrap();
    assert!(parallel >= 2, "parallel query on");
    let max_connections: u32 = setting(&settings, "max_connections").parse().unwrap();
    assert!(
        max_connections > 2 * 50 + 10,
        "room for two api pools of 50 and the exporters"
    );
    let image = compose["services"]["postgres"]["image"].as_str().unwrap();
    assert!(image.starts_with("postgres:16"), "{image}");
}

fn setting<'a>(settings: &'a [String], name: &str) -> &'a str {
    let prefix = format!("{name}=");
    settings
        .iter()
        .find_map(|s| s.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("{name} is set"))
}

fn dashboards() -> Vec<(String, Value)> {
    let mut dashboards: Vec<(String, Value)> =
        std::fs::read_dir(repo().join("observability/grafana/dashboards"))
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                (
                    path.file_name().unwrap().to_string_lossy().into_owned(),
                    json,
                )
            })
            .collect();
    dashboards.sort_by(|a, b| a.0.cmp(&b.0));
    dashboards
}

#[test]
fn dashboards_have_stable_uids_a_datasource_variable_and_rate_intervals() {
    let mut uids = HashSet::new();
    let mut titles = Vec::new();
    for (file, dashboard) in dashboards() {
        let uid = dashboard["uid"].as_str().unwrap().to_owned();
        assert!(uid.starts_with("user-service-"), "{file}: {uid}");
        assert!(uids.insert(uid), "{file}: unique uid");
        titles.push(dashboard["title"].as_str().unwrap().to_owned());
        let variables = dashboard["templating"]["list"].as_array().unwrap();
        assert!(
            variables
                .iter()
                .any(|v| v["type"] == "datasource" && v["name"] == "datasource")
        );
        for panel in dashboard["panels"].as_array().unwrap() {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{file}: {}",
                panel["title"]
            );
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                assert_eq!(target["datasource"]["uid"], "${datasource}");
                // Many instances: every service query follows the instance picker.
                if expr.contains(r#"job="user-service""#) {
                    assert!(expr.contains(r#"instance=~"$instance""#), "{file}: {expr}");
                    assert!(
                        variables.iter().any(|v| v["name"] == "instance"
                            && v["multi"] == true
                            && v["includeAll"] == true),
                        "{file}: an instance variable"
                    );
                }
                if expr.contains("rate(") || expr.contains("increase(") {
                    assert!(expr.contains("[$__rate_interval]"), "{file}: {expr}");
                }
            }
        }
    }
    titles.sort();
    assert_eq!(
        titles,
        [
            "user-service: PostgreSQL",
            "user-service: cache",
            "user-service: database and pool",
            "user-service: overview"
        ]
    );
    let datasources = yaml("observability/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(datasources["datasources"][0]["uid"], "prometheus");
    assert_eq!(
        datasources["datasources"][0]["url"],
        "http://prometheus:9090"
    );
    let providers = yaml("observability/grafana/provisioning/dashboards/user-service.yml");
    assert_eq!(
        providers["providers"][0]["options"]["path"],
        "/etc/grafana/dashboards"
    );
}

#[test]
fn dashboards_query_only_exported_metrics() {
    // The service's metrics (docs/architecture.md), postgres-exporter's and redis-exporter's.
    let known = [
        "http_server_requests_total",
        "http_server_request_duration_seconds_bucket",
        "http_server_open_connections",
        "http_server_max_connections",
        "http_server_connections_closed_total",
        "http_server_accept_errors_total",
        "database_query_duration_seconds_bucket",
        "database_query_duration_seconds_count",
        "database_errors_total",
        "database_pool_connections_active",
        "database_pool_connections_idle",
        "database_pool_connections_max",
        "database_pool_connections_min",
        "database_replica_lag_seconds",
        "database_replica_fallbacks_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "pg_stat_activity_count",
        "pg_settings_max_connections",
        "pg_stat_database_xact_commit",
        "pg_stat_database_xact_rollback",
        "pg_stat_database_blks_hit",
        "pg_stat_database_blks_read",
        "pg_locks_count",
        "pg_stat_database_deadlocks",
        "pg_stat_activity_max_tx_duration",
        "cache_requests_total",
        "cache_operation_duration_seconds_bucket",
        "redis_memory_used_bytes",
        "redis_memory_max_bytes",
        "redis_db_keys",
        "redis_evicted_keys_total",
        "redis_expired_keys_total",
        "redis_commands_processed_total",
        "redis_connected_clients",
        "redis_up",
    ];
    let mut panels = 0;
    for (file, dashboard) in dashboards() {
        for panel in dashboard["panels"].as_array().unwrap() {
            panels += 1;
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                let names = metric_names(expr);
                assert!(!names.is_empty(), "{file}: {expr}");
                for name in names {
                    assert!(
                        known.contains(&name.as_str()),
                        "{file}: unknown metric {name} in {expr}"
                    );
                }
            }
        }
    }
    assert!(panels >= 20, "{panels} panels");
}

/// The metric names in a PromQL expression: the words with a metric prefix that are neither
/// calls nor label names.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (start, _) in expr.match_indices(|c: char| c.is_ascii_alphabetic()) {
        let preceded = expr[..start]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if preceded {
            continue;
        }
        let tail = &expr[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let word = &tail[..end];
        let is_metric = ["http_", "database_", "process_", "pg_", "cache_", "redis_"]
            .iter()
            .any(|p| word.starts_with(p));
        if is_metric && !tail[end..].trim_start().starts_with('(') {
            names.push(word.to_owned());
        }
    }
    names
}

/// The workspace's members, from the root manifest.
fn workspace_members() -> Vec<String> {
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let line = manifest
        .lines()
        .find(|line| line.starts_with("members"))
        .expect("a members line");
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_dockerfile_caches_every_member_and_hides_no_failure() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let members = workspace_members();
    assert!(members.len() >= 5, "{members:?}");
    let stubs = dockerfile
        .lines()
        .find(|line| line.contains("for crate in"))
        .expect("the stub loop");
    for member in &members {
        assert!(
            dockerfile.contains(&format!("COPY {member}/Cargo.toml {member}/")),
            "the dependency layer copies {member}/Cargo.toml"
        );
        assert!(
            stubs
                .split_whitespace()
                .any(|word| word.trim_end_matches(';') == member),
            "the stub loop creates {member}'s sources"
        );
    }
    assert!(
        !dockerfile.contains("|| true"),
        "a failing build step must fail the image build"
    );
}

/// GitHub's heading anchors: lower case, spaces as dashes, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_links_its_runbook_section() {
    let runbook = std::fs::read_to_string(repo().join("docs/runbook.md")).unwrap();
    let sections: HashSet<String> = runbook
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(anchor)
        .collect();
    let rules = yaml("observability/prometheus/alerts.yml");
    let mut alerts = 0;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let Some(alert) = rule["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert} has a runbook_url"));
            let section = url
                .strip_prefix("docs/runbook.md#")
                .unwrap_or_else(|| panic!("{alert}: {url} points into docs/runbook.md"));
            assert!(
                sections.contains(section),
                "{alert}: docs/runbook.md has a section #{section}"
            );
            assert_eq!(
                section,
                anchor(alert),
                "{alert}'s section is named after it"
            );
        }
    }
    assert_eq!(
        alerts,
        sections.len(),
        "one runbook section per alert, no stale ones"
    );
}
