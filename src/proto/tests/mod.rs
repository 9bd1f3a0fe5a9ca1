//! The harness for the protocol tests: sessions wired together in memory (`Pair`, two
//! sides `A` and `B`), events in a comparable form (`Seen`), message and payload
//! builders, and table assertions (`assert_tables!`). The tests themselves live in one
//! file per behaviour; their `mod` lines follow `assert_tables!`, which must be defined
//! before them.
//!
//! Nothing here tests anything by itself, and nothing does I/O: every session is made by
//! `new_session` and driven by hand, one message at a time.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::*;
use crate::broken::{Broken, BrokenKind};
use crate::limits::Limits;
use crate::sturdy::SwissNumber;
use crate::wire::message::PROTOCOL_VERSION;
use crate::wire::{
    self, CapDescriptor, CborLimits, DecodeError, Hello, MIN_CAPS, MIN_DEPTH, MIN_FRAME,
    MIN_IMPORTS, MIN_ITEMS, MIN_QUESTIONS, MIN_QUEUED, Message, Payload, ReturnResult,
    SINGLE_CAP_DATA, ScanError, Target, WireBroken, frame,
};

// ---- harness ----

/// Every session the tests make, so that a change to the constructor changes one line.
fn new_session(limits: Limits) -> S {
    Session::new(limits, *T0)
}

/// The instant every session of these tests starts at. Nothing here moves time on:
/// the timer tests (`session/timers.rs`) pass instants of their own.
static T0: std::sync::LazyLock<std::time::Instant> =
    std::sync::LazyLock::new(std::time::Instant::now);

/// What a table assertion reads: a session, one side of a [`Pair`], or sizes taken
/// earlier.
trait Tables {
    fn tables(&self) -> SessionStats;
}

impl Tables for S {
    fn tables(&self) -> SessionStats {
        self.stats()
    }
}

impl Tables for Peer {
    fn tables(&self) -> SessionStats {
        self.session.stats()
    }
}

impl Tables for SessionStats {
    fn tables(&self) -> SessionStats {
        *self
    }
}

/// Asserts the sizes of a session's tables by name; every size not named must be 0,
/// held sends included. `assert_tables!(pair.a)` says all of A's tables are empty;
/// `assert_tables!(pair.b, answers: 1, exports: 1)` that B holds one answer and one
/// export and nothing else. A failure message may follow a `;`.
macro_rules! assert_tables {
    ($of:expr $(, $field:ident: $n:expr)*; $($msg:tt)+) => {
        assert_eq!(
            Tables::tables(&$of),
            SessionStats { $($field: $n,)* ..SessionStats::default() },
            $($msg)+
        )
    };
    ($of:expr $(, $field:ident: $n:expr)* $(,)?) => {
        assert_eq!(
            Tables::tables(&$of),
            SessionStats { $($field: $n,)* ..SessionStats::default() },
            "the tables of `{}`",
            stringify!($of)
        )
    };
}

mod bootstrap;
mod calls;
mod cancel;
mod gc;
mod handshake;
mod lifecycle;
mod limits;
mod pipelining;
mod promises;
mod props;
mod quiet;
mod references;
mod regressions;
mod violations;

type S = Session<u32, u32>;

/// A pair that does not settle within this many steps is a bug (a message loop).
const STEP_LIMIT: usize = 10_000;

/// The object side B exports under `swiss(1)`.
const B_OBJ: u32 = 100;
/// The object side A exports under `swiss(2)`.
const A_OBJ: u32 = 200;
/// A swiss number neither side knows.
const UNKNOWN: u8 = 9;
/// The resolver of the question the victim of a violation has pending.
const PENDING: u32 = 999;

fn swiss(n: u8) -> SwissNumber {
    SwissNumber::from_bytes([n; 32])
}

