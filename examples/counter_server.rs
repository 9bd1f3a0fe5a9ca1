//! Ada's remote counter (from the "Ode to the Granovetter Diagram" lineage of capability
//! examples) as a server: `foo()` increments the count and answers nothing, `bar()`
//! answers the count. The two methods are the typed interface `Counter` in
//! `examples/common/counter.rs`, which the `counter_client` example calls.
//!
//! The server prints the counter's sturdy ref URI as the first line of stdout (whoever
//! has it can count) and logs each call to stderr. Each client run sees the count one
//! higher. With `--identity <dir>` the count is also kept in `<dir>/counter.count` and
//! read back at start, so it carries on across restarts: the file is replaced
//! crash-safely (write a temporary file, sync it, rename it over the old one, sync the
//! directory), so a crash at any moment leaves the old count or the new one, never a
//! torn file. Without `--identity` the count lives as long as the process.
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

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use counter::{Counter, CounterServer};

/// The counter: one number, shared by every caller, and where it is kept, if anywhere.
struct Count {
    /// Locked across the save too, so two increments never write out of order.
    count: Mutex<u64>,
    file: Option<CountFile>,
}

impl Counter for Count {
    fn foo(&self) {
        let mut count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        *count += 1;
        eprintln!("counter_server: foo(): the count is now {count}");
        if let Some(file) = &self.file {
            // A blocking write and sync in the object: fine for a counter example, a
            // real service would batch them or hand them to a blocking task.
            if let Err(e) = file.save(*count) {
                eprintln!("counter_server: could not save the count: {e}");
            }
        }
    }

    fn bar(&self) -> u64 {
        let count = *self.count.lock().unwrap_or_else(|e| e.into_inner());
        eprintln!("counter_server: bar() -> {count}");
        count
    }
}

/// The count on disk: one decimal number in a file of its own, replaced atomically.
struct CountFile {
    path: PathBuf,
}

impl CountFile {
    /// The count saved last, or 0 when there is none yet.
    fn load(&self) -> io::Result<u64> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text.trim().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} does not hold a count", self.path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Replaces the saved count with `count`, crash-safely: the new text goes to a
    /// temporary file that is synced before it is renamed over the old one (a rename
    /// within a directory is atomic), then the directory is synced so that the rename
    /// itself survives a power cut. A crash leaves the old file or the new one.
    fn save(&self, count: u64) -> io::Result<()> {
        let temporary = self.path.with_extension("count.tmp");
        let mut file = File::create(&temporary)?;
        writeln!(file, "{count}")?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, &self.path)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()
    }
}

/// The `--identity` directory, if given (the server module checks the options).
fn identity_dir() -> Option<PathBuf> {
    let mut args = std::env::args().skip_while(|a| a != "--identity");
    args.next()?;
    args.next().map(PathBuf::from)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = identity_dir().map(|dir| CountFile {
        path: dir.join("counter.count"),
    });
    let count = match &file {
        Some(file) => file.load()?,
        None => 0,
    };
    if let Some(file) = &file {
        eprintln!(
            "counter_server: the count is {count} (kept in {})",
            file.path.display()
        );
    }
    let count = Count {
        count: Mutex::new(count),
        file,
    };
    // A call with the wrong arguments, or to a method `Counter` does not have, is
    // answered by `CounterServer` (`bad_arguments`, `unknown_method`) and never
    // reaches `Count`.
    server::serve("counter_server", CounterServer::new(count)).await
}
