//! The users resource: its wire types and rules, the statements, the cache in front of them, the
//! endpoints, the cursor, the change feed's token and entity tags.

/// A query parameter that is an opaque token of the API's own (a cursor, a change token):
/// `string` with its wire pattern in the spec, decoded as it is parsed, so a handler only sees
/// valid ones.
macro_rules! opaque_parameter {
    ($token:ty, $pattern:expr, $decode:path) => {
        impl poem_openapi::types::Type for $token {
            $crate::http::text_rule::one_value_type!();

            fn name() -> std::borrow::Cow<'static, str> {
                "string".into()
            }

            fn schema_ref() -> poem_openapi::registry::MetaSchemaRef {
                poem_openapi::registry::MetaSchemaRef::Inline(Box::new(
                    poem_openapi::registry::MetaSchema {
                        pattern: Some($pattern.to_owned()),
                        ..poem_openapi::registry::MetaSchema::new("string")
                    },
                ))
            }
        }

        impl poem_openapi::types::ParseFromParameter for $token {
            fn parse_from_parameter(value: &str) -> poem_openapi::types::ParseResult<Self> {
                $decode(value).map_err(poem_openapi::types::ParseError::custom)
            }
        }
    };
}

pub mod change_token;
pub mod cursor;
pub mod etag;
pub mod idempotency;
pub mod repository;
pub mod routes;
pub mod service;
pub mod wire;
