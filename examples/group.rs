//! Group messaging in the style of Spread, done with capabilities: members join a
//! group, and a message one member multicasts reaches every other member exactly once,
//! all of them in one agreed order.
//!
//! `group serve` runs the group and prints its sturdy ref URI: the authority to join.
//! `group join <URI> <name>` joins, passing the group a *listener* of its own inside
//! the arguments, and gets back a *membership*: its authority to multicast under its
//! name and to leave. The group stamps each message with its next sequence number and
//! hands it to every other member's listener while holding its lock; messages on one
//! reference arrive in the order sent (E-order), so every member sees the messages in
//! the group's order, as `[<seq>] <name>: <text>`. Members also see the group's view
//! change: `* <name> joined` and `* <name> left` (a member whose vat goes away leaves
//! too: the group's lost-client hook notices).
//!
//! Run the group in one terminal:
//!
//! ```text
//! cargo run --example group -- serve
//! ```
//!
//! and, with the `captp://...` line it printed, one member per terminal:
//!
//! ```text
//! cargo run --example group -- join 'captp://<vat-id>@127.0.0.1:<port>/<swiss>' alice
//! cargo run --example group -- join 'captp://<vat-id>@127.0.0.1:<port>/<swiss>' bob
//! ```
//!
//! Each line typed is multicast; end of input (Ctrl-D) leaves. Or see a busy group in
//! one process, over real TLS on 127.0.0.1: three members multicast at once, and each
//! prints the order it heard:
//!
//! ```text
//! cargo run --example group -- demo
//! ```
//!
//! `serve` takes `--listen <addr>` (default `127.0.0.1:0`, a free port) and
//! `--identity <dir>` (keep the vat's key in `<dir>`, so the vat ID survives restarts)
//! and serves until Ctrl-C. `join` exits 0 at end of input, and 1 if it cannot join or
//! the group goes away.

#[path = "common/client.rs"]
mod client;
#[path = "common/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use captp::{Args, Broken, Object, Ref, Reply, Vat, VatId};
use tokio::sync::mpsc;

/// A group whose members hear every message in one order: serve it, join it, or run
/// the demo.
#[derive(clap::Parser)]
#[command(name = "group", version)]
enum Cli {
    /// Run the group and print its sturdy ref URI.
    #[command(disable_help_flag = true)]
    Serve(server::ServeOptions),
    /// Join the group as NAME; each line typed is multicast, end of input leaves.
    Join {
        /// The group's sturdy ref (`captp://...`, printed by `group serve`), or @FILE.
        uri: String,
        /// The name the others see (1 to 32 characters, no spaces or control characters).
        #[arg(value_parser = name_arg)]
        name: String,
    },
    /// Run a group and three members in one process.
    Demo,
}

/// The longest name the group accepts, in characters.
const MAX_NAME: usize = 32;
/// The longest message the group accepts, in characters.
const MAX_TEXT: usize = 2000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match client::parse_args() {
        Cli::Serve(_) => server::serve("group serve", Group::default()).await,
        Cli::Join { uri, name } => join(&client::parse_uri(&uri), &name).await,
        Cli::Demo => demo().await,
    }
}

