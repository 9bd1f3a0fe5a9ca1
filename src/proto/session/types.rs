//! The types that cross the boundary between a [`Session`] and its runtime: command
//! arguments going in, events coming out, and how the session reports its state.
//!
//! Plain data with no behaviour of their own: the rules about what they mean live in the
//! rooms of the session. Nothing here refers to the session's tables.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

#[cfg(doc)]
use super::Session;
use super::Violation;
use crate::broken::Broken;
use crate::proto::{AnswerId, ImportId, QuestionId};
use crate::sturdy::SwissNumber;
use crate::wire::scan::Shape;
use crate::wire::{SINGLE_CAP_DATA, SINGLE_CAP_SHAPE};

/// Why a session closed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer violated the protocol; an `abort` with this reason was queued to it.
    Violation(Violation),
    /// The peer sent `abort` with this reason.
    PeerAborted(String),
    /// The connection ended (EOF, I/O error, keepalive), as the runtime describes it.
    ConnectionLost(String),
    /// This side closed the session (shutdown, or a local abort).
    Local(String),
}

/// The `abort` reason a vat sends each peer when it shuts down. On the wire it is an
/// ordinary `abort`; a receiving vat recognises the text and treats the ending as an
/// orderly close (in logs and in the `Broken` its references get), not an abort.
pub const SHUTDOWN_REASON: &str = "the vat is shutting down";

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Violation(v) => write!(f, "protocol violation by the peer: {v}"),
            // The peer's own words: escaped, since they reach logs and terminals.
            // An orderly shutdown is an ordinary ending, not an alarm.
            CloseReason::PeerAborted(r) if r == SHUTDOWN_REASON => {
                f.write_str("the peer closed the session: it is shutting down")
            }
            CloseReason::PeerAborted(r) => {
                f.write_str("the peer aborted the session: ")?;
                crate::broken::write_escaped(f, r)
            }
            CloseReason::ConnectionLost(r) => write!(f, "connection lost: {r}"),
            CloseReason::Local(r) => write!(f, "closed locally: {r}"),
        }
    }
}

/// A reference in an outgoing payload, as the local side names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutCap<O> {
    /// A local object: exported to the peer (or its existing export reused).
    Local(O),
    /// A local promise, represented by an object that forwards calls to it: exported as
    /// `sender_promise`. The runtime reports its settlement with
    /// [`Session::resolve_export`].
    Promise(O),
    /// A reference imported from this same peer: it goes home as `receiver_hosted`.
    Import(ImportId),
    /// An object at a third vat, introduced (PROTOCOL.md 9.16): the vine, a local object
    /// forwarding to it, is exported as for `Local`, and named by a `third_party`
    /// descriptor to a peer speaking version 4 (to an older one, `sender_hosted`).
    ThirdParty(O, Box<Introduction>),
}

/// Where an introduced object can be picked up: the host's vat ID, the gift the
/// introducer deposited there for the receiver, and the host's address hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introduction {
    /// The host's vat ID.
    pub host: [u8; 32],
    /// The gift id (32 random bytes).
    pub gift: [u8; 32],
    /// `host:port` hints for reaching the host (at most `wire::MAX_HINTS`).
    pub hints: Vec<String>,
}

/// Data plus references, on its way to the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutPayload<O> {
    /// One CBOR item. A large one is written to the connection from this buffer,
    /// not copied.
    pub data: Bytes,
    /// The references the data's capability tags index.
    pub caps: Vec<OutCap<O>>,
    /// The data's depth and item count, if its encoder measured them: the session
    /// then checks the peer's CBOR limits by comparing numbers instead of walking the
    /// data again. `None` makes the session walk it. A shape that is wrong lets data
    /// past the peer's limits, which the peer then treats as a violation.
    pub shape: Option<Shape>,
}

impl<O> OutPayload<O> {
    /// A payload that is exactly one reference.
    pub fn single_cap(cap: OutCap<O>) -> OutPayload<O> {
        OutPayload {
            data: Bytes::from_static(&SINGLE_CAP_DATA),
            caps: vec![cap],
            shape: Some(SINGLE_CAP_SHAPE),
        }
    }

    /// A payload of plain data.
    pub fn data(data: impl Into<Bytes>) -> OutPayload<O> {
        OutPayload {
            data: data.into(),
            caps: Vec::new(),
            shape: None,
        }
    }
}

/// A reference in an incoming payload, resolved against the local tables.
///
/// Each `Import` handed out holds one local handle on that import: the runtime must call
/// [`Session::drop_import`] exactly once for it when its last user lets go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InCap<O> {
    /// An object at the peer.
    Import(ImportId),
    /// A promise at the peer; its settlement arrives as [`Event::Resolved`].
    Promise(ImportId),
    /// One of this side's own objects, come home.
    Local(O),
    /// An object at a third vat, named by a `third_party` descriptor: the import is the
    /// vine (counted and released as `Import`), the introduction says where to pick the
    /// object up.
    ThirdParty(ImportId, Box<Introduction>),
}

/// Data plus references, arrived from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InPayload<O> {
    /// One CBOR item, not yet checked or decoded (the runtime decodes it with limits).
    /// From a large frame, a view of the received frame rather than a copy.
    pub data: Bytes,
    /// The references the data's capability tags index.
    pub caps: Vec<InCap<O>>,
}

