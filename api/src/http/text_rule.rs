//! Typed text inputs: a [`TextRule`] (limits and pattern, written once) and [`Checked`], a
//! string that passed it. The spec's schema and the server's check both derive from the rule.

use std::borrow::Cow;
use std::marker::PhantomData;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{
    ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type,
};
use serde_json::Value;

/// What every one-value type of the API writes alike in poem-openapi's `Type` (required, its
/// own raw value, one element), inside an `impl Type for T` block.
macro_rules! one_value_type {
    () => {
        const IS_REQUIRED: bool = true;
        type RawValueType = Self;
        type RawElementValueType = Self;

        fn as_raw_value(&self) -> Option<&Self::RawValueType> {
            Some(self)
        }

        fn raw_element_iter<'a>(
            &'a self,
        ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
            Box::new(self.as_raw_value().into_iter())
        }
    };
}
pub(crate) use one_value_type;

/// A rule for a text input: its limits and pattern, written once. The spec's schema and the
/// server's check are both derived from it, and the pattern is compiled once per process
/// (poem-openapi's `validator(pattern)` compiles it on every request).
pub trait TextRule: Send + Sync + 'static {
    /// The JSON member or parameter it usually guards, for error messages.
    const FIELD: &'static str;
    const MIN_CHARS: Option<usize> = None;
    const MAX_CHARS: Option<usize> = None;
    /// An ECMA-262 and Rust `regex` compatible pattern, anchored.
    const PATTERN: &'static str;
    /// What a valid value is, for error messages, its length aside (that is added from
    /// [`Self::MIN_CHARS`] and [`Self::MAX_CHARS`], so no limit is written twice).
    const EXPECTED: &'static str;
    /// The compiled [`Self::PATTERN`]: a `static` of the implementation, so each rule
    /// compiles once.
    fn regex() -> &'static regex::Regex;

    /// [`Self::EXPECTED`] with the length limits.
    fn expected() -> String {
        let length = match (Self::MIN_CHARS, Self::MAX_CHARS) {
            (Some(min), Some(max)) => format!(", {min} to {max} characters"),
            (None, Some(max)) => format!(", at most {max} characters"),
            (Some(min), None) => format!(", at least {min} characters"),
            (None, None) => String::new(),
        };
        format!("{}{length}", Self::EXPECTED)
    }

    fn check(text: &str) -> Result<(), String> {
        let chars = text.chars().count();
        let fits = Self::MAX_CHARS.is_none_or(|max| chars <= max)
            && Self::MIN_CHARS.is_none_or(|min| chars >= min)
            && Self::regex().is_match(text);
        if fits {
            Ok(())
        } else {
            Err(format!("must be {}", Self::expected()))
        }
    }
}

/// Compiles a rule's pattern; a `static` per rule holds it.
pub fn compile(pattern: &str) -> regex::Regex {
    regex::Regex::new(pattern).expect("a rule's pattern compiles")
}

/// A string that passed the rule `R`. Only a JSON string is accepted: poem-openapi's `String`
/// also takes a number or a boolean (`{"name": false}` would become the name "false"), which
/// the schema (`type: string`) does not allow.
pub struct Checked<R: TextRule>(String, PhantomData<R>);

impl<R: TextRule> Checked<R> {
    pub fn parse(text: String) -> Result<Self, String> {
        R::check(&text)?;
        Ok(Self(text, PhantomData))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl<R: TextRule> std::fmt::Debug for Checked<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Rules guard personal data: never in a log line.
        write!(f, "{}(..)", R::FIELD)
    }
}

impl<R: TextRule> Type for Checked<R> {
    one_value_type!();

    fn name() -> Cow<'static, str> {
        "string".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            min_length: R::MIN_CHARS,
            max_length: R::MAX_CHARS,
            pattern: Some(R::PATTERN.to_owned()),
            ..MetaSchema::new("string")
        }))
    }
}

impl<R: TextRule> ParseFromJSON for Checked<R> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            // Names the field the way poem-openapi's own validators do, for `errors`.
            Some(Value::String(text)) => Self::parse(text)
                .map_err(|message| ParseError::custom(format!("field `{}` {message}", R::FIELD))),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl<R: TextRule> ParseFromParameter for Checked<R> {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Self::parse(value.to_owned()).map_err(ParseError::custom)
    }
}

impl<R: TextRule> ToJSON for Checked<R> {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}
