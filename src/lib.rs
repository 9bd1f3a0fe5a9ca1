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
//! - A reference to a third vat's object, or a promise, is passed through a proxy that
//!   forwards calls in order (three-party handoff is future work).
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
//! # Security
//!
//! - **Mutual TLS, always** (TLS 1.3 only, ALPN `captp/1`). The client checks, in constant
//!   time, that the SHA-256 of the server's public key equals the vat ID in the URI: no
//!   certificate authorities, no host names. The server requires a client certificate
//!   and learns the client's vat ID, which is identity, never authority.
//! - **Authority comes only from swiss numbers and references.** Swiss numbers are 32
//!   bytes from the OS RNG; the registry is keyed by their SHA-256; unknown and revoked
//!   numbers get the same answer. `Debug` never shows a swiss number.
//! - **Peer input never panics the vat.** Frames are length-checked before allocation;
//!   CBOR is checked for depth, item count, definite lengths and trailing bytes before
//!   decoding; every peer-supplied id is looked up in its table. A misbehaving peer's
//!   session is aborted with a reason; other sessions carry on.
//!
//! SECURITY.md has the threat model; PROTOCOL.md the wire protocol.
//!
//! # Limits
//!
//! Every bound on what a peer can make the vat hold is a field of [`Limits`], with its
//! default and what happens past it: frame size (1 MiB), CBOR depth and items (32 /
//! 65,536), outstanding questions per peer (1,024), exports and imports per session
//! (65,536 each), messages queued on one unresolved promise (256), inbound connections
//! (1,024), handshake timeout and keepalive (10 s; ping after 30 s idle, dead after 90 s).

// Lets the code `#[captp::interface]` generates name `::captp` inside this crate too
// (its unit tests and doctests).
extern crate self as captp;

mod broken;
mod error;
mod identity;
mod limits;
mod proto;
mod sturdy;
mod transport;
mod vat;
mod wire;

pub use broken::{Broken, BrokenKind};
pub use error::{Error, TlsError};
pub use identity::{Identity, IdentityError, VatId};
pub use limits::Limits;
pub use sturdy::{Host, HostError, ParseError, PortError, SturdyRef};
pub use transport::TransportError;
pub use vat::{Args, Object, Promise, Ref, Reply, SessionInfo, Tables, Vat, VatBuilder, VatStats};
pub use vat::{
    CallContext, CallError, DESCRIBE_METHOD, Interface, InterfaceInfo, MethodInfo, ParamInfo,
    ResultPromise,
};

/// Typed interfaces: turns a trait into a typed client stub and a server adapter.
/// The guide is in the [`typed`] module's documentation.
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
