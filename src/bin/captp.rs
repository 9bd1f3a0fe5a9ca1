//! The `captp` command: an operator's tool for vat identities, sturdy refs and calls.
//!
//! ```text
//! captp id <dir>                       load or create the identity in <dir>; print its vat ID
//! captp keygen <dir>                   create a new identity in <dir> (never overwrites one)
//! captp inspect <uri|@file> [--connect] where a sturdy ref points; with --connect, dial it,
//!                                      verify the vat ID, report TLS parameters and latency
//! captp ping <uri|@file> [--count N]   round trips to the vat, with timing
//! captp call <uri|@file> <method> [ARGS...] [--then <method> [ARGS...]] [--deadline SECS]
//! captp methods <uri|@file>            the object's methods (typed interfaces only)
//! captp serve-echo [--listen ADDR]     a tiny echo service; prints its URI
//! ```
//!
//! `--json` (before or after the subcommand) makes the output one JSON document per
//! line, stable for scripts. `RUST_LOG` (for example `RUST_LOG=captp=debug`) shows the
//! library's log on stderr.
//!
//! Call arguments are JSON values (`42`, `'"text"'`, `'[1,2]'`; a word that is not JSON
//! is taken as a string) sent as CBOR the way `Ref::send` sends a Rust tuple: none is
//! `null`, one or more an array (so `captp call URI tax 300` is `send("tax", (300,))`). Results print as JSON, a reference in them as `{"$ref": N}` (N indexes the
//! result's references); `--then` calls a method on the reference the first call
//! returns, pipelined: one round trip for the chain.
//!
//! Exit codes, by how a call or a connection failed:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | local error: bad file, bad URI, bad JSON argument, identity error |
//! | 2 | usage error (from the argument parser) |
//! | 3 | `unreachable`: TCP or TLS failed |
//! | 4 | `vat_id_mismatch`: the server is not the vat the URI names |
//! | 5 | `unknown_object`: no object under that swiss number (or revoked) |
//! | 6 | `unknown_method` |
//! | 7 | `bad_arguments` |
//! | 8 | `failed`: the method ran and returned an error |
//! | 9 | `timeout`: `--deadline` passed |
//! | 10 | `disconnected` |
//! | 11 | any other kind (`decode`, `not_an_object`, `too_large`, ...) |
//!
//! Never prints a swiss number: neither from a URI given to it, nor from a `@file` (whose
//! content is read, trimmed and parsed, and never echoed). `serve-echo` prints the URI of
//! its own object, as a server must for anyone to call it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use captp::{Broken, BrokenKind, Identity, InterfaceInfo, Object, Reply, SturdyRef, Vat};
use clap::{Parser, Subcommand};
use serde_json::{Value as Json, json};

/// How long `inspect --connect` and a call's connection wait for the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The CBOR tag around a reference index (PROTOCOL.md).
const CAP_TAG: u64 = captp::internal::wire::CAP_TAG;

