//! A topic store (the Perl 6 JSON server of the classic tasks), done with
//! capabilities: topics hold arbitrary values, and whoever holds the store's sturdy ref
//! can `set`, `get`, `delete` and `dump` them.
//!
//! Values are any CBOR data (the server keeps a `ciborium::Value` and never needs to
//! know its type), so one client may store a map or a byte string that another reads.
//! This command-line client takes JSON-ish scalars: `null`, `true`, `false`, integers,
//! floats (`3.5`, `1e3`), and strings (anything else, or anything in double quotes:
//! `"42"` is a string). It prints values the same way, strings quoted, and nested data
//! in CBOR diagnostic notation (`[1, "a"]`, `{"k": 2}`, `h'00ff'`).
//!
//! Run the store in one terminal:
//!
//! ```text
//! cargo run --example topic_store -- serve
//! ```
//!
//! and, with the `captp://...` line it printed, the client in another:
//!
//! ```text
//! cargo run --example topic_store -- client 'captp://<vat-id>@127.0.0.1:<port>/<swiss>' set answer 42
//! cargo run --example topic_store -- client 'captp://<vat-id>@127.0.0.1:<port>/<swiss>' set motd 'hello, world'
//! cargo run --example topic_store -- client 'captp://<vat-id>@127.0.0.1:<port>/<swiss>' get answer
//! cargo run --example topic_store -- client 'captp://<vat-id>@127.0.0.1:<port>/<swiss>' dump
//! cargo run --example topic_store -- client 'captp://<vat-id>@127.0.0.1:<port>/<swiss>' delete motd
//! ```
//!
//! `set` prints `answer = 42` (and `(was <old>)` when it replaced a value), `get`
//! prints `42`, `dump` prints `<topic> = <value>` per topic in name order, and
//! `delete` prints `deleted motd`. Getting or deleting a topic that does not exist
//! exits 1 with `no_such_topic`.
//!
//! `serve` takes `--listen <addr>` (default `127.0.0.1:0`, a free port) and
//! `--identity <dir>` (keep the vat's key in `<dir>`, so the vat ID survives restarts)
//! and serves until Ctrl-C.

#[path = "common/client.rs"]
mod client;
#[path = "common/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::sync::Mutex;

use captp::{Args, Broken, Object, Reply, Vat};
use ciborium::Value;

/// A store of topics holding any values: serve it, or make a request of it.
#[derive(clap::Parser)]
#[command(name = "topic_store", version)]
enum Cli {
    /// Run the store and print its sturdy ref URI.
    #[command(disable_help_flag = true)]
    Serve(server::ServeOptions),
    /// Make one request of a store.
    Client {
        /// The store's sturdy ref (`captp://...`, printed by `topic_store serve`), or @FILE.
        uri: String,
        #[command(subcommand)]
        request: Request,
    },
}

/// The most topics the store holds.
const MAX_TOPICS: usize = 10_000;
/// The longest topic name, in characters.
const MAX_TOPIC: usize = 128;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match client::parse_args() {
        Cli::Serve(_) => server::serve("topic_store serve", TopicStore::default()).await,
        Cli::Client { uri, request } => run(&client::parse_uri(&uri), request).await,
    }
}

/// Whether `topic` is a name the store accepts: 1 to 128 characters, no control
/// characters.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.chars().count() > MAX_TOPIC {
        return Err(format!("a topic is 1 to {MAX_TOPIC} characters"));
    }
    if topic.chars().any(char::is_control) {
        return Err("a topic has no control characters".to_owned());
    }
    Ok(())
}

// ---- The store ----

/// Topics and their values. Exported by sturdy ref.
#[derive(Default)]
struct TopicStore(Mutex<BTreeMap<String, Value>>);

impl TopicStore {
    fn set(&self, topic: String, value: Value) -> Result<Option<Value>, Broken> {
        check_topic(&topic).map_err(Broken::bad_arguments)?;
        let mut topics = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if topics.len() >= MAX_TOPICS && !topics.contains_key(&topic) {
            return Err(Broken::failed(format!(
                "store_full: the store holds at most {MAX_TOPICS} topics"
            )));
        }
        eprintln!("topic_store serve: set {topic:?}");
        Ok(topics.insert(topic, value))
    }
}

impl Object for TopicStore {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "set" => args
                .decode::<(String, Value)>()
                .and_then(|(topic, value)| self.set(topic, value))
                .into(),
            "get" => args
                .decode::<(String,)>()
                .and_then(|(topic,)| {
                    let topics = self.0.lock().unwrap_or_else(|e| e.into_inner());
                    topics
                        .get(&topic)
                        .cloned()
                        .ok_or_else(|| no_such_topic(&topic))
                })
                .into(),
            "delete" => args
                .decode::<(String,)>()
                .map(|(topic,)| {
                    let mut topics = self.0.lock().unwrap_or_else(|e| e.into_inner());
                    let deleted = topics.remove(&topic).is_some();
                    if deleted {
                        eprintln!("topic_store serve: deleted {topic:?}");
                    }
                    deleted
                })
                .into(),
            "dump" => match args.decode::<()>() {
                Ok(()) => Reply::ok(&*self.0.lock().unwrap_or_else(|e| e.into_inner())),
                Err(e) => Reply::err(e),
            },
            _ => Reply::unknown_method(method),
        }
    }
}

