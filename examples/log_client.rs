//! A client for the `log_service` example: it enlivens the log's sturdy ref URI as a
//! typed `LogRef` (the `Log` interface of `examples/common/log.rs`), logs two lines
//! with one-way sends, then searches for `foo` and prints each match as
//! `At <time>: <line>` (the time in seconds since the Unix epoch).
//!
//! It shows what a caller sees when a sturdy ref is wrong: a URI whose vat ID does not
//! match the server's key breaks with `BrokenKind::VatIdMismatch`, one whose swiss
//! number the server does not know breaks with `BrokenKind::UnknownObject`, and a vat
//! that is not running breaks with `BrokenKind::Unreachable`. Each is explained on
//! stderr, with exit code 1.
//!
//! Run the server in one terminal:
//!
//! ```text
//! cargo run --example log_service
//! ```
//!
//! and, with the `captp://...` line it printed, the client in another:
//!
//! ```text
//! cargo run --example log_client -- 'captp://<vat-id>@127.0.0.1:<port>/<swiss>'
//! ```
//!
//! It prints something like `At 1767225600: foot` (and not `shoe`, which does not
//! contain `foo`). Every run logs two more lines, so a second run finds two matches.

#[path = "common/client.rs"]
mod client;
#[path = "common/log.rs"]
mod log;

use captp::Vat;
use log::LogRef;

/// Calls the log service behind a sturdy ref.
#[derive(clap::Parser)]
#[command(name = "log_client", version)]
struct Cli {
    /// The log service's sturdy ref (`captp://...`, printed by `log_service`), or @FILE.
    uri: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Cli { uri } = client::parse_args();
    let sturdy = client::parse_uri(&uri);

    // The client needs a vat of its own: mutual TLS means it has a key too.
    let vat = Vat::builder().start().await?;
    // A typed reference: the URI does not say what the object is, so the client says
    // which interface it expects. A call the object does not answer breaks with
    // `unknown_method` or `bad_arguments`.
    let log = LogRef::from(vat.enliven(&sturdy));

    // `log` is one-way: no answer, no waiting. The lines go out in order, behind the
    // connect and the fetch of the object, and before the search below (E-order). If
    // the connection fails, the search breaks and says why.
    log.log("foot");
    log.log("shoe");
    let found = log.search("foo").await;

    vat.shutdown().await;
    match found {
        Ok(hits) => {
            for (time, line) in hits {
                println!("At {time}: {}", line.escape_debug());
            }
            Ok(())
        }
        Err(broken) => client::fail(&broken),
    }
}