fn data<T: Serialize + ?Sized>(value: &T) -> Bytes {
    wire::encode_value(value).unwrap().into()
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> T {
    wire::decode_value(bytes, &CborLimits::default()).unwrap()
}

fn in_data(bytes: Bytes) -> InPayload<u32> {
    InPayload {
        data: bytes,
        caps: Vec::new(),
    }
}

fn in_single(cap: InCap<u32>) -> InPayload<u32> {
    InPayload {
        data: Bytes::from_static(&SINGLE_CAP_DATA),
        caps: vec![cap],
    }
}

fn wire_single(desc: CapDescriptor) -> Payload {
    Payload {
        data: Bytes::from_static(&SINGLE_CAP_DATA),
        caps: vec![desc],
    }
}

/// A call that expects an answer: question `q`, resolver `q as u32`, no pipelined refs.
fn ask(target: LocalTarget, method: &str, payload: OutPayload<u32>, q: u64) -> Call<u32, u32> {
    Call {
        quiet: false,
        target,
        method: method.to_owned(),
        payload,
        question: Some(QuestionId(q)),
        resolver: Some(u32::try_from(q).unwrap()),
        pipeline_refs: 0,
        deadline: None,
    }
}

/// A one-way call (`send_only`).
fn tell(target: LocalTarget, method: &str, payload: OutPayload<u32>) -> Call<u32, u32> {
    Call {
        quiet: false,
        target,
        method: method.to_owned(),
        payload,
        question: None,
        resolver: None,
        pipeline_refs: 0,
        deadline: None,
    }
}

fn no_args() -> OutPayload<u32> {
    OutPayload::data(data(&()))
}

/// An [`Event`] in a comparable form, so tests can assert whole event lists.
#[derive(Debug, PartialEq)]
enum Seen {
    Deliver {
        target: u32,
        method: String,
        payload: InPayload<u32>,
        answer: Option<AnswerId>,
    },
    Bootstrap {
        answer: AnswerId,
        swiss: [u8; 32],
    },
    Return {
        resolver: u32,
        result: Result<InPayload<u32>, Broken>,
    },
    /// A call forwarded back to the peer through an import (an answer resolved to it).
    Forward {
        target: InCap<u32>,
        method: String,
        payload: InPayload<u32>,
        answer: Option<AnswerId>,
    },
    Resolved {
        import: ImportId,
        result: Result<InPayload<u32>, Broken>,
    },
    Lost(Vec<u32>),
    /// The peer cancelled the question this answer is for: stop its method.
    Cancel(AnswerId),
    Pong(u64),
    Closed(CloseReason),
    Listen(Vec<String>),
}

impl From<Event<u32, u32>> for Seen {
    fn from(ev: Event<u32, u32>) -> Seen {
        match ev {
            Event::Deliver {
                target: InCap::Local(target),
                method,
                payload,
                answer,
            } => Seen::Deliver {
                target,
                method,
                payload,
                answer,
            },
            Event::Deliver {
                target,
                method,
                payload,
                answer,
            } => Seen::Forward {
                target,
                method,
                payload,
                answer,
            },
            Event::Resolved { import, result } => Seen::Resolved { import, result },
            Event::Pong { nonce } => Seen::Pong(nonce),
            Event::Cancel { answer } => Seen::Cancel(answer),
            Event::ExportsLost { mut objects } => {
                objects.sort_unstable();
                Seen::Lost(objects)
            }
            Event::Bootstrap { answer, swiss } => Seen::Bootstrap {
                answer,
                swiss: *swiss.as_bytes(),
            },
            Event::Return { resolver, result } => Seen::Return { resolver, result },
            Event::Closed { reason } => Seen::Closed(reason),
            Event::Listen { hints } => Seen::Listen(hints),
        }
    }
}

fn delivered(target: u32, method: &str, payload: InPayload<u32>, answer: Option<u64>) -> Seen {
    Seen::Deliver {
        target,
        method: method.to_owned(),
        payload,
        answer: answer.map(AnswerId),
    }
}

fn returned(resolver: u32, result: Result<InPayload<u32>, Broken>) -> Seen {
    Seen::Return { resolver, result }
}

/// Drains a lone session: everything it wants to transmit and every event.
fn drain(s: &mut S) -> (Vec<Message>, Vec<Seen>) {
    let mut sent = Vec::new();
    while let Some(m) = s.poll_transmit() {
        sent.push(m);
    }
    let mut events = Vec::new();
    while let Some(e) = s.poll_event() {
        events.push(Seen::from(e));
    }
    (sent, events)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}
use Side::{A, B};

/// One side of a [`Pair`]: its session, what it saw and sent, and its bootstrap map.
struct Peer {
    session: S,
    /// Events not yet taken by the test, in order.
    events: Vec<Seen>,
    /// Every message this side transmitted, in order (cleared after the handshake).
    sent: Vec<Message>,
    /// The local "runtime": swiss number → object, for answering bootstraps.
    objects: HashMap<[u8; 32], u32>,
}

impl Peer {
    fn new(limits: Limits, objects: &[(u8, u32)]) -> Peer {
        Peer {
            session: new_session(limits),
            events: Vec::new(),
            sent: Vec::new(),
            objects: objects.iter().map(|&(n, o)| ([n; 32], o)).collect(),
        }
    }

    fn collect_events(&mut self) {
        while let Some(e) = self.session.poll_event() {
            self.events.push(Seen::from(e));
        }
    }

    /// The events so far, less the lost-client notices (tests of those use
    /// `take_all_events`).
    fn take_events(&mut self) -> Vec<Seen> {
        let mut events = self.take_all_events();
        events.retain(|e| !matches!(e, Seen::Lost(_)));
        events
    }

    fn take_all_events(&mut self) -> Vec<Seen> {
        self.collect_events();
        std::mem::take(&mut self.events)
    }

    fn take_sent(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.sent)
    }

    /// Answers every pending `Bootstrap` event from the object map (unknown →
    /// `unknown_object`), leaving other events in place. Returns the answers given.
    fn serve_bootstraps(&mut self) -> Vec<AnswerId> {
        self.collect_events();
        let mut served = Vec::new();
        for ev in std::mem::take(&mut self.events) {
            match ev {
                Seen::Bootstrap { answer, swiss } => {
                    let result = match self.objects.get(&swiss) {
                        Some(&o) => Ok(OutPayload::single_cap(OutCap::Local(o))),
                        None => Err(Broken::unknown_object()),
                    };
                    self.session.answer(answer, result);
                    served.push(answer);
                }
                other => self.events.push(other),
            }
        }
        served
    }
}

