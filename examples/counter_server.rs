//! Ada's remote counter (from the "Ode to the Granovetter Diagram" lineage of capability
//! examples) as a server: `foo()` increments the count and answers nothing, `bar()`
//! answers the count. Pair it with the `counter_client` example.
//!
//! The server prints the counter's sturdy ref URI as the first line of stdout (whoever
//! has it can count) and logs each call to stderr. The count lives as long as the
//! process, so each client run sees it one higher.
//!
//! Run it in two terminals. In the first:
//!
//! ```text
//! cargo run --example counter_server
//! ```
//!
//! and, with the `captp://...` line it printed, in the second (twice):
//!
//! ```text
//! cargo run --example counter_client -- 'captp://<vat-id>@127.0.0.1:<port>/<swiss>'
//! ```
//!
//! The first client prints `Calling Bar: 1`, the second `Calling Bar: 2`.
//!
//! Options: `--listen <addr>` (default `127.0.0.1:0`, a free port) and
//! `--identity <dir>` (keep the vat's key in `<dir>`, so the vat ID survives restarts).

#[path = "common/server.rs"]
mod server;

use std::sync::atomic::{AtomicU64, Ordering};

use captp::{Args, Object, Reply};

/// The counter: one number, shared by every caller.
#[derive(Default)]
struct Counter {
    count: AtomicU64,
}

impl Object for Counter {
    fn call(&self, method: &str, args: Args) -> Reply {
        if let Err(e) = args.decode::<()>() {
            eprintln!("counter_server: {method:?}() with unexpected arguments");
            return Reply::err(e);
        }
        match method {
            "foo" => {
                let count = self.count.fetch_add(1, Ordering::SeqCst) + 1;
                eprintln!("counter_server: foo(): the count is now {count}");
                Reply::ok(())
            }
            "bar" => {
                let count = self.count.load(Ordering::SeqCst);
                eprintln!("counter_server: bar() -> {count}");
                Reply::ok(count)
            }
            _ => {
                eprintln!("counter_server: {method:?}(): no such method");
                Reply::unknown_method(method)
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    server::serve("counter_server", Counter::default()).await
}
