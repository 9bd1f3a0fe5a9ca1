//! The session state machine: one [`Session`] holds the four tables and every rule about
//! them.
//!
//! No I/O, no clock reading, no user code (see the module docs of [`crate::proto`]): time
//! comes in as the `now` of `new`, `handle_heard` and `handle_timeout`. Every id a peer
//! sends is looked up in the table it names; anything that does not fit is a
//! [`Violation`], which queues an `abort` with the reason and closes the session. Nothing
//! here panics on peer input.
//!
//! The engine is one `Session` struct; each room below adds `impl Session` blocks for
//! its part of the protocol:
//!
//! - this file: the struct, construction, accessors, peer-input dispatch, `hello`,
//!   pings, and closing (abort, violations, lost connections);
//! - `types`: the types that cross the boundary to the runtime;
//! - `violation`: [`Violation`], one variant per offence a peer can commit;
//! - `outgoing`: questions this side asks (sends, bootstraps), their returns, and the
//!   pipelined handles on their answers;
//! - `hold`: the hold queue (flow control against the peer's question limit, in order);
//! - `answers`: answers to the peer's questions and the messages queued on them;
//! - `imports`: the import table, payloads taken from the peer, handles, deferred
//!   settlements;
//! - `collector`: the cycle collector for imports kept alive only by deferred settlements;
//! - `exports`: the export table, payloads given to the peer, `release`, `resolve`;
//! - `timers`: the handshake timeout and the keepalive.

mod answers;
mod collector;
mod exports;
mod hold;
mod imports;
mod outgoing;
mod timers;
mod types;
mod violation;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hash;
use std::time::Instant;

pub use types::{
    Call, CloseReason, Deadline, Event, InCap, InPayload, Introduction, LocalTarget, OutCap,
    OutPayload, SHUTDOWN_REASON, SessionStats,
};
pub use violation::Violation;

use bytes::Bytes;

use super::{AnswerId, ExportId, ImportId, QuestionId};
use crate::broken::Broken;
use crate::limits::Limits;
use crate::wire::message::{
    HANDOFF_VERSION, MAX_ERROR_MESSAGE, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
    truncate_at_char_boundary,
};
use crate::wire::{
    CborLimits, DecodeError, Hello, MIN_CAPS, MIN_DEPTH, MIN_FRAME, MIN_IMPORTS, MIN_ITEMS,
    MIN_QUESTIONS, MIN_QUEUED, Message, SINGLE_CAP_DATA,
};
use answers::Answer;
use exports::Export;
use hold::Held;
use imports::Import;
use outgoing::Question;
use timers::Timers;

/// The session's tables. Keys are ids (some chosen by the peer) and object handles;
/// foldhash with a per-process random seed hashes them in a few instructions where
/// SipHash took about 140 per lookup, a dozen lookups per round trip. The tables are
/// bounded by the limits (`max_inbound_questions`, `max_imports`, `max_exports`), so a
/// peer that somehow aimed collisions would still be working against a bounded table.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The protocol state between this vat and one peer over one connection.
///
/// `O` is the runtime's handle to a local object (compared and hashed to reuse exports);
/// `R` is the runtime's resolver for a question's result.
#[derive(Debug)]
pub struct Session<O, R> {
    limits: Limits,
    cbor: CborLimits,
    state: State,
    /// What the peer accepts (from its `hello`; the protocol minimums until then).
    peer: PeerLimits,
    /// Questions sent whose `finish` has not gone out: the peer counts them against its
    /// limit until then.
    awaiting_return: usize,
    /// Commands held back, in order, until the peer has room for more questions.
    held: VecDeque<Held<O, R>>,
    /// Promises that settled while the send exporting them was held: resolved right
    /// after that send goes out.
    settled_while_held: Vec<(O, Result<OutPayload<O>, Broken>)>,
    /// Answers to give because what their calls were pipelined on broke.
    broken_answers: VecDeque<(AnswerId, Broken)>,
    questions: Map<QuestionId, Question<O, R>>,
    /// The deadlines of questions asked or held, earliest first. An entry whose
    /// question has been answered or cancelled since may linger; it is skipped when
    /// due (`expire_questions`).
    deadlines: BTreeSet<(Instant, QuestionId)>,
    answers: Map<AnswerId, Answer<O>>,
    exports: Map<ExportId, Export<O>>,
    /// The export of each exported object, to reuse it when the object is sent again.
    export_ids: Map<O, ExportId>,
    next_export: u64,
    imports: Map<ImportId, Import<O>>,
    /// Imports with a deferred settlement that lost their last handle other than those
    /// of deferred settlements: where the cycle collector starts, at the end of the
    /// operation (`collect`), or later if earlier collections are not paid for yet.
    suspects: Vec<ImportId>,
    /// Work done by the cycle collector and not yet paid for by operations; it runs
    /// only when this is zero.
    collect_debt: usize,
    /// A listening session's `hello`, not sent yet: it answers the peer's, with the
    /// lower of the two protocol versions (see [`Session::new_listening`]).
    hello_owed: bool,
    /// This side's address hints, sent once in a `listen` (protocol version 4).
    listen: Vec<String>,
    /// `third_party` descriptors written since the runtime last asked: each vine and
    /// its gift, for the runtime to deposit ([`Session::take_introduced`]).
    introduced: Vec<(O, [u8; 32])>,
    /// The nonce of the next ping the runtime asks for.
    next_ping: u64,
    timers: Timers,
    outbox: VecDeque<Message>,
    events: VecDeque<Event<O, R>>,
}

