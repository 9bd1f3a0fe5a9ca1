//! Capability-secure distributed objects over mutual TLS, in the line of E's CapTP.
//!
//! A program (a [`Vat`]) holds objects. It exports one as a **sturdy ref**, a URI that
//! names the vat by the fingerprint of its key and the object by an unguessable secret:
//!
//! ```text
//! captp://<vat-id>@<host>:<port>/<swiss>
//! ```
//!
//! Whoever holds the URI holds the authority to call the object; nobody else can reach
//! it. Another vat *enlivens* the URI into a live [`Ref`] and talks to the object with
//! **eventual sends**: [`Ref::send`] returns a [`Promise`] at once and never blocks.
//! With [`Ref::send_ref`] a program can send to the result of a call before it exists
//! (**promise pipelining**), so a chain of dependent calls costs one round trip.
//! Arguments and results are any serde data, carried as CBOR, and may contain `Ref`s
//! anywhere (a struct field, a `Vec`, a map): they arrive at the other side as live
//! references. That is how authority moves between peers: callbacks, returned objects,
//! introductions of a third vat, and promises not yet settled.
//!
//! # References between peers
//!
//! - A reference to one of your objects ([`Ref::from_object`]) that you pass to a peer
//!   is exported to it; when it comes back, it is your object again, not a proxy.
//! - A promise is passed through a proxy that forwards calls in order. A reference to a
//!   third vat's object is handed off (PROTOCOL.md 9.16): the receiver connects to that
//!   vat, picks the object up there and calls it directly, in order with the calls it
//!   made through you before; you drop out of the path. A receiver that cannot reach
//!   the third vat keeps calling through you. [`Ref::when_handed_off`] says which.
//! - Messages sent on one reference arrive in the order sent (E-order), across promise
//!   resolution too: a promise never shortens its path, so nothing can overtake.
//! - [`Ref::when_settled`] waits for a promise; [`Ref::when_broken`] says when a
//!   reference dies; [`Object::lost_client`] tells an exported object that a session
//!   holding it ended.
//! - Dropping the last handle to a remote reference releases it at the exporter; once
//!   everything is dropped and the network settles ([`Vat::sync`]), every table is
//!   empty ([`Vat::stats`]).
//!
//! # Layers
//!
//! ```text
//!   examples/, src/bin/captp
//!              |
//!   vat        Vat, builder, Ref/Promise handles, Object trait, one task per session
//!    |    \
//!   proto   transport   sans-IO session state machine | TLS 1.3 configs, pinning, connect/accept
//!    |          |
//!   wire    identity, sturdy   frames, bounded CBOR, messages | keys, vat IDs | URIs, swiss numbers
//! ```
//!
//! `wire` and `proto` do no I/O: the protocol is tested in memory without tokio.
//! `transport` is a thin layer over tokio-rustls; `vat` is the runtime. Only the runtime's
//! handles and the types they take and give are the API, at the crate root;
//! ARCHITECTURE.md is the map of the rest.
//!
//! # Quick start
//!
//! Export an object and print its URI; enliven the URI from another vat and call it.
//! (Both vats are in one process here; over a network it is the same code.)
//!
//! ```
//! use captp::{Args, Broken, Reply, Vat};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Vat::builder().listen("127.0.0.1:0").start().await?;
//! let uri = server.export(|method: &str, args: Args| match method {
//!     "tax" => match args.decode::<(i64,)>() {
//!         Ok((cents,)) if cents < 0 => Reply::err(Broken::failed("negative amount")),
//!         Ok((cents,)) => Reply::ok((cents * 5 + 50) / 100),
//!         Err(e) => Reply::err(e),
//!     },
//!     _ => Reply::unknown_method(method),
//! })?;
//! println!("{uri}"); // share this: it *is* the authority to call the object
//!
//! let client = Vat::builder().start().await?;
//! let taxman = client.enliven(&uri.to_string().parse()?);
//! let tax: i64 = taxman.send("tax", (300,)).await?;
//! assert_eq!(tax, 15);
//!
//! let refused = taxman.send::<i64>("tax", (-5,)).await.unwrap_err();
//! assert_eq!(refused.kind(), captp::BrokenKind::Failed);
//! # client.shutdown().await;
//! # server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Methods here are strings matched by hand. With a trait marked
//! [`#[captp::interface]`](interface) the compiler checks them instead: it generates a
//! typed stub (`TaxmanRef`, whose methods give typed promises, or typed references at
//! once for pipelining) and a server adapter. Both layers speak the same wire format.
//!
//! # Security
//!
//! - **Mutual TLS, always** (TLS 1.3 only, ALPN `captp/1`). The client checks, in constant
//!   time, that the SHA-256 of the server's public key equals the vat ID in the URI: no
//!   certificate authorities, no host names. The server requires a client certificate
//!   and learns the client's vat ID, which is identity, never authority.
//! - **Authority comes only from swiss numbers and references.** Swiss numbers are 32
//!   bytes from the OS RNG; the registry is keyed by their SHA-256; unknown and revoked
//!   numbers get the same answer. `Debug` never shows a swiss number.
//! - **Persistent refs store hashes only.** [`Vat::export_persistent`] keeps the SHA-256
//!   of the swiss number, the application's record and the expiry in a [`Store`] (mode
//!   0600), committed before the URI is returned; a copy of the store gives no
//!   authority. Revoked and expired refs answer as unknown ones, across restarts.
//! - **Peer input never panics the vat.** Frames are length-checked before allocation;
//!   CBOR is checked for depth, item count, definite lengths and trailing bytes before
//!   decoding; every peer-supplied id is looked up in its table. A misbehaving peer's
//!   session is aborted with a reason; other sessions carry on.
//!
//! SECURITY.md has the threat model; PROTOCOL.md the wire protocol.
//!
//! # Watching it work
//!
//! The crate logs through [`tracing`]; install any subscriber (`tracing-subscriber` with
//! `RUST_LOG=captp=debug`, say). With none installed, or a level filtered out, the cost
//! is a cached check per call site: sessions get a span each, and per-call timing reads
//! the clock only when `DEBUG` is on. A swiss number is never logged, at any level (a
//! test captures a whole session at `TRACE` and looks for it); a peer's strings (method
//! names, abort reasons) are escaped.
//!
//! | level | what | fields |
//! |---|---|---|
//! | `INFO` span `session` | every event of one session | `peer` (vat ID), `direction` (`inbound`/`outbound`), `address` |
//! | `INFO` | `vat started` | `vat`, `addr` |
//! | `INFO` | `the peer closed the session` (it shut down in order) | `ending = "closed"` |
//! | `INFO` | `connection lost` (EOF, I/O error, keepalive, a peer that vanished) | `ending = "connection_lost"`, `reason` |
//! | `WARN` | `the peer aborted the session` | `ending = "peer_aborted"`, `reason` |
//! | `WARN` | `aborted the session: the peer broke the protocol` | `ending = "violation"`, `reason` |
//! | `INFO`/`DEBUG` | this vat aborted / shut down the session | `ending = "local_abort"` / `"local_shutdown"` |
//! | `DEBUG` | `call`: a delivered call ended | `method`, `answer` (none for one-way), `target` (`local`/`proxy`/`forward`), `outcome` (`ok` or the [`BrokenKind`] name), `micros` |
//! | `DEBUG` | `call refused`: unknown method, bad arguments, too large | as `call`, plus `reason` |
//! | `DEBUG` | `a result broke a limit` (too large or too deep for the caller) | `answer`, `refused`, `reason` |
//! | `DEBUG` | `bootstrap: found the object` / `bootstrap refused: no object under that swiss number` | `answer`, `refused = "unknown_object"` |
//! | `DEBUG` | `TLS handshake complete` | `version`, `cipher`, `group` |
//! | `DEBUG` | `connect failed`, inbound connections cut or refused, `aborting session` (the violation) | `error`, `why`, `violation` |
//! | `TRACE` | `message in` / `message out` | `kind` (the message's wire name; never its payload) |
//! | `DEBUG` target `captp::handoff` | `handed off: calls go to the host directly` | `introducer`, `host` (vat IDs) |
//! | `INFO` target `captp::handoff` | `handoff failed: calls keep going through the introducer` | `introducer`, `host`, `reason` |
//! | `INFO` target `captp::handoff` | `deposit refused` (a host's gift table is full for that introducer, or a gift id came twice) | `depositor`, `refused` |
//!
//! rustls logs through the `log` crate: a subscriber with the `tracing-log` bridge
//! (`tracing-subscriber`'s default `init`) shows those records too.
//!
//! # Limits
//!
//! Every bound on what a peer can make the vat hold is a field of [`Limits`], with its
//! default and what happens past it: frame size (1 MiB), CBOR depth and items (32 /
//! 65,536), outstanding questions per peer (1,024), exports and imports per session
//! (65,536 each), messages queued on one unresolved promise (256), inbound connections
//! (1,024 established; 128 more before `hello`, 16 of those per address, and 1,024
//! waiting for a handshake slot), handshake timeout and keepalive (10 s; ping after 30 s
//! idle, dead after 90 s), unsent answers per peer and over the vat (8 MiB / 64 MiB:
//! past them the vat stops taking work from the peers that do not read), gifts one
//! introducer may leave here for three-party handoff (256, each kept 60 s), and
//! handoffs this vat makes at once (64, each given 10 s).

