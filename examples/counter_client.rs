//! Ada's remote counter, the client side: it enlivens the counter's sturdy ref URI as
//! a typed `CounterRef` (the interface is in `examples/common/counter.rs`), calls
//! `foo()` (declared `#[oneway]`: it answers nothing, so nothing is awaited) and then
//! awaits `bar()`, which answers the count. E-order delivers `foo` before `bar`, so
//! the count it prints already includes its own `foo`.
//!
//! Run the `counter_server` example in one terminal:
//!
//! ```text
//! cargo run --example counter_server
//! ```
//!
//! and, with the `captp://...` line it printed, this in another:
//!
//! ```text
//! cargo run --example counter_client -- 'captp://<vat-id>@127.0.0.1:<port>/<swiss>'
//! ```
//!
//! It prints
//!
//! ```text
//! Calling Foo...
//! Calling Bar: 1
//! ```
//!
//! and `Calling Bar: 2` the second time. Wherever a URI goes, `@file.cap` works too
//! (a file the server wrote with `--cap-file file.cap`).
//!
//! # Surviving a server restart
//!
//! With `--reconnect`, the client makes one round of calls for each line it reads on
//! stdin (press Enter), over a reference that reconnects
//! ([`captp::Vat::enliven_reconnecting`]). Start the server with a kept identity and a
//! fixed port, so that a restart prints the same URI:
//!
//! ```text
//! cargo run --example counter_server -- --identity certs/counter --listen 127.0.0.1:4433 --cap-file counter.cap
//! cargo run --example counter_client -- --reconnect @counter.cap
//! ```
//!
//! Press Enter, stop the server with Ctrl-C, start it again with the same command, and
//! press Enter again: the client reconnects and carries on. A round whose call was in
//! flight when the server went away is reported as lost (`call lost: ...`), never
//! silently repeated: live references are fail-stop. The next round reconnects. When the
//! server stays away for the whole backoff (about 11 s), the client says so and exits
//! with code 1.

#[path = "common/client.rs"]
mod client;
#[path = "common/counter.rs"]
mod counter;

use captp::{BrokenKind, SturdyRef, Vat};
use counter::CounterRef;

/// Calls the counter behind a sturdy ref.
#[derive(clap::Parser)]
#[command(name = "counter_client", version)]
struct Cli {
    /// Make one round of calls per line on stdin, reconnecting after a server restart.
    #[arg(long)]
    reconnect: bool,
    /// The counter's sturdy ref (`captp://...`, printed by `counter_server`), or @FILE.
    uri: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Cli { reconnect, uri } = client::parse_args();
    let sturdy = client::parse_uri(&uri);

    let vat = Vat::builder().start().await?;
    if reconnect {
        return rounds_on_stdin(&vat, &sturdy).await;
    }
    let counter = CounterRef::from(vat.enliven(&sturdy));

    println!("Calling Foo...");
    // `foo` is one-way; if the connection fails, `bar` breaks and says why.
    counter.foo();
    let count = counter.bar().await;

    vat.shutdown().await;
    match count {
        Ok(count) => {
            println!("Calling Bar: {count}");
            Ok(())
        }
        Err(broken) => client::fail(&broken),
    }
}

/// `--reconnect`: one `foo`, `bar` round per line on stdin, over a reference that
/// reconnects after the server restarts; ends at the end of stdin.
async fn rounds_on_stdin(vat: &Vat, sturdy: &SturdyRef) -> Result<(), Box<dyn std::error::Error>> {
    let counter = vat.enliven_reconnecting(sturdy);
    // Lines from a thread: std's stdin blocks, the runtime must not.
    let (tx, mut lines) = tokio::sync::mpsc::channel::<()>(1);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            if line.is_err() || tx.blocking_send(()).is_err() {
                break;
            }
        }
    });
    eprintln!("counter_client: one round of calls per line on stdin (press Enter)");
    while lines.recv().await.is_some() {
        // The live reference of the current connection, reconnecting first if the
        // last one broke.
        let live = match counter.current().await {
            Ok(live) => CounterRef::from(live),
            Err(broken) => client::fail(&broken),
        };
        println!("Calling Foo...");
        live.foo();
        match live.bar().await {
            Ok(count) => println!(
                "Calling Bar: {count} (reconnected {} times)",
                counter.reconnects()
            ),
            // In flight when the connection broke: fail-stop, never sent again.
            Err(broken) if broken.kind() == BrokenKind::Disconnected => {
                println!("call lost: {broken}; the next round reconnects");
            }
            Err(broken) => client::fail(&broken),
        }
    }
    vat.shutdown().await;
    Ok(())
}