/// The limits the peer announced in its `hello`, which this side keeps within when it
/// sends (PROTOCOL.md 9.11). Until the `hello` arrives, the protocol minimums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    /// The protocol version the peer speaks: until its `hello`, the oldest this crate
    /// speaks, so that nothing newer goes out before the peer says it takes it.
    pub version: u32,
    /// The largest frame body the peer accepts.
    pub max_frame: usize,
    /// The most questions the peer accepts outstanding.
    pub max_questions: usize,
    /// The most messages the peer accepts queued on one of its unresolved answers.
    pub max_queued: usize,
    /// The most references the peer accepts imported from this side at once.
    pub max_imports: usize,
    /// The most capability-table entries the peer accepts in one message.
    pub max_caps: usize,
    /// The CBOR limits the peer applies to a message and to a payload's data.
    pub cbor: CborLimits,
}

impl PeerLimits {
    /// What a `hello` announces, as sizes (values past `usize` are as good as unbounded;
    /// a frame limit is at most 4 GiB - 1, the largest length prefix).
    fn of(hello: &Hello) -> PeerLimits {
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        PeerLimits {
            version: hello.version,
            max_frame: size(hello.max_frame).min(u32::MAX as usize),
            max_questions: size(hello.max_questions),
            max_queued: size(hello.max_queued),
            max_imports: size(hello.max_imports),
            max_caps: size(hello.max_caps),
            cbor: CborLimits {
                max_depth: size(hello.max_depth),
                max_items: size(hello.max_items),
            },
        }
    }
}

/// Where a session is in its life. Closedness is kept here only.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// The peer's `hello` has not arrived.
    AwaitingHello,
    Open,
    /// Closed: every pending promise received this `Broken`, and commands given from
    /// now on receive it too.
    Closed(Broken),
}

/// What a question's or answer's promise resolved to, for messages sent to it.
#[derive(Debug, Clone)]
enum Resolution<O> {
    /// A reference to an object at the peer: send there, holding one import handle.
    Import(ImportId),
    /// A local object.
    Local(O),
    /// Plain data: messages to it break with `not_an_object`.
    Data,
    /// Broken: messages to it break the same way.
    Broken(Broken),
}

impl<O: Clone> Resolution<O> {
    /// What a result that arrived from the peer resolves a promise to.
    fn of_incoming(result: &Result<InPayload<O>, Broken>) -> Resolution<O> {
        match result {
            Err(b) => Resolution::Broken(b.clone()),
            Ok(p) if p.caps.len() == 1 && p.data[..] == SINGLE_CAP_DATA => match &p.caps[0] {
                InCap::Import(i) | InCap::Promise(i) | InCap::ThirdParty(i, _) => {
                    Resolution::Import(*i)
                }
                InCap::Local(o) => Resolution::Local(o.clone()),
            },
            Ok(_) => Resolution::Data,
        }
    }

