//! [`EncodedJson`]: a JSON response body already serialized, with the schema of the type it
//! encodes. The cache keeps a user as the exact bytes the API serves, and a hit answers with
//! them as they are.

use std::marker::PhantomData;

use bytes::Bytes;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ToJSON, Type};

/// The JSON of a `T`, encoded once. The spec shows it exactly as `Json<T>`.
pub struct EncodedJson<T> {
    bytes: Bytes,
    encodes: PhantomData<fn() -> T>,
}

impl<T: ToJSON> EncodedJson<T> {
    /// Encodes `value` as poem-openapi's `Json<T>` would: through its `ToJSON`, byte for byte.
    pub fn encode(value: &T) -> Self {
        let bytes = serde_json::to_vec(&value.to_json()).expect("a JSON value serializes");
        Self::from_bytes(bytes.into())
    }
}

impl<T: serde::Serialize> EncodedJson<T> {
    /// Encodes `value` through its `Serialize`, which must give the bytes of its `ToJSON`
    /// (each such type has a test that says so): no `serde_json::Value` tree on the way.
    pub fn serialize(value: &T) -> Self {
        let bytes = serde_json::to_vec(value).expect("a response body serializes");
        Self::from_bytes(bytes.into())
    }
}

impl<T> EncodedJson<T> {
    /// Bytes that [`EncodedJson::encode`] produced earlier.
    pub fn from_bytes(bytes: Bytes) -> Self {
        Self {
            bytes,
            encodes: PhantomData,
        }
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl<T: Type> Payload for EncodedJson<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + Send> IntoResponse for EncodedJson<T> {
    fn into_response(self) -> Response {
        Response::builder()
            .content_type(<Self as Payload>::CONTENT_TYPE)
            .body(self.bytes)
    }
}
