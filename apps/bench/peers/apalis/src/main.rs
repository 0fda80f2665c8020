//! apalis with its PostgreSQL storage, for rota's peer benchmark (`../apalis.py`).
//!
//!   apalis-peer setup URL              runs apalis's migrations
//!   apalis-peer work URL CONCURRENCY   runs no-op jobs of the queue `noop` until killed
//!
//! The worker uses apalis's fastest documented settings for short jobs: jobs fetched 100 per
//! query, a fetch every 10 ms when a fetch comes back short, and the storage's NOTIFY listener.

use apalis::layers::WorkerBuilderExt;
use apalis::prelude::*;
use apalis_sql::Config;
use apalis_sql::postgres::{PgListen, PgPool, PostgresStorage};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The job: nothing to do.
#[derive(Debug, Serialize, Deserialize)]
struct Noop {}

async fn noop(_job: Noop) {}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, url) = match args.as_slice() {
        [_, mode, url, ..] => (mode.as_str(), url.as_str()),
        _ => {
            eprintln!("usage: apalis-peer setup|work URL [CONCURRENCY]");
            std::process::exit(2);
        }
    };
    let pool = PgPool::connect(url).await.expect("connect to PostgreSQL");
    if mode == "setup" {
        PostgresStorage::setup(&pool)
            .await
            .expect("apalis's migrations");
        return;
    }
    let concurrency: usize = args.get(3).and_then(|c| c.parse().ok()).unwrap_or(24);
    let config = Config::new("noop")
        .set_buffer_size(100)
        .set_poll_interval(Duration::from_millis(10));
    let mut storage: PostgresStorage<Noop> = PostgresStorage::new_with_config(pool.clone(), config);
    let mut listener = PgListen::new(pool).await.expect("LISTEN");
    listener.subscribe_with(&mut storage);
    tokio::spawn(async move { listener.listen().await });
    let worker = WorkerBuilder::new("noop-worker")
        .concurrency(concurrency)
        .backend(storage)
        .build_fn(noop);
    Monitor::new()
        .register(worker)
        .run_with_signal(tokio::signal::ctrl_c())
        .await
        .expect("the worker runs");
}
