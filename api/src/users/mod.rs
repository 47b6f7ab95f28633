//! The users resource: its model and rules, the statements, the cache in front of them, the
//! endpoints, the cursor and entity tags.

pub mod cursor;
pub mod etag;
pub mod model;
pub mod repository;
pub mod routes;
pub mod store;
