//! E's log service as a standalone server: a vat that exports a log object and serves
//! it until Ctrl-C. Pair it with the `log_client` example.
//!
//! The log is a typed interface, `trait Log` in `examples/common/log.rs`, which this
//! server implements and `log_client` calls through the generated `LogRef`.
//!
//! The server prints the log's sturdy ref URI as the first line of stdout (that line is
//! the capability: whoever has it can log and search) and then logs each call it
//! serves to stderr.
//!
//! Run it in two terminals. In the first:
//!
//! ```text
//! cargo run --example log_service
//! ```
//!
//! and copy the `captp://...` line it prints. In the second:
//!
//! ```text
//! cargo run --example log_client -- 'captp://<vat-id>@127.0.0.1:<port>/<swiss>'
//! ```
//!
//! Options: `--listen <addr>` (default `127.0.0.1:0`, a free port) and
//! `--identity <dir>` (keep the vat's key in `<dir>` so the vat ID stays the same across
//! restarts; the swiss number is fresh on every start, so the URI still changes):
//!
//! ```text
//! cargo run --example log_service -- --listen 127.0.0.1:4433 --identity certs/log
//! ```
//!
//! Or in one shell, with the server in the background:
//!
//! ```text
//! cargo build --examples
//! target/debug/examples/log_service > uri.txt &
//! until [ -s uri.txt ]; do sleep 0.1; done   # wait for the URI line
//! target/debug/examples/log_client "$(head -n1 uri.txt)"
//! kill -INT %1
//! ```

#[path = "common/log.rs"]
mod log;
#[path = "common/server.rs"]
mod server;

use log::{LogServer, LogService};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `LogServer` is the object `#[captp::interface]` generated for the `Log` trait: it
    // checks each call's arguments against the trait and runs the method.
    server::serve(
        "log_service",
        LogServer::new(LogService::traced("log_service")),
    )
    .await
}