    /// What a result this side gives resolves a promise to.
    fn of_outgoing(payload: &OutPayload<O>) -> Resolution<O> {
        if payload.caps.len() == 1 && payload.data[..] == SINGLE_CAP_DATA {
            match &payload.caps[0] {
                OutCap::Local(o) | OutCap::Promise(o) | OutCap::ThirdParty(o, _) => {
                    Resolution::Local(o.clone())
                }
                OutCap::Import(i) => Resolution::Import(*i),
            }
        } else {
            Resolution::Data
        }
    }
}

/// Whether an export or import is a promise, and whether its `resolve` has been sent
/// (for an export) or has arrived (for an import).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PromiseState {
    /// An object, never a promise.
    NotAPromise,
    /// A promise whose `resolve` has not gone out or come in yet.
    Unresolved,
    /// A promise that has settled: it behaves as an object from now on.
    Resolved,
}

impl<O: Clone + Eq + Hash, R> Session<O, R> {
    /// A new session started at `now`; its `hello` is already queued for transmission.
    ///
    /// `now` starts the handshake timeout and the keepalive clock (see
    /// [`Session::poll_timeout`]).
    pub fn new(limits: Limits, now: Instant) -> Session<O, R> {
        let limits = limits.normalized();
        let mut outbox = VecDeque::new();
        outbox.push_back(Message::Hello(announce(&limits)));
        Session {
            cbor: limits.cbor(),
            // Until the peer says otherwise, assume the least a peer may announce (what
            // needs more waits for its `hello`: see `hold`).
            peer: PeerLimits {
                version: MIN_PROTOCOL_VERSION,
                ..PeerLimits::of(&Hello::MINIMUM)
            },
            awaiting_return: 0,
            held: VecDeque::new(),
            settled_while_held: Vec::new(),
            broken_answers: VecDeque::new(),
            limits,
            state: State::AwaitingHello,
            questions: Map::default(),
            deadlines: BTreeSet::new(),
            answers: Map::default(),
            exports: Map::default(),
            export_ids: Map::default(),
            next_export: 1,
            imports: Map::default(),
            suspects: Vec::new(),
            collect_debt: 0,
            hello_owed: false,
            listen: Vec::new(),
            introduced: Vec::new(),
            next_ping: 1,
            timers: Timers::new(now),
            outbox,
            events: VecDeque::new(),
        }
    }

    /// A new session for the side that accepted the connection: like [`Session::new`],
    /// but its `hello` waits for the peer's and then announces the lower of the two
    /// protocol versions, so that a peer speaking an older version (which refuses any
    /// other) is served in its own (PROTOCOL.md 9.1). The connecting side always speaks
    /// first, so nothing waits on this side's `hello`.
    pub fn new_listening(limits: Limits, now: Instant) -> Session<O, R> {
        let mut s = Session::new(limits, now);
        s.outbox.clear();
        s.hello_owed = true;
        s
    }

