//! Go's tax computer (the classic net/rpc example) as a server: `tax(cents)` answers 5%
//! of an amount in cents, rounded half away from zero, and refuses a negative amount
//! with an application error of its own type, `TaxError::Negative { cents }`, that
//! reaches the caller as that value. The interface, `TaxComputer`, is in
//! `examples/common/tax.rs`. Pair it with the `tax_client` example.
//!
//! The server prints the tax computer's sturdy ref URI as the first line of stdout and
//! logs each call to stderr.
//!
//! Run it in two terminals. In the first:
//!
//! ```text
//! cargo run --example tax_server
//! ```
//!
//! and, with the `captp://...` line it printed, in the second:
//!
//! ```text
//! cargo run --example tax_client -- 'captp://<vat-id>@127.0.0.1:<port>/<swiss>' 300
//! ```
//!
//! which prints `Tax on 300 cents is 15 cents`.
//!
//! Options: `--listen <addr>` (default `127.0.0.1:0`, a free port) and
//! `--identity <dir>` (keep the vat's key in `<dir>`, so the vat ID survives restarts).

#[path = "common/server.rs"]
mod server;
#[path = "common/tax.rs"]
mod tax;

use tax::{TaxComputer, TaxComputerServer, TaxError};

/// 5% of `cents`, rounded half away from zero; `None` for a negative amount.
fn five_percent(cents: i64) -> Option<i64> {
    if cents < 0 {
        return None;
    }
    // 5% is 1/20. Divide first so no amount can overflow; a remainder of 10 or more is
    // half a cent or more, which rounds up.
    Some(cents / 20 + i64::from(cents % 20 >= 10))
}

/// The tax computer: it holds nothing, so every caller gets the same answers.
struct Computer;

impl TaxComputer for Computer {
    fn tax(&self, cents: i64) -> Result<i64, TaxError> {
        match five_percent(cents) {
            Some(tax) => {
                eprintln!("tax_server: tax({cents}) -> {tax}");
                Ok(tax)
            }
            None => {
                eprintln!("tax_server: tax({cents}) refused: negative amount");
                Err(TaxError::Negative { cents })
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Check the rounding before offering it to anyone.
    for (cents, expected) in [(300, 15), (10, 1), (9, 0), (29, 1), (30, 2), (0, 0)] {
        if five_percent(cents) != Some(expected) {
            return Err(format!("tax({cents}) is not {expected}").into());
        }
    }
    server::serve("tax_server", TaxComputerServer::new(Computer)).await
}
