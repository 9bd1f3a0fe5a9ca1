//! E's log service as a standalone server: a vat that exports a log object and serves
//! it until Ctrl-C. Pair it with the `log_client` example.
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

use captp::{Args, Object, Reply};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = log::LogService::default();
    // A closure is an object too: this one says what it is asked, then passes the call
    // on to the log service.
    let traced = move |method: &str, args: Args| -> Reply {
        match (method, args.decode::<(String,)>()) {
            ("log", Ok((line,))) => eprintln!("log_service: log({line:?})"),
            ("search", Ok((needle,))) => eprintln!("log_service: search({needle:?})"),
            ("topic", Ok((name,))) => eprintln!("log_service: topic({name:?})"),
            _ => eprintln!("log_service: {method:?}(..)"),
        }
        service.call(method, args)
    };
    server::serve("log_service", traced).await
}
