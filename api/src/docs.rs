//! The served API description: poem-openapi's document, finished where its derive macros
//! cannot express the contract, plus the bearer-token security scheme
//! (enforced by `security::Guard`, declared here so Swagger UI's Authorize button and generated
//! clients know it), Swagger UI on that document, and a CSP that admits exactly Swagger UI's
//! inline code by hash.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use poem_openapi::{OpenApi, OpenApiService, Webhook};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub struct Docs {
    /// The OpenAPI document, for the routes' metadata (templates, allowed methods).
    pub document: Value,
    /// The same document as served at `/openapi.json`.
    pub spec: String,
    /// Swagger UI's page, with `spec` inlined.
    pub swagger_html: String,
    /// The Content-Security-Policy of that page.
    pub csp: String,
}

impl Docs {
    pub fn new<T: OpenApi, W: Webhook>(service: &OpenApiService<T, W>) -> Self {
        // The document poem-openapi generates, finished (see `finish`) and with the security
        // scheme.
        let generated = service.spec();
        let document = with_security(&generated);
        let spec = serde_json::to_string_pretty(&document).expect("JSON");
        let page = service.swagger_ui_html();
        assert!(
            page.contains(&generated),
            "Swagger UI inlines the generated document"
        );
        let swagger_html = page.replace(&generated, &spec);
        let csp = csp(&swagger_html);
        Self {
            document,
            spec,
            swagger_html,
            csp,
        }
    }
}

/// What poem-openapi cannot say itself: request bodies reject unknown members
/// (`deny_unknown_fields`), and a last page's `next_cursor` is `null`.
fn finish(spec: &mut Value) {
    let schemas = &mut spec["components"]["schemas"];
    for closed in ["CreateUser", "UpdateUser"] {
        schemas[closed]["additionalProperties"] = json!(false);
    }
    schemas["UserPage"]["properties"]["next_cursor"]["nullable"] = json!(true);
}

fn with_security(generated: &str) -> Value {
    let mut spec: Value = serde_json::from_str(generated).expect("poem-openapi emits JSON");
    finish(&mut spec);
    spec["components"]["securitySchemes"] = json!({
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "A token of API_TOKENS (read and write) or API_READ_TOKENS (read only). Required when the service has tokens configured."
        }
    });
    if let Some(paths) = spec["paths"].as_object_mut() {
        for (path, operations) in paths.iter_mut() {
            if !path.starts_with("/api/v1") {
                continue;
            }
            for operation in operations
                .as_object_mut()
                .into_iter()
                .flat_map(|ops| ops.values_mut())
            {
                operation["security"] = json!([{ "bearerAuth": [] }]);
            }
        }
    }
    spec
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
