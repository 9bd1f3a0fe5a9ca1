//! A chat room (the Tcl chat server of the classic tasks), done with capabilities.
//!
//! `chat serve` runs the room and prints its sturdy ref URI: that URI is the authority
//! to join. `chat join <URI> <nick>` joins it. Joining passes the room a *listener*, an
//! object of the member's own, inside the `join` arguments; the room calls it with
//! what the others say. In return the member gets a *membership*, a new object that is
//! its authority to speak under its nick, change the nick and leave. Nobody can speak
//! as someone else: there is no nick argument to forge, only the membership one holds.
//!
//! The three kinds of object are typed interfaces (`#[captp::interface]`): `Room`,
//! `Membership` and `Listener`, declared together below, so the room and its members
//! are checked against one contract. `join` answers an interface, so the member can
//! call its membership before the answer arrives.
//!
//! Each line a member types goes to the room, and every *other* member prints it as
//! `[HH:MM:SS] <nick>: <text>` (the time is the room's clock, in UTC). `/nick <new>`
//! renames (the others see `* <old> is now <new>`) and `/quit` (or end of input)
//! leaves (`* <nick> left`). The others also see `* <nick> joined`.
//!
//! A member that goes away without `/quit` (its process dies, its network fails) is
//! noticed twice over: the session that ended held the member's membership, so the
//! room's lost-client hook (`Object::lost_client`, added by a small wrapper around the
//! generated `MembershipServer`) fires on it; and the member's listener, a reference
//! over that session, breaks (`Ref::when_broken`). Either one drops the member and
//! tells the others `* <nick> left`, once. A listener that breaks for any reason drops
//! its member the same way.
//!
//! Run the room in one terminal:
//!
//! ```text
//! cargo run --example chat -- serve
//! ```
//!
//! and, with the `captp://...` line it printed, one member per terminal:
//!
//! ```text
//! cargo run --example chat -- join 'captp://<vat-id>@127.0.0.1:<port>/<swiss>' alice
//! cargo run --example chat -- join 'captp://<vat-id>@127.0.0.1:<port>/<swiss>' bob
//! ```
//!
//! Type a line in alice's terminal and bob's shows `[12:34:56] alice: hello`.
//!
//! `serve` takes `--listen <addr>` (default `127.0.0.1:0`, a free port) and
//! `--identity <dir>` (keep the vat's key in `<dir>`, so the vat ID survives restarts)
//! and serves until Ctrl-C. `join` exits 0 after `/quit` or end of input, and 1 if it
//! cannot join or the room goes away.

#[path = "common/client.rs"]
mod client;
#[path = "common/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use captp::{Args, Broken, BrokenKind, Interface, Object, Ref, Reply, Vat, VatId};
use tokio::sync::{mpsc, oneshot};

/// A chat room: serve it, or join it.
#[derive(clap::Parser)]
#[command(name = "chat", version)]
enum Cli {
    /// Run the room and print its sturdy ref URI.
    #[command(disable_help_flag = true)]
    Serve(server::ServeOptions),
    /// Join the room as NICK; each line typed is said to the others.
    Join {
        /// The room's sturdy ref (`captp://...`, printed by `chat serve`), or @FILE.
        uri: String,
        /// The name the others see (1 to 32 characters, no spaces or control characters).
        #[arg(value_parser = nick_arg)]
        nick: String,
    },
}

/// The longest nick the room accepts, in characters.
const MAX_NICK: usize = 32;
/// The longest line the room accepts, in characters.
const MAX_TEXT: usize = 2000;

// ---- The interfaces: what travels between the room and its members ----

/// The room. Its sturdy ref is the authority to join.
#[captp::interface]
trait Room {
    /// Adds a member called `nick`, who hears the others through `listener`, and answers
    /// its membership (pipelined: the caller can use it at once).
    fn join(&self, nick: String, listener: ListenerRef) -> impl Membership;
}

/// One member's authority in the room: to speak under its nick, rename, see who is
/// here, and leave. Only the member that joined holds it.
#[captp::interface]
trait Membership {
    /// Says `text` to everyone else.
    fn say(&self, text: &str) -> Result<(), Broken>;
    /// Takes the nick `new`, if nobody has it.
    fn nick(&self, new: String) -> Result<(), Broken>;
    /// Everyone else here, by nick.
    fn who(&self) -> Result<Vec<String>, Broken>;
    /// Leaves the room.
    fn leave(&self);
}

/// What a member passes to the room, to be told what happens. One-way: the room waits
/// for no member.
#[captp::interface]
trait Listener {
    /// `nick` said `text` at `time` (the room's clock, seconds since the Unix epoch).
    #[oneway]
    fn said(&self, time: u64, nick: &str, text: &str);
    /// Someone joined, left or was renamed.
    #[oneway]
    fn notice(&self, text: &str);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match client::parse_args() {
        Cli::Serve(_) => server::serve("chat serve", RoomServer::new(ChatRoom::default())).await,
        Cli::Join { uri, nick } => join(&uri, &nick).await,
    }
}