// Lets the code `#[captp::interface]` generates name `::captp` inside this crate too
// (its unit tests and doctests).
extern crate self as captp;

mod broken;
mod error;
mod identity;
mod limits;
mod proto;
mod store;
mod sturdy;
mod transport;
mod vat;
mod wire;

pub use broken::{Broken, BrokenKind};
/// A shared, cheaply cloned byte buffer (from the `bytes` crate, re-exported so that its
/// version is the one this crate uses): what [`Args::bytes`] gives, without a copy.
pub use bytes::Bytes;
pub use error::{Error, TlsError};
pub use identity::{Identity, IdentityError, VatId};
pub use limits::Limits;
pub use store::{Store, StoreError, StoredRef};
pub use sturdy::{CapFileError, Host, HostError, ParseError, PortError, SturdyRef};
pub use transport::TransportError;
pub use vat::{
    Args, ConnectionStats, Handoff, HandoffStats, Object, Promise, Reconnect, ReconnectingRef, Ref,
    Reply, Restorer, SessionInfo, Tables, Vat, VatBuilder, VatStats,
};
pub use vat::{
    CallContext, CallError, DESCRIBE_METHOD, Interface, InterfaceInfo, MethodInfo, ParamInfo,
    ResultPromise,
};

/// Typed interfaces: `#[captp::interface]` on a trait generates a typed client stub and
/// a server adapter, so methods are checked by the compiler instead of matched by name.
///
/// For `trait Car` it generates:
///
/// - **the trait** itself, which a server implements. Methods take `&self` (an object
///   is shared by all its callers); `async fn` methods become
///   `fn m(&self, ..) -> impl Future<Output = ..> + Send`, and an `impl` may still
///   write them as `async fn` (the future must be `Send`: it runs on the runtime).
/// - **`CarRef`, the client stub**: a [`Ref`] with typed methods. `Clone + Send + Sync`,
///   as cheap as a `Ref`; converts from and into a `Ref` (`CarRef::from(vat.enliven(&uri))`);
///   travels in arguments and results exactly like a `Ref`, struct fields included;
///   implements [`Interface`]. `CarRef::serve(my_car)` is a reference to a local object.
/// - **`CarServer<T>`, the server adapter**: an [`Object`] serving a `T: Car`, for
///   [`Vat::export`]. It decodes each call's arguments with the exact arity and types
///   (else `bad_arguments`), answers `unknown_method` for other names, and answers the
///   reserved method [`DESCRIBE_METHOD`] with the interface's [`InterfaceInfo`].
///
/// What a caller gets depends on what the method declares:
///
/// | declared | the stub method returns | on the wire |
/// |---|---|---|
/// | `-> T` (any serde data), or nothing | [`Promise<T>`](Promise) | a question |
/// | `-> Result<T, Broken>` | [`Promise<T>`](Promise) | a question; `Err` breaks it |
/// | `-> Result<T, E>` | [`ResultPromise<T, E>`], awaiting `Result<T, CallError<E>>` | `Err(e)` is `failed` with `e` as data |
/// | `-> impl Foo` (an interface) | `FooRef`, at once: pipelined | a question, sent to at once |
/// | `#[oneway]`, no result | nothing | a one-way `deliver` |
///
/// An interface result is a promise you can call before it arrives: `factory.make(..)
/// .drive()` is one round trip. On the server the method returns `FooRef` (make one
/// with `FooRef::serve`); to fail, return a broken one
/// (`FooRef::from(Ref::broken(..))`). An application error `E` must be serde data and
/// `Debug`; it travels as a `failed` error whose message is its `Debug` form and whose
/// data is `E` ([`Broken::with_data`]), and arrives as [`CallError::App`]. An error type
/// written `Broken` is captp's.
///
/// Parameters are any serde data: owned types, or `&str`, `&[T]` and `&T` (the server
/// decodes the owned value and lends it). `Vec<u8>` and `&[u8]` parameters and
/// `Vec<u8>` results travel as CBOR byte strings (inside your own types, mark such
/// fields `#[serde(with = "serde_bytes")]`). A typed reference parameter is the stub
/// type (`watcher: WatcherRef`). A first parameter of type [`CallContext`] is not sent
/// by the caller: the runtime fills in who delivered the call (identity, never
/// authority).
///
/// A typed call is the same on the wire as the dynamic one: the method's name and its
/// arguments as an array (one argument is an array of one; none is `null`), so typed
/// and dynamic code, and other languages, call each other freely.
///
/// Refused at compile time, with an error at the mistake: generic methods, named
/// lifetimes, `&mut self` or no `self`, default bodies, `&mut` parameters, a `#[oneway]`
/// method with a result, and parameter or result types that are not serde data.
///
/// # Examples
///
/// ```
/// use captp::{Broken, Vat};
///
/// #[captp::interface]
/// trait CarFactory {
///     /// A new car, which the caller can drive before it arrives.
///     fn make(&self, color: String, model: String) -> impl Car;
/// }
///
/// #[captp::interface]
/// trait Car {
///     async fn drive(&self) -> Result<String, Broken>;
///     #[oneway]
///     fn honk(&self, times: u32);
/// }
///
/// struct Factory;
///
/// impl CarFactory for Factory {
///     fn make(&self, color: String, model: String) -> CarRef {
///         CarRef::serve(Zoomer { color, model })
///     }
/// }
///
/// struct Zoomer {
///     color: String,
///     model: String,
/// }
///
/// impl Car for Zoomer {
///     async fn drive(&self) -> Result<String, Broken> {
///         Ok(format!("Vroom! I'm a {} {} car!", self.color, self.model))
///     }
///
///     fn honk(&self, _times: u32) {}
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Vat::builder().listen("127.0.0.1:0").start().await?;
/// let uri = server.export(CarFactoryServer::new(Factory))?;
///
/// let client = Vat::builder().start().await?;
/// let factory = CarFactoryRef::from(client.enliven(&uri));
/// let car = factory.make("red".into(), "zoomracer".into()); // a CarRef, at once
/// car.honk(2);                                              // one-way
/// let vroom = car.drive().await?;                           // one round trip in all
/// assert_eq!(vroom, "Vroom! I'm a red zoomracer car!");
/// # client.shutdown().await;
/// # server.shutdown().await;
/// # Ok(()) }
/// ```
///
/// A typed error:
///
/// ```
/// use captp::{CallError, Ref};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// enum BankError {
///     Insufficient { balance: u64 },
/// }
///
/// #[captp::interface]
/// trait Account {
///     fn withdraw(&self, amount: u64) -> Result<u64, BankError>;
/// }
///
/// struct Empty;
///
/// impl Account for Empty {
///     fn withdraw(&self, _amount: u64) -> Result<u64, BankError> {
///         Err(BankError::Insufficient { balance: 0 })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let account = AccountRef::serve(Empty);
/// match account.withdraw(10).await {
///     Err(CallError::App(BankError::Insufficient { balance })) => assert_eq!(balance, 0),
///     other => panic!("{other:?}"),
/// }
/// // The same call, dynamically: a `failed` error carrying the data.
/// let b = Ref::from(account).send::<u64>("withdraw", (10u64,)).await.unwrap_err();
/// assert_eq!(b.data::<BankError>(), Some(BankError::Insufficient { balance: 0 }));
/// # }
/// ```
#[cfg(feature = "macros")]
pub use captp_macros::interface;

/// What `#[captp::interface]` generates code against. Not part of the API: no
/// stability promise; use the items at the crate root.
#[doc(hidden)]
pub use vat::private as __private;
pub use wire::id::{IdKind, IdTextError, SwissHash, SwissNumber};

/// The engine, for this crate's own tests, fuzz targets and benchmark: not part of the
/// API, with no stability promise, and hidden from the documentation (as rustls and
/// quinn expose theirs). A program uses the items at the crate root.
#[doc(hidden)]
pub mod internal {
    /// The sans-IO session state machine.
    pub mod proto {
        pub use crate::proto::*;
    }
    /// Frames, the bounded CBOR check and the messages.
    pub mod wire {
        pub use crate::wire::*;
    }
    /// TLS configuration, pinning, connect and accept, the framed connection.
    pub mod transport {
        pub use crate::transport::*;
    }
}

/// The README's code, compiled as a doctest so it cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
