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
//! and `Calling Bar: 2` the second time.

#[path = "common/client.rs"]
mod client;
#[path = "common/counter.rs"]
mod counter;

use captp::Vat;
use counter::CounterRef;

/// Calls the counter behind a sturdy ref.
#[derive(clap::Parser)]
#[command(name = "counter_client", version)]
struct Cli {
    /// The counter's sturdy ref (`captp://...`), as its server printed it.
    uri: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Cli { uri } = client::parse_args();
    let uri = &uri;
    let sturdy = client::parse_uri(uri);

    let vat = Vat::builder().start().await?;
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
