//! Go's tax computer, the client side: it enlivens the tax computer's sturdy ref URI,
//! asks for the tax on an amount in cents through the typed `TaxComputerRef`
//! (`examples/common/tax.rs`), and prints it. A negative amount is refused by the
//! server with a `TaxError`, which arrives as that value (`CallError::App`), not as a
//! message to parse; the client prints it to stderr and exits with code 1. A call
//! that gets no answer at all (`CallError::Broken`) is explained like any other
//! client's.
//!
//! Run the `tax_server` example in one terminal:
//!
//! ```text
//! cargo run --example tax_server
//! ```
//!
//! and, with the `captp://...` line it printed, this in another:
//!
//! ```text
//! cargo run --example tax_client -- 'captp://<vat-id>@127.0.0.1:<port>/<swiss>' 300
//! ```
//!
//! It prints `Tax on 300 cents is 15 cents`. With `-5` instead of `300` it prints
//! `error: the tax computer refused: amount must not be negative: -5 cents` to stderr.

#[path = "common/client.rs"]
mod client;
#[path = "common/tax.rs"]
mod tax;

use captp::{CallError, Vat};
use tax::TaxComputerRef;

/// Asks a tax computer for the tax on an amount.
#[derive(clap::Parser)]
#[command(name = "tax_client", version)]
struct Cli {
    /// The tax computer's sturdy ref (`captp://...`, printed by `tax_server`), or @FILE.
    uri: String,
    /// The amount, in whole cents (negative is refused by the server).
    #[arg(allow_negative_numbers = true)]
    cents: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Cli { uri, cents } = client::parse_args();
    let uri = &uri;
    let sturdy = client::parse_uri(uri);

    let vat = Vat::builder().start().await?;
    let computer = TaxComputerRef::from(vat.enliven(&sturdy));
    let tax = computer.tax(cents).await;

    vat.shutdown().await;
    match tax {
        Ok(tax) => {
            println!("Tax on {cents} cents is {tax} cents");
            Ok(())
        }
        // The server's own refusal, as the `TaxError` it returned.
        Err(CallError::App(refused)) => {
            eprintln!("error: the tax computer refused: {refused}");
            std::process::exit(1);
        }
        // No answer at all: the connection, the URI, the server.
        Err(CallError::Broken(broken)) => client::fail(&broken),
    }
}
