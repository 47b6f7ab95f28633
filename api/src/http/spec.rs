//! The served API description, built in one pass: poem-openapi's document, finished where its
//! derive macros cannot express the contract, with the bearer scheme declared on exactly the
//! paths the guard protects; Swagger UI on that document with a CSP that admits its inline code
//! by hash; and what the middleware needs from it (route templates, allowed methods).

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use poem_openapi::{OpenApi, OpenApiService, Webhook};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::auth::is_guarded;
use super::problems::RouteMethods;

/// Whether the running instance requires a token: it decides what the served spec says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Tokens are configured: every guarded operation requires `bearerAuth`.
    Required,
    /// No token is configured: the API is open, and the spec says a token is optional.
    Open,
}

/// Routes served beside the API's operations, for the `Allow` header.
pub const SPEC_PATH: &str = "/openapi.json";
pub const DOCS_PATH: &str = "/docs";

pub struct Spec {
    /// The document served at [`SPEC_PATH`].
    pub text: String,
    /// Swagger UI's page, with `text` inlined.
    pub swagger_html: String,
    /// The Content-Security-Policy of that page.
    pub csp: String,
    /// Operation id -> its path template (`/api/v1/users/{id}`), for the `route` metric
    /// label: the router itself knows poem-openapi's renamed parameters (`{param0}`).
    pub templates: HashMap<String, String>,
    pub methods: RouteMethods,
}

impl Spec {
    pub fn new<T: OpenApi, W: Webhook>(service: &OpenApiService<T, W>, auth: Auth) -> Self {
        let generated = service.spec();
        let mut document: Value =
            serde_json::from_str(&generated).expect("poem-openapi emits JSON");
        finish(&mut document);
        declare_security(&mut document, auth);
        let text = serde_json::to_string_pretty(&document).expect("JSON");
        let page = service.swagger_ui_html();
        assert!(
            page.contains(&generated),
            "Swagger UI inlines the generated document"
        );
        let swagger_html = page.replace(&generated, &text);
        let csp = csp(&swagger_html);
        let mut templates = HashMap::new();
        let mut methods = vec![
            (SPEC_PATH.to_owned(), "GET".to_owned()),
            (DOCS_PATH.to_owned(), "GET".to_owned()),
        ];
        for (path, operations) in paths(&document) {
            let mut allowed = Vec::new();
            for (method, operation) in operations {
                allowed.push(method.to_ascii_uppercase());
                if let Some(id) = operation["operationId"].as_str() {
                    templates.insert(id.to_owned(), path.clone());
                }
            }
            methods.push((path.clone(), allowed.join(", ")));
        }
        Self {
            text,
            swagger_html,
            csp,
            templates,
            methods: RouteMethods::new(methods),
        }
    }
}

/// Each path with its operations by method.
fn paths(document: &Value) -> impl Iterator<Item = (&String, &serde_json::Map<String, Value>)> {
    document["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(path, operations)| Some((path, operations.as_object()?)))
}

/// What poem-openapi cannot say itself: request bodies reject unknown members
/// (`deny_unknown_fields`), and a page's `next_cursor` is always there, `null` on the last.
fn finish(document: &mut Value) {
    let schemas = &mut document["components"]["schemas"];
    for closed in ["CreateUser", "UpdateUser"] {
        schemas[closed]["additionalProperties"] = json!(false);
    }
    let page = &mut schemas["UserPage"];
    page["properties"]["next_cursor"]["nullable"] = json!(true);
    if let Some(required) = page["required"].as_array_mut() {
        required.push(json!("next_cursor"));
    }
}

fn declare_security(document: &mut Value, auth: Auth) {
    document["components"]["securitySchemes"] = json!({
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "A token of API_TOKENS (read and write) or API_READ_TOKENS (read only). Required when the service has tokens configured."
        }
    });
    // An empty requirement object makes authentication optional (OpenAPI 3, Security
    // Requirement Object).
    let requirement = match auth {
        Auth::Required => json!([{ "bearerAuth": [] }]),
        Auth::Open => json!([{ "bearerAuth": [] }, {}]),
    };
    for (path, operations) in document["paths"].as_object_mut().into_iter().flatten() {
        // The probes: no requirement at all, said explicitly.
        let requirement = match is_guarded(path) {
            true => requirement.clone(),
            false => json!([]),
        };
        for operation in operations
            .as_object_mut()
            .into_iter()
            .flat_map(|ops| ops.values_mut())
        {
            operation["security"] = requirement.clone();
        }
    }
}

/// Hashes every inline `<script>` of the page into `script-src`, so nothing else can run.
fn csp(html: &str) -> String {
    let mut hashes = Vec::new();
    let mut rest = html;
    while let Some(open) = rest.find("<script") {
        let after_tag = &rest[open..];
        let Some(body_start) = after_tag.find('>') else {
            break;
        };
        let body = &after_tag[body_start + 1..];
        let Some(end) = body.find("</script>") else {
            break;
        };
        hashes.push(format!(
            "'sha256-{}'",
            STANDARD.encode(Sha256::digest(&body.as_bytes()[..end]))
        ));
        rest = &body[end..];
    }
    format!(
        "default-src 'none'; script-src {}; style-src 'unsafe-inline'; img-src 'self' data:; \
         font-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        hashes.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csp_hashes_each_inline_script() {
        let csp =
            csp("<html><script charset=\"UTF-8\">one()</script><p><script>two()</script></html>");
        let one = STANDARD.encode(Sha256::digest(b"one()"));
        let two = STANDARD.encode(Sha256::digest(b"two()"));
        assert!(
            csp.contains(&format!("script-src 'sha256-{one}' 'sha256-{two}';")),
            "{csp}"
        );
        assert!(csp.starts_with("default-src 'none'"));
    }
}