// ---- The room ----

/// The room: who is in it.
#[derive(Clone, Default)]
struct ChatRoom(Arc<Mutex<Members>>);

#[derive(Default)]
struct Members {
    next_id: u64,
    by_id: BTreeMap<u64, Member>,
}

struct Member {
    nick: String,
    listener: ListenerRef,
    /// Dropping this (when the member is removed) stops the task that watches the
    /// listener for breakage.
    _watching: oneshot::Sender<()>,
}

impl Members {
    fn nick_taken(&self, nick: &str) -> bool {
        self.by_id.values().any(|m| m.nick == nick)
    }

    /// Tells every listener but `except`'s. The calls are one-way: the room waits for
    /// nobody, and a listener that breaks is noticed by its watcher. Called with the
    /// lock held, so every member hears everything in the same order.
    fn tell_others(&self, except: u64, tell: impl Fn(&ListenerRef)) {
        for (_, member) in self.by_id.iter().filter(|(id, _)| **id != except) {
            // A send refused (that listener's session is gone, or it reads far too
            // slowly) loses this message for that member only.
            tell(&member.listener);
        }
    }

    fn notice_others(&self, except: u64, text: &str) {
        self.tell_others(except, |listener| listener.notice(text));
    }
}

impl ChatRoom {
    fn members(&self) -> MutexGuard<'_, Members> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes a member, if it is still here, and tells the others it left.
    fn remove(&self, id: u64, why: &str) {
        let mut members = self.members();
        if let Some(member) = members.by_id.remove(&id) {
            members.notice_others(id, &format!("{} left", member.nick));
            eprintln!(
                "chat serve: {} left ({why}; {} here)",
                member.nick,
                members.by_id.len()
            );
        }
    }
}

impl Room for ChatRoom {
    fn join(&self, nick: String, listener: ListenerRef) -> MembershipRef {
        // A method that answers an interface refuses by answering a broken reference:
        // the caller's promise, and every call pipelined on it, break with the reason.
        let refuse = |b: Broken| MembershipRef::from(Ref::broken(b));
        if let Err(problem) = check_nick(&nick) {
            return refuse(Broken::bad_arguments(problem));
        }
        let (watching, stop) = oneshot::channel();
        let mut members = self.members();
        if members.nick_taken(&nick) {
            return refuse(Broken::failed(format!("the nick {nick} is taken")));
        }
        let id = members.next_id;
        members.next_id += 1;
        members.notice_others(id, &format!("{nick} joined"));
        members.by_id.insert(
            id,
            Member {
                nick: nick.clone(),
                listener: listener.clone(),
                _watching: watching,
            },
        );
        eprintln!("chat serve: {nick} joined ({} here)", members.by_id.len());
        drop(members);

        // A listener that breaks (its vat went away, say) takes its member with it.
        let room = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                broken = listener.as_ref().when_broken() => {
                    room.remove(id, &format!("its listener broke: {broken}"));
                }
                _ = stop => {}
            }
        });

        let seat = Seat {
            room: self.clone(),
            id,
        };
        MembershipRef::from(Ref::from_object(Held(
            MembershipServer::new(seat.clone()),
            seat,
        )))
    }
}

/// A member's place in the room: what its membership acts on.
#[derive(Clone)]
struct Seat {
    room: ChatRoom,
    id: u64,
}

impl Membership for Seat {
    fn say(&self, text: &str) -> Result<(), Broken> {
        if text.chars().count() > MAX_TEXT {
            return Err(Broken::bad_arguments(format!(
                "a line is at most {MAX_TEXT} characters"
            )));
        }
        let members = self.room.members();
        let me = members.by_id.get(&self.id).ok_or_else(not_here)?;
        let time = now();
        members.tell_others(self.id, |listener| listener.said(time, &me.nick, text));
        Ok(())
    }

    fn nick(&self, new: String) -> Result<(), Broken> {
        check_nick(&new).map_err(Broken::bad_arguments)?;
        let mut members = self.room.members();
        let old = members
            .by_id
            .get(&self.id)
            .ok_or_else(not_here)?
            .nick
            .clone();
        if old == new {
            return Ok(());
        }
        if members.nick_taken(&new) {
            return Err(Broken::failed(format!("the nick {new} is taken")));
        }
        members.notice_others(self.id, &format!("{old} is now {new}"));
        eprintln!("chat serve: {old} is now {new}");
        if let Some(me) = members.by_id.get_mut(&self.id) {
            me.nick = new;
        }
        Ok(())
    }

