//! SeaORM entities of the user service.

pub mod users;
