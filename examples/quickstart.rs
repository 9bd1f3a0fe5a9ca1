//! captp in one process: two vats talk over real mutual TLS on 127.0.0.1.
//!
//! The server vat exports a log service, written as a typed interface (`trait Log` in
//! `examples/common/log.rs`, marked `#[captp::interface]`), and prints its sturdy ref
//! URI. The client vat enlivens the URI as a typed reference, `LogRef`, logs two lines
//! with one-way sends, searches, and then makes a pipelined call: `topic("errors")`
//! gives a `LogRef` at once, and the client logs to it and searches it before the
//! answer has come back, all in one round trip.
//!
//! The second half calls the same object with the dynamic layer that typed references
//! are built on: `Ref::send` with the method's name as a string and the result's type
//! chosen by the caller. The wire format is the same either way. The dynamic layer can
//! also ask for a method the object does not have, which the typed stub cannot even
//! express; the answer is a `Broken` of kind `unknown_method`.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example quickstart
//! ```

#[path = "common/log.rs"]
mod log;
// Only for its `init_logging` (`RUST_LOG`), which every example installs.
#[allow(dead_code)]
#[path = "common/server.rs"]
mod server;

use std::time::Instant;

use captp::{BrokenKind, Ref, Vat};
use log::{LogRef, LogServer, LogService};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    server::init_logging();
    if std::env::args().len() > 1 {
        eprintln!("usage: quickstart (no arguments)");
        std::process::exit(2);
    }

    // The server: a vat with a fresh identity, listening on a free loopback port.
    let server = Vat::builder().listen("127.0.0.1:0").start().await?;
    let uri = server.export(LogServer::new(LogService::default()))?;
    println!("server vat {} exports the log service at", server.vat_id());
    println!("  {uri}");

    // The client: its own vat (mutual TLS needs it to have a key too).
    let client = Vat::builder().start().await?;
    let log = LogRef::from(client.enliven(&uri));
    println!("client vat {} enlivened the URI", client.vat_id());

    // `log` is `#[oneway]`: no answer is allocated. The two lines queue behind the
    // connection and the fetch of the object, in order.
    log.log("foot");
    log.log("shoe");

    let started = Instant::now();
    let hits = log.search("foo").await?;
    println!(
        "search(\"foo\") -> {} match(es) after connect + handshake + fetch ({:?})",
        hits.len(),
        started.elapsed()
    );
    for (time, line) in &hits {
        println!("  At {time}: {line}");
    }

    // Pipelining: `topic` answers a new log; `errors` is usable before it exists.
    let started = Instant::now();
    let errors = log.topic("errors");
    errors.log("disk full");
    let found = errors.search("disk").await?;
    println!(
        "pipelined topic(\"errors\").log(..).search(\"disk\") -> {:?} in one round trip ({:?})",
        found.iter().map(|(_, l)| l).collect::<Vec<_>>(),
        started.elapsed()
    );

    // The dynamic layer: the same object through a plain `Ref`. Methods are strings,
    // arguments a tuple, and the caller names the result's type.
    let dynamic = Ref::from(log.clone());
    let again: Vec<(u64, String)> = dynamic.send("search", ("sho",)).await?;
    println!(
        "dynamic send(\"search\", (\"sho\",)) -> {:?}",
        again.iter().map(|(_, l)| l).collect::<Vec<_>>()
    );

    // Errors come back as Broken values with a kind.
    match dynamic.send::<()>("delete_everything", ()).await {
        Err(broken) if broken.kind() == BrokenKind::UnknownMethod => {
            println!("dynamic send(\"delete_everything\", ()) -> broken: {broken}");
        }
        other => return Err(format!("expected unknown_method, got {other:?}").into()),
    }

    if hits.len() != 1 || found.len() != 1 || again.len() != 1 {
        return Err("unexpected results".into());
    }
    client.shutdown().await;
    server.shutdown().await;
    println!("done");
    Ok(())
}