#[derive(Parser)]
#[command(
    name = "captp",
    version,
    about = "Tools for captp vats: identities, sturdy refs, calls"
)]
struct Cli {
    /// Print one JSON document per line, stable for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load or create the vat identity in DIR and print its vat ID.
    Id {
        /// The identity directory.
        dir: PathBuf,
    },
    /// Create a new vat identity in DIR; refuses if DIR already holds one.
    Keygen {
        /// The identity directory (created if missing).
        dir: PathBuf,
    },
    /// Check a sturdy ref and print where it points (never the swiss number).
    Inspect {
        /// A sturdy ref URI, or @FILE holding one.
        target: String,
        /// Dial the vat, verify its vat ID, report TLS parameters and handshake latency.
        #[arg(long)]
        connect: bool,
    },
    /// Round trips to the vat behind a sturdy ref, with timing.
    Ping {
        /// A sturdy ref URI, or @FILE holding one.
        target: String,
        /// How many round trips.
        #[arg(long, short = 'c', default_value_t = 3)]
        count: u32,
    },
    /// Call a method; arguments are JSON values, the result prints as JSON.
    Call {
        /// A sturdy ref URI, or @FILE holding one.
        target: String,
        /// The method name.
        method: String,
        /// Arguments, each a JSON value (a word that is not JSON is a string).
        args: Vec<String>,
        /// Then call METHOD [ARGS...] on the reference the first call returns (pipelined).
        #[arg(long, num_args = 1.., value_name = "METHOD [ARGS]", allow_hyphen_values = true)]
        then: Option<Vec<String>>,
        /// Give up after SECS seconds (exit code 9).
        #[arg(long, value_name = "SECS")]
        deadline: Option<f64>,
    },
    /// List an object's methods (objects served through a typed interface).
    Methods {
        /// A sturdy ref URI, or @FILE holding one.
        target: String,
    },
    /// Serve a tiny echo object and print its URI; stops on Ctrl-C or SIGTERM.
    ServeEcho {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

/// A failure, with the exit code it maps to.
struct Failure {
    code: u8,
    kind: String,
    message: String,
}

impl Failure {
    fn local(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            kind: "local".to_owned(),
            message: message.into(),
        }
    }

    fn broken(b: &Broken) -> Failure {
        let code = match b.kind() {
            BrokenKind::Unreachable => 3,
            BrokenKind::VatIdMismatch => 4,
            BrokenKind::UnknownObject => 5,
            BrokenKind::UnknownMethod => 6,
            BrokenKind::BadArguments => 7,
            BrokenKind::Failed => 8,
            BrokenKind::Timeout => 9,
            BrokenKind::Disconnected => 10,
            _ => 11,
        };
        // The peer's words, escaped.
        Failure {
            code,
            kind: escape(b.kind_name()),
            message: escape(b.message()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("captp: could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if json {
                eprintln!(
                    "{}",
                    json!({"error": {"kind": f.kind, "message": f.message}})
                );
            } else {
                eprintln!("captp: {}: {}", f.kind, f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (nothing but warnings by default); records of
/// the `log` crate (rustls) are bridged.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let json = cli.json;
    match cli.command {
        Command::Id { dir } => {
            let identity =
                Identity::load_or_create(&dir).map_err(|e| Failure::local(e.to_string()))?;
            print_id(json, &identity, &dir);
            Ok(())
        }
        Command::Keygen { dir } => {
            if Identity::load(&dir).is_ok() {
                return Err(Failure::local(format!(
                    "{} already holds an identity; `captp id` prints it, and keygen never overwrites one",
                    dir.display()
                )));
            }
            let identity =
                Identity::load_or_create(&dir).map_err(|e| Failure::local(e.to_string()))?;
            print_id(json, &identity, &dir);
            Ok(())
        }
        Command::Inspect { target, connect } => inspect(json, &target, connect).await,
        Command::Ping { target, count } => ping(json, &target, count).await,
        Command::Call {
            target,
            method,
            args,
            then,
            deadline,
        } => call(json, &target, &method, &args, then.as_deref(), deadline).await,
        Command::Methods { target } => methods(json, &target).await,
        Command::ServeEcho { listen } => serve_echo(json, &listen).await,
    }
}

fn print_id(json: bool, identity: &Identity, dir: &Path) {
    if json {
        println!(
            "{}",
            json!({"vat_id": identity.vat_id().to_string(), "dir": dir.display().to_string()})
        );
    } else {
        println!("{}", identity.vat_id());
    }
}

/// Reads a sturdy ref from a URI or from `@path` ([`SturdyRef::from_arg`]: one line, at
/// most 4 KiB). Errors never quote the URI or the file's content: they may hold a swiss
/// number.
fn sturdy_ref(target: &str) -> Result<SturdyRef, Failure> {
    SturdyRef::from_arg(target).map_err(|e| Failure::local(e.to_string()))
}

/// A client vat with a fresh identity that does not listen.
async fn client_vat() -> Result<Vat, Failure> {
    Vat::builder()
        .start()
        .await
        .map_err(|e| Failure::local(format!("could not start a vat: {e}")))
}

async fn inspect(json: bool, target: &str, connect: bool) -> Result<(), Failure> {
    let sturdy = sturdy_ref(target)?;
    let mut out = json!({
        "vat_id": sturdy.vat_id().to_string(),
        "address": sturdy.address().to_string(),
        "swiss": "present, 32 bytes, not shown",
    });
    if connect {
        use captp::internal::transport;
        let identity = Identity::generate().map_err(|e| Failure::local(e.to_string()))?;
        let config = transport::client_config(&identity, sturdy.vat_id())
            .map_err(|e| Failure::local(e.to_string()))?;
        let started = Instant::now();
        let address = sturdy.address().to_string();
        let (stream, presented) =
            transport::connect(&address, config, sturdy.vat_id(), CONNECT_TIMEOUT)
                .await
                .map_err(|e| {
                    let kind = match e {
                        transport::TransportError::VatIdMismatch { .. } => {
                            BrokenKind::VatIdMismatch
                        }
                        _ => BrokenKind::Unreachable,
                    };
                    Failure::broken(&Broken::new(kind, e.to_string()))
                })?;
        let latency = started.elapsed();
        let info = transport::TlsInfo::of(stream.get_ref().1);
        out["connect"] = json!({
            "vat_id_verified": presented.to_string(),
            "tls_version": info.version,
            "cipher": info.cipher,
            "group": info.group,
            "handshake_ms": latency.as_secs_f64() * 1000.0,
        });
    }
    if json {
        println!("{out}");
    } else {
        println!("vat id:   {}", sturdy.vat_id());
        println!("address:  {}", sturdy.address());
        println!("swiss:    <present, 32 bytes, not shown>");
        if let Some(c) = out.get("connect") {
            println!("verified: the server holds the key of that vat ID");
            println!(
                "tls:      {} {}",
                str_of(&c["tls_version"]),
                str_of(&c["cipher"])
            );
            println!("group:    {}", str_of(&c["group"]));
            println!(
                "handshake: {:.2} ms",
                c["handshake_ms"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

fn str_of(v: &Json) -> &str {
    v.as_str().unwrap_or("?")
}

async fn ping(json: bool, target: &str, count: u32) -> Result<(), Failure> {
    let sturdy = sturdy_ref(target)?;
    let vat = client_vat().await?;
    let object = vat.enliven(&sturdy);
    let mut times = Vec::new();
    for seq in 0..count.max(1) {
        let started = Instant::now();
        // One round trip on the session: the first also connects and fetches the
        // object, whose failure shows on the reference once it is done.
        vat.sync().await;
        let elapsed = started.elapsed();
        if let Some(b) = object.broken_reason() {
            vat.shutdown().await;
            return Err(Failure::broken(&b));
        }
        let ms = elapsed.as_secs_f64() * 1000.0;
        times.push(ms);
        if json {
            println!("{}", json!({"seq": seq, "ms": ms}));
        } else {
            println!(
                "round trip {seq}: {ms:.3} ms{}",
                if seq == 0 { " (connect and fetch)" } else { "" }
            );
        }
    }
    vat.shutdown().await;
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let max = times.iter().copied().fold(0.0, f64::max);
    if json {
        println!(
            "{}",
            json!({"count": times.len(), "min_ms": min, "max_ms": max})
        );
    } else {
        println!(
            "{} round trips, min {min:.3} ms, max {max:.3} ms",
            times.len()
        );
    }
    Ok(())
}

/// One command-line argument as a JSON value; a word that is not JSON is a string.
fn json_arg(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or_else(|_| Json::String(text.to_owned()))
}

/// The arguments of one call as [`captp::Ref::send`] sends a tuple of them: none is
/// `null` (Rust's `()`), one or more an array (`(a,)`, `(a, b)`).
fn call_args(args: &[String]) -> Json {
    match args {
        [] => Json::Null,
        some => Json::Array(some.iter().map(|a| json_arg(a)).collect()),
    }
}

async fn call(
    json: bool,
    target: &str,
    method: &str,
    args: &[String],
    then: Option<&[String]>,
    deadline: Option<f64>,
) -> Result<(), Failure> {
    let sturdy = sturdy_ref(target)?;
    let deadline = match deadline {
        Some(secs) => Some(Duration::try_from_secs_f64(secs).map_err(|_| {
            Failure::local(format!("--deadline {secs}: not a duration in seconds"))
        })?),
        None => None,
    };
    let vat = client_vat().await?;
    let object = vat.enliven(&sturdy);
    let mut promise = match then {
        Some([then_method, then_args @ ..]) => object
            .send_ref(method, call_args(args))
            .send::<Answer>(then_method, call_args(then_args)),
        _ => object.send::<Answer>(method, call_args(args)),
    };
    if let Some(d) = deadline {
        promise = promise.timeout(d);
    }
    let result = promise.await;
    vat.shutdown().await;
    let answer = result.map_err(|b| Failure::broken(&b))?;
    let out = to_json(&answer.value);
    if json {
        println!("{}", json!({"result": out}));
    } else {
        println!("{out}");
    }
    Ok(())
}

/// Any result: its CBOR value, and the references it holds (taken, so that the decode
/// accepts them; a reference prints as its index).
struct Answer {
    value: ciborium::Value,
    _refs: Vec<captp::Ref>,
}

impl<'de> serde::Deserialize<'de> for Answer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Answer, D::Error> {
        use serde::de::Error as _;
        let value = ciborium::Value::deserialize(d)?;
        let mut refs = Vec::new();
        take_refs(&value, &mut refs).map_err(D::Error::custom)?;
        Ok(Answer { value, _refs: refs })
    }
}

/// Takes every reference in `value` from the payload's table. Depth is bounded by the
/// CBOR limits the value was checked against before decoding.
fn take_refs(value: &ciborium::Value, refs: &mut Vec<captp::Ref>) -> Result<(), String> {
    use ciborium::Value as V;
    match value {
        V::Tag(CAP_TAG, _) => refs.push(
            value
                .deserialized::<captp::Ref>()
                .map_err(|e| e.to_string())?,
        ),
        V::Tag(_, inner) => take_refs(inner, refs)?,
        V::Array(items) => {
            for item in items {
                take_refs(item, refs)?;
            }
        }
        V::Map(entries) => {
            for (k, v) in entries {
                take_refs(k, refs)?;
                take_refs(v, refs)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// CBOR to JSON for printing: a reference becomes `{"$ref": N}`, bytes `{"$bytes":
/// "hex"}`, a map with non-text keys keeps them as their JSON text.
fn to_json(value: &ciborium::Value) -> Json {
    use ciborium::Value as V;
    match value {
        V::Null => Json::Null,
        V::Bool(b) => Json::Bool(*b),
        V::Integer(i) => {
            let i = i128::from(*i);
            match (i64::try_from(i), u64::try_from(i)) {
                (Ok(n), _) => json!(n),
                (_, Ok(n)) => json!(n),
                _ => Json::String(i.to_string()),
            }
        }
        V::Float(f) => json!(f),
        V::Text(t) => Json::String(t.clone()),
        V::Bytes(b) => json!({"$bytes": b.iter().map(|x| format!("{x:02x}")).collect::<String>()}),
        V::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        V::Map(entries) => {
            let mut map = serde_json::Map::new();
            for (k, v) in entries {
                let key = match k {
                    V::Text(t) => t.clone(),
                    other => to_json(other).to_string(),
                };
                map.insert(key, to_json(v));
            }
            Json::Object(map)
        }
        V::Tag(CAP_TAG, inner) => json!({"$ref": to_json(inner)}),
        V::Tag(tag, inner) => json!({"$tag": tag, "value": to_json(inner)}),
        _ => Json::Null,
    }
}

async fn methods(json: bool, target: &str) -> Result<(), Failure> {
    let sturdy = sturdy_ref(target)?;
    let vat = client_vat().await?;
    let object = vat.enliven(&sturdy);
    let info = InterfaceInfo::of(&object).timeout(CONNECT_TIMEOUT).await;
    vat.shutdown().await;
    let info = info.map_err(|b| {
        if b.kind() == BrokenKind::UnknownMethod {
            Failure {
                message: format!("{b} (the object is not served through a typed interface, so it cannot list its methods)"),
                ..Failure::broken(&b)
            }
        } else {
            Failure::broken(&b)
        }
    })?;
    if json {
        let methods: Vec<Json> = info
            .methods
            .iter()
            .map(|m| {
                json!({
                    "name": escape(&m.name),
                    "params": m.params.iter().map(|p| json!({"name": escape(&p.name), "type": escape(&p.ty)})).collect::<Vec<_>>(),
                    "returns": escape(&m.returns),
                    "oneway": m.oneway,
                })
            })
            .collect();
        println!(
            "{}",
            json!({"interface": escape(&info.interface), "methods": methods})
        );
    } else {
        println!("interface {}", escape(&info.interface));
        for m in &info.methods {
            let params: Vec<String> = m
                .params
                .iter()
                .map(|p| format!("{}: {}", escape(&p.name), escape(&p.ty)))
                .collect();
            let oneway = if m.oneway { " (one-way)" } else { "" };
            println!(
                "  {}({}) -> {}{oneway}",
                escape(&m.name),
                params.join(", "),
                escape(&m.returns)
            );
        }
    }
    Ok(())
}

/// A peer's string with control characters escaped, safe for a terminal.
fn escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// The object `serve-echo` exports: `echo` returns its arguments (the array of them),
/// `child` returns a new echo object (to try `--then`), `fail` fails with its argument
/// as the message, `wait MS` answers `MS` after that many milliseconds (to try
/// `--deadline`; at most a minute).
struct Echo;

impl Object for Echo {
    fn call(&self, method: &str, args: captp::Args) -> Reply {
        match method {
            "echo" => match args.decode::<ciborium::Value>() {
                Ok(v) => Reply::ok(v),
                Err(b) => Reply::err(b),
            },
            "child" => Reply::object(Echo),
            "fail" => {
                let why = args
                    .decode::<(String,)>()
                    .map_or_else(|_| "asked to fail".to_owned(), |(why,)| why);
                Reply::err(Broken::new(BrokenKind::Failed, why))
            }
            "wait" => match args.decode::<(u64,)>() {
                Ok((ms,)) => Reply::later(async move {
                    tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
                    Ok::<u64, Broken>(ms)
                }),
                Err(b) => Reply::err(b),
            },
            other => Reply::unknown_method(other),
        }
    }
}

async fn serve_echo(json: bool, listen: &str) -> Result<(), Failure> {
    let vat = Vat::builder()
        .listen(listen)
        .start()
        .await
        .map_err(|e| Failure::local(format!("could not start the vat: {e}")))?;
    let sturdy = vat
        .export(Echo)
        .map_err(|e| Failure::local(format!("could not export: {e}")))?;
    // The service's own URI: printing it is the point of this command.
    if json {
        println!("{}", json!({"uri": sturdy.to_string()}));
    } else {
        println!("{sturdy}");
    }
    wait_for_stop().await;
    vat.shutdown().await;
    Ok(())
}

/// Waits for Ctrl-C or (on Unix) SIGTERM.
async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_none_one_many() {
        assert_eq!(call_args(&[]), Json::Null);
        assert_eq!(call_args(&["42".to_owned()]), json!([42]));
        assert_eq!(
            call_args(&["hi".to_owned(), "[1,2]".to_owned()]),
            json!(["hi", [1, 2]])
        );
    }

    #[test]
    fn references_print_as_handles() {
        let v = ciborium::Value::Array(vec![
            ciborium::Value::Tag(CAP_TAG, Box::new(ciborium::Value::Integer(0.into()))),
            ciborium::Value::Text("x".into()),
        ]);
        assert_eq!(to_json(&v), json!([{"$ref": 0}, "x"]));
    }
}