/// Whether `name` is one the group accepts: 1 to 32 characters, none of them space
/// or control characters.
/// `check_name` for the command line.
fn name_arg(name: &str) -> Result<String, String> {
    check_name(name).map(|()| name.to_owned())
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(format!("a name is 1 to {MAX_NAME} characters"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a name has no spaces or control characters".to_owned());
    }
    Ok(())
}

// ---- The group ----

/// The group: its members and its sequence. Exported by sturdy ref; its one method
/// is `join(name, listener)`.
#[derive(Clone, Default)]
struct Group(Arc<Mutex<Members>>);

#[derive(Default)]
struct Members {
    next_id: u64,
    next_seq: u64,
    by_id: BTreeMap<u64, (String, Ref)>,
}

impl Members {
    /// Tells every member but `except` that `text` happened. One-way, under the lock.
    fn notice_others(&self, except: u64, text: &str) {
        for (_, (_, listener)) in self.by_id.iter().filter(|(id, _)| **id != except) {
            // Refused only if that listener's session is gone (its watcher notices) or
            // it reads far too slowly: it misses this notice, and nobody else does.
            let _ = listener.send_only("notice", (text,));
        }
    }
}

impl Group {
    fn members(&self) -> MutexGuard<'_, Members> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn join(&self, name: String, listener: Ref) -> Reply {
        if let Err(problem) = check_name(&name) {
            return Reply::err(Broken::bad_arguments(problem));
        }
        let mut members = self.members();
        if members.by_id.values().any(|(n, _)| *n == name) {
            return Reply::err(Broken::failed(format!("name_taken: {name}")));
        }
        let id = members.next_id;
        members.next_id += 1;
        members.notice_others(id, &format!("{name} joined"));
        members.by_id.insert(id, (name.clone(), listener));
        eprintln!(
            "group serve: {name} joined ({} in the group)",
            members.by_id.len()
        );
        Reply::object(Membership {
            group: self.clone(),
            id,
        })
    }

    fn leave(&self, id: u64, why: &str) {
        let mut members = self.members();
        if let Some((name, _)) = members.by_id.remove(&id) {
            members.notice_others(id, &format!("{name} left"));
            eprintln!(
                "group serve: {name} left ({why}; {} in the group)",
                members.by_id.len()
            );
        }
    }
}

impl Object for Group {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "join" => match args.decode::<(String, Ref)>() {
                Ok((name, listener)) => self.join(name, listener),
                Err(e) => Reply::err(e),
            },
            _ => Reply::unknown_method(method),
        }
    }
}

/// One member's authority: to multicast under its name, and to leave.
struct Membership {
    group: Group,
    id: u64,
}

impl Membership {
    /// Stamps `text` with the next sequence number and delivers it to every other
    /// member; answers the number.
    fn multicast(&self, text: &str) -> Result<u64, Broken> {
        if text.chars().count() > MAX_TEXT {
            return Err(Broken::bad_arguments(format!(
                "a message is at most {MAX_TEXT} characters"
            )));
        }
        let mut members = self.group.members();
        let Some((from, _)) = members.by_id.get(&self.id) else {
            return Err(Broken::failed("not_a_member: you left the group"));
        };
        let from = from.clone();
        members.next_seq += 1;
        let seq = members.next_seq;
        for (_, (_, listener)) in members.by_id.iter().filter(|(id, _)| **id != self.id) {
            // As in `notice_others`: one listener's failure is not the sender's.
            let _ = listener.send_only("deliver", (seq, &from, text));
        }
        Ok(seq)
    }
}

impl Object for Membership {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "multicast" => args
                .decode::<(String,)>()
                .and_then(|(text,)| self.multicast(&text))
                .into(),
            "leave" => args
                .decode::<()>()
                .map(|()| self.group.leave(self.id, "called leave()"))
                .into(),
            _ => Reply::unknown_method(method),
        }
    }

    fn lost_client(&self, peer: VatId) {
        self.group
            .leave(self.id, &format!("lost client: vat {peer} disconnected"));
    }
}

// ---- A member ----

/// What a member's listener hears.
enum Heard {
    Message {
        seq: u64,
        from: String,
        text: String,
    },
    Notice(String),
}

impl std::fmt::Display for Heard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Heard::Message { seq, from, text } => {
                write!(f, "[{seq}] {}: {}", clean(from), clean(text))
            }
            Heard::Notice(text) => write!(f, "* {}", clean(text)),
        }
    }
}

/// A listener that hands what it hears to a channel.
fn listener(heard: mpsc::UnboundedSender<Heard>) -> Ref {
    Ref::from_object(move |method: &str, args: Args| {
        let decoded = match method {
            "deliver" => args
                .decode::<(u64, String, String)>()
                .map(|(seq, from, text)| Heard::Message { seq, from, text }),
            "notice" => args
                .decode::<(String,)>()
                .map(|(text,)| Heard::Notice(text)),
            _ => return Reply::unknown_method(method),
        };
        decoded.map(|h| drop(heard.send(h))).into()
    })
}

