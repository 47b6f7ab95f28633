//! The README and docs/ name only what exists: every relative link and every repository path
//! the README names in backticks is a file or folder of the repository, and every cargo
//! command it gives names a package (`-p`) and a test target (`--test`) that exist.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The targets of a document's Markdown links that are not URLs or anchors, without their
/// `#fragment`, resolved against the document's folder.
fn relative_links(document: &str, text: &str) -> Vec<PathBuf> {
    let folder = Path::new(document).parent().unwrap_or(Path::new(""));
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter(|target| !target.contains("://") && !target.starts_with('#'))
        .map(|target| folder.join(target.split('#').next().unwrap()))
        .collect()
}

/// Backticked spans that name a repository path: under a top-level folder of the repository,
/// or a file of its root.
fn backticked_paths(text: &str) -> Vec<String> {
    let top: Vec<String> = std::fs::read_dir(root())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !matches!(name.as_str(), "target" | "data" | ".git"))
        .collect();
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| !span.contains(' ') && !span.contains("://"))
        .filter(|span| {
            let first = span.split('/').next().unwrap();
            span.contains('/') && top.iter().any(|name| name == first)
                || span.contains('.') && !span.starts_with('/') && top.iter().any(|n| n == span)
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_link_of_the_readme_and_docs_leads_somewhere() {
    let mut documents = vec!["README.md".to_owned()];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            documents.push(format!("docs/{name}"));
        }
    }
    let mut missing = Vec::new();
    for document in &documents {
        for target in relative_links(document, &read(document)) {
            if !root().join(&target).exists() {
                missing.push(format!("{document}: {}", target.display()));
            }
        }
    }
    assert!(missing.is_empty(), "links to nothing: {missing:#?}");
}

#[test]
fn every_path_the_readme_names_exists() {
    let readme = read("README.md");
    let paths = backticked_paths(&readme);
    assert!(paths.len() >= 3, "found {paths:?}");
    let missing: Vec<&String> = paths.iter().filter(|p| !root().join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "README.md names what is not there: {missing:?}"
    );
}

#[test]
fn every_cargo_command_of_the_readme_names_real_targets() {
    let readme = read("README.md");
    let mut checked = 0;
    for command in readme.lines().filter_map(|line| {
        let start = line.find("cargo ")?;
        Some(line[start..].split('`').next().unwrap())
    }) {
        let words: Vec<&str> = command.split_whitespace().collect();
        for pair in words.windows(2) {
            match pair {
                ["-p", package] => {
                    let manifest = read(&format!("{package}/Cargo.toml"));
                    assert!(
                        manifest.contains(&format!("name = \"{package}\"")),
                        "{command}: no package {package}"
                    );
                    checked += 1;
                }
                ["--test", target] => {
                    assert!(
                        root().join(format!("api/tests/{target}")).exists()
                            || root().join(format!("api/tests/{target}.rs")).exists(),
                        "{command}: no test target {target}"
                    );
                    checked += 1;
                }
                _ => {}
            }
        }
    }
    assert!(checked >= 3, "checked {checked} targets");
}

/// The limits docs/api.md gives are the rules' own: each row names its rule's length (a rule
/// changed without its row fails here).
#[test]
fn the_api_pages_limits_are_the_rules() {
    use api::http::idempotency::IdempotencyKeyRule;
    use api::http::text_rule::TextRule;
    use api::users::wire::{EmailKeyRule, EmailRule, NamePrefixRule, NameRule};

    fn length<R: TextRule>() -> String {
        match (R::MIN_CHARS, R::MAX_CHARS) {
            (Some(min), Some(max)) => format!("{min} to {max} characters"),
            (_, Some(max)) => format!("at most {max} characters"),
            _ => unreachable!("every rule here has a maximum"),
        }
    }
    let page = read("docs/api.md");
    let row = |what: &str| {
        page.lines()
            .find(|line| line.starts_with(&format!("| {what} |")))
            .unwrap_or_else(|| panic!("docs/api.md has no limits row for {what}"))
            .to_owned()
    };
    let rows = [
        (row("`email`"), length::<EmailRule>()),
        (row("`name`"), length::<NameRule>()),
        (row("`email` of a lookup"), length::<EmailKeyRule>()),
        (row("`name_prefix`"), length::<NamePrefixRule>()),
        (row("`Idempotency-Key`"), length::<IdempotencyKeyRule>()),
        (
            row("request body"),
            format!("{} KiB", api::http::BODY_LIMIT / 1024),
        ),
    ];
    for (row, limit) in rows {
        assert!(row.contains(&limit), "{row} should say {limit}");
    }
}
