//! The users resource.

pub mod cursor;
pub mod etag;
pub mod model;
pub mod repository;
pub mod routes;
pub mod text;