    /// The next message to send to the peer.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.outbox.pop_front()
    }

    /// The next event for the runtime.
    pub fn poll_event(&mut self) -> Option<Event<O, R>> {
        self.events.pop_front()
    }

    /// Whether the session has closed (output may still be waiting to be written).
    #[inline]
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed(_))
    }

    /// Whether the peer's `hello` has arrived.
    pub fn is_established(&self) -> bool {
        self.state == State::Open
    }

    /// The sizes of the four tables.
    pub fn stats(&self) -> SessionStats {
        SessionStats {
            held: self.held.len(),
            questions: self.questions.len(),
            answers: self.answers.len(),
            imports: self.imports.len(),
            exports: self.exports.len(),
        }
    }

    /// Why the session closed, as the `Broken` its pending promises received.
    pub fn closed_reason(&self) -> Option<Broken> {
        match &self.state {
            State::Closed(broken) => Some(broken.clone()),
            State::AwaitingHello | State::Open => None,
        }
    }

    /// The largest frame body the peer accepts (from its `hello`).
    pub fn peer_max_frame(&self) -> usize {
        self.peer.max_frame
    }

    /// Every limit the peer announced in its `hello` (the protocol minimums until it
    /// arrives).
    pub fn peer_limits(&self) -> PeerLimits {
        self.peer
    }

    // ---- peer input ----

    /// Decodes and handles one frame body from the peer. A bad frame is a violation.
    /// Payload data is copied out of `body`.
    pub fn handle_frame(&mut self, body: &[u8]) {
        if self.is_closed() {
            return;
        }
        self.handle_decoded(Message::decode(body, &self.cbor));
    }

    /// [`Session::handle_frame`] for a body held as [`Bytes`]: payload data is a view
    /// of `body`, not a copy (what a large frame is worth).
    pub fn handle_shared_frame(&mut self, body: &Bytes) {
        if self.is_closed() {
            return;
        }
        self.handle_decoded(Message::decode_shared(body, &self.cbor));
    }

    fn handle_decoded(&mut self, decoded: Result<Message, DecodeError>) {
        match decoded {
            Ok(msg) => {
                // The kind only: never payload bytes, which may hold a swiss number.
                tracing::trace!(kind = msg.kind(), "message in");
                self.handle_message(msg)
            }
            Err(e) => self.violate(Violation::Decode(e)),
        }
    }

    /// Handles one decoded message from the peer.
    pub fn handle_message(&mut self, msg: Message) {
        if self.is_closed() {
            return;
        }
        if let Err(v) = self.dispatch(msg) {
            self.violate(v);
        }
        self.answer_broken();
        self.collect();
    }

    /// A bad frame seen before decoding (for example a length over the limit).
    pub fn handle_decode_error(&mut self, e: DecodeError) {
        if !self.is_closed() {
            self.violate(Violation::Decode(e));
        }
    }

    /// The connection ended without an `abort` (EOF, I/O error, keepalive timeout).
    pub fn handle_connection_lost(&mut self, why: impl Into<String>) {
        self.close(CloseReason::ConnectionLost(why.into()));
    }

    fn dispatch(&mut self, msg: Message) -> Result<(), Violation> {
        if self.state == State::AwaitingHello {
            return match msg {
                Message::Hello(hello) => self.handle_hello(&hello),
                Message::Abort { reason } => {
                    self.close(CloseReason::PeerAborted(reason));
                    Ok(())
                }
                other => Err(Violation::NoHello { got: other.kind() }),
            };
        }
        match msg {
            Message::Hello { .. } => Err(Violation::DuplicateHello),
            Message::Bootstrap { question, swiss } => {
                let answer = AnswerId(question);
                self.new_answer(answer, false)?;
                self.events.push_back(Event::Bootstrap { answer, swiss });
                Ok(())
            }
            Message::Deliver {
                target,
                method,
                payload,
                question,
                quiet,
            } => self.handle_deliver(target, method, payload, question.map(AnswerId), quiet),
            Message::Return { question, result } => {
                self.handle_return(QuestionId(question), result)
            }
            Message::Finish { question } => self.handle_finish(AnswerId(question)),
            Message::WantReturn { question } => self.handle_want_return(AnswerId(question)),
            Message::Resolve { export, result } => self.handle_resolve(ImportId(export), result),
            Message::Release { export, count } => self.handle_release(ExportId(export), count),
            Message::Abort { reason } => {
                self.close(CloseReason::PeerAborted(reason));
                Ok(())
            }
            Message::Ping { nonce } => {
                self.outbox.push_back(Message::Pong { nonce });
                Ok(())
            }
            Message::Pong { nonce } => {
                self.handle_pong(nonce);
                Ok(())
            }
            Message::Listen { hints } => {
                if self.peer.version < HANDOFF_VERSION {
                    return Err(Violation::NotInVersion {
                        what: "listen",
                        version: self.peer.version,
                    });
                }
                self.events.push_back(Event::Listen { hints });
                Ok(())
            }
        }
    }

    /// The peer's `hello`: check what it announces, then open and send what was held
    /// for it. Fields are checked in wire order; the first below its minimum is the
    /// violation.
    fn handle_hello(&mut self, hello: &Hello) -> Result<(), Violation> {
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.version) {
            return Err(Violation::UnsupportedVersion {
                version: hello.version,
            });
        }
        if hello.max_frame < MIN_FRAME as u64 {
            return Err(Violation::FrameLimitTooSmall {
                max_frame: hello.max_frame,
            });
        }
        if hello.max_questions < MIN_QUESTIONS as u64 {
            return Err(Violation::QuestionLimitTooSmall {
                max_questions: hello.max_questions,
            });
        }
        let minimums = [
            ("max_queued", hello.max_queued, MIN_QUEUED),
            ("max_imports", hello.max_imports, MIN_IMPORTS),
            ("max_caps", hello.max_caps, MIN_CAPS),
            ("max_depth", hello.max_depth, MIN_DEPTH),
            ("max_items", hello.max_items, MIN_ITEMS),
        ];
        for (field, value, minimum) in minimums {
            if value < minimum as u64 {
                return Err(Violation::LimitTooSmall {
                    field,
                    value,
                    minimum,
                });
            }
        }
        self.peer = PeerLimits::of(hello);
        self.state = State::Open;
        if self.hello_owed {
            self.hello_owed = false;
            let mut ours = announce(&self.limits);
            ours.version = hello.version.min(PROTOCOL_VERSION);
            // First, before anything this side queued since.
            self.outbox.push_front(Message::Hello(ours));
            if let Some(listen) = self.listen_message() {
                self.outbox.insert(1, listen);
            }
        } else if let Some(listen) = self.listen_message() {
            self.outbox.push_back(listen);
        }
        self.drain_hold_queue();
        Ok(())
    }

    /// The `listen` message to send once the peer's version is known: only to a peer
    /// speaking version 4, and only if this side has hints.
    fn listen_message(&mut self) -> Option<Message> {
        if self.peer.version < HANDOFF_VERSION || self.listen.is_empty() {
            return None;
        }
        Some(Message::Listen {
            hints: std::mem::take(&mut self.listen),
        })
    }

    /// Sets where this side can be reached, sent to the peer in a `listen` message: at
    /// once after this side's `hello` on a connecting side, after the peer's `hello` (if
    /// it speaks version 4) on a listening side. Call before the peer's `hello` is
    /// handled; at most `wire::MAX_HINTS` are sent.
    pub fn set_listen(&mut self, mut hints: Vec<String>) {
        hints.truncate(crate::wire::message::MAX_HINTS);
        self.listen = hints;
        // A connecting side sends it right after its own `hello`: a listener that takes
        // a version-4 `hello` speaks version 4 (an older one refuses the `hello` itself),
        // and so the listener knows where its peer is before the peer's first call.
        if !self.hello_owed && self.state == State::AwaitingHello && !self.listen.is_empty() {
            let hints = std::mem::take(&mut self.listen);
            self.outbox.push_back(Message::Listen { hints });
        }
    }

    /// The introductions written to the peer since the last call (PROTOCOL.md 9.16):
    /// each `third_party` descriptor's vine and gift id. The runtime deposits each gift
    /// at its host before the message can reach the peer (before it writes it), so a
    /// gift is deposited only for a descriptor that was sent: not for a result kept in
    /// a quiet answer, nor for a message that failed before it went out.
    pub fn take_introduced(&mut self) -> std::vec::Drain<'_, (O, [u8; 32])> {
        self.introduced.drain(..)
    }

    /// Whether [`Session::take_introduced`] has anything (a check per transmit).
    #[inline]
    pub fn has_introduced(&self) -> bool {
        !self.introduced.is_empty()
    }

    /// The protocol version spoken on this session: the lower of the two `hello`s (the
    /// oldest this crate speaks until the peer's arrives).
    pub fn version(&self) -> u32 {
        self.peer.version.min(PROTOCOL_VERSION)
    }

    // ---- local commands that concern the whole session ----

    /// Queues a ping; returns its nonce, which comes back in [`Event::Pong`]. When the
    /// pong arrives, the peer has handled everything sent before the ping, and
    /// everything it sent before the pong has been handled here. The nonces count up
    /// from 1 and never meet those of the session's keepalive pings.
    pub fn ping(&mut self) -> Option<u64> {
        if self.is_closed() {
            return None;
        }
        let nonce = self.next_ping;
        self.next_ping += 1;
        self.outbox.push_back(Message::Ping { nonce });
        Some(nonce)
    }

    /// Closes the session from this side, telling the peer why.
    pub fn abort(&mut self, reason: impl Into<String>) {
        if self.is_closed() {
            return;
        }
        let reason = reason.into();
        self.outbox.push_back(Message::Abort {
            reason: truncate_at_char_boundary(&reason, MAX_ERROR_MESSAGE).to_owned(),
        });
        self.close(CloseReason::Local(reason));
    }

    fn violate(&mut self, v: Violation) {
        tracing::debug!(violation = %v, "aborting session");
        self.outbox.push_back(Message::Abort {
            reason: truncate_at_char_boundary(&v.to_string(), MAX_ERROR_MESSAGE).to_owned(),
        });
        self.close(CloseReason::Violation(v));
    }

    /// Closes the session: every pending question and held send comes back broken, the
    /// runtime learns which exports lost their client, and the tables empty.
    ///
    /// Questions come back in id order and held sends after them in hold order, and the
    /// lost exports are listed in id order: the same close gives the same events.
    fn close(&mut self, reason: CloseReason) {
        if self.is_closed() {
            return;
        }
        let broken = Broken::disconnected(&reason);
        self.state = State::Closed(broken.clone());
        let mut asked: Vec<_> = self.questions.drain().collect();
        asked.sort_unstable_by_key(|&(id, _)| id);
        let asked = asked.into_iter().map(|(_, q)| q.resolver);
        let held = std::mem::take(&mut self.held)
            .into_iter()
            .map(Held::into_resolver);
        for resolver in asked.chain(held).flatten() {
            self.events.push_back(Event::Return {
                resolver,
                result: Err(broken.clone()),
            });
        }
        self.awaiting_return = 0;
        self.deadlines.clear();
        self.settled_while_held.clear();
        self.answers.clear();
        let mut lost: Vec<_> = self.exports.drain().collect();
        lost.sort_unstable_by_key(|&(id, _)| id);
        if !lost.is_empty() {
            let objects = lost.into_iter().map(|(_, export)| export.object).collect();
            self.events.push_back(Event::ExportsLost { objects });
        }
        self.export_ids.clear();
        self.imports.clear();
        self.suspects.clear();
        self.events.push_back(Event::Closed { reason });
    }
}

