//! captp in one process: two vats talk over real mutual TLS on 127.0.0.1.
//!
//! The server vat exports a log service and prints its sturdy ref URI. The client vat
//! enlivens the URI, logs two lines with one-way sends, searches, and then makes a
//! pipelined call: it asks for a new `topic` log and logs to it before the answer has
//! come back, all in one round trip.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example quickstart
//! ```

#[path = "common/log.rs"]
mod log;

use std::time::Instant;

use captp::Vat;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().len() > 1 {
        eprintln!("usage: quickstart (no arguments)");
        std::process::exit(2);
    }

    // The server: a vat with a fresh identity, listening on a free loopback port.
    let server = Vat::builder().listen("127.0.0.1:0").start().await?;
    let uri = server.export(log::LogService::default())?;
    println!("server vat {} exports the log service at", server.vat_id());
    println!("  {uri}");

    // The client: its own vat (mutual TLS needs it to have a key too).
    let client = Vat::builder().start().await?;
    let log = client.enliven(&uri.to_string().parse()?);
    println!("client vat {} enlivened the URI", client.vat_id());

    // One-way sends: no answer is allocated. They queue behind the connection and the
    // fetch of the object, in order.
    log.send_only("log", ("foot",))?;
    log.send_only("log", ("shoe",))?;

    let started = Instant::now();
    let hits: Vec<(u64, String)> = log.send("search", ("foo",)).await?;
    println!(
        "search(\"foo\") -> {} match(es) after connect + handshake + fetch ({:?})",
        hits.len(),
        started.elapsed()
    );
    for (time, line) in &hits {
        println!("  At {time}: {line}");
    }

    // Pipelining: `topic` returns a new object; we send to it before it exists.
    let started = Instant::now();
    let errors = log.send_ref("topic", ("errors",));
    errors.send_only("log", ("disk full",))?;
    let found: Vec<(u64, String)> = errors.send("search", ("disk",)).await?;
    println!(
        "pipelined topic(\"errors\").log(..).search(\"disk\") -> {:?} in one round trip ({:?})",
        found.iter().map(|(_, l)| l).collect::<Vec<_>>(),
        started.elapsed()
    );

    // Errors come back as Broken values with a kind.
    match log.send::<()>("delete_everything", ()).await {
        Err(broken) => println!("delete_everything() -> broken: {broken}"),
        Ok(()) => return Err("an unknown method succeeded".into()),
    }

    if hits.len() != 1 || found.len() != 1 {
        return Err("unexpected results".into());
    }
    client.shutdown().await;
    server.shutdown().await;
    println!("done");
    Ok(())
}
