//! Ada's remote counter (from the "Ode to the Granovetter Diagram" lineage of capability
//! examples) as a server: `foo()` increments the count and answers nothing, `bar()`
//! answers the count. The two methods are the typed interface `Counter` in
//! `examples/common/counter.rs`, which the `counter_client` example calls.
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

#[path = "common/counter.rs"]
mod counter;
#[path = "common/server.rs"]
mod server;

use std::sync::atomic::{AtomicU64, Ordering};

use counter::{Counter, CounterServer};

/// The counter: one number, shared by every caller.
#[derive(Default)]
struct Count(AtomicU64);

impl Counter for Count {
    fn foo(&self) {
        let count = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        eprintln!("counter_server: foo(): the count is now {count}");
    }

    fn bar(&self) -> u64 {
        let count = self.0.load(Ordering::SeqCst);
        eprintln!("counter_server: bar() -> {count}");
        count
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A call with the wrong arguments, or to a method `Counter` does not have, is
    // answered by `CounterServer` (`bad_arguments`, `unknown_method`) and never
    // reaches `Count`.
    server::serve("counter_server", CounterServer::new(Count::default())).await
}