fn no_such_topic(topic: &str) -> Broken {
    Broken::failed(format!("no_such_topic: {topic}"))
}

// ---- The client ----

/// What the client asks of the store.
#[derive(clap::Subcommand)]
enum Request {
    /// Set TOPIC to VALUE and print it (and the value it replaced).
    Set {
        /// The topic (1 to 128 characters, no control characters).
        #[arg(value_parser = topic_arg)]
        topic: String,
        /// `null`, `true`, `false`, a number, or a string (anything else, or in double
        /// quotes).
        #[arg(value_parser = value_arg, allow_hyphen_values = true)]
        value: Value,
    },
    /// Print TOPIC's value.
    Get {
        /// The topic.
        #[arg(value_parser = topic_arg)]
        topic: String,
    },
    /// Delete TOPIC.
    Delete {
        /// The topic.
        #[arg(value_parser = topic_arg)]
        topic: String,
    },
    /// Print every topic and its value, in name order.
    Dump,
}

/// `check_topic` for the command line.
fn topic_arg(topic: &str) -> Result<String, String> {
    check_topic(topic).map(|()| topic.to_owned())
}

/// `parse_value` for the command line: every text is some value.
fn value_arg(text: &str) -> Result<Value, String> {
    Ok(parse_value(text))
}

/// A JSON-ish scalar: `null`, `true`, `false`, an integer, a finite float, a string in
/// double quotes, or else the text itself as a string.
fn parse_value(text: &str) -> Value {
    match text {
        "null" => return Value::Null,
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(n) = text.parse::<i64>() {
        return Value::Integer(n.into());
    }
    if let Ok(n) = text.parse::<u64>() {
        return Value::Integer(n.into());
    }
    let numeric = text.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.');
    if let Ok(x) = text.parse::<f64>() {
        if numeric && x.is_finite() {
            return Value::Float(x);
        }
    }
    let unquoted = text.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
    Value::Text(unquoted.unwrap_or(text).to_owned())
}

/// A value in JSON-ish text, CBOR diagnostic notation for what JSON lacks.
fn show(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Integer(n) => i128::from(*n).to_string(),
        Value::Float(x) => format!("{x:?}"),
        Value::Text(s) => quote(s),
        Value::Bytes(b) => format!(
            "h'{}'",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(show).collect::<Vec<_>>().join(", ")
        ),
        Value::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{}: {}", show(k), show(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Tag(tag, inner) => format!("{tag}({})", show(inner)),
        _ => "undefined".to_owned(),
    }
}

/// A string in double quotes, with quotes, backslashes and control characters escaped
/// (so a stored value cannot drive the terminal).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A topic name as printed: plain when it is safe to, quoted otherwise.
fn show_topic(topic: &str) -> String {
    if topic
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\')
    {
        quote(topic)
    } else {
        topic.to_owned()
    }
}

/// Sends one request and prints the answer.
async fn run(
    sturdy: &captp::SturdyRef,
    request: Request,
) -> Result<(), Box<dyn std::error::Error>> {
    let vat = Vat::builder().start().await?;
    let store = vat.enliven(sturdy);
    let printed: Result<Vec<String>, Broken> = match request {
        Request::Set { topic, value } => store
            .send::<Option<Value>>("set", (&topic, &value))
            .await
            .map(|old| {
                let line = format!("{} = {}", show_topic(&topic), show(&value));
                vec![match old {
                    Some(old) => format!("{line} (was {})", show(&old)),
                    None => line,
                }]
            }),
        Request::Get { topic } => store
            .send::<Value>("get", (&topic,))
            .await
            .map(|value| vec![show(&value)]),
        Request::Delete { topic } => match store.send::<bool>("delete", (&topic,)).await {
            Ok(true) => Ok(vec![format!("deleted {}", show_topic(&topic))]),
            Ok(false) => Err(no_such_topic(&topic)),
            Err(broken) => Err(broken),
        },
        Request::Dump => store
            .send::<BTreeMap<String, Value>>("dump", ())
            .await
            .map(|topics| {
                topics
                    .iter()
                    .map(|(topic, value)| format!("{} = {}", show_topic(topic), show(value)))
                    .collect()
            }),
    };
    vat.shutdown().await;
    match printed {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            Ok(())
        }
        Err(broken) => client::fail(&broken),
    }
}