/// The `hello` a session with `limits` sends: every limit the peer must respect, after
/// raising each to its protocol minimum.
pub fn announce(limits: &Limits) -> Hello {
    let limits = limits.clone().normalized();
    Hello {
        version: PROTOCOL_VERSION,
        max_frame: limits.max_frame as u64,
        max_questions: limits.max_inbound_questions as u64,
        max_queued: limits.max_queued_per_promise as u64,
        max_imports: limits.max_imports as u64,
        max_caps: limits.max_caps_per_message as u64,
        max_depth: limits.max_cbor_depth as u64,
        max_items: limits.max_cbor_items as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sturdy::SwissNumber;

    type S = Session<u32, u32>;

    #[test]
    fn close_reports_questions_and_lost_exports_in_id_order() {
        let mut s: S = Session::new(Limits::default(), Instant::now());
        s.handle_message(Message::Hello(announce(&Limits::default())));
        // Questions asked in an order unlike their ids; each call exports one object,
        // numbered against the export ids (e1 exports object 40, e2 object 39, ...).
        let ids = [17, 3, 29, 8, 1, 22, 11, 5, 26, 14];
        for (n, &q) in ids.iter().enumerate() {
            s.bootstrap(
                QuestionId(q),
                SwissNumber::from_bytes([1; 32]),
                Some(q as u32),
                1,
            );
            s.send(Call {
                target: LocalTarget::Answer(QuestionId(q)),
                method: "take".to_owned(),
                payload: OutPayload {
                    shape: None,
                    data: Bytes::from_static(&SINGLE_CAP_DATA),
                    caps: vec![OutCap::Local(40 - n as u32)],
                },
                question: Some(QuestionId(100 + q)),
                resolver: Some(100 + q as u32),
                pipeline_refs: 0,
                deadline: None,
                quiet: false,
            });
        }
        while s.poll_event().is_some() {}
        s.abort("done");
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        let returned: Vec<u32> = events
            .iter()
            .filter_map(|e| match e {
                Event::Return { resolver, .. } => Some(*resolver),
                _ => None,
            })
            .collect();
        let mut expected: Vec<u32> = ids.iter().map(|&q| q as u32).collect();
        expected.sort_unstable();
        expected.extend(expected.clone().iter().map(|q| 100 + q));
        assert_eq!(returned, expected);
        let lost: Vec<u32> = (0..ids.len() as u32).map(|n| 40 - n).collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::ExportsLost { objects } if *objects == lost)),
            "{events:?}"
        );
    }
}
