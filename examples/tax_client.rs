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

const USAGE: &str = "tax_client <captp://URI | @file.cap> <cents>";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [uri, amount] = args.as_slice() else {
        client::usage("tax_client: expected two arguments", USAGE);
    };
    let Ok(cents) = amount.parse::<i64>() else {
        client::usage(
            &format!("tax_client: the amount must be a whole number of cents, not {amount:?}"),
            USAGE,
        );
    };
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
