//! `cargo run -p migration -- up|down|status|fresh`: the migrations by hand, against
//! `DATABASE_URL` (or the api's SQLite default when it is unset).

use migration::DEFAULT_DATABASE_URL;
use sea_orm_migration::prelude::*;

fn main() {
    let _ = dotenvy::dotenv();
    if std::env::var_os("DATABASE_URL").is_none() {
        // SAFETY: single-threaded here: the runtime starts below.
        unsafe { std::env::set_var("DATABASE_URL", DEFAULT_DATABASE_URL) };
        std::fs::create_dir_all("data").expect("create ./data for the SQLite database");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the Tokio runtime")
        .block_on(cli::run_cli(migration::Migrator));
}