/// What a local send is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocalTarget {
    /// An object imported from the peer.
    Import(ImportId),
    /// The eventual result of one of this side's questions (promise pipelining).
    Answer(QuestionId),
}

/// A method call to send to the peer.
#[derive(Debug)]
pub struct Call<O, R> {
    /// Where the call goes.
    pub target: LocalTarget,
    /// The method name.
    pub method: String,
    /// The arguments.
    pub payload: OutPayload<O>,
    /// The new question id, or `None` for a one-way send. Ids must be unique for the
    /// life of the session (the runtime allocates them from a counter).
    pub question: Option<QuestionId>,
    /// Who to tell the result to, via [`Event::Return`]. With `None`, the result is
    /// dropped (and any references in it released).
    pub resolver: Option<R>,
    /// How many local handles will send to this question's answer (pipelined
    /// references). Each must later be given back with [`Session::drop_question_ref`].
    pub pipeline_refs: u32,
    /// When to stop waiting for the answer, or `None` to wait as long as the session
    /// lives. Ignored for a one-way send. See [`Session::set_deadline`].
    pub deadline: Option<Deadline>,
    /// Ask a quiet question (PROTOCOL.md 9.15): the peer sends no result until
    /// [`Session::want_return`] asks for it, so a question only pipelined on costs no
    /// `return` with an export, no `release` and no wait for the `finish`. Ignored for
    /// a one-way send, for a peer speaking protocol version 2, and before the peer's
    /// `hello` (its version is not known yet).
    pub quiet: bool,
}

/// When a question stops waiting for its answer. Past `at`, [`Session::handle_timeout`]
/// breaks the question with [`crate::BrokenKind::Timeout`] and tells the peer to stop
/// (an early `finish`, PROTOCOL.md 9.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// The instant, on the clock the runtime passes to `handle_timeout`.
    pub at: Instant,
    /// How long the asker chose to wait (`at` minus when it asked): only for the error
    /// message, so that it says which limit passed.
    pub timeout: Duration,
}

impl Deadline {
    /// The deadline `timeout` after `now`; `None` if that is past what an `Instant`
    /// holds (never due).
    pub fn after(now: Instant, timeout: Duration) -> Option<Deadline> {
        now.checked_add(timeout).map(|at| Deadline { at, timeout })
    }
}

/// Something the runtime must act on.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<O, R> {
    /// Call `method` on the local object `target`. If `answer` is set, the result must be
    /// given back with [`Session::answer`].
    Deliver {
        /// Where the call goes: a local object, or (when an answer of ours resolved to a
        /// reference the peer gave us) back to the peer through that reference, which
        /// the runtime forwards to in order. An `Import` target holds one local handle.
        target: InCap<O>,
        /// The method name.
        method: String,
        /// The arguments.
        payload: InPayload<O>,
        /// Where the result goes, or `None` for a one-way send.
        answer: Option<AnswerId>,
    },
    /// The peer asks for the object under `swiss`; answer with [`Session::answer`]: a
    /// single reference, or [`Broken::unknown_object`].
    Bootstrap {
        /// Where the answer goes.
        answer: AnswerId,
        /// The swiss number asked for.
        swiss: SwissNumber,
    },
    /// The peer cancelled its question (an early `finish`): stop the method running
    /// for `answer` (drop its future), if one still runs. The session has already
    /// answered it broken ([`crate::BrokenKind::Cancelled`]) and freed it; a later
    /// [`Session::answer`] for it does nothing.
    Cancel {
        /// The answer whose method to stop.
        answer: AnswerId,
    },
    /// A question of ours settled (or broke locally, or broke because the session closed).
    Return {
        /// The resolver given with the question.
        resolver: R,
        /// The result.
        result: Result<InPayload<O>, Broken>,
    },
    /// A promise the peer gave us ([`InCap::Promise`]) settled. The payload's
    /// references hold local handles like any incoming payload.
    ///
    /// Reported only to a runtime that holds a handle on the import: a settlement that
    /// arrives first (the promise is in a message still queued on an answer) follows
    /// the event that hands the import out; one for an import the runtime has let go of
    /// entirely is not reported, unless a handle is handed out again.
    Resolved {
        /// The import that settled.
        import: ImportId,
        /// What it settled to.
        result: Result<InPayload<O>, Broken>,
    },
    /// The session is closing and these local objects were exported to the peer: the
    /// runtime may tell them their client is gone (E's "lost client").
    ExportsLost {
        /// Each object once.
        objects: Vec<O>,
    },
    /// The peer answered a ping of [`Session::ping`], or sent a pong unasked. The
    /// session's own keepalive pings are answered without an event.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// The session closed. Every question pending at that moment has already been given
    /// back broken; commands given after the close still come back as broken
    /// [`Event::Return`]s.
    Closed {
        /// Why.
        reason: CloseReason,
    },
    /// The peer said where it can be reached (`listen`, protocol version 4).
    Listen {
        /// Its address hints, as sent (unchecked `host:port` strings).
        hints: Vec<String>,
    },
}

/// The sizes of a session's four tables, and of its local hold queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionStats {
    /// Local sends held back because the peer's question limit was reached; they go
    /// out, in order, as answers come back.
    pub held: usize,
    /// Questions this side asked and still tracks.
    pub questions: usize,
    /// Answers this side holds for the peer's questions.
    pub answers: usize,
    /// References this side imports from the peer.
    pub imports: usize,
    /// Objects this side exports to the peer.
    pub exports: usize,
}