/// `text` with control characters replaced, so that another member cannot drive this
/// terminal or fake lines.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// `join <URI> <name>`: joins, prints what the group delivers, multicasts each line of
/// stdin, and leaves at end of input.
async fn join(sturdy: &captp::SturdyRef, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let vat = Vat::builder().start().await?;
    let (heard_tx, mut heard) = mpsc::unbounded_channel();
    let membership: Ref = match vat
        .enliven(sturdy)
        .send("join", (name, listener(heard_tx)))
        .await
    {
        Ok(membership) => membership,
        Err(broken) => {
            vat.shutdown().await;
            client::fail(&broken);
        }
    };
    println!("* you joined as {name}");

    // Standard input is read on a thread of its own; end of input closes the channel.
    let (tx, mut lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let outcome = loop {
        tokio::select! {
            Some(h) = heard.recv() => println!("{h}"),
            line = lines.recv() => match line {
                None => break membership.send::<()>("leave", ()).await,
                Some(line) if line.trim().is_empty() => {}
                Some(line) => {
                    if let Err(broken) = membership.send::<u64>("multicast", (line,)).await {
                        break Err(broken);
                    }
                }
            },
            broken = membership.when_broken() => break Err(broken),
        }
    };
    vat.shutdown().await;
    match outcome {
        Ok(()) => Ok(()),
        Err(broken) => client::fail(&broken),
    }
}

/// A group and three members in one process, each a vat of its own: the members
/// multicast at once, and each prints the order it heard the others in.
async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    const EACH: usize = 4;
    let group_vat = Vat::builder().listen("127.0.0.1:0").start().await?;
    let uri = group_vat.export(Group::default())?;
    println!("group vat {} exports the group at", group_vat.vat_id());
    println!("  {uri}");

    let names = ["alice", "bob", "carol"];
    let mut members = Vec::new();
    for name in names {
        let vat = Vat::builder().start().await?;
        let (tx, heard) = mpsc::unbounded_channel();
        let membership: Ref = vat.enliven(&uri).send("join", (name, listener(tx))).await?;
        members.push((name, vat, membership, heard));
    }

    // Everyone multicasts at once, without waiting for anything: each member's sends
    // go out on its own connection, so the group sees them interleaved somehow.
    let sends: Vec<_> = (1..=EACH)
        .flat_map(|i| {
            members.iter().map(move |(name, _, membership, _)| {
                membership.send::<u64>("multicast", (format!("{name} {i}"),))
            })
        })
        .collect();
    for send in sends {
        send.await?;
    }

    // Each member hears the others' messages (and who joined after it).
    let mut orders = Vec::new();
    for (name, _, _, heard) in &mut members {
        let mut order = Vec::new();
        while order.len() < EACH * (names.len() - 1) {
            match tokio::time::timeout(Duration::from_secs(10), heard.recv()).await {
                Ok(Some(Heard::Message { seq, from, text })) => order.push((seq, from, text)),
                Ok(Some(Heard::Notice(_))) => {}
                Ok(None) | Err(_) => return Err(format!("{name} stopped hearing").into()),
            }
        }
        let line: Vec<String> = order
            .iter()
            .map(|(seq, _, text)| format!("[{seq}] {text}"))
            .collect();
        println!("{name} heard: {}", line.join(", "));
        orders.push((*name, order));
    }

    // Each member heard every message but its own, once, in sequence order; so any two
    // members heard the messages neither of them sent in the same order.
    let mut agreed = true;
    for (name, order) in &orders {
        let mut texts: Vec<&str> = order.iter().map(|(_, _, text)| text.as_str()).collect();
        texts.sort_unstable();
        let mut expected: Vec<String> = names
            .iter()
            .filter(|other| *other != name)
            .flat_map(|other| (1..=EACH).map(move |i| format!("{other} {i}")))
            .collect();
        expected.sort_unstable();
        agreed &= texts == expected;
        agreed &= order.windows(2).all(|w| w[0].0 < w[1].0);
    }
    println!(
        "{}",
        if agreed {
            "every member heard the others' messages once each, in the group's order"
        } else {
            "the members did not hear the group's messages once each in order"
        }
    );

    for (_, vat, ..) in members {
        vat.shutdown().await;
    }
    group_vat.shutdown().await;
    if agreed {
        Ok(())
    } else {
        Err("the group's order was not kept".into())
    }
}