    fn who(&self) -> Result<Vec<String>, Broken> {
        let members = self.room.members();
        members.by_id.get(&self.id).ok_or_else(not_here)?;
        Ok(members
            .by_id
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, m)| m.nick.clone())
            .collect())
    }

    fn leave(&self) {
        self.room.remove(self.id, "called leave()");
    }
}

/// A membership as the room hands it out: the generated `MembershipServer` answers the
/// calls, and this adds `Object::lost_client`, which an interface does not declare.
struct Held(MembershipServer<Seat>, Seat);

impl Object for Held {
    fn call(&self, method: &str, args: Args) -> Reply {
        self.0.call(method, args)
    }

    /// The session that held this membership ended: the member's vat went away
    /// without leaving. (Nothing happens if it left already.)
    fn lost_client(&self, peer: VatId) {
        let Held(_, seat) = self;
        seat.room
            .remove(seat.id, &format!("lost client: vat {peer} disconnected"));
    }
}

fn not_here() -> Broken {
    Broken::failed("you are not in the room")
}

/// Whether `nick` is a nick the room accepts: 1 to 32 characters, none of them space
/// or control characters.
/// `check_nick` for the command line.
fn nick_arg(nick: &str) -> Result<String, String> {
    check_nick(nick).map(|()| nick.to_owned())
}

fn check_nick(nick: &str) -> Result<(), String> {
    if nick.is_empty() || nick.chars().count() > MAX_NICK {
        return Err(format!("a nick is 1 to {MAX_NICK} characters"));
    }
    if nick.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a nick has no spaces or control characters".to_owned());
    }
    Ok(())
}

/// Seconds since the Unix epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---- A member ----

/// The listener a member passes to the room: it prints what the room tells it.
struct Printer;

impl Listener for Printer {
    fn said(&self, time: u64, nick: &str, text: &str) {
        println!("[{}] {}: {}", clock(time), clean(nick), clean(text));
    }

    fn notice(&self, text: &str) {
        println!("* {}", clean(text));
    }
}

/// `HH:MM:SS` in UTC for a time in seconds since the Unix epoch.
fn clock(time: u64) -> String {
    let secs = time % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// `text` with control characters replaced, so that what another member sends cannot
/// drive this terminal (escape sequences) or fake lines (newlines).
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// `chat join <URI> <nick>`: joins, then sends each line of stdin until `/quit` or
/// end of input.
async fn join(uri: &str, nick: &str) -> Result<(), Box<dyn std::error::Error>> {
    let sturdy = client::parse_uri(uri);
    let vat = Vat::builder().start().await?;
    let room = RoomRef::from(vat.enliven(&sturdy));

    // The listener travels inside the arguments; the room gets a live reference to it.
    // `who` is pipelined on the membership before it exists: joining, and learning who
    // else is here, take one round trip (and a refused join breaks both).
    let membership = room.join(nick.to_owned(), ListenerRef::serve(Printer));
    let others = match membership.who().await {
        Ok(others) => others,
        Err(broken) => {
            vat.shutdown().await;
            client::fail(&broken);
        }
    };
    if others.is_empty() {
        println!("* you joined as {nick}; nobody else is here");
    } else {
        println!("* you joined as {nick}; also here: {}", others.join(", "));
    }

    // Standard input is read on a thread of its own; end of input closes the channel.
    let (tx, mut lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Holding `membership` keeps this member in the room; the room notices when the
    // session that carries it ends.
    let outcome = loop {
        let line = tokio::select! {
            line = lines.recv() => line,
            broken = membership.as_ref().when_broken() => break Err(broken),
        };
        let Some(line) = line else {
            break membership.leave().await; // end of input
        };
        let line = line.trim();
        let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
        let sent = match command {
            "" => continue,
            "/quit" => break membership.leave().await,
            "/nick" => {
                let new = rest.trim();
                match check_nick(new) {
                    Err(_) if new.is_empty() => {
                        eprintln!("chat: usage: /nick <new nick>");
                        continue;
                    }
                    Err(problem) => {
                        eprintln!("chat: {problem}");
                        continue;
                    }
                    Ok(()) => membership
                        .nick(new.to_owned())
                        .await
                        .map(|()| println!("* you are now {new}")),
                }
            }
            _ if command.starts_with('/') => {
                eprintln!("chat: unknown command {command}; try /nick <new nick> or /quit");
                continue;
            }
            _ => membership.say(line).await,
        };
        match sent {
            Ok(()) => {}
            // The room refused this line or nick; the member stays.
            Err(b) if matches!(b.kind(), BrokenKind::Failed | BrokenKind::BadArguments) => {
                eprintln!("chat: {b}");
            }
            Err(b) => break Err(b),
        }
    };

    vat.shutdown().await;
    match outcome {
        Ok(()) => Ok(()),
        Err(broken) => client::fail(&broken),
    }
}
