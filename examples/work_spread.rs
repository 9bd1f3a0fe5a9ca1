//! Work spread over several vats (Racket's places, Julia's `@spawn`, Mathematica's
//! parallel kernels), done with capabilities: a coordinator sends one job to each
//! worker without waiting, gathers the promises, and combines the results.
//!
//! A worker is an object with one method, the typed interface `Worker`:
//! `count_primes(from, to)`, an `async fn`, counts the primes in `from..to` (on a
//! blocking thread, so the worker's connections stay responsive) and answers
//! `(from, to, count)`. The coordinator splits `0..limit` into
//! one range per worker, sends every job at once (each send returns a promise
//! immediately), and only then awaits the promises, so the workers run in parallel.
//!
//! The demo runs four worker vats and the coordinator in one process, over real TLS
//! on 127.0.0.1, and prints each worker's partial count and the total:
//!
//! ```text
//! cargo run --example work_spread -- demo
//! ```
//!
//! It prints the vat IDs of the workers and the coordinator, then
//!
//! ```text
//! worker 1: 2762 primes in 0..25000
//! worker 2: 2371 primes in 25000..50000
//! worker 3: 2260 primes in 50000..75000
//! worker 4: 2199 primes in 75000..100000
//! total: 9592 primes below 100000 (59 ms)
//! ```
//!
//! Or spread over processes. Run a worker in each of several terminals:
//!
//! ```text
//! cargo run --example work_spread -- worker
//! ```
//!
//! and, with the `captp://...` lines they printed, the coordinator in another:
//!
//! ```text
//! cargo run --example work_spread -- coordinate 100000 'captp://<vat-id>@127.0.0.1:<port>/<swiss>' 'captp://...'
//! ```
//!
//! `worker` takes `--listen <addr>` (default `127.0.0.1:0`, a free port) and
//! `--identity <dir>` (keep the vat's key in `<dir>`, so the vat ID survives restarts)
//! and serves until Ctrl-C. The limit is at most 10,000,000.

#[path = "common/client.rs"]
mod client;
#[path = "common/server.rs"]
mod server;

use captp::{Broken, Vat};

/// Spreads counting primes over worker vats: run a worker, coordinate workers, or run
/// the demo.
#[derive(clap::Parser)]
#[command(name = "work_spread", version)]
enum Cli {
    /// Run a worker and print its sturdy ref URI.
    #[command(disable_help_flag = true)]
    Worker(server::ServeOptions),
    /// Count the primes below LIMIT, spread over the workers, and print the total.
    Coordinate {
        /// Count the primes below this, up to 10000000.
        #[arg(value_parser = clap::value_parser!(u64).range(..=MAX_LIMIT))]
        limit: u64,
        /// The workers' sturdy refs (`captp://...`, printed by `work_spread worker`) or
        /// @FILEs, 1 to 64 of them.
        #[arg(required = true, num_args = 1..=MAX_WORKERS)]
        uris: Vec<String>,
    },
    /// Run four workers and a coordinator in one process.
    Demo,
}

/// The largest limit `coordinate` takes, so a typo cannot keep the workers busy for
/// hours.
const MAX_LIMIT: u64 = 10_000_000;
/// The most workers `coordinate` takes.
const MAX_WORKERS: usize = 64;
/// What the demo counts up to, and over how many workers.
const DEMO_LIMIT: u64 = 100_000;
const DEMO_WORKERS: usize = 4;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match client::parse_args() {
        Cli::Worker(_) => server::serve("work_spread worker", WorkerServer::new(Counting)).await,
        Cli::Coordinate { limit, uris } => {
            let sturdies: Vec<_> = uris.iter().map(|uri| client::parse_uri(uri)).collect();
            let vat = Vat::builder().start().await?;
            let workers: Vec<WorkerRef> = sturdies
                .iter()
                .map(|s| WorkerRef::from(vat.enliven(s)))
                .collect();
            let total = spread(&workers, limit).await;
            vat.shutdown().await;
            match total {
                Ok(total) => {
                    println!("total: {total} primes below {limit}");
                    Ok(())
                }
                Err(broken) => client::fail(&broken),
            }
        }
        Cli::Demo => demo().await,
    }
}

/// Counts the primes in `from..to`, by trial division: slow on purpose, so there is
/// work worth spreading.
fn count_primes(from: u64, to: u64) -> u64 {
    let is_prime = |n: u64| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0);
    (from..to).filter(|&n| is_prime(n)).count() as u64
}

/// What a worker does.
#[captp::interface]
trait Worker {
    /// The number of primes in `from..to`, answered as `(from, to, count)` so the
    /// coordinator can print which range it was.
    async fn count_primes(&self, from: u64, to: u64) -> Result<(u64, u64, u64), Broken>;
}

/// A worker that counts on a blocking thread, so its vat stays responsive.
struct Counting;

impl Worker for Counting {
    async fn count_primes(&self, from: u64, to: u64) -> Result<(u64, u64, u64), Broken> {
        if from > to || to > MAX_LIMIT {
            return Err(Broken::bad_arguments(format!(
                "expected from <= to <= {MAX_LIMIT}"
            )));
        }
        let count = tokio::task::spawn_blocking(move || count_primes(from, to))
            .await
            .map_err(|e| Broken::failed(format!("worker_failed: {e}")))?;
        eprintln!("work_spread worker: {count} primes in {from}..{to}");
        Ok((from, to, count))
    }
}

/// Splits `0..limit` over the workers, sends every job at once, then gathers the
/// promises: prints each worker's partial count and answers the total.
async fn spread(workers: &[WorkerRef], limit: u64) -> Result<u64, Broken> {
    let n = workers.len() as u64;
    let jobs: Vec<_> = workers
        .iter()
        .zip(0..)
        .map(|(worker, i)| {
            let (from, to) = (limit * i / n, limit * (i + 1) / n);
            worker.count_primes(from, to)
        })
        .collect();
    // Every job is on its way; now wait for them, in any order of finishing.
    let mut total = 0;
    for (i, job) in jobs.into_iter().enumerate() {
        let (from, to, count) = job.await?;
        println!("worker {}: {count} primes in {from}..{to}", i + 1);
        total += count;
    }
    Ok(total)
}

/// Four worker vats and a coordinator in one process.
async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let mut worker_vats = Vec::new();
    let mut uris = Vec::new();
    for i in 1..=DEMO_WORKERS {
        let vat = Vat::builder().listen("127.0.0.1:0").start().await?;
        uris.push(vat.export(WorkerServer::new(Counting))?);
        println!("worker {i} is vat {}", vat.vat_id());
        worker_vats.push(vat);
    }
    let coordinator = Vat::builder().start().await?;
    println!("coordinator is vat {}", coordinator.vat_id());
    let workers: Vec<WorkerRef> = uris
        .iter()
        .map(|uri| WorkerRef::from(coordinator.enliven(uri)))
        .collect();
    let started = std::time::Instant::now();
    let total = spread(&workers, DEMO_LIMIT).await?;
    println!(
        "total: {total} primes below {DEMO_LIMIT} ({} ms)",
        started.elapsed().as_millis()
    );
    coordinator.shutdown().await;
    for vat in worker_vats {
        vat.shutdown().await;
    }
    Ok(())
}