/// Two sessions wired together in memory.
struct Pair {
    a: Peer,
    b: Peer,
    /// Carry every message as a frame (encode, split, decode) instead of by value.
    codec: bool,
}

impl Pair {
    /// Default limits, frames through the codec, handshake done.
    fn new() -> Pair {
        Pair::with_limits(Limits::default(), Limits::default())
    }

    fn with_limits(a: Limits, b: Limits) -> Pair {
        Pair::build(a, b, true)
    }

    fn build(a: Limits, b: Limits, codec: bool) -> Pair {
        let a_hello = Message::Hello(announce(&a));
        let b_hello = Message::Hello(announce(&b));
        let mut pair = Pair {
            a: Peer::new(a, &[(2, A_OBJ)]),
            b: Peer::new(b, &[(1, B_OBJ)]),
            codec,
        };
        pair.drive();
        assert!(pair.a.session.is_established() && pair.b.session.is_established());
        assert_eq!(pair.a.take_sent(), [a_hello]);
        assert_eq!(pair.b.take_sent(), [b_hello]);
        assert_eq!(pair.a.take_events(), []);
        assert_eq!(pair.b.take_events(), []);
        pair
    }

    /// A pair where B has one question pending at A (a bootstrap A never answers), so
    /// that a violation detected by B can be seen breaking B's pending questions.
    fn victim(a: Limits, b: Limits) -> Pair {
        let mut pair = Pair::with_limits(a, b);
        pair.b
            .session
            .bootstrap(QuestionId(900), swiss(UNKNOWN), Some(PENDING), 0);
        pair.drive();
        assert_eq!(
            pair.a.take_events(),
            [Seen::Bootstrap {
                answer: AnswerId(900),
                swiss: [UNKNOWN; 32]
            }]
        );
        pair.b.take_sent();
        pair
    }

