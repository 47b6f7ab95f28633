//! The users resource: its model and rules, the statements, the cache in front of them, the
//! endpoints, the cursor, the change feed's token and entity tags.

pub mod change_token;
pub mod cursor;
pub mod etag;
pub mod model;
pub mod repository;
pub mod routes;
pub mod store;
