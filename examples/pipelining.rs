//! Promise pipelining, measured: a chain of dependent calls costs one round trip.
//!
//! `pipelining serve` exports the first link of a chain, a typed interface `Link`:
//! `next()` answers a new link (an object), and the n-th link answers `value()` with n,
//! starting from 0. `next` is declared `-> impl Link`, so on the client it gives a
//! `LinkRef` at once, a reference to the promised result. `pipelining call <URI>
//! <depth>` sends `depth` chained `next()` calls, each one to the promised result of
//! the one before without waiting for it, then
//! `value()` to the last, and awaits only that. All the calls leave at once; the server
//! answers each as it arrives and aims the next at the answer, so the chain costs one
//! network round trip (plus the time to handle its messages at both ends).
//!
//! To show that, the client first awaits one `value()` to set up the connection (TCP,
//! the TLS handshake, fetching the object), then times one more `value()`, which is
//! one plain round trip, then the pipelined chain, and last the same chain with every
//! `next()` awaited before the following one is sent: `depth + 1` round trips.
//!
//! Run the server in one terminal:
//!
//! ```text
//! cargo run --example pipelining -- serve
//! ```
//!
//! and, with the `captp://...` line it printed, the client in another:
//!
//! ```text
//! cargo run --example pipelining -- call 'captp://<vat-id>@127.0.0.1:<port>/<swiss>' 100
//! ```
//!
//! It prints something like
//!
//! ```text
//! connected: 6.507 ms (TCP, TLS handshake, fetch, value())
//! one round trip: 0.241 ms (value() on the warm connection)
//! pipelined: 3.050 ms (100 chained next() calls and value(), awaiting only value(): one round trip)
//! awaited: 29.198 ms (the same calls, awaiting each before sending the next: 101 round trips)
//! value: 100
//! ```
//!
//! On loopback a round trip is cheap, so most of the pipelined time is the work of
//! handling 101 calls at each end; across a real network, where a round trip takes
//! milliseconds, the pipelined chain costs about one and the awaited one 101.
//!
//! `serve` takes `--listen <addr>` (default `127.0.0.1:0`, a free port) and
//! `--identity <dir>` (keep the vat's key in `<dir>`, so the vat ID survives restarts)
//! and serves until Ctrl-C. The depth is 0 to 1000: a deeper chain outruns the number
//! of questions a peer may have outstanding (1,024 by default), and the sends past it
//! wait for answers, which costs more round trips.

#[path = "common/client.rs"]
mod client;
#[path = "common/server.rs"]
mod server;

use std::time::{Duration, Instant};

use captp::{Broken, Ref, Vat};

/// Sends a chain of pipelined calls: serve the first link, or call along a chain.
#[derive(clap::Parser)]
#[command(name = "pipelining", version)]
enum Cli {
    /// Run the chain's first link and print its sturdy ref URI.
    #[command(disable_help_flag = true)]
    Serve(server::ServeOptions),
    /// Follow the chain DEPTH links deep, pipelined, and check where it ends.
    Call {
        /// The first link's sturdy ref (`captp://...`, printed by `pipelining serve`), or @FILE.
        uri: String,
        /// How many links to follow, 0 to 1000.
        #[arg(value_parser = clap::value_parser!(u32).range(..=i64::from(MAX_DEPTH)))]
        depth: u32,
    },
}

/// The deepest chain `call` sends; see the module documentation.
const MAX_DEPTH: u32 = 1000;

/// A link of a chain.
#[captp::interface]
trait Link {
    /// The next link: a new object, which the caller can send to before it arrives.
    fn next(&self) -> impl Link;
    /// How far along the chain this link is (the first is 0).
    fn value(&self) -> u64;
}

/// The n-th link of the chain.
struct Nth(u64);

impl Link for Nth {
    fn next(&self) -> LinkRef {
        LinkRef::serve(Nth(self.0 + 1))
    }

    fn value(&self) -> u64 {
        self.0
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match client::parse_args() {
        Cli::Serve(_) => server::serve("pipelining serve", LinkServer::new(Nth(0))).await,
        Cli::Call { uri, depth } => {
            let sturdy = client::parse_uri(&uri);
            let vat = Vat::builder().start().await?;
            let first = LinkRef::from(vat.enliven(&sturdy));
            let measured = measure(&first, depth).await;
            vat.shutdown().await;
            match measured {
                Ok(value) if value == u64::from(depth) => Ok(()),
                Ok(value) => Err(format!("the chain ended at {value}, not {depth}").into()),
                Err(broken) => client::fail(&broken),
            }
        }
    }
}

/// Warms the connection, times one round trip, the pipelined chain and the awaited
/// chain, prints them, and returns the value at the end of the chain.
async fn measure(first: &LinkRef, depth: u32) -> Result<u64, Broken> {
    let (_, took) = timed(first.value()).await?;
    println!(
        "connected: {} (TCP, TLS handshake, fetch, value())",
        ms(took)
    );

    let (_, round_trip) = timed(first.value()).await?;
    println!(
        "one round trip: {} (value() on the warm connection)",
        ms(round_trip)
    );

    // Each next() goes to the answer of the one before, which does not exist yet at
    // the time of sending: nothing here waits for the network until the last line.
    let (value, pipelined) = timed(async {
        let mut link = first.clone();
        for _ in 0..depth {
            link = link.next();
        }
        link.value().await
    })
    .await?;
    println!(
        "pipelined: {} ({depth} chained next() calls and value(), \
         awaiting only value(): one round trip)",
        ms(pipelined)
    );

    // The same chain without pipelining: wait for each link before asking it for the
    // next. (A typed reference to an answer is a promise; `when_settled` waits for
    // what it settles to.)
    let (awaited_value, awaited) = timed(async {
        let mut link = first.clone();
        for _ in 0..depth {
            link = LinkRef::from(Ref::from(link.next()).when_settled::<Ref>().await?);
        }
        link.value().await
    })
    .await?;
    println!(
        "awaited: {} (the same calls, awaiting each before sending the next: \
         {} round trips)",
        ms(awaited),
        depth + 1
    );
    if awaited_value != value {
        return Err(Broken::failed(format!(
            "the awaited chain ended at {awaited_value}, the pipelined one at {value}"
        )));
    }
    println!("value: {value}");
    Ok(value)
}

/// A duration in milliseconds, to the microsecond.
fn ms(duration: Duration) -> String {
    format!("{:.3} ms", duration.as_secs_f64() * 1000.0)
}

/// Runs `future` and says how long it took.
async fn timed<T>(
    future: impl Future<Output = Result<T, Broken>>,
) -> Result<(T, Duration), Broken> {
    let started = Instant::now();
    let value = future.await?;
    Ok((value, started.elapsed()))
}