    fn peer(&mut self, side: Side) -> &mut Peer {
        match side {
            A => &mut self.a,
            B => &mut self.b,
        }
    }

    fn ends(&mut self, from: Side) -> (&mut Peer, &mut Peer) {
        match from {
            A => (&mut self.a, &mut self.b),
            B => (&mut self.b, &mut self.a),
        }
    }

    /// Moves one message from `from` to the other side; false if there was none.
    fn step(&mut self, from: Side) -> bool {
        let codec = self.codec;
        let (src, dst) = self.ends(from);
        let Some(msg) = src.session.poll_transmit() else {
            return false;
        };
        if codec {
            let mut buf = Vec::new();
            let len = msg.encode_frame(&mut buf).unwrap();
            let span = frame::next_frame(&buf, usize::MAX).unwrap().unwrap();
            assert_eq!((span.end - span.start, span.end), (len, buf.len()));
            let body = &buf[span.start..span.end];
            assert_eq!(Message::decode(body, &CborLimits::default()).unwrap(), msg);
            dst.session.handle_frame(body);
        } else {
            dst.session.handle_message(msg.clone());
        }
        src.sent.push(msg);
        true
    }

    /// Moves every message `from` has queued now, without letting the other side reply.
    fn pump(&mut self, from: Side) {
        while self.step(from) {}
        self.a.collect_events();
        self.b.collect_events();
    }

    /// Carries messages both ways until both sides are quiet.
    fn drive(&mut self) {
        for _ in 0..STEP_LIMIT {
            self.a.collect_events();
            self.b.collect_events();
            let moved_ab = self.step(A);
            let moved_ba = self.step(B);
            if !moved_ab && !moved_ba {
                self.a.collect_events();
                self.b.collect_events();
                return;
            }
        }
        panic!("the pair did not settle in {STEP_LIMIT} steps");
    }

    /// `asker` bootstraps `swiss(n)` from the other side, which serves it from its map;
    /// returns what the resolver got.
    fn bootstrap(&mut self, asker: Side, q: u64, n: u8, pipeline_refs: u32) -> Seen {
        let resolver = u32::try_from(q).unwrap();
        self.peer(asker)
            .session
            .bootstrap(QuestionId(q), swiss(n), Some(resolver), pipeline_refs);
        self.drive();
        let answerer = match asker {
            A => B,
            B => A,
        };
        assert_eq!(self.peer(answerer).serve_bootstraps(), [AnswerId(q)]);
        self.drive();
        let mut events = self.peer(asker).take_events();
        assert_eq!(events.len(), 1, "{events:?}");
        events.remove(0)
    }

    /// A bootstraps B's object under question `q`; returns A's import of it.
    fn a_imports_b_obj(&mut self, q: u64) -> ImportId {
        let seen = self.bootstrap(A, q, 1, 0);
        let Seen::Return {
            result: Ok(payload),
            ..
        } = seen
        else {
            panic!("bootstrap failed: {seen:?}");
        };
        let [InCap::Import(i)] = payload.caps[..] else {
            panic!("not a single import: {payload:?}");
        };
        self.a.take_sent();
        self.b.take_sent();
        i
    }

    fn stats(&self) -> (SessionStats, SessionStats) {
        (self.a.session.stats(), self.b.session.stats())
    }
}

