//! Go's tax computer, the client side: it enlivens the tax computer's sturdy ref URI,
//! asks for the tax on an amount in cents, and prints it. A negative amount is refused
//! by the server; its error (`failed: ...`) comes back through the promise and is
//! printed to stderr, with exit code 1.
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
//! `error: failed: amount must not be negative: -5 cents` to stderr.

#[path = "common/client.rs"]
mod client;

use captp::Vat;

const USAGE: &str = "tax_client <captp://URI> <cents>";

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
    let computer = vat.enliven(&sturdy);
    let tax = computer.send::<i64>("tax", (cents,)).await;

    vat.shutdown().await;
    match tax {
        Ok(tax) => {
            println!("Tax on {cents} cents is {tax} cents");
            Ok(())
        }
        Err(broken) => client::fail(&broken),
    }
}