/// After B detected `expected` from A (and the pair was driven): B queued exactly one
/// `abort` with the violation's text, broke its pending question with `disconnected`,
/// closed, and emptied its tables; A got the abort and closed too. Returns A's events
/// before its `Closed`, for the test to check.
fn expect_violation(pair: &mut Pair, expected: Violation) -> Vec<Seen> {
    let text = expected.to_string();
    let reason = CloseReason::Violation(expected);
    assert_eq!(
        pair.b.take_events(),
        [
            returned(PENDING, Err(Broken::disconnected(&reason))),
            Seen::Closed(reason),
        ]
    );
    let sent = pair.b.take_sent();
    assert_eq!(
        sent.last(),
        Some(&Message::Abort {
            reason: text.clone()
        }),
        "{sent:?}"
    );
    assert_eq!(
        sent.iter()
            .filter(|m| matches!(m, Message::Abort { .. }))
            .count(),
        1
    );
    assert!(pair.b.session.is_closed() && pair.a.session.is_closed());
    assert_tables!(pair.a);
    assert_tables!(pair.b);
    let mut a_events = pair.a.take_events();
    assert_eq!(
        a_events.pop(),
        Some(Seen::Closed(CloseReason::PeerAborted(text)))
    );
    a_events
}

// ---- scenarios several files share ----

/// A asks B (question `q`, one pipelined handle) for something B answers with a promise
/// of B's, `promise`; returns A's import of it. B's bootstrap object is A's import 1.
fn b_answers_with_a_promise(pair: &mut Pair, q: u64, promise: u32) -> ImportId {
    pair.a
        .session
        .send(ask(LocalTarget::Import(ImportId(1)), "later", no_args(), q));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "later", in_data(data(&())), Some(q))]
    );
    pair.b.session.answer(
        AnswerId(q),
        Ok(OutPayload::single_cap(OutCap::Promise(promise))),
    );
    pair.drive();
    let events = pair.a.take_events();
    let [
        Seen::Return {
            result: Ok(payload),
            ..
        },
    ] = &events[..]
    else {
        panic!("{events:?}")
    };
    let [InCap::Promise(i)] = payload.caps[..] else {
        panic!("not a promise: {payload:?}")
    };
    pair.a.take_sent();
    pair.b.take_sent();
    i
}

/// A lone session whose peer has returned `promises` (its exports 1, 2, ...) as
/// `sender_promise` results of bootstraps 1, 2, ...; the runtime has dropped every handle
/// it was given, and only the questions' pipelined handles keep the imports.
fn session_holding_unheld_promises(promises: u64) -> S {
    let mut s = new_session(Limits::default());
    s.handle_message(Message::Hello(Hello {
        max_frame: 1 << 20,
        max_questions: 1024,
        ..announce(&Limits::default())
    }));
    for p in 1..=promises {
        s.bootstrap(QuestionId(p), swiss(1), Some(u32::try_from(p).unwrap()), 1);
        s.handle_message(Message::Return {
            question: p,
            result: ReturnResult::Ok(wire_single(CapDescriptor::SenderPromise(p))),
        });
    }
    let (_, events) = drain(&mut s);
    assert_eq!(events.len(), promises as usize, "{events:?}");
    for p in 1..=promises {
        s.drop_import(ImportId(p));
    }
    drain(&mut s);
    assert_eq!(s.stats().imports, promises as usize);
    s
}

/// The peer settles its promise `p` to a single `sender_promise(to)`.
fn resolve_to_promise(s: &mut S, p: u64, to: u64) {
    s.handle_message(Message::Resolve {
        export: p,
        result: ReturnResult::Ok(wire_single(CapDescriptor::SenderPromise(to))),
    });
    assert!(!s.is_closed());
}

/// The `release`s among `sent`, as (export, count), sorted.
fn releases(sent: &[Message]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = sent
        .iter()
        .filter_map(|m| match m {
            Message::Release { export, count } => Some((*export, *count)),
            _ => None,
        })
        .collect();
    out.sort_unstable();
    out
}
