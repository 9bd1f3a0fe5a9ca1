#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::session::SINGLE_CAP_DATA;
use super::*;
use crate::broken::{Broken, BrokenKind};
use crate::limits::Limits;
use crate::sturdy::SwissNumber;
use crate::wire::message::PROTOCOL_VERSION;
use crate::wire::{
    self, CapDescriptor, CborLimits, DecodeError, Message, Payload, ReturnResult, ScanError,
    Target, WireBroken, frame,
};

// ---- harness ----

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

fn data<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    wire::encode_value(value).unwrap()
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> T {
    wire::decode_value(bytes, &CborLimits::default()).unwrap()
}

fn in_data(bytes: Vec<u8>) -> InPayload<u32> {
    InPayload {
        data: bytes,
        caps: Vec::new(),
    }
}

fn in_single(cap: InCap<u32>) -> InPayload<u32> {
    InPayload {
        data: SINGLE_CAP_DATA.to_vec(),
        caps: vec![cap],
    }
}

fn wire_single(desc: CapDescriptor) -> Payload {
    Payload {
        data: SINGLE_CAP_DATA.to_vec(),
        caps: vec![desc],
    }
}

/// A call that expects an answer: question `q`, resolver `q as u32`, no pipelined refs.
fn ask(target: LocalTarget, method: &str, payload: OutPayload<u32>, q: u64) -> Call<u32, u32> {
    Call {
        target,
        method: method.to_owned(),
        payload,
        question: Some(QuestionId(q)),
        resolver: Some(u32::try_from(q).unwrap()),
        pipeline_refs: 0,
    }
}

/// A one-way call (`send_only`).
fn tell(target: LocalTarget, method: &str, payload: OutPayload<u32>) -> Call<u32, u32> {
    Call {
        target,
        method: method.to_owned(),
        payload,
        question: None,
        resolver: None,
        pipeline_refs: 0,
    }
}

fn no_args() -> OutPayload<u32> {
    OutPayload::data(data(&()))
}

fn zero() -> SessionStats {
    SessionStats::default()
}

fn stats(questions: usize, answers: usize, imports: usize, exports: usize) -> SessionStats {
    SessionStats {
        questions,
        answers,
        imports,
        exports,
        held: 0,
    }
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
    Pong(u64),
    Closed(CloseReason),
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
            session: Session::new(limits, std::time::Instant::now()),
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
        let a_hello = (a.max_frame as u64, a.max_inbound_questions as u64);
        let b_hello = (b.max_frame as u64, b.max_inbound_questions as u64);
        let mut pair = Pair {
            a: Peer::new(a, &[(2, A_OBJ)]),
            b: Peer::new(b, &[(1, B_OBJ)]),
            codec,
        };
        pair.drive();
        assert!(pair.a.session.is_established() && pair.b.session.is_established());
        let hello = |(max_frame, max_questions)| Message::Hello {
            version: PROTOCOL_VERSION,
            max_frame,
            max_questions,
        };
        assert_eq!(pair.a.take_sent(), [hello(a_hello)]);
        assert_eq!(pair.b.take_sent(), [hello(b_hello)]);
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
    assert_eq!(pair.stats(), (zero(), zero()));
    let mut a_events = pair.a.take_events();
    assert_eq!(
        a_events.pop(),
        Some(Seen::Closed(CloseReason::PeerAborted(text)))
    );
    a_events
}

// ---- handshake: hello first, once, with a version we speak ----

#[test]
fn hello_is_queued_first_and_establishes_both_sides() {
    let mut s: S = Session::new(Limits::default(), std::time::Instant::now());
    assert!(!s.is_established() && !s.is_closed());
    assert_eq!(
        drain(&mut s),
        (
            vec![Message::Hello {
                version: PROTOCOL_VERSION,
                max_frame: 1 << 20,
                max_questions: 1024,
            }],
            vec![]
        )
    );
    s.handle_message(Message::Hello {
        version: PROTOCOL_VERSION,
        max_frame: 10_000,
        max_questions: 1024,
    });
    assert!(s.is_established() && !s.is_closed());
    assert_eq!(s.peer_max_frame(), 10_000);
    assert_eq!(drain(&mut s), (vec![], vec![]));
}

#[test]
fn hello_with_a_frame_limit_below_the_minimum_is_a_violation() {
    let mut s: S = Session::new(Limits::default(), std::time::Instant::now());
    drain(&mut s);
    s.handle_message(Message::Hello {
        version: PROTOCOL_VERSION,
        max_frame: MIN_FRAME as u64 - 1,
        max_questions: 1024,
    });
    assert!(s.is_closed());
    let (sent, events) = drain(&mut s);
    let v = Violation::FrameLimitTooSmall {
        max_frame: MIN_FRAME as u64 - 1,
    };
    assert_eq!(
        sent,
        [Message::Abort {
            reason: v.to_string()
        }]
    );
    assert!(
        matches!(&events[..], [Seen::Closed(CloseReason::Violation(got))] if *got == v),
        "{events:?}"
    );
}

#[test]
fn own_frame_limit_below_the_minimum_is_raised() {
    let mut s: S = Session::new(
        Limits {
            max_frame: 100,
            ..Limits::default()
        },
        std::time::Instant::now(),
    );
    let (sent, _) = drain(&mut s);
    assert_eq!(
        sent,
        [Message::Hello {
            version: PROTOCOL_VERSION,
            max_frame: MIN_FRAME as u64,
            max_questions: 1024,
        }]
    );
}

#[test]
fn hello_exchange_learns_each_peers_frame_limit() {
    let la = Limits {
        max_frame: 9000,
        ..Limits::default()
    };
    let lb = Limits {
        max_frame: 12_000,
        ..Limits::default()
    };
    // `build` checks both hellos and that nothing else happened.
    let pair = Pair::build(la, lb, false);
    assert_eq!(pair.a.session.peer_max_frame(), 12_000);
    assert_eq!(pair.b.session.peer_max_frame(), 9000);
    assert_eq!(pair.stats(), (zero(), zero()));
}

#[test]
fn first_message_not_hello_is_a_violation() {
    let mut s: S = Session::new(Limits::default(), std::time::Instant::now());
    // Questions may be asked before the peer's hello arrives.
    s.bootstrap(QuestionId(1), swiss(1), Some(7), 0);
    s.handle_message(Message::Ping { nonce: 5 });
    let v = Violation::NoHello { got: "ping" };
    let reason = CloseReason::Violation(v.clone());
    let (sent, events) = drain(&mut s);
    assert_eq!(
        sent,
        [
            Message::Hello {
                version: PROTOCOL_VERSION,
                max_frame: 1 << 20,
                max_questions: 1024,
            },
            Message::Bootstrap {
                question: 1,
                swiss: swiss(1)
            },
            // No pong: the ping itself was the violation.
            Message::Abort {
                reason: "expected hello as the first message, got ping".to_owned()
            },
        ]
    );
    assert_eq!(
        events,
        [
            returned(7, Err(Broken::disconnected(&reason))),
            Seen::Closed(reason)
        ]
    );
    assert!(s.is_closed() && !s.is_established());
    assert_eq!(s.stats(), zero());
}

#[test]
fn unsupported_version_is_a_violation() {
    let mut s: S = Session::new(Limits::default(), std::time::Instant::now());
    s.poll_transmit();
    s.handle_message(Message::Hello {
        version: PROTOCOL_VERSION + 1,
        max_frame: 1000,
        max_questions: 1024,
    });
    let v = Violation::UnsupportedVersion {
        version: PROTOCOL_VERSION + 1,
    };
    assert_eq!(
        drain(&mut s),
        (
            vec![Message::Abort {
                reason: "unsupported protocol version 2 (this vat speaks 1)".to_owned()
            }],
            vec![Seen::Closed(CloseReason::Violation(v))]
        )
    );
    assert!(s.is_closed() && !s.is_established());
}

#[test]
fn duplicate_hello_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.b.session.handle_message(Message::Hello {
        version: PROTOCOL_VERSION,
        max_frame: 1000,
        max_questions: 1024,
    });
    pair.drive();
    assert_eq!(expect_violation(&mut pair, Violation::DuplicateHello), []);
}

#[test]
fn abort_before_hello_closes_as_peer_aborted() {
    let mut s: S = Session::new(Limits::default(), std::time::Instant::now());
    s.poll_transmit();
    s.handle_message(Message::Abort {
        reason: "go away".to_owned(),
    });
    assert_eq!(
        drain(&mut s),
        (
            vec![],
            vec![Seen::Closed(CloseReason::PeerAborted("go away".to_owned()))]
        )
    );
}

// ---- bootstrap: swiss number → a single reference, or unknown_object ----

#[test]
fn bootstrap_known_swiss_resolves_to_single_reference() {
    let mut pair = Pair::new();
    assert_eq!(
        pair.bootstrap(A, 1, 1, 0),
        returned(1, Ok(in_single(InCap::Import(ImportId(1)))))
    );
    assert_eq!(
        pair.a.take_sent(),
        [
            Message::Bootstrap {
                question: 1,
                swiss: swiss(1)
            },
            Message::Finish { question: 1 },
        ]
    );
    assert_eq!(
        pair.b.take_sent(),
        [Message::Return {
            question: 1,
            result: ReturnResult::Ok(wire_single(CapDescriptor::SenderHosted(1)))
        }]
    );
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
}

#[test]
fn bootstrap_unknown_swiss_breaks_with_unknown_object() {
    let mut pair = Pair::new();
    let seen = pair.bootstrap(A, 1, UNKNOWN, 0);
    assert_eq!(seen, returned(1, Err(Broken::unknown_object())));
    let Seen::Return { result: Err(b), .. } = seen else {
        unreachable!()
    };
    assert_eq!(b.kind(), BrokenKind::UnknownObject);
    assert_eq!(
        pair.b.take_sent(),
        [Message::Return {
            question: 1,
            result: ReturnResult::Err(WireBroken {
                kind: "unknown_object".to_owned(),
                message: Broken::unknown_object().message().to_owned(),
            })
        }]
    );
    assert_eq!(pair.stats(), (zero(), zero()));
}

#[test]
fn bootstrap_revoked_swiss_is_indistinguishable_from_unknown() {
    let mut pair = Pair::new();
    let i = pair.a_imports_b_obj(1);
    pair.a.session.drop_import(i);
    pair.drive();
    // Revoke: the runtime forgets the swiss number.
    pair.b.objects.clear();
    let revoked = pair.bootstrap(A, 2, 1, 0);
    let unknown = pair.bootstrap(A, 3, UNKNOWN, 0);
    assert_eq!(revoked, returned(2, Err(Broken::unknown_object())));
    assert_eq!(unknown, returned(3, Err(Broken::unknown_object())));
    assert_eq!(pair.stats(), (zero(), zero()));
}

// ---- calls: deliver, return, finish, send_only, errors ----

fn basic_call(codec: bool) {
    let mut pair = Pair::build(Limits::default(), Limits::default(), codec);
    let obj = pair.a_imports_b_obj(1);
    let args = data(&("add", 2u32, 3u32));
    pair.a.session.send(ask(
        LocalTarget::Import(obj),
        "add",
        OutPayload::data(args.clone()),
        2,
    ));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Deliver {
            target: Target::Export(1),
            method: "add".to_owned(),
            payload: Payload {
                data: args.clone(),
                caps: vec![]
            },
            question: Some(2),
        }]
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "add", in_data(args.clone()), Some(2))]
    );
    assert_eq!(pair.stats(), (stats(1, 0, 1, 0), stats(0, 1, 0, 1)));
    let (_, x, y): (String, u32, u32) = decode(&args);

    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&(x + y)))));
    pair.pump(B);
    // The return arrived; the finish is queued at A but B still holds the answer.
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 1, 0, 1)));
    let events = pair.a.take_events();
    assert_eq!(events, [returned(2, Ok(in_data(data(&5u32))))]);
    let Seen::Return {
        result: Ok(payload),
        ..
    } = &events[0]
    else {
        unreachable!()
    };
    assert_eq!(decode::<u32>(&payload.data), 5);
    pair.drive();
    assert_eq!(pair.a.take_sent(), [Message::Finish { question: 2 }]);
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
    assert_eq!(
        (pair.a.take_events(), pair.b.take_events()),
        (vec![], vec![])
    );
}

#[test]
fn basic_call_returns_data_and_finishes() {
    basic_call(false);
}

#[test]
fn basic_call_through_the_frame_codec() {
    basic_call(true);
}

#[test]
fn send_only_delivers_without_return() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "log",
        OutPayload::data(data("hi")),
    ));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Deliver {
            target: Target::Export(1),
            method: "log".to_owned(),
            payload: Payload {
                data: data("hi"),
                caps: vec![]
            },
            question: None,
        }]
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "log", in_data(data("hi")), None)]
    );
    assert_eq!(pair.b.take_sent(), []);
    assert_eq!(pair.a.take_events(), []);
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
}

#[test]
fn remote_error_keeps_kind_and_message() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "withdraw", no_args(), 2));
    pair.drive();
    pair.b.take_events();
    pair.a.take_sent();
    let err = Broken::failed("insufficient funds");
    pair.b.session.answer(AnswerId(2), Err(err.clone()));
    pair.drive();
    assert_eq!(pair.a.take_events(), [returned(2, Err(err))]);
    assert_eq!(
        pair.b.take_sent(),
        [Message::Return {
            question: 2,
            result: ReturnResult::Err(WireBroken {
                kind: "failed".to_owned(),
                message: "insufficient funds".to_owned()
            })
        }]
    );
    assert_eq!(pair.a.take_sent(), [Message::Finish { question: 2 }]);
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
}

#[test]
fn unknown_error_kind_from_a_newer_peer_becomes_other() {
    let mut pair = Pair::new();
    pair.a
        .session
        .bootstrap(QuestionId(1), swiss(1), Some(1), 0);
    pair.drive();
    pair.b.take_events();
    // B's runtime would never produce this kind; inject it as if from a newer B.
    pair.a.session.handle_message(Message::Return {
        question: 1,
        result: ReturnResult::Err(WireBroken {
            kind: "from_the_future".to_owned(),
            message: "new".to_owned(),
        }),
    });
    assert_eq!(
        pair.a.take_events(),
        [returned(1, Err(Broken::new(BrokenKind::Other, "new")))]
    );
}

#[test]
fn answering_twice_or_an_unknown_answer_does_nothing() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "get", no_args(), 2));
    pair.drive();
    pair.b.take_events();
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&1u8))));
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&2u8))));
    pair.b
        .session
        .answer(AnswerId(77), Ok(OutPayload::data(data(&3u8))));
    pair.drive();
    assert_eq!(pair.b.take_sent().len(), 1);
    assert_eq!(pair.a.take_events(), [returned(2, Ok(in_data(data(&1u8))))]);
    assert!(!pair.a.session.is_closed() && !pair.b.session.is_closed());
}

#[test]
fn send_to_a_released_import_breaks_locally() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.drop_import(obj);
    pair.drive();
    pair.a.take_sent();
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "get", no_args(), 2));
    assert_eq!(
        pair.a.take_events(),
        [returned(
            2,
            Err(Broken::new(BrokenKind::Other, "reference i1 was released"))
        )]
    );
    assert_eq!(pair.a.session.poll_transmit(), None);
    assert_eq!(pair.stats(), (zero(), zero()));
}

// ---- promise pipelining: sends to an answer before and after it resolves ----

#[test]
fn pipelined_calls_wait_for_the_bootstrap_in_e_order() {
    let mut pair = Pair::new();
    pair.a
        .session
        .bootstrap(QuestionId(1), swiss(1), Some(1), 1);
    let promise = LocalTarget::Answer(QuestionId(1));
    pair.a
        .session
        .send(ask(promise, "first", OutPayload::data(data(&1u8)), 2));
    pair.a
        .session
        .send(ask(promise, "second", OutPayload::data(data(&2u8)), 3));
    pair.a
        .session
        .send(tell(promise, "third", OutPayload::data(data(&3u8))));
    pair.a
        .session
        .send(ask(promise, "fourth", OutPayload::data(data(&4u8)), 4));
    pair.drive();
    let sent = pair.a.take_sent();
    assert_eq!(sent.len(), 5);
    for m in &sent[1..] {
        let Message::Deliver { target, .. } = m else {
            panic!("{m:?}")
        };
        assert_eq!(*target, Target::Answer(1));
    }
    // Queued at B: only the bootstrap is visible; B holds four answers.
    assert_eq!(
        pair.b.take_events(),
        [Seen::Bootstrap {
            answer: AnswerId(1),
            swiss: [1; 32]
        }]
    );
    assert_eq!(pair.stats(), (stats(4, 0, 0, 0), stats(0, 4, 0, 0)));

    pair.b.session.answer(
        AnswerId(1),
        Ok(OutPayload::single_cap(OutCap::Local(B_OBJ))),
    );
    assert_eq!(
        pair.b.take_events(),
        [
            delivered(B_OBJ, "first", in_data(data(&1u8)), Some(2)),
            delivered(B_OBJ, "second", in_data(data(&2u8)), Some(3)),
            delivered(B_OBJ, "third", in_data(data(&3u8)), None),
            delivered(B_OBJ, "fourth", in_data(data(&4u8)), Some(4)),
        ]
    );
    for q in [2u8, 3, 4] {
        pair.b
            .session
            .answer(AnswerId(q.into()), Ok(OutPayload::data(data(&(q * 10)))));
    }
    pair.drive();
    assert_eq!(
        pair.a.take_events(),
        [
            returned(1, Ok(in_single(InCap::Import(ImportId(1))))),
            returned(2, Ok(in_data(data(&20u8)))),
            returned(3, Ok(in_data(data(&30u8)))),
            returned(4, Ok(in_data(data(&40u8)))),
        ]
    );
    // Question 1 stays: one pipelined reference is still held.
    assert_eq!(pair.stats(), (stats(1, 0, 1, 0), stats(0, 0, 0, 1)));
}

#[test]
fn pipelined_call_arriving_after_the_answer_is_delivered_at_once() {
    let mut pair = Pair::new();
    pair.a
        .session
        .bootstrap(QuestionId(1), swiss(1), Some(1), 1);
    pair.pump(A);
    pair.b.serve_bootstraps();
    // B's return is still in flight when A pipelines a call on the answer.
    pair.a
        .session
        .send(ask(LocalTarget::Answer(QuestionId(1)), "now", no_args(), 2));
    pair.pump(A);
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "now", in_data(data(&())), Some(2))]
    );
    pair.drive();
    assert_eq!(
        pair.a.take_events(),
        [returned(1, Ok(in_single(InCap::Import(ImportId(1)))))]
    );
    assert_eq!(pair.stats(), (stats(2, 0, 1, 0), stats(0, 1, 0, 1)));
}

#[test]
fn pipelined_calls_on_a_broken_bootstrap_break_the_same_way() {
    let mut pair = Pair::new();
    pair.a
        .session
        .bootstrap(QuestionId(1), swiss(UNKNOWN), Some(1), 2);
    let promise = LocalTarget::Answer(QuestionId(1));
    pair.a.session.send(ask(promise, "one", no_args(), 2));
    pair.a.session.send(ask(promise, "two", no_args(), 3));
    pair.drive();
    pair.b.serve_bootstraps();
    pair.drive();
    let b = Broken::unknown_object();
    assert_eq!(
        pair.a.take_events(),
        [
            returned(1, Err(b.clone())),
            returned(2, Err(b.clone())),
            returned(3, Err(b.clone())),
        ]
    );
    assert_eq!(pair.b.take_events(), []);
    assert_eq!(pair.stats(), (stats(1, 0, 0, 0), zero()));

    // The question is kept (two pipelined refs): later sends break at once, locally.
    pair.a.take_sent();
    pair.a.session.send(ask(promise, "three", no_args(), 4));
    pair.a.session.send(Call {
        resolver: Some(5),
        ..tell(promise, "four", no_args())
    });
    assert_eq!(
        pair.a.take_events(),
        [returned(4, Err(b.clone())), returned(5, Err(b))]
    );
    assert_eq!(pair.a.session.poll_transmit(), None);
    pair.a.session.drop_question_ref(QuestionId(1));
    assert_eq!(pair.a.session.stats(), stats(1, 0, 0, 0));
    pair.a.session.drop_question_ref(QuestionId(1));
    assert_eq!(pair.stats(), (zero(), zero()));
}

#[test]
fn pipelined_send_only_on_a_broken_promise_releases_its_references() {
    let mut pair = Pair::new();
    pair.a
        .session
        .bootstrap(QuestionId(1), swiss(UNKNOWN), Some(1), 1);
    pair.a.session.send(tell(
        LocalTarget::Answer(QuestionId(1)),
        "take",
        OutPayload::single_cap(OutCap::Local(A_OBJ)),
    ));
    pair.drive();
    assert_eq!(pair.stats(), (stats(1, 0, 0, 1), stats(0, 1, 1, 0)));
    pair.b.serve_bootstraps();
    pair.drive();
    assert_eq!(
        pair.b.take_sent()[1..],
        [Message::Release {
            export: 1,
            count: 1
        }]
    );
    pair.a.session.drop_question_ref(QuestionId(1));
    assert_eq!(pair.stats(), (zero(), zero()));
}

#[test]
fn send_to_a_resolved_question_goes_to_the_import() {
    let mut pair = Pair::new();
    let seen = pair.bootstrap(A, 1, 1, 1);
    assert_eq!(seen, returned(1, Ok(in_single(InCap::Import(ImportId(1))))));
    pair.a.take_sent();
    pair.a.session.send(ask(
        LocalTarget::Answer(QuestionId(1)),
        "later",
        no_args(),
        2,
    ));
    pair.drive();
    assert_eq!(
        pair.a.take_sent()[0],
        Message::Deliver {
            target: Target::Export(1),
            method: "later".to_owned(),
            payload: Payload {
                data: data(&()),
                caps: vec![]
            },
            question: Some(2),
        }
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "later", in_data(data(&())), Some(2))]
    );
}

#[test]
fn call_on_a_promise_resolved_to_data_breaks_with_not_an_object() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(LocalTarget::Import(obj), "balance", no_args(), 2)
    });
    let promise = LocalTarget::Answer(QuestionId(2));
    // Pipelined before the result: B breaks it.
    pair.a.session.send(ask(promise, "deposit", no_args(), 3));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "balance", in_data(data(&())), Some(2))]
    );
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&42u32))));
    pair.drive();
    let not_an_object = |m: &str| {
        Broken::new(
            BrokenKind::NotAnObject,
            format!("cannot call {m:?}: the promise resolved to data, not an object"),
        )
    };
    assert_eq!(
        pair.a.take_events(),
        [
            returned(2, Ok(in_data(data(&42u32)))),
            returned(3, Err(not_an_object("deposit"))),
        ]
    );
    // Sent after the result: A breaks it without transmitting.
    pair.a.take_sent();
    pair.a.session.send(ask(promise, "withdraw", no_args(), 4));
    assert_eq!(
        pair.a.take_events(),
        [returned(4, Err(not_an_object("withdraw")))]
    );
    assert_eq!(pair.a.session.poll_transmit(), None);
    assert_eq!(pair.stats(), (stats(1, 0, 1, 0), stats(0, 0, 0, 1)));
}

// ---- references: export reuse, refcounts, release, references coming home ----

#[test]
fn release_on_drop_empties_every_table() {
    let mut pair = Pair::new();
    // One handle from the resolver, one held by the question for pipelining.
    let seen = pair.bootstrap(A, 1, 1, 1);
    assert_eq!(seen, returned(1, Ok(in_single(InCap::Import(ImportId(1))))));
    pair.a.take_sent();
    assert_eq!(pair.stats(), (stats(1, 0, 1, 0), stats(0, 0, 0, 1)));
    pair.a.session.drop_question_ref(QuestionId(1));
    assert_eq!(pair.a.session.poll_transmit(), None);
    assert_eq!(pair.a.session.stats(), stats(0, 0, 1, 0));
    pair.a.session.drop_import(ImportId(1));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Release {
            export: 1,
            count: 1
        }]
    );
    assert_eq!(pair.stats(), (zero(), zero()));
    assert_eq!(
        (pair.a.take_events(), pair.b.take_events()),
        (vec![], vec![])
    );
}

#[test]
fn export_reuse_shares_the_id_and_release_carries_the_count() {
    let mut pair = Pair::new();
    let first = pair.a_imports_b_obj(1);
    let second = pair.a_imports_b_obj(2);
    assert_eq!((first, second), (ImportId(1), ImportId(1)));
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
    pair.a.session.drop_import(first);
    pair.drive();
    assert_eq!(pair.a.take_sent(), []);
    pair.a.session.drop_import(second);
    // Still exported until the release arrives.
    assert_eq!(pair.b.session.stats(), stats(0, 0, 0, 1));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Release {
            export: 1,
            count: 2
        }]
    );
    assert_eq!(pair.stats(), (zero(), zero()));
    // A released export's id is not reused.
    assert_eq!(pair.a_imports_b_obj(3), ImportId(2));
}

#[test]
fn release_races_with_a_new_copy_of_the_same_export() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "me", no_args(), 2));
    pair.drive();
    pair.b.take_events();
    // A drops its import; B sends the object again before A's release (count 1)
    // arrives, so B's refcount goes 1 → 2 → 1 and A imports it afresh.
    pair.a.session.drop_import(obj);
    assert_eq!(pair.a.session.stats(), stats(1, 0, 0, 0));
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Local(B_OBJ))),
    );
    pair.drive();
    assert_eq!(
        pair.a.take_sent()[1..],
        [
            Message::Release {
                export: 1,
                count: 1
            },
            Message::Finish { question: 2 },
        ]
    );
    assert_eq!(
        pair.a.take_events(),
        [returned(2, Ok(in_single(InCap::Import(ImportId(1)))))]
    );
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
    pair.a.session.drop_import(ImportId(1));
    pair.drive();
    assert_eq!(pair.stats(), (zero(), zero()));
}

#[test]
fn references_in_arguments_are_exported_and_released() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "subscribe",
        OutPayload {
            data: data(&(1u8, 2u8)),
            caps: vec![OutCap::Local(A_OBJ), OutCap::Local(201)],
        },
    ));
    pair.drive();
    let Message::Deliver { payload, .. } = &pair.a.take_sent()[0] else {
        panic!()
    };
    assert_eq!(
        payload.caps,
        [
            CapDescriptor::SenderHosted(1),
            CapDescriptor::SenderHosted(2)
        ]
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(
            B_OBJ,
            "subscribe",
            InPayload {
                data: data(&(1u8, 2u8)),
                caps: vec![InCap::Import(ImportId(1)), InCap::Import(ImportId(2))]
            },
            None
        )]
    );
    assert_eq!(pair.stats(), (stats(0, 0, 1, 2), stats(0, 0, 2, 1)));
    pair.b.session.drop_import(ImportId(2));
    pair.b.session.drop_import(ImportId(1));
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [
            Message::Release {
                export: 2,
                count: 1
            },
            Message::Release {
                export: 1,
                count: 1
            },
        ]
    );
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
}

#[test]
fn reference_coming_home_is_the_local_object() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(ask(
        LocalTarget::Import(obj),
        "echo",
        OutPayload::single_cap(OutCap::Local(A_OBJ)),
        2,
    ));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [delivered(
            B_OBJ,
            "echo",
            in_single(InCap::Import(ImportId(1))),
            Some(2)
        )]
    );
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Import(ImportId(1)))),
    );
    pair.b.session.drop_import(ImportId(1));
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [
            Message::Return {
                question: 2,
                result: ReturnResult::Ok(wire_single(CapDescriptor::ReceiverHosted(1)))
            },
            Message::Release {
                export: 1,
                count: 1
            },
        ]
    );
    assert_eq!(
        pair.a.take_events(),
        [returned(2, Ok(in_single(InCap::Local(A_OBJ))))]
    );
    // A holds no import for its own object, and the export went with the release.
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
}

#[test]
fn import_held_by_a_question_outlives_the_resolvers_handle() {
    let mut pair = Pair::new();
    pair.bootstrap(A, 1, 1, 1);
    pair.a.take_sent();
    pair.a.session.drop_import(ImportId(1));
    pair.drive();
    assert_eq!(pair.a.take_sent(), []);
    // Still usable through the promise.
    pair.a
        .session
        .send(tell(LocalTarget::Answer(QuestionId(1)), "poke", no_args()));
    pair.a.session.drop_question_ref(QuestionId(1));
    pair.drive();
    assert_eq!(
        pair.a.take_sent()[1],
        Message::Release {
            export: 1,
            count: 1
        }
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "poke", in_data(data(&())), None)]
    );
    assert_eq!(pair.stats(), (zero(), zero()));
}

#[test]
fn dropping_question_refs_before_the_return_frees_the_question_on_return() {
    let mut pair = Pair::new();
    pair.a.session.bootstrap(QuestionId(1), swiss(1), None, 1);
    pair.a.session.drop_question_ref(QuestionId(1));
    assert_eq!(pair.a.session.stats(), stats(1, 0, 0, 0));
    pair.drive();
    pair.b.serve_bootstraps();
    pair.drive();
    // No resolver and no refs: the returned reference is released at once.
    assert_eq!(pair.a.take_events(), []);
    assert_eq!(
        pair.a.take_sent()[1..],
        [
            Message::Finish { question: 1 },
            Message::Release {
                export: 1,
                count: 1
            },
        ]
    );
    assert_eq!(pair.stats(), (zero(), zero()));
}

// ---- finish before return: the asker lost interest in a pending answer ----

#[test]
fn finish_before_return_sends_nothing_when_answered() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "slow", no_args(), 2));
    pair.drive();
    pair.b.take_events();
    pair.b
        .session
        .handle_message(Message::Finish { question: 2 });
    assert_eq!(pair.b.session.stats(), stats(0, 1, 0, 1));
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::single_cap(OutCap::Local(301))));
    assert_eq!(pair.b.session.poll_transmit(), None);
    // Nothing exported for a result nobody will read.
    assert_eq!(pair.b.session.stats(), stats(0, 0, 0, 1));
    assert_eq!(pair.b.take_events(), []);
    assert!(!pair.b.session.is_closed());
}

#[test]
fn finish_before_return_still_delivers_pipelined_calls() {
    let mut pair = Pair::new();
    pair.a
        .session
        .bootstrap(QuestionId(1), swiss(1), Some(1), 1);
    pair.a.session.send(tell(
        LocalTarget::Answer(QuestionId(1)),
        "queued",
        no_args(),
    ));
    pair.drive();
    pair.b
        .session
        .handle_message(Message::Finish { question: 1 });
    pair.b.serve_bootstraps();
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "queued", in_data(data(&())), None)]
    );
    assert_eq!(pair.b.session.poll_transmit(), None);
    assert_eq!(pair.b.session.stats(), zero());
}

// ---- violations: each aborts the session and breaks the victim's questions ----

#[test]
fn deliver_to_an_unknown_export_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.b.session.handle_message(Message::Deliver {
        target: Target::Export(42),
        method: "x".to_owned(),
        payload: Payload::default(),
        question: Some(1),
    });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::UnknownExport(ExportId(42))),
        []
    );
}

#[test]
fn deliver_to_an_unknown_answer_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.b.session.handle_message(Message::Deliver {
        target: Target::Answer(7),
        method: "x".to_owned(),
        payload: Payload::default(),
        question: None,
    });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::UnknownAnswer(AnswerId(7))),
        []
    );
}

#[test]
fn unknown_receiver_hosted_descriptor_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    // A imports B's object (B export 1), then names a B export that does not exist.
    pair.a_imports_b_obj(1);
    pair.b.session.handle_message(Message::Deliver {
        target: Target::Export(1),
        method: "x".to_owned(),
        payload: wire_single(CapDescriptor::ReceiverHosted(5)),
        question: None,
    });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::UnknownExport(ExportId(5))),
        []
    );
}

#[test]
fn return_for_a_question_never_asked_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.b.session.handle_message(Message::Return {
        question: 5,
        result: ReturnResult::Ok(Payload::default()),
    });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::UnknownQuestion(QuestionId(5))),
        []
    );
}

#[test]
fn duplicate_return_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    assert_eq!(
        pair.bootstrap(B, 1, 2, 0),
        returned(1, Ok(in_single(InCap::Import(ImportId(1)))))
    );
    let sent = pair.a.take_sent();
    let again = sent.last().unwrap().clone();
    assert!(matches!(again, Message::Return { question: 1, .. }));
    pair.b.session.handle_message(again);
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::UnknownQuestion(QuestionId(1))),
        []
    );
}

#[test]
fn duplicate_question_id_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    let obj = pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "slow", no_args(), 3));
    pair.drive();
    pair.b.take_events();
    pair.b.session.handle_message(Message::Deliver {
        target: Target::Export(1),
        method: "again".to_owned(),
        payload: Payload::default(),
        question: Some(3),
    });
    pair.drive();
    // A's own pending question 3 breaks when B's abort arrives.
    let text = Violation::DuplicateQuestion(AnswerId(3)).to_string();
    assert_eq!(
        expect_violation(&mut pair, Violation::DuplicateQuestion(AnswerId(3))),
        [returned(
            3,
            Err(Broken::disconnected(CloseReason::PeerAborted(text)))
        )]
    );
}

#[test]
fn duplicate_bootstrap_question_id_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.a
        .session
        .bootstrap(QuestionId(4), swiss(1), Some(4), 0);
    pair.drive();
    pair.b.take_events();
    pair.b.session.handle_message(Message::Bootstrap {
        question: 4,
        swiss: swiss(1),
    });
    pair.drive();
    let text = Violation::DuplicateQuestion(AnswerId(4)).to_string();
    assert_eq!(
        expect_violation(&mut pair, Violation::DuplicateQuestion(AnswerId(4))),
        [returned(
            4,
            Err(Broken::disconnected(CloseReason::PeerAborted(text)))
        )]
    );
}

#[test]
fn finish_for_an_unknown_answer_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.b
        .session
        .handle_message(Message::Finish { question: 77 });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::UnknownAnswer(AnswerId(77))),
        []
    );
}

#[test]
fn release_of_an_unknown_export_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.b.session.handle_message(Message::Release {
        export: 5,
        count: 1,
    });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::UnknownExport(ExportId(5))),
        []
    );
}

#[test]
fn release_with_count_zero_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.a_imports_b_obj(1);
    pair.b.session.handle_message(Message::Release {
        export: 1,
        count: 0,
    });
    pair.drive();
    let v = Violation::BadRelease {
        export: ExportId(1),
        count: 0,
        held: 1,
    };
    assert_eq!(expect_violation(&mut pair, v), []);
}

#[test]
fn release_of_more_than_held_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.a_imports_b_obj(1);
    pair.a_imports_b_obj(2);
    pair.b.session.handle_message(Message::Release {
        export: 1,
        count: 3,
    });
    pair.drive();
    let v = Violation::BadRelease {
        export: ExportId(1),
        count: 3,
        held: 2,
    };
    assert_eq!(
        v.to_string(),
        "release of export e1 with count 3, but the peer holds 2"
    );
    assert_eq!(expect_violation(&mut pair, v), []);
}

#[test]
fn too_many_inbound_questions_is_a_violation() {
    let lb = Limits {
        max_inbound_questions: MIN_QUESTIONS,
        ..Limits::default()
    };
    let mut pair = Pair::victim(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let n = MIN_QUESTIONS as u64;
    for q in 2..2 + n {
        pair.a
            .session
            .send(ask(LocalTarget::Import(obj), "wait", no_args(), q));
    }
    pair.drive();
    assert_eq!(pair.b.take_events().len(), MIN_QUESTIONS);
    // A well-behaved asker never passes the limit: it holds the next question back.
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "held", no_args(), 2 + n));
    pair.drive();
    assert_eq!(pair.b.take_events(), []);
    assert_eq!(pair.a.session.stats().held, 1);
    // A peer that ignores the limit is aborted.
    pair.b.session.handle_message(Message::Deliver {
        target: Target::Export(obj.0),
        method: "one_more".into(),
        payload: Payload {
            data: data(&()),
            caps: vec![],
        },
        question: Some(10_000),
    });
    pair.drive();
    let v = Violation::TooManyQuestions {
        limit: MIN_QUESTIONS,
    };
    let broken = Broken::disconnected(CloseReason::PeerAborted(v.to_string()));
    let mut a_events = expect_violation(&mut pair, v);
    a_events.sort_by_key(|e| match e {
        Seen::Return { resolver, .. } => *resolver,
        _ => 0,
    });
    assert_eq!(
        a_events,
        (2..3 + n as u32)
            .map(|r| returned(r, Err(broken.clone())))
            .collect::<Vec<_>>()
    );
}

#[test]
fn finished_questions_free_inbound_slots() {
    let lb = Limits {
        max_inbound_questions: MIN_QUESTIONS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let n = MIN_QUESTIONS as u64;
    for round in 0..3u64 {
        let first = 2 + round * n;
        for q in first..first + n {
            pair.a
                .session
                .send(ask(LocalTarget::Import(obj), "next", no_args(), q));
        }
        pair.drive();
        assert_eq!(pair.b.take_events().len(), MIN_QUESTIONS);
        assert_eq!(pair.a.session.stats().held, 0);
        for q in first..first + n {
            pair.b
                .session
                .answer(AnswerId(q), Ok(OutPayload::data(data(&()))));
        }
        pair.drive();
        assert_eq!(pair.a.take_events().len(), MIN_QUESTIONS);
    }
    assert!(!pair.b.session.is_closed());
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
}

#[test]
fn questions_past_the_peers_limit_are_held_and_sent_in_order() {
    let lb = Limits {
        max_inbound_questions: MIN_QUESTIONS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let n = MIN_QUESTIONS as u64;
    // n questions fill the peer's limit; then a one-way send and n more questions must
    // wait behind them, in order (a one-way send may not overtake a held question).
    for q in 2..2 + n {
        pair.a
            .session
            .send(ask(LocalTarget::Import(obj), "first", no_args(), q));
    }
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "second", no_args(), 2 + n));
    pair.a
        .session
        .send(tell(LocalTarget::Import(obj), "one_way", no_args()));
    for q in 3 + n..3 + 2 * n {
        pair.a
            .session
            .send(ask(LocalTarget::Import(obj), "third", no_args(), q));
    }
    pair.drive();
    assert_eq!(pair.a.session.stats().held, 2 + n as usize);
    let delivered_methods = |events: Vec<Seen>| -> Vec<String> {
        events
            .into_iter()
            .map(|e| match e {
                Seen::Deliver { method, .. } => method,
                other => panic!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(
        delivered_methods(pair.b.take_events()),
        vec!["first".to_owned(); MIN_QUESTIONS]
    );
    // Each answer lets exactly one more question out; the one-way send needs no room
    // and follows the held question at once.
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&()))));
    pair.drive();
    assert_eq!(
        delivered_methods(pair.b.take_events()),
        ["second", "one_way"]
    );
    for q in 3..2 + n {
        pair.b
            .session
            .answer(AnswerId(q), Ok(OutPayload::data(data(&()))));
    }
    pair.drive();
    assert_eq!(
        delivered_methods(pair.b.take_events()),
        vec!["third".to_owned(); MIN_QUESTIONS - 1]
    );
    assert_eq!(pair.a.session.stats().held, 1);
    pair.b
        .session
        .answer(AnswerId(2 + n), Ok(OutPayload::data(data(&()))));
    pair.drive();
    assert_eq!(delivered_methods(pair.b.take_events()), ["third"]);
    assert_eq!(pair.a.session.stats().held, 0);
    assert!(!pair.a.session.is_closed() && !pair.b.session.is_closed());
}

#[test]
fn held_questions_break_when_the_session_closes() {
    let lb = Limits {
        max_inbound_questions: MIN_QUESTIONS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let n = MIN_QUESTIONS as u64;
    for q in 2..3 + n {
        pair.a
            .session
            .send(ask(LocalTarget::Import(obj), "wait", no_args(), q));
    }
    pair.drive();
    assert_eq!(pair.a.session.stats().held, 1);
    pair.a.session.handle_connection_lost("cable cut");
    let events = pair.a.take_events();
    let returns = events
        .iter()
        .filter(|e| matches!(e, Seen::Return { result: Err(b), .. } if b.kind() == BrokenKind::Disconnected))
        .count();
    assert_eq!(returns, MIN_QUESTIONS + 1);
    assert_eq!(pair.a.session.stats(), zero());
}

#[test]
fn hello_with_a_question_limit_below_the_minimum_is_a_violation() {
    let mut s: S = Session::new(Limits::default(), std::time::Instant::now());
    drain(&mut s);
    s.handle_message(Message::Hello {
        version: PROTOCOL_VERSION,
        max_frame: MIN_FRAME as u64,
        max_questions: MIN_QUESTIONS as u64 - 1,
    });
    assert!(s.is_closed());
    let (sent, events) = drain(&mut s);
    let v = Violation::QuestionLimitTooSmall {
        max_questions: MIN_QUESTIONS as u64 - 1,
    };
    assert_eq!(
        sent,
        [Message::Abort {
            reason: v.to_string()
        }]
    );
    assert!(
        matches!(&events[..], [Seen::Closed(CloseReason::Violation(got))] if *got == v),
        "{events:?}"
    );
}

#[test]
fn too_many_messages_queued_on_one_promise_is_a_violation() {
    let lb = Limits {
        max_queued_per_promise: 3,
        ..Limits::default()
    };
    let mut pair = Pair::victim(Limits::default(), lb);
    pair.a
        .session
        .bootstrap(QuestionId(1), swiss(1), Some(1), 1);
    for _ in 0..3 {
        pair.a.session.send(tell(
            LocalTarget::Answer(QuestionId(1)),
            "queued",
            no_args(),
        ));
    }
    pair.drive();
    assert_eq!(pair.b.take_events().len(), 1);
    assert!(!pair.b.session.is_closed());
    pair.a.session.send(tell(
        LocalTarget::Answer(QuestionId(1)),
        "one_more",
        no_args(),
    ));
    pair.drive();
    let v = Violation::TooManyQueued { limit: 3 };
    let text = v.to_string();
    assert_eq!(
        expect_violation(&mut pair, v),
        [returned(
            1,
            Err(Broken::disconnected(CloseReason::PeerAborted(text)))
        )]
    );
}

#[test]
fn too_many_caps_in_one_message_is_a_violation() {
    let lb = Limits {
        max_caps_per_message: 2,
        ..Limits::default()
    };
    let mut pair = Pair::victim(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "many",
        OutPayload {
            data: data(&()),
            caps: vec![OutCap::Local(1), OutCap::Local(2), OutCap::Local(3)],
        },
    ));
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::TooManyCaps { limit: 2 }),
        []
    );
}

#[test]
fn too_many_imports_is_a_violation() {
    let lb = Limits {
        max_imports: 2,
        ..Limits::default()
    };
    let mut pair = Pair::victim(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let caps = |objs: &[u32]| OutPayload {
        data: data(&()),
        caps: objs.iter().map(|&o| OutCap::Local(o)).collect(),
    };
    pair.a
        .session
        .send(tell(LocalTarget::Import(obj), "two", caps(&[1, 2])));
    pair.drive();
    assert_eq!(pair.b.take_events().len(), 1);
    assert_eq!(pair.b.session.stats(), stats(1, 0, 2, 1));
    // Sending an already imported reference again does not count.
    pair.a
        .session
        .send(tell(LocalTarget::Import(obj), "again", caps(&[2])));
    pair.drive();
    assert_eq!(pair.b.take_events().len(), 1);
    pair.a
        .session
        .send(tell(LocalTarget::Import(obj), "third", caps(&[3])));
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::TooManyImports { limit: 2 }),
        []
    );
}

#[test]
fn garbage_frame_is_a_decode_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    // A lone break byte: not a definite-length CBOR item.
    pair.b.session.handle_frame(&[0xff]);
    pair.drive();
    let v = Violation::Decode(DecodeError::Cbor(ScanError::IndefiniteLength { offset: 0 }));
    assert_eq!(expect_violation(&mut pair, v), []);
}

#[test]
fn empty_frame_is_a_decode_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.b.session.handle_frame(&[]);
    pair.drive();
    let v = Violation::Decode(DecodeError::Cbor(ScanError::Truncated { offset: 0 }));
    assert_eq!(expect_violation(&mut pair, v), []);
}

#[test]
fn well_formed_cbor_that_is_not_a_message_is_a_decode_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    let mut body = HashMap::new();
    body.insert("frobnicate", 1u8);
    let body = data(&body);
    let expected = Message::decode(&body, &CborLimits::default()).unwrap_err();
    assert!(matches!(&expected, DecodeError::Schema(s) if s.starts_with("not a captp message")));
    pair.b.session.handle_frame(&body);
    pair.drive();
    assert_eq!(expect_violation(&mut pair, Violation::Decode(expected)), []);
}

#[test]
fn deeply_nested_frame_is_a_decode_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    // 40 nested one-element arrays around a zero: past the default depth of 32.
    let mut body = vec![0x81; 40];
    body.push(0x00);
    pair.b.session.handle_frame(&body);
    pair.drive();
    let v = Violation::Decode(DecodeError::Cbor(ScanError::TooDeep { max: 32 }));
    assert_eq!(expect_violation(&mut pair, v), []);
}

#[test]
fn oversized_frame_reported_by_the_reader_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    let err = frame::next_frame(&[0xff; 4], 1 << 20).unwrap_err();
    pair.b.session.handle_decode_error(err.clone());
    pair.drive();
    assert_eq!(
        err,
        DecodeError::FrameTooLarge {
            len: u64::from(u32::MAX),
            max: 1 << 20
        }
    );
    assert_eq!(expect_violation(&mut pair, Violation::Decode(err)), []);
}

// ---- session end: peer abort, local abort, connection lost ----

#[test]
fn peer_abort_breaks_pending_questions_with_the_reason() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "slow", no_args(), 2));
    pair.drive();
    pair.b.take_events();
    pair.a.take_sent();
    pair.b.session.abort("shutting down for maintenance");
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [Message::Abort {
            reason: "shutting down for maintenance".to_owned()
        }]
    );
    assert_eq!(
        pair.b.take_events(),
        [Seen::Closed(CloseReason::Local(
            "shutting down for maintenance".to_owned()
        ))]
    );
    let reason = CloseReason::PeerAborted("shutting down for maintenance".to_owned());
    let events = pair.a.take_events();
    assert_eq!(
        events,
        [
            returned(2, Err(Broken::disconnected(&reason))),
            Seen::Closed(reason)
        ]
    );
    let Seen::Return { result: Err(b), .. } = &events[0] else {
        unreachable!()
    };
    assert_eq!(b.kind(), BrokenKind::Disconnected);
    assert!(b.message().contains("shutting down for maintenance"));
    assert_eq!(pair.a.take_sent(), []);
    assert_eq!(pair.stats(), (zero(), zero()));
}

#[test]
fn connection_lost_breaks_pending_questions_and_later_sends() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "slow", no_args(), 2));
    pair.drive();
    pair.a.session.handle_connection_lost("EOF");
    let reason = CloseReason::ConnectionLost("EOF".to_owned());
    let broken = Broken::disconnected(&reason);
    assert_eq!(broken.message(), "session ended: connection lost: EOF");
    assert_eq!(
        pair.a.take_events(),
        [
            returned(2, Err(broken.clone())),
            Seen::Closed(reason.clone())
        ]
    );
    assert!(pair.a.session.is_closed());
    assert_eq!(pair.a.session.stats(), zero());

    // Everything after the close breaks at once and nothing is transmitted.
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "after", no_args(), 3));
    pair.a.session.send(Call {
        resolver: Some(4),
        ..tell(LocalTarget::Import(obj), "after", no_args())
    });
    pair.a
        .session
        .bootstrap(QuestionId(5), swiss(1), Some(5), 1);
    pair.a.session.ping();
    pair.a.session.drop_import(obj);
    pair.a.session.abort("again");
    pair.a.session.handle_message(Message::Ping { nonce: 1 });
    assert_eq!(
        pair.a.take_events(),
        [
            returned(3, Err(broken.clone())),
            returned(4, Err(broken.clone())),
            returned(5, Err(broken)),
        ]
    );
    assert_eq!(pair.a.session.poll_transmit(), None);
    assert_eq!(pair.a.session.stats(), zero());
}

// ---- keepalive ----

#[test]
fn ping_is_answered_by_pong_with_the_same_nonce() {
    let mut pair = Pair::new();
    assert_eq!(pair.a.session.ping(), Some(1));
    assert_eq!(pair.a.session.ping(), Some(2));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Ping { nonce: 1 }, Message::Ping { nonce: 2 }]
    );
    assert_eq!(
        pair.b.take_sent(),
        [Message::Pong { nonce: 1 }, Message::Pong { nonce: 2 }]
    );
    // Each pong is reported, for whoever waits on that round trip.
    assert_eq!(
        (pair.a.take_events(), pair.b.take_events()),
        (vec![Seen::Pong(1), Seen::Pong(2)], vec![])
    );
    // An unsolicited pong is harmless: reported, nothing else.
    pair.a
        .session
        .handle_message(Message::Pong { nonce: 12345 });
    assert_eq!(
        (pair.a.take_events(), pair.b.take_events()),
        (vec![Seen::Pong(12345)], vec![])
    );
    assert_eq!(pair.a.session.poll_transmit(), None);
    assert!(!pair.a.session.is_closed());
}

// ---- local limits: what the peer would refuse breaks here, before sending ----

#[test]
fn send_larger_than_the_peers_frame_limit_breaks_with_too_large() {
    let lb = Limits {
        max_frame: MIN_FRAME,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    assert_eq!(pair.a.session.peer_max_frame(), MIN_FRAME);
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(
            LocalTarget::Import(obj),
            "upload",
            OutPayload::data(data(&serde_bytes::Bytes::new(&[7; MIN_FRAME]))),
            2,
        )
    });
    let events = pair.a.take_events();
    let [
        Seen::Return {
            resolver: 2,
            result: Err(b),
        },
    ] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(b.kind(), BrokenKind::TooLarge);
    assert_eq!(pair.a.session.poll_transmit(), None);
    // The broken question is kept for its pipelined ref: sends to it break the same way.
    pair.a.session.send(ask(
        LocalTarget::Answer(QuestionId(2)),
        "then",
        no_args(),
        3,
    ));
    assert_eq!(pair.a.take_events(), [returned(3, Err(b.clone()))]);
    pair.a.session.drop_question_ref(QuestionId(2));
    // A small call still goes through.
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "small", no_args(), 4));
    pair.drive();
    assert_eq!(pair.a.take_sent().len(), 1);
    assert_eq!(pair.b.take_events().len(), 1);
    assert_eq!(pair.stats(), (stats(1, 0, 1, 0), stats(0, 1, 0, 1)));
}

#[test]
fn result_larger_than_the_askers_frame_limit_breaks_with_too_large() {
    let la = Limits {
        max_frame: MIN_FRAME,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(la, Limits::default());
    let obj = pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "download", no_args(), 2));
    pair.drive();
    pair.b.take_events();
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::data(data(&serde_bytes::Bytes::new(
            &[7; MIN_FRAME],
        )))),
    );
    pair.drive();
    let events = pair.a.take_events();
    let [
        Seen::Return {
            resolver: 2,
            result: Err(b),
        },
    ] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(b.kind(), BrokenKind::TooLarge);
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
}

#[test]
fn too_many_caps_in_a_local_send_breaks_with_too_large() {
    let la = Limits {
        max_caps_per_message: 2,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(la, Limits::default());
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(ask(
        LocalTarget::Import(obj),
        "many",
        OutPayload {
            data: data(&()),
            caps: vec![OutCap::Local(1), OutCap::Local(2), OutCap::Local(3)],
        },
        2,
    ));
    let events = pair.a.take_events();
    let [
        Seen::Return {
            resolver: 2,
            result: Err(b),
        },
    ] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(b.kind(), BrokenKind::TooLarge);
    assert_eq!(pair.a.session.poll_transmit(), None);
    assert_eq!(pair.a.session.stats(), stats(0, 0, 1, 0));
}

#[test]
fn result_past_the_export_limit_breaks_with_too_large() {
    let lb = Limits {
        max_exports: 1,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    pair.b.objects.insert([3; 32], 300);
    pair.a_imports_b_obj(1);
    let seen = pair.bootstrap(A, 2, 3, 0);
    let Seen::Return {
        resolver: 2,
        result: Err(b),
    } = &seen
    else {
        panic!("{seen:?}")
    };
    assert_eq!(b.kind(), BrokenKind::TooLarge);
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
}

// ---- references between peers ----

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

/// B's runtime forwarding what the session hands it for one of A's references (an
/// answer of B's resolved to it): each call is sent back through that import, in
/// order, and the delivery's handle dropped. A call that wants an answer is asked as
/// B's question `*next_q`, with the answer id as resolver. Returns B's other events.
fn forward_to_a(pair: &mut Pair, next_q: &mut u64) -> Vec<Seen> {
    let mut rest = Vec::new();
    for ev in pair.b.take_all_events() {
        let Seen::Forward {
            target: InCap::Import(i) | InCap::Promise(i),
            method,
            payload,
            answer,
        } = ev
        else {
            rest.push(ev);
            continue;
        };
        assert!(payload.caps.is_empty(), "{payload:?}");
        let args = OutPayload::data(payload.data);
        let call = match answer {
            Some(a) => {
                *next_q += 1;
                Call {
                    resolver: Some(u32::try_from(a.0).unwrap()),
                    ..ask(LocalTarget::Import(i), &method, args, *next_q)
                }
            }
            None => tell(LocalTarget::Import(i), &method, args),
        };
        pair.b.session.send(call);
        pair.b.session.drop_import(i);
    }
    rest
}

#[test]
fn sender_promise_is_exported_and_resolved_once() {
    let mut pair = Pair::new();
    pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(ImportId(1)), "later", no_args(), 2));
    pair.drive();
    pair.b.take_events();
    pair.a.take_sent();
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Promise(300))),
    );
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [Message::Return {
            question: 2,
            result: ReturnResult::Ok(wire_single(CapDescriptor::SenderPromise(2)))
        }]
    );
    assert_eq!(pair.a.take_sent(), [Message::Finish { question: 2 }]);
    assert_eq!(
        pair.a.take_events(),
        [returned(2, Ok(in_single(InCap::Promise(ImportId(2)))))]
    );
    assert_eq!(pair.stats(), (stats(0, 0, 2, 0), stats(0, 0, 0, 2)));

    pair.b
        .session
        .resolve_export(&300, Ok(OutPayload::data(data(&7u8))));
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [Message::Resolve {
            export: 2,
            result: ReturnResult::Ok(Payload {
                data: data(&7u8),
                caps: vec![]
            })
        }]
    );
    assert_eq!(
        pair.a.take_events(),
        [Seen::Resolved {
            import: ImportId(2),
            result: Ok(in_data(data(&7u8)))
        }]
    );
    // A promise settles once: later reports send nothing.
    pair.b
        .session
        .resolve_export(&300, Ok(OutPayload::data(data(&8u8))));
    pair.b
        .session
        .resolve_export(&300, Err(Broken::failed("late")));
    assert_eq!(pair.b.session.poll_transmit(), None);
    // Settled, it travels as an object: sent again, it is `sender_hosted`.
    pair.a
        .session
        .send(ask(LocalTarget::Import(ImportId(1)), "again", no_args(), 3));
    pair.drive();
    pair.b.take_events();
    pair.b.session.answer(
        AnswerId(3),
        Ok(OutPayload::single_cap(OutCap::Promise(300))),
    );
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [Message::Return {
            question: 3,
            result: ReturnResult::Ok(wire_single(CapDescriptor::SenderHosted(2)))
        }]
    );
    assert_eq!(
        pair.a.take_events(),
        [returned(3, Ok(in_single(InCap::Import(ImportId(2)))))]
    );
    // Two receptions, one release with the full count.
    pair.a.take_sent();
    pair.a.session.drop_import(ImportId(2));
    pair.a.session.drop_import(ImportId(2));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Release {
            export: 2,
            count: 2
        }]
    );
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
    assert_eq!(
        (pair.a.take_events(), pair.b.take_events()),
        (vec![], vec![])
    );
}

#[test]
fn sender_promise_in_arguments_is_imported_as_a_promise() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "take",
        OutPayload::single_cap(OutCap::Promise(A_OBJ)),
    ));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Deliver {
            target: Target::Export(1),
            method: "take".to_owned(),
            payload: wire_single(CapDescriptor::SenderPromise(1)),
            question: None,
        }]
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(
            B_OBJ,
            "take",
            in_single(InCap::Promise(ImportId(1))),
            None
        )]
    );
    assert_eq!(pair.stats(), (stats(0, 0, 1, 1), stats(0, 0, 1, 1)));
    pair.a
        .session
        .resolve_export(&A_OBJ, Err(Broken::failed("gave up")));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [Seen::Resolved {
            import: ImportId(1),
            result: Err(Broken::failed("gave up"))
        }]
    );
    pair.b.session.drop_import(ImportId(1));
    pair.drive();
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
}

#[test]
fn promise_resolve_twice_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "take",
        OutPayload::single_cap(OutCap::Promise(A_OBJ)),
    ));
    pair.a
        .session
        .resolve_export(&A_OBJ, Ok(OutPayload::data(data(&1u8))));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [
            delivered(B_OBJ, "take", in_single(InCap::Promise(ImportId(1))), None),
            Seen::Resolved {
                import: ImportId(1),
                result: Ok(in_data(data(&1u8)))
            },
        ]
    );
    // A's session never sends a second resolve; a peer that does is aborted.
    pair.b.session.handle_message(Message::Resolve {
        export: 1,
        result: ReturnResult::Ok(Payload {
            data: data(&2u8),
            caps: vec![],
        }),
    });
    pair.drive();
    let v = Violation::BadResolve(ImportId(1));
    assert_eq!(
        v.to_string(),
        "resolve of i1, which is not an unresolved promise"
    );
    assert_eq!(expect_violation(&mut pair, v), []);
}

#[test]
fn resolve_of_an_import_that_is_not_a_promise_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "take",
        OutPayload::single_cap(OutCap::Local(A_OBJ)),
    ));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [delivered(
            B_OBJ,
            "take",
            in_single(InCap::Import(ImportId(1))),
            None
        )]
    );
    pair.b.session.handle_message(Message::Resolve {
        export: 1,
        result: ReturnResult::Err(WireBroken {
            kind: "failed".to_owned(),
            message: "x".to_owned(),
        }),
    });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::BadResolve(ImportId(1))),
        []
    );
}

#[test]
fn resolve_of_a_released_promise_is_tolerated_and_releases_what_it_brought() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "take",
        OutPayload::single_cap(OutCap::Promise(A_OBJ)),
    ));
    pair.drive();
    pair.b.take_events();
    pair.a.take_sent();
    // B lets go of the promise while A resolves it to a new object: the two cross.
    pair.b.session.drop_import(ImportId(1));
    pair.a
        .session
        .resolve_export(&A_OBJ, Ok(OutPayload::single_cap(OutCap::Local(201))));
    assert_eq!(pair.stats(), (stats(0, 0, 1, 2), stats(0, 0, 0, 1)));
    // The resolve reaches B, which no longer has the import: not a violation, and the
    // reference in it goes straight back.
    pair.pump(A);
    assert!(!pair.b.session.is_closed());
    assert_eq!(pair.b.take_events(), []);
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Resolve {
            export: 1,
            result: ReturnResult::Ok(wire_single(CapDescriptor::SenderHosted(2)))
        }]
    );
    assert_eq!(
        pair.b.take_sent(),
        [
            Message::Release {
                export: 1,
                count: 1
            },
            Message::Release {
                export: 2,
                count: 1
            },
        ]
    );
    assert_eq!(
        (pair.a.take_events(), pair.b.take_events()),
        (vec![], vec![])
    );
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
}

#[test]
fn promise_resolves_to_a_reference() {
    let mut pair = Pair::new();
    pair.a_imports_b_obj(1);
    // B holds A's object, to resolve a promise to it.
    pair.a.session.send(tell(
        LocalTarget::Import(ImportId(1)),
        "take",
        OutPayload::single_cap(OutCap::Local(A_OBJ)),
    ));
    pair.drive();
    pair.b.take_events();
    pair.a.take_sent();
    let p = b_answers_with_a_promise(&mut pair, 2, 300);
    let home = b_answers_with_a_promise(&mut pair, 3, 302);
    assert_eq!((p, home), (ImportId(2), ImportId(3)));

    // To one of B's objects: A imports it.
    pair.b
        .session
        .resolve_export(&300, Ok(OutPayload::single_cap(OutCap::Local(301))));
    // To A's own object: it comes home as the local object.
    pair.b.session.resolve_export(
        &302,
        Ok(OutPayload::single_cap(OutCap::Import(ImportId(1)))),
    );
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [
            Message::Resolve {
                export: 2,
                result: ReturnResult::Ok(wire_single(CapDescriptor::SenderHosted(4)))
            },
            Message::Resolve {
                export: 3,
                result: ReturnResult::Ok(wire_single(CapDescriptor::ReceiverHosted(1)))
            },
        ]
    );
    assert_eq!(
        pair.a.take_events(),
        [
            Seen::Resolved {
                import: p,
                result: Ok(in_single(InCap::Import(ImportId(4))))
            },
            Seen::Resolved {
                import: home,
                result: Ok(in_single(InCap::Local(A_OBJ)))
            },
        ]
    );
    assert_eq!(pair.stats(), (stats(0, 0, 4, 1), stats(0, 0, 1, 4)));
    for i in [1, 2, 3, 4] {
        pair.a.session.drop_import(ImportId(i));
    }
    pair.b.session.drop_import(ImportId(1));
    pair.drive();
    assert_eq!(pair.stats(), (zero(), zero()));
}

#[test]
fn promise_resolves_to_an_error() {
    let mut pair = Pair::new();
    pair.a_imports_b_obj(1);
    let p = b_answers_with_a_promise(&mut pair, 2, 300);
    let err = Broken::failed("the disk is full");
    pair.b.session.resolve_export(&300, Err(err.clone()));
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [Message::Resolve {
            export: 2,
            result: ReturnResult::Err(WireBroken {
                kind: "failed".to_owned(),
                message: "the disk is full".to_owned()
            })
        }]
    );
    assert_eq!(
        pair.a.take_events(),
        [Seen::Resolved {
            import: p,
            result: Err(err)
        }]
    );
    // The promise is still an import until A lets go of it.
    assert_eq!(pair.stats(), (stats(0, 0, 2, 0), stats(0, 0, 0, 2)));
    pair.a.session.drop_import(p);
    pair.drive();
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
}

#[test]
fn messages_to_a_promise_keep_following_it_after_it_resolves() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(LocalTarget::Import(obj), "later", no_args(), 2)
    });
    let answer = LocalTarget::Answer(QuestionId(2));
    let m = |n: u8| OutPayload::data(data(&n));
    // m1: pipelined on the answer before B answered it.
    pair.a.session.send(tell(answer, "m", m(1)));
    pair.drive();
    pair.b.take_events();
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Promise(300))),
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(300, "m", in_data(data(&1u8)), None)]
    );
    pair.pump(B);
    assert_eq!(
        pair.a.take_events(),
        [returned(2, Ok(in_single(InCap::Promise(ImportId(2)))))]
    );
    let promise = LocalTarget::Import(ImportId(2));
    // m2, m3: after the return, through the answer and through the promise itself.
    pair.a.session.send(tell(answer, "m", m(2)));
    pair.a.session.send(tell(promise, "m", m(3)));
    pair.pump(A);
    // B's promise settles to a new object; m4, m5 cross its resolve.
    pair.b
        .session
        .resolve_export(&300, Ok(OutPayload::single_cap(OutCap::Local(301))));
    pair.a.session.send(tell(answer, "m", m(4)));
    pair.a.session.send(tell(promise, "m", m(5)));
    pair.pump(B);
    assert_eq!(
        pair.a.take_events(),
        [Seen::Resolved {
            import: ImportId(2),
            result: Ok(in_single(InCap::Import(ImportId(3))))
        }]
    );
    // m6, m7: after A learned the resolution.
    pair.a.session.send(tell(answer, "m", m(6)));
    pair.a.session.send(tell(promise, "m", m(7)));
    pair.drive();
    // Every message went to the promise's export, never straight to the resolution...
    let targets: Vec<Target> = pair
        .a
        .take_sent()
        .into_iter()
        .filter_map(|msg| match msg {
            Message::Deliver { target, .. } => Some(target),
            _ => None,
        })
        .collect();
    assert_eq!(
        targets,
        [
            Target::Export(1),
            Target::Answer(2),
            Target::Export(2),
            Target::Export(2),
            Target::Export(2),
            Target::Export(2),
            Target::Export(2),
            Target::Export(2),
        ]
    );
    // ... and reached B's promise object in the order A sent them.
    assert_eq!(
        pair.b.take_events(),
        (2..=7u8)
            .map(|n| delivered(300, "m", in_data(data(&n)), None))
            .collect::<Vec<_>>()
    );
}

#[test]
fn return_of_own_object_forwards_through_the_answer_and_defers_finish() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(
            LocalTarget::Import(obj),
            "echo",
            OutPayload::single_cap(OutCap::Local(A_OBJ)),
            2,
        )
    });
    let answer = LocalTarget::Answer(QuestionId(2));
    pair.a
        .session
        .send(tell(answer, "before", OutPayload::data(data(&1u8))));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [
            Message::Deliver {
                target: Target::Export(1),
                method: "echo".to_owned(),
                payload: wire_single(CapDescriptor::SenderHosted(1)),
                question: Some(2),
            },
            Message::Deliver {
                target: Target::Answer(2),
                method: "before".to_owned(),
                payload: Payload {
                    data: data(&1u8),
                    caps: vec![]
                },
                question: None,
            },
        ]
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(
            B_OBJ,
            "echo",
            in_single(InCap::Import(ImportId(1))),
            Some(2)
        )]
    );
    assert_eq!(pair.stats(), (stats(1, 0, 1, 1), stats(0, 1, 1, 1)));

    // B answers with the reference A gave it, and lets go of its own handle on it (as a
    // runtime does once the method returned). The queued call is handed to B's
    // runtime to forward to A.
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Import(ImportId(1)))),
    );
    pair.b.session.drop_import(ImportId(1));
    pair.b.collect_events();
    assert_eq!(
        pair.b.events,
        [Seen::Forward {
            target: InCap::Import(ImportId(1)),
            method: "before".to_owned(),
            payload: in_data(data(&1u8)),
            answer: None,
        }]
    );
    let mut b_q = 0;
    assert_eq!(forward_to_a(&mut pair, &mut b_q), []);
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [
            Message::Return {
                question: 2,
                result: ReturnResult::Ok(wire_single(CapDescriptor::ReceiverHosted(1)))
            },
            Message::Deliver {
                target: Target::Export(1),
                method: "before".to_owned(),
                payload: Payload {
                    data: data(&1u8),
                    caps: vec![]
                },
                question: None,
            },
        ]
    );
    assert_eq!(
        pair.a.take_events(),
        [
            returned(2, Ok(in_single(InCap::Local(A_OBJ)))),
            delivered(A_OBJ, "before", in_data(data(&1u8)), None),
        ]
    );
    // No finish: A still has a pipelined handle, and its sends keep going to B.
    assert_eq!(pair.a.take_sent(), []);

    pair.a
        .session
        .send(ask(answer, "after", OutPayload::data(data(&2u8)), 3));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Deliver {
            target: Target::Answer(2),
            method: "after".to_owned(),
            payload: Payload {
                data: data(&2u8),
                caps: vec![]
            },
            question: Some(3),
        }]
    );
    assert_eq!(forward_to_a(&mut pair, &mut b_q), []);
    pair.drive();
    assert_eq!(
        pair.a.take_events(),
        [delivered(A_OBJ, "after", in_data(data(&2u8)), Some(1))]
    );
    pair.a
        .session
        .answer(AnswerId(1), Ok(OutPayload::data(data(&5u8))));
    pair.drive();
    assert_eq!(pair.b.take_events(), [returned(3, Ok(in_data(data(&5u8))))]);
    pair.b
        .session
        .answer(AnswerId(3), Ok(OutPayload::data(data(&5u8))));
    pair.drive();
    assert_eq!(pair.a.take_events(), [returned(3, Ok(in_data(data(&5u8))))]);
    assert_eq!(pair.stats(), (stats(1, 0, 1, 1), stats(0, 1, 1, 1)));
    pair.a.take_sent();
    pair.b.take_sent();

    // The last pipelined handle goes: now the finish, and B frees the answer and the
    // import it held.
    pair.a.session.drop_question_ref(QuestionId(2));
    pair.drive();
    assert_eq!(pair.a.take_sent(), [Message::Finish { question: 2 }]);
    assert_eq!(
        pair.b.take_sent(),
        [Message::Release {
            export: 1,
            count: 1
        }]
    );
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
    assert_eq!(
        (pair.a.take_events(), pair.b.take_events()),
        (vec![], vec![])
    );
}

/// One step of [`own_object_race`].
#[derive(Debug, Clone, Copy)]
enum Race {
    /// A sends a one-way call with this number on the answer.
    Send(u8),
    /// Everything A has queued reaches B.
    PumpA,
    /// Everything B has queued reaches A.
    PumpB,
    /// B answers with A's own object (and drops its handle on it).
    Answer,
}

/// A pipelines one-way calls on an answer that B resolves to A's own object, the
/// frames interleaving as `steps` say; B's runtime forwards what it is handed at once.
/// Every call reaches A's object, in the order sent.
fn own_object_race(steps: &[Race]) {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(
            LocalTarget::Import(obj),
            "echo",
            OutPayload::single_cap(OutCap::Local(A_OBJ)),
            2,
        )
    });
    pair.pump(A);
    assert_eq!(pair.b.take_events().len(), 1);
    pair.a.take_sent();
    let mut sent = Vec::new();
    let mut b_q = 0;
    for &step in steps {
        match step {
            Race::Send(n) => {
                pair.a.session.send(tell(
                    LocalTarget::Answer(QuestionId(2)),
                    "m",
                    OutPayload::data(data(&n)),
                ));
                sent.push(n);
            }
            Race::PumpA => pair.pump(A),
            Race::PumpB => pair.pump(B),
            Race::Answer => {
                pair.b.session.answer(
                    AnswerId(2),
                    Ok(OutPayload::single_cap(OutCap::Import(ImportId(1)))),
                );
                pair.b.session.drop_import(ImportId(1));
            }
        }
        assert_eq!(forward_to_a(&mut pair, &mut b_q), [], "{steps:?}");
    }
    pair.drive();
    assert_eq!(forward_to_a(&mut pair, &mut b_q), [], "{steps:?}");
    pair.drive();
    let mut events = pair.a.take_events();
    assert_eq!(
        events.first(),
        Some(&returned(2, Ok(in_single(InCap::Local(A_OBJ))))),
        "{steps:?}"
    );
    events.remove(0);
    assert_eq!(
        events,
        sent.iter()
            .map(|n| delivered(A_OBJ, "m", in_data(data(n)), None))
            .collect::<Vec<_>>(),
        "{steps:?}"
    );
    // Every call went through the answer; the finish waits for the handle.
    assert!(
        pair.a.take_sent().iter().all(|m| match m {
            Message::Deliver { target, .. } => *target == Target::Answer(2),
            _ => !matches!(m, Message::Finish { question: 2 }),
        }),
        "{steps:?}"
    );
    pair.a.session.drop_question_ref(QuestionId(2));
    pair.drive();
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
}

#[test]
fn pipelined_calls_crossing_a_return_of_own_object_stay_in_order() {
    use Race::{Answer, PumpA, PumpB, Send};
    // m1 waits on the answer; m2 is sent before the return arrives and reaches B after
    // the answer; m3 is sent after A has the return.
    own_object_race(&[Send(1), PumpA, Answer, Send(2), PumpB, Send(3), PumpA]);
    // The return reaches A before m1 reaches B; m2 follows the return.
    own_object_race(&[Answer, Send(1), PumpB, Send(2), PumpA]);
    // m1 reaches B (and is forwarded) before the return reaches A, while m2 is on its
    // way; m3 is sent when the return and the forwarded m1 are in.
    own_object_race(&[
        Answer,
        Send(1),
        PumpA,
        Send(2),
        PumpB,
        Send(3),
        PumpA,
        PumpB,
    ]);
}

/// B exports three objects to A (one of them twice, one a promise), then its session
/// closes as `close` does; returns B's events.
fn exports_lost_when(close: impl FnOnce(&mut Pair)) -> Vec<Seen> {
    let mut pair = Pair::new();
    pair.a_imports_b_obj(1);
    pair.a_imports_b_obj(2);
    b_answers_with_a_promise(&mut pair, 3, 300);
    pair.a
        .session
        .send(ask(LocalTarget::Import(ImportId(1)), "make", no_args(), 4));
    pair.drive();
    pair.b.take_events();
    pair.b
        .session
        .answer(AnswerId(4), Ok(OutPayload::single_cap(OutCap::Local(301))));
    pair.drive();
    pair.a.take_events();
    assert_eq!(pair.stats(), (stats(0, 0, 3, 0), stats(0, 0, 0, 3)));
    close(&mut pair);
    pair.drive();
    assert!(pair.b.session.is_closed());
    assert_eq!(pair.b.session.stats(), zero());
    // A exported nothing: it hears of no lost client, whatever happened.
    assert!(
        pair.a
            .take_all_events()
            .iter()
            .all(|e| matches!(e, Seen::Closed(_))),
    );
    pair.b.take_all_events()
}

#[test]
fn exports_lost_lists_each_exported_object_once_when_the_session_closes() {
    let lost = || Seen::Lost(vec![B_OBJ, 300, 301]);
    assert_eq!(
        exports_lost_when(|p| p.a.session.abort("bye")),
        [
            lost(),
            Seen::Closed(CloseReason::PeerAborted("bye".to_owned()))
        ]
    );
    assert_eq!(
        exports_lost_when(|p| p.b.session.handle_connection_lost("EOF")),
        [
            lost(),
            Seen::Closed(CloseReason::ConnectionLost("EOF".to_owned()))
        ]
    );
    assert_eq!(
        exports_lost_when(|p| p.b.session.handle_message(Message::Finish { question: 77 })),
        [
            lost(),
            Seen::Closed(CloseReason::Violation(Violation::UnknownAnswer(AnswerId(
                77
            ))))
        ]
    );
    assert_eq!(
        exports_lost_when(|p| p.b.session.abort("shutdown")),
        [
            lost(),
            Seen::Closed(CloseReason::Local("shutdown".to_owned()))
        ]
    );
}

#[test]
fn no_exports_lost_when_nothing_is_exported_any_more() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.drop_import(obj);
    pair.drive();
    assert_eq!(pair.b.session.stats(), zero());
    pair.a.session.abort("bye");
    pair.drive();
    assert_eq!(
        pair.b.take_all_events(),
        [Seen::Closed(CloseReason::PeerAborted("bye".to_owned()))]
    );
    assert_eq!(
        pair.a.take_all_events(),
        [Seen::Closed(CloseReason::Local("bye".to_owned()))]
    );
}

#[test]
fn drops_after_held_sends_apply_after_them() {
    let lb = Limits {
        max_inbound_questions: MIN_QUESTIONS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let n = MIN_QUESTIONS as u64;
    for q in 2..2 + n {
        pair.a
            .session
            .send(ask(LocalTarget::Import(obj), "fill", no_args(), q));
    }
    // Held: a question with a pipelined handle, a call on that promise, a call on the
    // import; then the promise's handle and the import are dropped. The drops must not
    // overtake the sends, or those would break with "released".
    let make = 2 + n;
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(LocalTarget::Import(obj), "make", no_args(), make)
    });
    pair.a.session.send(tell(
        LocalTarget::Answer(QuestionId(make)),
        "use",
        no_args(),
    ));
    pair.a
        .session
        .send(tell(LocalTarget::Import(obj), "last", no_args()));
    pair.a.session.drop_question_ref(QuestionId(make));
    pair.a.session.drop_import(obj);
    assert_eq!(pair.a.session.stats().held, 5);
    pair.drive();
    assert_eq!(pair.a.take_events(), []);
    assert_eq!(pair.b.take_events().len(), MIN_QUESTIONS);
    pair.a.take_sent();

    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&()))));
    pair.drive();
    let to = |target, method: &str, question| Message::Deliver {
        target,
        method: method.to_owned(),
        payload: Payload {
            data: data(&()),
            caps: vec![],
        },
        question,
    };
    assert_eq!(
        pair.a.take_sent(),
        [
            Message::Finish { question: 2 },
            to(Target::Export(1), "make", Some(make)),
            to(Target::Answer(make), "use", None),
            to(Target::Export(1), "last", None),
            Message::Release {
                export: 1,
                count: 1
            },
        ]
    );
    assert_eq!(pair.a.session.stats().held, 0);
    assert_eq!(
        pair.b.take_events(),
        [
            delivered(B_OBJ, "make", in_data(data(&())), Some(make)),
            delivered(B_OBJ, "last", in_data(data(&())), None),
        ]
    );
    // B's export stays while it answers the questions A asked on it.
    assert_eq!(pair.b.session.stats(), stats(0, n as usize, 0, 0));
    pair.b.session.answer(
        AnswerId(make),
        Ok(OutPayload::single_cap(OutCap::Local(301))),
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(301, "use", in_data(data(&())), None)]
    );
    for q in 3..2 + n {
        pair.b
            .session
            .answer(AnswerId(q), Ok(OutPayload::data(data(&()))));
    }
    pair.drive();
    // The returns of all n + 1 questions asked on the import.
    let events = pair.a.take_events();
    assert_eq!(events.len(), MIN_QUESTIONS + 1);
    assert!(events.contains(&returned(
        u32::try_from(make).unwrap(),
        Ok(in_single(InCap::Import(ImportId(2))))
    )));
    pair.a.session.drop_import(ImportId(2));
    pair.drive();
    assert_eq!(pair.stats(), (zero(), zero()));
}

#[test]
fn result_with_too_many_caps_breaks_with_too_large() {
    let lb = Limits {
        max_caps_per_message: 2,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let promise = b_answers_with_a_promise(&mut pair, 2, 300);
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(LocalTarget::Import(obj), "many", no_args(), 3)
    });
    pair.drive();
    pair.b.take_events();
    let three = OutPayload {
        data: data(&()),
        caps: vec![OutCap::Local(301), OutCap::Local(302), OutCap::Local(303)],
    };
    pair.b.session.answer(AnswerId(3), Ok(three.clone()));
    pair.b.session.resolve_export(&300, Ok(three));
    pair.drive();
    let events = pair.a.take_events();
    let [
        Seen::Return {
            resolver: 3,
            result: Err(b),
        },
        Seen::Resolved {
            import,
            result: Err(b2),
        },
    ] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(
        (b.kind(), b2.kind(), *import),
        (BrokenKind::TooLarge, BrokenKind::TooLarge, promise)
    );
    // Nothing of the result was exported, and the session goes on.
    assert!(!pair.a.session.is_closed() && !pair.b.session.is_closed());
    assert_eq!(pair.b.session.stats(), stats(0, 0, 0, 2));
}

#[test]
fn too_many_caps_in_a_return_is_a_violation() {
    let lb = Limits {
        max_caps_per_message: 2,
        ..Limits::default()
    };
    let mut pair = Pair::victim(Limits::default(), lb);
    // A answers B's pending bootstrap with three references.
    pair.a.session.answer(
        AnswerId(900),
        Ok(OutPayload {
            data: data(&()),
            caps: vec![OutCap::Local(1), OutCap::Local(2), OutCap::Local(3)],
        }),
    );
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::TooManyCaps { limit: 2 }),
        []
    );
}

#[test]
fn too_many_caps_in_a_resolve_is_a_violation() {
    let lb = Limits {
        max_caps_per_message: 2,
        ..Limits::default()
    };
    let mut pair = Pair::victim(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "take",
        OutPayload::single_cap(OutCap::Promise(A_OBJ)),
    ));
    pair.drive();
    assert_eq!(pair.b.take_events().len(), 1);
    pair.a.session.resolve_export(
        &A_OBJ,
        Ok(OutPayload {
            data: data(&()),
            caps: vec![OutCap::Local(1), OutCap::Local(2), OutCap::Local(3)],
        }),
    );
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::TooManyCaps { limit: 2 }),
        []
    );
}

// ---- regressions: bugs found while writing this suite ----

#[test]
fn pipelined_call_on_a_result_that_failed_to_export_breaks_too() {
    // B may export one object. It already exports B_OBJ, so a result carrying a second
    // object cannot be exported: the return says too_large, and a call pipelined on it
    // must break the same way rather than reach the object the asker never got.
    let lb = Limits {
        max_exports: 1,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    pair.b.objects.insert([3; 32], 300);
    pair.a_imports_b_obj(1);
    pair.a
        .session
        .bootstrap(QuestionId(2), swiss(3), Some(2), 1);
    pair.a
        .session
        .send(ask(LocalTarget::Answer(QuestionId(2)), "use", no_args(), 3));
    pair.drive();
    pair.b.serve_bootstraps();
    pair.drive();
    assert_eq!(pair.b.take_events(), []);
    let events = pair.a.take_events();
    let [
        Seen::Return {
            resolver: 2,
            result: Err(b),
        },
        Seen::Return {
            resolver: 3,
            result: Err(b3),
        },
    ] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(b.kind(), BrokenKind::TooLarge);
    assert_eq!(b3, b);
    assert_eq!(pair.stats(), (stats(1, 0, 1, 0), stats(0, 0, 0, 1)));
}

#[test]
fn same_new_reference_twice_in_one_payload_counts_as_one_import() {
    let lb = Limits {
        max_imports: 1,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "pair",
        OutPayload {
            data: data(&()),
            caps: vec![OutCap::Local(A_OBJ), OutCap::Local(A_OBJ)],
        },
    ));
    pair.drive();
    assert!(!pair.b.session.is_closed());
    assert_eq!(
        pair.b.take_events(),
        [delivered(
            B_OBJ,
            "pair",
            InPayload {
                data: data(&()),
                caps: vec![InCap::Import(ImportId(1)), InCap::Import(ImportId(1))]
            },
            None
        )]
    );
    assert_eq!(pair.stats(), (stats(0, 0, 1, 1), stats(0, 0, 1, 1)));
    pair.b.session.drop_import(ImportId(1));
    pair.b.session.drop_import(ImportId(1));
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [Message::Release {
            export: 1,
            count: 2
        }]
    );
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
}

#[test]
fn same_new_object_twice_in_one_payload_counts_as_one_export() {
    let la = Limits {
        max_exports: 1,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(la, Limits::default());
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(ask(
        LocalTarget::Import(obj),
        "pair",
        OutPayload {
            data: data(&()),
            caps: vec![OutCap::Local(A_OBJ), OutCap::Local(A_OBJ)],
        },
        2,
    ));
    assert_eq!(pair.a.take_events(), []);
    pair.drive();
    let Message::Deliver { payload, .. } = &pair.a.take_sent()[0] else {
        panic!()
    };
    assert_eq!(
        payload.caps,
        [
            CapDescriptor::SenderHosted(1),
            CapDescriptor::SenderHosted(1)
        ]
    );
    assert_eq!(pair.stats(), (stats(1, 0, 1, 1), stats(0, 1, 1, 1)));
}

// ---- regressions found while specifying references between peers ----

#[test]
fn regression_promise_import_in_an_unwanted_return_is_released() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    let call = Call {
        target: LocalTarget::Import(obj),
        method: "m".into(),
        payload: no_args(),
        question: Some(QuestionId(5)),
        resolver: None,
        pipeline_refs: 0,
    };
    pair.a.session.send(call);
    pair.drive();
    let evs = pair.b.take_events();
    assert_eq!(evs.len(), 1, "{evs:?}");
    pair.b.session.answer(
        AnswerId(5),
        Ok(OutPayload::single_cap(OutCap::Promise(300))),
    );
    pair.drive();
    assert_eq!(
        pair.stats(),
        (stats(0, 0, 1, 0), stats(0, 0, 0, 1)),
        "promise import leaked"
    );
}

#[test]
fn regression_resolve_of_a_promise_that_settled_while_held_is_sent() {
    let lb = Limits {
        max_inbound_questions: MIN_QUESTIONS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let n = MIN_QUESTIONS as u64;
    for q in 2..3 + n {
        pair.a
            .session
            .send(ask(LocalTarget::Import(obj), "fill", no_args(), q));
    }
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "take_promise",
        OutPayload::single_cap(OutCap::Promise(300)),
    ));
    pair.drive();
    assert_eq!(pair.a.session.stats().held, 2);
    // The promise settles while the send carrying it is held.
    pair.a
        .session
        .resolve_export(&300, Ok(OutPayload::data(data(&7u8))));
    pair.drive();
    // One answer makes room: the held send goes out.
    pair.b.take_events();
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&()))));
    pair.drive();
    let sent = pair.a.take_sent();
    let resolves = sent
        .iter()
        .filter(|m| matches!(m, Message::Resolve { .. }))
        .count();
    let promise_caps = sent.iter().filter(|m| matches!(m, Message::Deliver { payload, .. } if payload.caps == [CapDescriptor::SenderPromise(1)])).count();
    assert_eq!((promise_caps, resolves), (1, 1), "resolve lost");
}

#[test]
fn regression_deferred_finishes_count_against_the_peers_question_limit() {
    let lb = Limits {
        max_inbound_questions: MIN_QUESTIONS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    // A passes its own object and pipelines on the answer; B returns it: deferred finish.
    pair.a.session.send(Call {
        target: LocalTarget::Import(obj),
        method: "echo".into(),
        payload: OutPayload::single_cap(OutCap::Local(A_OBJ)),
        question: Some(QuestionId(2)),
        resolver: None,
        pipeline_refs: 1,
    });
    pair.drive();
    let evs = pair.b.take_events();
    assert_eq!(evs.len(), 1, "{evs:?}");
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Import(ImportId(1)))),
    );
    pair.drive();
    // Now MIN_QUESTIONS more questions: A thinks the peer has room for all.
    for q in 3..3 + MIN_QUESTIONS as u64 {
        pair.a
            .session
            .send(ask(LocalTarget::Import(obj), "fill", no_args(), q));
    }
    pair.drive();
    assert!(
        !pair.b.session.is_closed(),
        "B aborted: {:?}",
        pair.b.take_events().last()
    );
}

#[test]
fn regression_answer_resolved_to_the_askers_object_keeps_its_import() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        target: LocalTarget::Import(obj),
        method: "echo".into(),
        payload: OutPayload::single_cap(OutCap::Local(A_OBJ)),
        question: Some(QuestionId(2)),
        resolver: None,
        pipeline_refs: 1,
    });
    pair.drive();
    pair.b.take_events();
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Import(ImportId(1)))),
    );
    // B's runtime drops the arguments (its only handle on the import).
    pair.b.session.drop_import(ImportId(1));
    pair.drive();
    pair.a.session.send(ask(
        LocalTarget::Answer(QuestionId(2)),
        "hear",
        no_args(),
        3,
    ));
    pair.drive();
    // B forwards the call back to A's object, through the import its answer holds.
    let b_ev = pair.b.take_events();
    assert!(
        matches!(
            &b_ev[..],
            [Seen::Forward { target: InCap::Import(ImportId(1)), method, answer: Some(AnswerId(3)), .. }]
                if method == "hear"
        ),
        "not forwarded: {b_ev:?}"
    );
    assert_eq!(pair.a.take_events(), []);
}

// ---- regressions found by the tests of references between peers ----

#[test]
fn answer_resolved_to_a_peers_reference_keeps_it_until_finish() {
    // B answers with a reference A gave it and drops its own handle, as a runtime
    // does once the method returned. A keeps sending to the answer (its own object came
    // home, so the finish is deferred); B must still hold the import to forward them,
    // rather than lose one-way calls or break questions with "released".
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(
            LocalTarget::Import(obj),
            "echo",
            OutPayload::single_cap(OutCap::Local(A_OBJ)),
            2,
        )
    });
    pair.drive();
    pair.b.take_events();
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Import(ImportId(1)))),
    );
    pair.b.session.drop_import(ImportId(1));
    pair.drive();
    assert_eq!(pair.b.session.stats(), stats(0, 1, 1, 1));
    pair.a.session.send(ask(
        LocalTarget::Answer(QuestionId(2)),
        "late",
        no_args(),
        3,
    ));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [Seen::Forward {
            target: InCap::Import(ImportId(1)),
            method: "late".to_owned(),
            payload: in_data(data(&())),
            answer: Some(AnswerId(3)),
        }]
    );
    // The forwarded delivery's handle, then the finish: the answer's own handle goes
    // last, and with it the import.
    pair.b.session.drop_import(ImportId(1));
    pair.b
        .session
        .answer(AnswerId(3), Ok(OutPayload::data(data(&()))));
    pair.a.session.drop_question_ref(QuestionId(2));
    pair.b.take_sent();
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [
            Message::Return {
                question: 3,
                result: ReturnResult::Ok(Payload {
                    data: data(&()),
                    caps: vec![]
                })
            },
            Message::Release {
                export: 1,
                count: 1
            },
        ]
    );
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
}

#[test]
fn dropped_payloads_release_the_promises_in_them() {
    // A payload the session drops itself (a resolve for a promise already released, a
    // result nobody waits for, the arguments of a call that broke) holds a handle on
    // each promise in it, as on each object.
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "take",
        OutPayload::single_cap(OutCap::Promise(A_OBJ)),
    ));
    pair.drive();
    pair.b.take_events();
    pair.b.session.drop_import(ImportId(1));
    pair.a
        .session
        .resolve_export(&A_OBJ, Ok(OutPayload::single_cap(OutCap::Promise(201))));
    pair.drive();
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));

    // A result with a promise, for a question whose resolver and handles are gone.
    pair.a.session.send(Call {
        resolver: None,
        ..ask(LocalTarget::Import(obj), "later", no_args(), 2)
    });
    // A call with a promise in its arguments, pipelined on a promise that breaks.
    pair.a
        .session
        .bootstrap(QuestionId(3), swiss(UNKNOWN), None, 1);
    pair.a.session.send(tell(
        LocalTarget::Answer(QuestionId(3)),
        "take",
        OutPayload::single_cap(OutCap::Promise(202)),
    ));
    pair.drive();
    pair.b.serve_bootstraps();
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "later", in_data(data(&())), Some(2))]
    );
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Promise(300))),
    );
    pair.a.session.drop_question_ref(QuestionId(3));
    pair.drive();
    assert_eq!(
        (pair.a.take_events(), pair.b.take_events()),
        (vec![], vec![])
    );
    assert!(!pair.a.session.is_closed() && !pair.b.session.is_closed());
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
}

#[test]
fn deferred_finishes_count_against_the_peers_question_limit() {
    // Each answer B holds counts against its limit until A's finish arrives. A finish
    // that A defers (its own object came back, and A still sends to the answer) must
    // keep counting at A too, or A's next questions pass B's limit and B aborts.
    let lb = Limits {
        max_inbound_questions: MIN_QUESTIONS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let n = MIN_QUESTIONS as u64;
    for q in 2..2 + n {
        pair.a.session.send(Call {
            pipeline_refs: 1,
            ..ask(
                LocalTarget::Import(obj),
                "echo",
                OutPayload::single_cap(OutCap::Local(A_OBJ)),
                q,
            )
        });
    }
    pair.drive();
    assert_eq!(pair.b.take_events().len(), MIN_QUESTIONS);
    for q in 2..2 + n {
        pair.b.session.answer(
            AnswerId(q),
            Ok(OutPayload::single_cap(OutCap::Import(ImportId(1)))),
        );
    }
    pair.b.session.drop_import(ImportId(1));
    pair.drive();
    assert_eq!(pair.a.take_events().len(), MIN_QUESTIONS);
    assert_eq!(pair.b.session.stats(), stats(0, MIN_QUESTIONS, 1, 1));
    // B still holds n answers: one more question must wait.
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "next", no_args(), 2 + n));
    pair.drive();
    assert!(!pair.b.session.is_closed());
    assert_eq!(pair.a.session.stats().held, 1);
    assert_eq!(pair.b.take_events(), []);
    // Letting go of one promise sends its finish, which makes room.
    pair.a.take_sent();
    pair.a.session.drop_question_ref(QuestionId(2));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [
            Message::Finish { question: 2 },
            Message::Deliver {
                target: Target::Export(1),
                method: "next".to_owned(),
                payload: Payload {
                    data: data(&()),
                    caps: vec![]
                },
                question: Some(2 + n),
            },
        ]
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "next", in_data(data(&())), Some(2 + n))]
    );
    assert_eq!(pair.a.session.stats().held, 0);
    assert!(!pair.b.session.is_closed());
}

#[test]
fn promise_settled_while_its_call_waits_on_an_answer_is_reported_after_the_call() {
    // A pipelines a call carrying a promise of A's on a question B has not answered,
    // then settles the promise. B's runtime first hears of the promise when the call is
    // delivered, so that is when it must learn of the settlement: after the delivery,
    // not before (a settlement for a reference it does not know, which it would drop).
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(LocalTarget::Import(obj), "slow", no_args(), 2)
    });
    pair.a.session.send(tell(
        LocalTarget::Answer(QuestionId(2)),
        "take",
        OutPayload::single_cap(OutCap::Promise(A_OBJ)),
    ));
    pair.a
        .session
        .resolve_export(&A_OBJ, Ok(OutPayload::single_cap(OutCap::Local(201))));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "slow", in_data(data(&())), Some(2))]
    );
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::single_cap(OutCap::Local(301))));
    assert_eq!(
        pair.b.take_events(),
        [
            delivered(301, "take", in_single(InCap::Promise(ImportId(1))), None),
            Seen::Resolved {
                import: ImportId(1),
                result: Ok(in_single(InCap::Import(ImportId(2))))
            },
        ]
    );
    pair.b.session.drop_import(ImportId(1));
    pair.b.session.drop_import(ImportId(2));
    pair.a.session.drop_question_ref(QuestionId(2));
    pair.drive();
    pair.a.take_events();
    pair.a.session.drop_import(ImportId(2));
    pair.drive();
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
}

#[test]
fn settlement_of_a_promise_the_runtime_let_go_of_is_not_reported() {
    // B's runtime dropped its handles on A's promise; B's answer still holds the import
    // (so A's calls on it are forwarded). The settlement concerns nobody at B, and it
    // is not reported. Handed out again (as the settled reference it now is), the
    // import is reported settled right after.
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(
            LocalTarget::Import(obj),
            "echo",
            OutPayload::single_cap(OutCap::Promise(A_OBJ)),
            2,
        )
    });
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [delivered(
            B_OBJ,
            "echo",
            in_single(InCap::Promise(ImportId(1))),
            Some(2)
        )]
    );
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Import(ImportId(1)))),
    );
    pair.b.session.drop_import(ImportId(1));
    pair.a
        .session
        .resolve_export(&A_OBJ, Ok(OutPayload::data(data(&1u8))));
    pair.drive();
    assert_eq!(pair.b.take_events(), []);
    assert_eq!(pair.b.session.stats(), stats(0, 1, 1, 1));
    pair.a
        .session
        .send(tell(LocalTarget::Answer(QuestionId(2)), "poke", no_args()));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [
            Seen::Forward {
                target: InCap::Import(ImportId(1)),
                method: "poke".to_owned(),
                payload: in_data(data(&())),
                answer: None,
            },
            Seen::Resolved {
                import: ImportId(1),
                result: Ok(in_data(data(&1u8)))
            },
        ]
    );
}

#[test]
fn promise_settled_while_the_send_carrying_it_is_held_resolves_after_it() {
    // Flow control holds a send that carries a promise of A's; A's runtime settles the
    // promise (to another promise, which it settles too) before the send goes out. The
    // promise is not exported yet, but its settlement must not be lost: it follows the
    // send, or B would import a promise that never settles.
    let lb = Limits {
        max_inbound_questions: MIN_QUESTIONS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let n = MIN_QUESTIONS as u64;
    for q in 2..2 + n {
        pair.a
            .session
            .send(ask(LocalTarget::Import(obj), "fill", no_args(), q));
    }
    // One question too many is held, and the call after it.
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "wait", no_args(), 2 + n));
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "take",
        OutPayload::single_cap(OutCap::Promise(A_OBJ)),
    ));
    pair.a
        .session
        .resolve_export(&A_OBJ, Ok(OutPayload::single_cap(OutCap::Promise(201))));
    pair.a
        .session
        .resolve_export(&201, Ok(OutPayload::data(data(&1u8))));
    // The two sends are held; the settlements wait with them.
    assert_eq!(pair.a.session.stats().held, 2);
    pair.drive();
    assert_eq!(pair.b.take_events().len(), MIN_QUESTIONS);
    pair.a.take_sent();
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&()))));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [
            Message::Finish { question: 2 },
            Message::Deliver {
                target: Target::Export(1),
                method: "wait".to_owned(),
                payload: Payload {
                    data: data(&()),
                    caps: vec![]
                },
                question: Some(2 + n),
            },
            Message::Deliver {
                target: Target::Export(1),
                method: "take".to_owned(),
                payload: wire_single(CapDescriptor::SenderPromise(1)),
                question: None,
            },
            Message::Resolve {
                export: 1,
                result: ReturnResult::Ok(wire_single(CapDescriptor::SenderPromise(2)))
            },
            Message::Resolve {
                export: 2,
                result: ReturnResult::Ok(Payload {
                    data: data(&1u8),
                    caps: vec![]
                })
            },
        ]
    );
    assert_eq!(
        pair.b.take_events(),
        [
            delivered(B_OBJ, "wait", in_data(data(&())), Some(2 + n)),
            delivered(B_OBJ, "take", in_single(InCap::Promise(ImportId(1))), None),
            Seen::Resolved {
                import: ImportId(1),
                result: Ok(in_single(InCap::Promise(ImportId(2))))
            },
            Seen::Resolved {
                import: ImportId(2),
                result: Ok(in_data(data(&1u8)))
            },
        ]
    );
    // A promise that is in no held send and not exported is nobody's: nothing is sent.
    pair.a
        .session
        .resolve_export(&202, Ok(OutPayload::data(data(&2u8))));
    assert_eq!(pair.a.session.poll_transmit(), None);
    pair.b.session.drop_import(ImportId(1));
    pair.b.session.drop_import(ImportId(2));
    for q in 3..3 + n {
        pair.b
            .session
            .answer(AnswerId(q), Ok(OutPayload::data(data(&()))));
    }
    pair.drive();
    assert_eq!(pair.stats(), (stats(0, 0, 1, 0), stats(0, 0, 0, 1)));
}

// ---- property: random traffic through three vats ----

mod props {
    //! Vat B sits in the middle, with a session to A (sessions 0 and 1 of the world) and
    //! one to C (sessions 3 and 2). A and C call B's bootstrap object, pipeline on
    //! answers, pass their own objects, drop references; every vat answers what it is
    //! delivered with data, an error, a new object, a reference it holds or a new
    //! promise, and settles its promises at random. B's tiny runtime forwards calls the
    //! session hands it for A's or C's references (`Event::Deliver` to an import, when
    //! an answer resolved to one), and for references of the other pair through proxy
    //! objects. Frames move one at a time, FIFO per direction, in random order.

    use std::collections::{BTreeSet, HashMap};

    use proptest::prelude::*;

    use super::{CborLimits, Message, S, swiss};
    use crate::broken::{Broken, BrokenKind};
    use crate::limits::Limits;
    use crate::proto::{
        AnswerId, Call, Event, ImportId, InCap, InPayload, LocalTarget, MIN_QUESTIONS, OutCap,
        OutPayload, QuestionId, Session, SessionStats,
    };

    const VA: usize = 0;
    const VB: usize = 1;
    const VC: usize = 2;
    /// The vat each session belongs to: 0 is A's to B, 1 B's to A, 2 B's to C, 3 C's.
    const VAT_OF: [usize; 4] = [VA, VB, VB, VC];
    /// B's bootstrap object, under `swiss(1)`.
    const ROOT: u32 = 1;
    /// A message loop is a bug: no drive takes more steps than this.
    const STEP_LIMIT: usize = 100_000;

    fn peer_of(s: usize) -> usize {
        s ^ 1
    }

    fn limits() -> Limits {
        Limits {
            max_inbound_questions: MIN_QUESTIONS,
            ..Limits::default()
        }
    }

    /// Where a call's answer goes.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Reply {
        None,
        Answer(usize, AnswerId),
    }

    #[derive(Debug)]
    enum Settled {
        Object(u32),
        Data,
        Broken(Broken),
    }

    #[derive(Debug)]
    enum Obj {
        /// Records what it is delivered; calls wait in `pending` for an answer.
        Real,
        /// Forwards to a reference of one session; holds one handle on it.
        Proxy { sess: usize, import: ImportId },
        /// A local promise: buffers calls until it settles, then forwards them.
        Promise {
            exported: BTreeSet<usize>,
            pending: Vec<(Vec<u8>, Reply)>,
            settled: Option<Settled>,
        },
    }

    impl Obj {
        /// The object a settled promise forwards to.
        fn settled_to(&self) -> Option<u32> {
            match self {
                Obj::Promise {
                    settled: Some(Settled::Object(o)),
                    ..
                } => Some(*o),
                _ => None,
            }
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Target {
        Import(usize, ImportId),
        Answer(usize, QuestionId),
    }

    /// A reference user code holds (one handle, or one pipelined question ref).
    #[derive(Debug)]
    struct URef {
        vat: usize,
        id: u32,
        next_seq: u32,
        target: Target,
    }

    /// A call delivered to a real object, waiting for its answer.
    #[derive(Debug)]
    struct Pending {
        vat: usize,
        reply: Reply,
        /// The user references made from the call's arguments.
        args: Vec<u32>,
    }

    #[derive(Debug, Clone, Copy)]
    enum How {
        Data,
        Error,
        Object,
        Held(usize),
        Promise,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Bootstrap {
            c: bool,
        },
        /// `mode` 0: one-way; 1: a question; 2, 3: a question with a pipelined ref;
        /// 4: a question whose result nobody waits for. `cap` 1, 2: a new object of the
        /// sender's in the arguments; 3: a reference of the receiver's, going home;
        /// 4: a new promise of the sender's.
        Send {
            c: bool,
            r: usize,
            mode: u8,
            cap: u8,
        },
        Burst {
            c: bool,
            r: usize,
        },
        Answer {
            k: usize,
            how: How,
        },
        Resolve {
            k: usize,
            how: u8,
        },
        Drop {
            r: usize,
        },
        Pump {
            s: usize,
            n: usize,
        },
        Flush,
    }

    fn op() -> impl Strategy<Value = Op> {
        let how = prop_oneof![
            1 => Just(How::Data),
            1 => Just(How::Error),
            2 => Just(How::Object),
            4 => any::<usize>().prop_map(How::Held),
            2 => Just(How::Promise),
        ];
        prop_oneof![
            1 => any::<bool>().prop_map(|c| Op::Bootstrap { c }),
            8 => (any::<bool>(), any::<usize>(), 0..5u8, 0..5u8)
                .prop_map(|(c, r, mode, cap)| Op::Send { c, r, mode, cap }),
            2 => (any::<bool>(), any::<usize>()).prop_map(|(c, r)| Op::Burst { c, r }),
            8 => (any::<usize>(), how).prop_map(|(k, how)| Op::Answer { k, how }),
            2 => (any::<usize>(), 0..4u8).prop_map(|(k, how)| Op::Resolve { k, how }),
            2 => any::<usize>().prop_map(|r| Op::Drop { r }),
            8 => (0..4usize, 1..6usize).prop_map(|(s, n)| Op::Pump { s, n }),
            2 => Just(Op::Flush),
        ]
    }

    #[derive(Default)]
    struct World {
        s: Vec<S>,
        next_q: [u64; 4],
        objects: HashMap<u32, (usize, Obj)>,
        next_obj: u32,
        refs: Vec<URef>,
        next_ref: u32,
        /// Calls delivered to real objects, waiting for an answer.
        pending: Vec<Pending>,
        /// Resolvers of the questions user code asked.
        asked: HashMap<u32, usize>,
        /// Resolvers of forwarded questions, and where their answer goes.
        forwards: HashMap<u32, Reply>,
        next_resolver: u32,
        /// E-order: the last sequence number delivered per reference.
        last_seq: HashMap<u32, u32>,
        /// Handles the runtime holds, per (session, import).
        handles: HashMap<(usize, ImportId), u32>,
        /// Promises imported, per (session, import), and whether they settled.
        promises_in: HashMap<(usize, ImportId), bool>,
        /// Handles to let go of once the answer being given holds its own.
        pending_drops: Vec<(usize, ImportId)>,
    }

    impl World {
        fn new() -> World {
            let mut w = World {
                s: (0..4)
                    .map(|_| Session::new(limits(), std::time::Instant::now()))
                    .collect(),
                next_obj: ROOT,
                ..World::default()
            };
            assert_eq!(w.new_object(VB, Obj::Real), ROOT);
            w
        }

        fn new_object(&mut self, vat: usize, obj: Obj) -> u32 {
            let o = self.next_obj;
            self.next_obj += 1;
            self.objects.insert(o, (vat, obj));
            o
        }

        fn new_promise(&mut self, vat: usize) -> u32 {
            self.new_object(
                vat,
                Obj::Promise {
                    exported: BTreeSet::new(),
                    pending: Vec::new(),
                    settled: None,
                },
            )
        }

        fn resolver(&mut self) -> u32 {
            self.next_resolver += 1;
            self.next_resolver
        }

        fn question(&mut self, s: usize) -> QuestionId {
            self.next_q[s] += 1;
            QuestionId(self.next_q[s])
        }

        fn add_ref(&mut self, vat: usize, target: Target) {
            self.next_ref += 1;
            self.refs.push(URef {
                vat,
                id: self.next_ref,
                next_seq: 0,
                target,
            });
        }

        /// Index of the `k`-th reference of `vat`.
        fn pick_ref(&self, vat: usize, k: usize, imports_only: bool) -> Option<usize> {
            let mine: Vec<usize> = (0..self.refs.len())
                .filter(|&i| {
                    self.refs[i].vat == vat
                        && (!imports_only || matches!(self.refs[i].target, Target::Import(..)))
                })
                .collect();
            match k {
                _ if mine.is_empty() => None,
                usize::MAX => mine.last().copied(),
                _ => Some(mine[k % mine.len()]),
            }
        }

        /// A reference of `vat` to answer a call of session `s` with: by `h`, the
        /// call's own argument (an echo), one of `s`'s own (both go home, and the
        /// peer's calls on the answer are forwarded to them), or any.
        fn pick_held(&self, vat: usize, h: usize, s: usize, args: &[u32]) -> Option<usize> {
            let home: Vec<usize> = (0..self.refs.len())
                .filter(|&i| self.refs[i].vat == vat)
                .filter(|&i| matches!(self.refs[i].target, Target::Import(hs, _) if hs == s))
                .collect();
            let echo = home.iter().find(|&&i| args.contains(&self.refs[i].id));
            match (h % 3, echo) {
                (0, Some(&i)) => Some(i),
                (0 | 1, _) if !home.is_empty() => Some(home[h / 3 % home.len()]),
                _ => self.pick_ref(vat, h / 3, true),
            }
        }

        fn sess_of(vat: usize) -> usize {
            if vat == VA { 0 } else { 3 }
        }

        // ---- handles ----

        /// The session handed the runtime these references: count their handles.
        fn got(&mut self, s: usize, caps: &[InCap<u32>]) {
            for cap in caps {
                match *cap {
                    InCap::Import(i) => *self.handles.entry((s, i)).or_default() += 1,
                    InCap::Promise(i) => {
                        *self.handles.entry((s, i)).or_default() += 1;
                        self.promises_in.entry((s, i)).or_insert(false);
                    }
                    InCap::Local(o) => {
                        let (vat, _) = self.objects[&o];
                        assert_eq!(vat, VAT_OF[s], "object {o} came home to the wrong vat");
                    }
                }
            }
        }

        fn drop_handle(&mut self, s: usize, i: ImportId) {
            let n = self
                .handles
                .get_mut(&(s, i))
                .expect("a handle the runtime holds");
            assert!(*n > 0, "handle on {i} of session {s} dropped twice");
            *n -= 1;
            self.s[s].drop_import(i);
        }

        fn drop_caps(&mut self, s: usize, caps: Vec<InCap<u32>>) {
            for cap in caps {
                if let InCap::Import(i) | InCap::Promise(i) = cap {
                    self.drop_handle(s, i);
                }
            }
        }

        /// User code of `vat` keeps the references (each holds its handle); returns
        /// their ids.
        fn keep_caps(&mut self, vat: usize, s: usize, caps: Vec<InCap<u32>>) -> Vec<u32> {
            let mut ids = Vec::new();
            for cap in caps {
                if let InCap::Import(i) | InCap::Promise(i) = cap {
                    self.add_ref(vat, Target::Import(s, i));
                    ids.push(self.next_ref);
                }
            }
            ids
        }

        // ---- user code ----

        fn bootstrap(&mut self, vat: usize) {
            let s = Self::sess_of(vat);
            let q = self.question(s);
            let r = self.resolver();
            self.asked.insert(r, vat);
            self.add_ref(vat, Target::Answer(s, q));
            self.s[s].bootstrap(q, swiss(1), Some(r), 1);
        }

        fn send(&mut self, idx: usize, mode: u8, cap: u8) {
            let (ask, pipeline, wait) = (mode > 0, matches!(mode, 2 | 3), mode != 4);
            let r = &mut self.refs[idx];
            let (vat, seq) = (r.vat, r.next_seq);
            r.next_seq += 1;
            let mut tag = vec![u8::try_from(vat).unwrap()];
            tag.extend_from_slice(&r.id.to_be_bytes());
            tag.extend_from_slice(&seq.to_be_bytes());
            let (s, target) = match r.target {
                Target::Import(s, i) => (s, LocalTarget::Import(i)),
                Target::Answer(s, q) => (s, LocalTarget::Answer(q)),
            };
            let caps = match cap {
                1 | 2 => vec![OutCap::Local(self.new_object(vat, Obj::Real))],
                4 => {
                    let p = self.new_promise(vat);
                    vec![self.out_local(p, s)]
                }
                3 => match self.pick_ref(vat, seq as usize, true) {
                    Some(home) => match self.refs[home].target {
                        Target::Import(hs, i) if hs == s => vec![OutCap::Import(i)],
                        _ => vec![],
                    },
                    None => vec![],
                },
                _ => vec![],
            };
            let (question, resolver) = if ask {
                let q = self.question(s);
                if pipeline {
                    self.add_ref(vat, Target::Answer(s, q));
                }
                if !wait {
                    // A result nobody waits for: the session releases what it brings.
                    (Some(q), None)
                } else {
                    let r = self.resolver();
                    self.asked.insert(r, vat);
                    (Some(q), Some(r))
                }
            } else {
                (None, None)
            };
            self.s[s].send(Call {
                target,
                method: "m".to_owned(),
                payload: OutPayload { data: tag, caps },
                question,
                resolver,
                pipeline_refs: u32::from(ask && pipeline),
            });
        }

        fn drop_ref(&mut self, idx: usize) {
            match self.refs.remove(idx).target {
                Target::Import(s, i) => self.drop_handle(s, i),
                Target::Answer(s, q) => self.s[s].drop_question_ref(q),
            }
        }

        /// Answers one of the four calls delivered last (bursts aside, answers then
        /// reach calls whose promises are still in use).
        fn answer(&mut self, k: usize, how: How) {
            let n = self.pending.len();
            let Pending { vat, reply, args } = self.pending.remove(n - 1 - k % n.min(4));
            let Reply::Answer(s, _) = reply else {
                unreachable!("only calls with an answer wait")
            };
            let result = match how {
                How::Data => Ok(OutPayload::data(vec![0xaa])),
                How::Error => Err(Broken::failed("no")),
                How::Object => Ok(OutPayload::single_cap(OutCap::Local(
                    self.new_object(vat, Obj::Real),
                ))),
                How::Promise => {
                    let p = self.new_promise(vat);
                    Ok(OutPayload::single_cap(self.out_local(p, s)))
                }
                How::Held(h) => match self.pick_held(vat, h, s, &args) {
                    Some(idx) => {
                        let Target::Import(hs, i) = self.refs[idx].target else {
                            unreachable!()
                        };
                        if hs == s {
                            // The peer's own reference goes home; the answer then
                            // resolves to it, and the peer's calls on the answer are
                            // forwarded back through it. A method that echoes its
                            // argument keeps nothing: the runtime drops it once answered.
                            if h % 3 == 0 && args.contains(&self.refs[idx].id) {
                                let id = self.refs[idx].id;
                                let payload = OutPayload::single_cap(OutCap::Import(i));
                                self.reply(reply, Ok(payload));
                                let idx = self.refs.iter().position(|r| r.id == id).unwrap();
                                return self.drop_ref(idx);
                            }
                            Ok(OutPayload::single_cap(OutCap::Import(i)))
                        } else {
                            // A reference of the other pair travels as a proxy, which
                            // takes over the user's handle.
                            self.refs.remove(idx);
                            let proxy = self.new_object(
                                vat,
                                Obj::Proxy {
                                    sess: hs,
                                    import: i,
                                },
                            );
                            Ok(OutPayload::single_cap(OutCap::Local(proxy)))
                        }
                    }
                    None => Ok(OutPayload::data(vec![0xab])),
                },
            };
            self.reply(reply, result);
        }

        /// How a local object travels to session `s`'s peer.
        fn out_local(&mut self, o: u32, s: usize) -> OutCap<u32> {
            match &mut self.objects.get_mut(&o).unwrap().1 {
                Obj::Promise {
                    exported,
                    settled: None,
                    ..
                } => {
                    exported.insert(s);
                    OutCap::Promise(o)
                }
                _ => OutCap::Local(o),
            }
        }

        fn reply(&mut self, reply: Reply, result: Result<OutPayload<u32>, Broken>) {
            if let Reply::Answer(s, a) = reply {
                self.s[s].answer(a, result);
            }
        }

        fn unresolved(&self) -> Vec<u32> {
            let mut ps: Vec<u32> = self
                .objects
                .iter()
                .filter(|(_, (_, o))| matches!(o, Obj::Promise { settled: None, .. }))
                .map(|(&o, _)| o)
                .collect();
            ps.sort_unstable();
            ps
        }

        fn resolve(&mut self, p: u32, how: u8) {
            let vat = self.objects[&p].0;
            let (settled, result) = match how {
                0 => (Settled::Object(self.new_object(vat, Obj::Real)), None),
                // A new promise: calls to `p` then wait on that one.
                1 => (Settled::Object(self.new_promise(vat)), None),
                2 => (Settled::Data, Some(Ok(OutPayload::data(vec![0xbb])))),
                _ => {
                    let b = Broken::failed("gave up");
                    (Settled::Broken(b.clone()), Some(Err(b)))
                }
            };
            let Some((
                _,
                Obj::Promise {
                    exported,
                    pending,
                    settled: state,
                },
            )) = self.objects.get_mut(&p)
            else {
                unreachable!()
            };
            assert!(state.is_none(), "promise {p} settled twice");
            let exported = std::mem::take(exported);
            let pending = std::mem::take(pending);
            *state = Some(settled);
            for s in exported {
                let result = match (&result, self.objects[&p].1.settled_to()) {
                    (Some(r), _) => r.clone(),
                    (None, Some(o)) => Ok(OutPayload::single_cap(self.out_local(o, s))),
                    (None, None) => unreachable!(),
                };
                self.s[s].resolve_export(&p, result);
            }
            for (data, reply) in pending {
                self.deliver(p, 0, data, Vec::new(), reply);
            }
        }

        // ---- the runtime ----

        /// A call reaches local object `o` (its references came through session `s`).
        fn deliver(
            &mut self,
            o: u32,
            s: usize,
            data: Vec<u8>,
            caps: Vec<InCap<u32>>,
            reply: Reply,
        ) {
            enum Kind {
                Real,
                Proxy(usize, ImportId),
                Waiting,
                Settled(u32),
                Broken(Broken),
            }
            let (vat, obj) = self.objects.get(&o).expect("a live object");
            let vat = *vat;
            let kind = match obj {
                Obj::Real => Kind::Real,
                &Obj::Proxy { sess, import } => Kind::Proxy(sess, import),
                Obj::Promise { settled, .. } => match settled {
                    None => Kind::Waiting,
                    Some(Settled::Object(r)) => Kind::Settled(*r),
                    Some(Settled::Data) => {
                        Kind::Broken(Broken::new(BrokenKind::NotAnObject, "data"))
                    }
                    Some(Settled::Broken(b)) => Kind::Broken(b.clone()),
                },
            };
            match kind {
                Kind::Real => {
                    if let [_, a, b, c, d, e, f, g, h] = data[..] {
                        let r = u32::from_be_bytes([a, b, c, d]);
                        let seq = u32::from_be_bytes([e, f, g, h]);
                        if let Some(&last) = self.last_seq.get(&r) {
                            assert!(seq > last, "E-order: ref {r} delivered {seq} after {last}");
                        }
                        self.last_seq.insert(r, seq);
                    } else {
                        panic!("not a tagged call: {data:?}");
                    }
                    let args = self.keep_caps(vat, s, caps);
                    if reply != Reply::None {
                        self.pending.push(Pending { vat, reply, args });
                    }
                }
                Kind::Proxy(sess, import) => {
                    self.drop_caps(s, caps);
                    self.forward(sess, import, data, reply);
                }
                Kind::Waiting => {
                    self.drop_caps(s, caps);
                    let Some((_, Obj::Promise { pending, .. })) = self.objects.get_mut(&o) else {
                        unreachable!()
                    };
                    pending.push((data, reply));
                }
                Kind::Settled(r) => {
                    self.drop_caps(s, caps);
                    self.deliver(r, s, data, Vec::new(), reply);
                }
                Kind::Broken(b) => {
                    self.drop_caps(s, caps);
                    self.reply(reply, Err(b));
                }
            }
        }

        /// Sends a call on through import `i` of session `s`.
        fn forward(&mut self, s: usize, i: ImportId, data: Vec<u8>, reply: Reply) {
            let (question, resolver) = match reply {
                Reply::None => (None, None),
                Reply::Answer(..) => {
                    let q = self.question(s);
                    let r = self.resolver();
                    self.forwards.insert(r, reply);
                    (Some(q), Some(r))
                }
            };
            self.s[s].send(Call {
                target: LocalTarget::Import(i),
                method: "m".to_owned(),
                payload: OutPayload::data(data),
                question,
                resolver,
                pipeline_refs: 0,
            });
        }

        /// A forwarded call's result, from session `s_in`, answers a call of `s_out`.
        fn pass_on(&mut self, s_in: usize, s_out: usize, p: InPayload<u32>) -> OutPayload<u32> {
            let mut caps = Vec::new();
            let mut then_drop = Vec::new();
            for cap in p.caps {
                caps.push(match cap {
                    InCap::Local(o) => self.out_local(o, s_out),
                    InCap::Import(i) | InCap::Promise(i) if s_in == s_out => {
                        then_drop.push(i);
                        OutCap::Import(i)
                    }
                    InCap::Import(i) | InCap::Promise(i) => {
                        let vat = VAT_OF[s_out];
                        OutCap::Local(self.new_object(
                            vat,
                            Obj::Proxy {
                                sess: s_in,
                                import: i,
                            },
                        ))
                    }
                });
            }
            // The session holds what its answer needs; the runtime lets go after it.
            self.pending_drops
                .extend(then_drop.into_iter().map(|i| (s_in, i)));
            OutPayload { data: p.data, caps }
        }

        fn handle(&mut self, s: usize, ev: Event<u32, u32>) {
            match ev {
                Event::Deliver {
                    target,
                    payload,
                    answer,
                    ..
                } => {
                    self.got(s, &payload.caps);
                    let reply = answer.map_or(Reply::None, |a| Reply::Answer(s, a));
                    match target {
                        InCap::Local(o) => {
                            assert_eq!(
                                self.objects[&o].0, VAT_OF[s],
                                "delivery to a foreign object"
                            );
                            self.deliver(o, s, payload.data, payload.caps, reply);
                        }
                        InCap::Import(i) | InCap::Promise(i) => {
                            // An answer of ours resolved to the peer's reference.
                            self.got(s, &[InCap::Import(i)]);
                            self.drop_caps(s, payload.caps);
                            self.forward(s, i, payload.data, reply);
                            self.drop_handle(s, i);
                        }
                    }
                }
                Event::Bootstrap { answer, swiss: n } => {
                    assert_eq!((VAT_OF[s], n), (VB, swiss(1)));
                    self.s[s].answer(answer, Ok(OutPayload::single_cap(OutCap::Local(ROOT))));
                }
                Event::Return { resolver, result } => {
                    if let Ok(p) = &result {
                        self.got(s, &p.caps);
                    }
                    if let Some(reply) = self.forwards.remove(&resolver) {
                        let Reply::Answer(s_out, _) = reply else {
                            unreachable!()
                        };
                        let result = result.map(|p| self.pass_on(s, s_out, p));
                        self.reply(reply, result);
                        for (s, i) in std::mem::take(&mut self.pending_drops) {
                            self.drop_handle(s, i);
                        }
                    } else {
                        let vat = self
                            .asked
                            .remove(&resolver)
                            .expect("one return per question");
                        match result {
                            Ok(p) => {
                                self.keep_caps(vat, s, p.caps);
                            }
                            Err(b) => assert!(
                                matches!(b.kind(), BrokenKind::Failed | BrokenKind::NotAnObject),
                                "a call broke for no reason: {b:?}"
                            ),
                        }
                    }
                }
                Event::Resolved { import, result } => {
                    // Reported only for a reference the runtime was handed (perhaps as
                    // a settled one, after the promise; perhaps dropped since, by the
                    // handling of an earlier event).
                    assert!(
                        self.handles.contains_key(&(s, import)),
                        "settlement of {import} of session {s}, never handed out"
                    );
                    let settled = self.promises_in.entry((s, import)).or_default();
                    assert!(!*settled, "promise {import} of session {s} settled twice");
                    *settled = true;
                    if let Ok(p) = result {
                        self.got(s, &p.caps);
                        self.keep_caps(VAT_OF[s], s, p.caps);
                    }
                }
                Event::Pong { .. } => {}
                other => panic!("session {s}: {other:?}"),
            }
        }

        fn events(&mut self) {
            for _ in 0..STEP_LIMIT {
                let mut any = false;
                for s in 0..4 {
                    while let Some(ev) = self.s[s].poll_event() {
                        any = true;
                        self.handle(s, ev);
                    }
                }
                if !any {
                    return;
                }
            }
            panic!("events did not settle");
        }

        /// Moves one frame from session `s` to its peer, through the codec.
        fn step(&mut self, s: usize) -> bool {
            let Some(msg) = self.s[s].poll_transmit() else {
                return false;
            };
            let mut buf = Vec::new();
            msg.encode_frame(&mut buf).unwrap();
            assert_eq!(
                Message::decode(&buf[4..], &CborLimits::default()).unwrap(),
                msg
            );
            self.s[peer_of(s)].handle_frame(&buf[4..]);
            self.events();
            true
        }

        fn flush(&mut self) {
            for _ in 0..STEP_LIMIT {
                let mut moved = false;
                for s in 0..4 {
                    moved |= self.step(s);
                }
                if !moved {
                    return;
                }
            }
            panic!("the world did not settle");
        }

        fn check(&self) {
            let l = limits();
            for (s, session) in self.s.iter().enumerate() {
                assert!(!session.is_closed(), "session {s} closed");
                let st = session.stats();
                assert!(st.answers <= l.max_inbound_questions, "session {s}: {st:?}");
                assert!(st.imports <= l.max_imports && st.exports <= l.max_exports);
            }
        }

        fn apply(&mut self, op: &Op) {
            match *op {
                Op::Bootstrap { c } => self.bootstrap(if c { VC } else { VA }),
                Op::Send { c, r, mode, cap } => {
                    let vat = if c { VC } else { VA };
                    // Half the time the newest reference: the one just obtained.
                    let r = if r % 2 == 0 { usize::MAX } else { r / 2 };
                    match self.pick_ref(vat, r, false) {
                        Some(idx) => self.send(idx, mode, cap),
                        None => self.bootstrap(vat),
                    }
                }
                Op::Burst { c, r } => {
                    let vat = if c { VC } else { VA };
                    if let Some(idx) = self.pick_ref(vat, r, false) {
                        // Two bursts pass the peer's question limit: flow control.
                        for _ in 0..33 {
                            self.send(idx, 1, 0);
                        }
                    }
                }
                Op::Answer { k, how } => {
                    if !self.pending.is_empty() {
                        self.answer(k, how);
                    }
                }
                Op::Resolve { k, how } => {
                    let ps = self.unresolved();
                    if !ps.is_empty() {
                        self.resolve(ps[k % ps.len()], how);
                    }
                }
                Op::Drop { r } => {
                    if !self.refs.is_empty() {
                        self.drop_ref(r % self.refs.len());
                    }
                }
                Op::Pump { s, n } => {
                    for _ in 0..n {
                        self.step(s);
                    }
                }
                Op::Flush => self.flush(),
            }
            self.events();
        }

        /// Answers and settles everything, drops every reference, and checks that
        /// every question and promise settled once and every table emptied.
        fn finish(&mut self) {
            self.flush();
            for _ in 0..1000 {
                if self.pending.is_empty() && self.unresolved().is_empty() {
                    break;
                }
                while !self.pending.is_empty() {
                    self.answer(0, How::Data);
                    self.events();
                }
                for p in self.unresolved() {
                    self.resolve(p, 2);
                    self.events();
                }
                self.flush();
            }
            assert!(self.pending.is_empty() && self.unresolved().is_empty());
            assert!(self.asked.is_empty(), "unanswered: {:?}", self.asked);
            assert!(self.forwards.is_empty(), "unanswered: {:?}", self.forwards);
            for (key, settled) in &self.promises_in {
                let held = self.handles.get(key).copied().unwrap_or(0);
                assert!(*settled || held == 0, "promise {key:?} never settled");
            }
            while let Some(r) = self.refs.pop() {
                match r.target {
                    Target::Import(s, i) => self.drop_handle(s, i),
                    Target::Answer(s, q) => self.s[s].drop_question_ref(q),
                }
            }
            let proxies: Vec<(usize, ImportId)> = self
                .objects
                .values()
                .filter_map(|(_, o)| match *o {
                    Obj::Proxy { sess, import } => Some((sess, import)),
                    _ => None,
                })
                .collect();
            for (s, i) in proxies {
                self.drop_handle(s, i);
            }
            self.events();
            self.flush();
            self.check();
            for (s, session) in self.s.iter().enumerate() {
                assert_eq!(session.stats(), SessionStats::default(), "session {s}");
            }
            assert!(self.handles.values().all(|&n| n == 0), "{:?}", self.handles);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 128,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn three_vats_keep_e_order_and_drain(ops in proptest::collection::vec(op(), 8..60)) {
            let mut w = World::new();
            for op in &ops {
                w.apply(op);
                w.check();
            }
            w.finish();
        }
    }
}

// ---- regressions: bugs found by the fuzzers and property tests ----

/// A pair where A has `MIN_QUESTIONS` questions outstanding at B (calls B never
/// answers), so A's next question is held back; returns A's import of B's object.
fn pair_with_a_full_question_window() -> (Pair, ImportId) {
    let lb = Limits {
        max_inbound_questions: MIN_QUESTIONS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    for q in 2..2 + MIN_QUESTIONS as u64 {
        pair.a
            .session
            .send(ask(LocalTarget::Import(obj), "wait", no_args(), q));
    }
    pair.drive();
    assert_eq!(pair.b.take_events().len(), MIN_QUESTIONS);
    pair.a.take_sent();
    (pair, obj)
}

/// Answers every question A asked in `qs` with plain data.
fn b_answers(pair: &mut Pair, qs: std::ops::Range<u64>) {
    for q in qs {
        pair.b
            .session
            .answer(AnswerId(q), Ok(OutPayload::data(data(&()))));
    }
    pair.drive();
}

#[test]
fn call_held_by_flow_control_survives_the_drop_of_its_reference() {
    // Found by the session fuzzer and the property tests (on the code before drops
    // were queued behind held sends). The runtime sends on a reference and then drops
    // it (`obj.send(..)` then `drop(obj)`). While the peer's question limit held the
    // send back, the drop released the import at once, so the held call later broke
    // with "reference i1 was released" instead of going out. The drop must wait its
    // turn.
    let (mut pair, obj) = pair_with_a_full_question_window();
    let held_q = 2 + MIN_QUESTIONS as u64;
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "late", no_args(), held_q));
    // A one-way send passing the same reference home, then the runtime's drop.
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "home",
        OutPayload {
            data: data(&()),
            caps: vec![OutCap::Import(obj)],
        },
    ));
    pair.a.session.drop_import(obj);
    pair.drive();
    assert_eq!(pair.a.take_events(), []);
    assert_eq!(
        pair.a.take_sent(),
        [],
        "the release must not overtake the sends"
    );
    assert_eq!(pair.a.session.stats().held, 3);

    b_answers(&mut pair, 2..3);
    assert_eq!(
        pair.b.take_events(),
        [
            delivered(B_OBJ, "late", in_data(data(&())), Some(held_q)),
            delivered(
                B_OBJ,
                "home",
                InPayload {
                    data: data(&()),
                    caps: vec![InCap::Local(B_OBJ)]
                },
                None
            ),
        ]
    );
    // The release followed the sends, with the count B gave.
    let sent = pair.a.take_sent();
    assert_eq!(
        sent.last(),
        Some(&Message::Release {
            export: obj.0,
            count: 1
        }),
        "{sent:?}"
    );
    assert_eq!(pair.a.session.stats().held, 0);
    b_answers(&mut pair, 3..held_q + 1);
    let returns = pair.a.take_events();
    assert_eq!(returns.len(), MIN_QUESTIONS + 1, "{returns:?}");
    assert!(
        returns
            .iter()
            .all(|e| matches!(e, Seen::Return { result: Ok(_), .. })),
        "{returns:?}"
    );
    assert_eq!(pair.stats(), (zero(), zero()));
}

#[test]
fn pipelined_call_held_by_flow_control_survives_the_drop_of_its_promise() {
    // Found by the session fuzzer: the same for a pipelined reference. The promise's
    // question resolved and its last pipelined handle was dropped while a call on it
    // was held, so the question was forgotten and the call broke with "promise q was
    // released".
    let (mut pair, _) = pair_with_a_full_question_window();
    let boot = 2 + MIN_QUESTIONS as u64;
    let held_q = boot + 1;
    pair.a
        .session
        .bootstrap(QuestionId(boot), swiss(1), None, 1);
    pair.a.session.send(ask(
        LocalTarget::Answer(QuestionId(boot)),
        "late",
        no_args(),
        held_q,
    ));
    pair.a.session.drop_question_ref(QuestionId(boot));
    pair.drive();
    assert_eq!(pair.a.session.stats().held, 3);

    // Room for the bootstrap, then for the call.
    b_answers(&mut pair, 2..3);
    assert_eq!(pair.b.serve_bootstraps(), [AnswerId(boot)]);
    pair.drive();
    b_answers(&mut pair, 3..4);
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "late", in_data(data(&())), Some(held_q))]
    );
    assert_eq!(pair.a.session.stats().held, 0);
    b_answers(&mut pair, 4..boot);
    b_answers(&mut pair, held_q..held_q + 1);
    let events = pair.a.take_events();
    assert!(
        events
            .iter()
            .all(|e| matches!(e, Seen::Return { result: Ok(_), .. })),
        "{events:?}"
    );
    // Everything A held on the bootstrap's result went with the dropped promise.
    let (a, b) = pair.stats();
    assert_eq!((a.questions, a.held, b.answers), (0, 0, 0));
    assert_eq!(
        (a.imports, b.exports),
        (1, 1),
        "only the first bootstrap's import"
    );
}

#[test]
fn long_chain_of_calls_pipelined_on_a_broken_answer_does_not_overflow_the_stack() {
    // Found while writing the hostile-peer tests. A peer pipelines a call on a pending
    // answer, another on that call's answer, and so on. When the first answer breaks
    // (or resolves to data), each call in the chain breaks in turn; that was a
    // recursion as deep as the chain, and a chain of the default 1,024 questions
    // overflowed a 2 MiB thread stack in a debug build (tokio's worker threads have
    // 2 MiB), aborting the whole process. Run it on a small stack to keep it honest.
    let chain = 20_000u64;
    let done = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let limits = Limits {
                max_inbound_questions: chain as usize + 1,
                ..Limits::default()
            };
            let mut s: S = Session::new(limits, std::time::Instant::now());
            s.handle_message(Message::Hello {
                version: PROTOCOL_VERSION,
                max_frame: 1 << 20,
                max_questions: 1024,
            });
            s.handle_message(Message::Bootstrap {
                question: 1,
                swiss: swiss(1),
            });
            for q in 2..=chain {
                s.handle_message(Message::Deliver {
                    target: Target::Answer(q - 1),
                    method: "next".into(),
                    payload: Payload {
                        data: data(&()),
                        caps: Vec::new(),
                    },
                    question: Some(q),
                });
            }
            assert!(!s.is_closed());
            drain(&mut s);
            s.answer(AnswerId(1), Ok(OutPayload::data(data(&"not an object"))));
            let (sent, events) = drain(&mut s);
            assert_eq!(events, []);
            // Every call broke, in chain order, with not_an_object.
            assert_eq!(sent.len(), chain as usize);
            for (q, msg) in (1..).zip(&sent) {
                match msg {
                    Message::Return {
                        question,
                        result: ReturnResult::Ok(_),
                    } if q == 1 => assert_eq!(*question, 1),
                    Message::Return {
                        question,
                        result: ReturnResult::Err(e),
                    } => {
                        assert_eq!(*question, q);
                        assert_eq!(e.kind, "not_an_object");
                    }
                    other => panic!("{other:?}"),
                }
            }
            s.stats()
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(done.answers, chain as usize);
}

/// A lone session whose peer has returned `promises` (its exports 1, 2, ...) as
/// `sender_promise` results of bootstraps 1, 2, ...; the runtime has dropped every handle
/// it was given, and only the questions' pipelined handles keep the imports.
fn session_holding_unheld_promises(promises: u64) -> S {
    let mut s: S = Session::new(Limits::default(), std::time::Instant::now());
    s.handle_message(Message::Hello {
        version: PROTOCOL_VERSION,
        max_frame: 1 << 20,
        max_questions: 1024,
    });
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

#[test]
fn promise_resolved_to_itself_while_unheld_is_released_at_the_end() {
    // Found by the session fuzzer (clean-up invariant). The peer resolves its promise
    // to itself while the runtime holds no handle on it: the settlement is deferred
    // (`Import::deferred`), and its payload's handle on the import kept the import
    // alive after every other holder let go, so it was never released. The cycle
    // collector now releases it, with both copies the peer sent.
    let mut s = session_holding_unheld_promises(1);
    s.handle_message(Message::Resolve {
        export: 1,
        result: ReturnResult::Ok(wire_single(CapDescriptor::SenderPromise(1))),
    });
    assert!(!s.is_closed());
    s.drop_question_ref(QuestionId(1));
    let (sent, _) = drain(&mut s);
    assert_eq!(s.stats(), zero(), "{sent:?}");
    assert!(sent.contains(&Message::Release {
        export: 1,
        count: 2
    }));
}

#[test]
fn promises_resolved_to_each_other_while_unheld_are_released_at_the_end() {
    // The same through a cycle of two: promise 1 resolves to promise 2 and promise 2 to
    // promise 1, both while the runtime holds no handle on either.
    let mut s = session_holding_unheld_promises(2);
    for (p, to) in [(1, 2), (2, 1)] {
        s.handle_message(Message::Resolve {
            export: p,
            result: ReturnResult::Ok(wire_single(CapDescriptor::SenderPromise(to))),
        });
    }
    assert!(!s.is_closed());
    s.drop_question_ref(QuestionId(1));
    s.drop_question_ref(QuestionId(2));
    let (sent, _) = drain(&mut s);
    assert_eq!(s.stats(), zero(), "{sent:?}");
    assert_eq!(releases(&sent), [(1, 2), (2, 2)]);
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

/// The peer settles its promise `p` to a single `sender_promise(to)`.
fn resolve_to_promise(s: &mut S, p: u64, to: u64) {
    s.handle_message(Message::Resolve {
        export: p,
        result: ReturnResult::Ok(wire_single(CapDescriptor::SenderPromise(to))),
    });
    assert!(!s.is_closed());
}

#[test]
fn promises_resolved_in_a_cycle_of_three_while_unheld_are_released_at_the_end() {
    // 1 → 2 → 3 → 1. Until the last question lets go, each import is still held by a
    // question or by a settlement that a question's import holds.
    let mut s = session_holding_unheld_promises(3);
    for (p, to) in [(1, 2), (2, 3), (3, 1)] {
        resolve_to_promise(&mut s, p, to);
    }
    for q in [1, 2] {
        s.drop_question_ref(QuestionId(q));
        let (sent, events) = drain(&mut s);
        assert_eq!((sent, events), (vec![], vec![]));
        assert_eq!(s.stats().imports, 3);
    }
    s.drop_question_ref(QuestionId(3));
    let (sent, events) = drain(&mut s);
    assert_eq!(events, []);
    assert_eq!(s.stats(), zero(), "{sent:?}");
    assert_eq!(releases(&sent), [(1, 2), (2, 2), (3, 2)]);
}

#[test]
fn cycle_reachable_from_a_held_import_is_kept_until_that_import_is_dropped() {
    // Promise 1 is still held (by question 1's pipelined handle); it settled to promise
    // 2, which settled to promise 1. Nothing else holds 2, but the cycle is reachable:
    // the runtime would see both settlements if the peer sent promise 1 again. Only
    // when question 1 lets go is the cycle garbage.
    let mut s = session_holding_unheld_promises(2);
    resolve_to_promise(&mut s, 1, 2);
    resolve_to_promise(&mut s, 2, 1);
    s.drop_question_ref(QuestionId(2));
    let (sent, events) = drain(&mut s);
    assert_eq!((sent, events), (vec![], vec![]));
    assert_eq!(s.stats().imports, 2);

    s.drop_question_ref(QuestionId(1));
    let (sent, events) = drain(&mut s);
    assert_eq!(events, []);
    assert_eq!(s.stats(), zero(), "{sent:?}");
    // Each import goes back with every copy the peer sent: its return and the other's
    // settlement.
    assert_eq!(releases(&sent), [(1, 2), (2, 2)]);
}

#[test]
fn cycle_hanging_off_a_held_import_is_kept_until_that_import_is_dropped() {
    // 1 → 2, 2 → 3, 3 → 2: the cycle of 2 and 3 is not through the held import 1 but
    // reachable from it.
    let mut s = session_holding_unheld_promises(3);
    for (p, to) in [(1, 2), (2, 3), (3, 2)] {
        resolve_to_promise(&mut s, p, to);
    }
    s.drop_question_ref(QuestionId(2));
    s.drop_question_ref(QuestionId(3));
    let (sent, events) = drain(&mut s);
    assert_eq!((sent, events), (vec![], vec![]));
    assert_eq!(s.stats().imports, 3);

    s.drop_question_ref(QuestionId(1));
    let (sent, events) = drain(&mut s);
    assert_eq!(events, []);
    assert_eq!(s.stats(), zero(), "{sent:?}");
    // 2 came in its return, 1's settlement and 3's; 3 in its return and 2's.
    assert_eq!(releases(&sent), [(1, 1), (2, 3), (3, 2)]);
}

#[test]
fn garbage_settlement_releases_the_other_references_it_held() {
    // Promise 1 settles to data holding itself and a plain reference the peer sends
    // only there: both go when the cycle does.
    let mut s = session_holding_unheld_promises(1);
    s.handle_message(Message::Resolve {
        export: 1,
        result: ReturnResult::Ok(Payload {
            data: data(&()),
            caps: vec![
                CapDescriptor::SenderPromise(1),
                CapDescriptor::SenderHosted(9),
            ],
        }),
    });
    assert_eq!(s.stats().imports, 2);
    s.drop_question_ref(QuestionId(1));
    let (sent, events) = drain(&mut s);
    assert_eq!(events, []);
    assert_eq!(s.stats(), zero(), "{sent:?}");
    assert_eq!(releases(&sent), [(1, 2), (9, 1)]);
}

#[test]
fn self_resolved_promise_sent_again_before_the_collection_is_reported() {
    // Promise 1 settled to itself while the runtime held no handle on it; question 1
    // still holds it. Then the peer passes promise 1 again, in a call to one of our
    // objects: the runtime gets the import and, right after, the deferred settlement
    // (to itself). Once the runtime and the question let go, it is released with all
    // three copies the peer sent, and nothing is reported twice.
    let mut s = session_holding_unheld_promises(1);
    s.handle_message(Message::Bootstrap {
        question: 1,
        swiss: swiss(1),
    });
    drain(&mut s);
    s.answer(AnswerId(1), Ok(OutPayload::single_cap(OutCap::Local(7))));
    let (sent, _) = drain(&mut s);
    let export = match &sent[..] {
        [
            Message::Return {
                result: ReturnResult::Ok(p),
                ..
            },
        ] => match p.caps[..] {
            [CapDescriptor::SenderHosted(e)] => e,
            _ => panic!("{sent:?}"),
        },
        _ => panic!("{sent:?}"),
    };
    resolve_to_promise(&mut s, 1, 1);
    s.handle_message(Message::Deliver {
        target: Target::Export(export),
        method: "take".into(),
        payload: wire_single(CapDescriptor::SenderPromise(1)),
        question: None,
    });
    let (sent, events) = drain(&mut s);
    assert_eq!(sent, []);
    assert_eq!(
        events,
        [
            delivered(7, "take", in_single(InCap::Promise(ImportId(1))), None),
            Seen::Resolved {
                import: ImportId(1),
                result: Ok(in_single(InCap::Promise(ImportId(1)))),
            },
        ]
    );
    // The runtime holds two handles and the question one: dropping any two keeps it.
    s.drop_question_ref(QuestionId(1));
    s.drop_import(ImportId(1));
    let (sent, events) = drain(&mut s);
    assert_eq!((sent, events), (vec![], vec![]));
    assert_eq!(s.stats().imports, 1);
    s.drop_import(ImportId(1));
    let (sent, events) = drain(&mut s);
    assert_eq!(events, []);
    assert_eq!(
        sent,
        [Message::Release {
            export: 1,
            count: 3
        }]
    );
    assert_eq!(s.stats().imports, 0);
}

#[test]
fn self_resolved_promise_in_a_message_dropped_on_arrival_stays_deferred() {
    // The peer passes the self-settled promise 1 in a call pipelined on an answer that
    // broke: the call breaks and its handle goes at once. That changes nothing (no
    // event, no release, no collection); the cycle goes when the question lets go.
    let mut s = session_holding_unheld_promises(1);
    resolve_to_promise(&mut s, 1, 1);
    s.handle_message(Message::Bootstrap {
        question: 1,
        swiss: swiss(1),
    });
    drain(&mut s);
    s.answer(AnswerId(1), Err(Broken::unknown_object()));
    drain(&mut s);
    s.handle_message(Message::Deliver {
        target: Target::Answer(1),
        method: "take".into(),
        payload: wire_single(CapDescriptor::SenderPromise(1)),
        question: None,
    });
    let (sent, events) = drain(&mut s);
    assert_eq!((sent, events), (vec![], vec![]));
    assert_eq!(s.stats().imports, 1);
    s.handle_message(Message::Finish { question: 1 });
    s.drop_question_ref(QuestionId(1));
    let (sent, events) = drain(&mut s);
    assert_eq!(events, []);
    assert_eq!(
        sent,
        [Message::Release {
            export: 1,
            count: 3
        }]
    );
    assert_eq!(s.stats(), zero());
}

#[test]
fn cycle_collection_waits_for_a_drop_held_behind_sends() {
    // The peer accepts MIN_QUESTIONS outstanding questions. Promise 1 (held by question
    // 1's pipelined handle) settled to itself; the runtime pipelines MIN_QUESTIONS calls
    // on question 1 and one more, which is held back, and then drops its pipelined
    // handle. The drop waits behind the held call, so the import stays until the call
    // has gone out to it; then the cycle is garbage and released, after the call.
    let mut s: S = Session::new(Limits::default(), std::time::Instant::now());
    s.handle_message(Message::Hello {
        version: PROTOCOL_VERSION,
        max_frame: 1 << 20,
        max_questions: MIN_QUESTIONS as u64,
    });
    s.bootstrap(QuestionId(1), swiss(1), Some(1), 1);
    s.handle_message(Message::Return {
        question: 1,
        result: ReturnResult::Ok(wire_single(CapDescriptor::SenderPromise(1))),
    });
    s.drop_import(ImportId(1));
    resolve_to_promise(&mut s, 1, 1);
    let last = 2 + MIN_QUESTIONS as u64;
    for q in 2..=last {
        s.send(ask(LocalTarget::Answer(QuestionId(1)), "m", no_args(), q));
    }
    s.drop_question_ref(QuestionId(1));
    drain(&mut s);
    assert_eq!(s.stats().held, 2);
    assert_eq!(s.stats().imports, 1);

    s.handle_message(Message::Return {
        question: 2,
        result: ReturnResult::Ok(Payload {
            data: data(&()),
            caps: Vec::new(),
        }),
    });
    let (sent, _) = drain(&mut s);
    assert!(
        matches!(
            &sent[..],
            [
                Message::Finish { question: 2 },
                Message::Deliver {
                    target: Target::Export(1),
                    question: Some(q),
                    ..
                },
                Message::Release {
                    export: 1,
                    count: 2
                },
            ] if *q == last
        ),
        "{sent:?}"
    );
    assert_eq!(s.stats().held, 0);
    assert_eq!(s.stats().imports, 0);
}

#[test]
fn references_dropped_on_arrival_are_released_at_once_while_sends_are_held() {
    // A call pipelined on a broken answer brings a new reference; the call breaks and
    // the reference goes at once, even while a send is held by flow control: no held
    // send can name it, and the hold queue does not grow with what peers send.
    let mut s: S = Session::new(Limits::default(), std::time::Instant::now());
    s.handle_message(Message::Hello {
        version: PROTOCOL_VERSION,
        max_frame: 1 << 20,
        max_questions: MIN_QUESTIONS as u64,
    });
    for q in 1..=MIN_QUESTIONS as u64 + 1 {
        s.bootstrap(QuestionId(q), swiss(1), Some(u32::try_from(q).unwrap()), 0);
    }
    s.handle_message(Message::Bootstrap {
        question: 1,
        swiss: swiss(1),
    });
    drain(&mut s);
    s.answer(AnswerId(1), Err(Broken::unknown_object()));
    drain(&mut s);
    assert_eq!(s.stats().held, 1);
    s.handle_message(Message::Deliver {
        target: Target::Answer(1),
        method: "take".into(),
        payload: wire_single(CapDescriptor::SenderHosted(5)),
        question: None,
    });
    let (sent, events) = drain(&mut s);
    assert_eq!(events, []);
    assert_eq!(
        sent,
        [Message::Release {
            export: 5,
            count: 1
        }]
    );
    assert_eq!(s.stats().held, 1);
    assert_eq!(s.stats().imports, 0);
}

#[test]
fn closing_with_a_cycle_of_deferred_settlements_sends_no_release() {
    // The session ends while a self-settled promise is held: the tables are emptied
    // and no release follows the close.
    let mut s = session_holding_unheld_promises(1);
    resolve_to_promise(&mut s, 1, 1);
    s.handle_connection_lost("gone");
    s.drop_question_ref(QuestionId(1));
    let (sent, _) = drain(&mut s);
    assert_eq!(sent, []);
    assert_eq!(s.stats(), zero());
}

/// Runs `f` on a thread with a 256 KiB stack, as the stack-depth tests do.
fn on_a_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// A chain of deferred settlements the length of a peer's patience: promise 1 (held by
/// question 1) settled to promise 2, 2 to 3, and so on to `len`, none held by the
/// runtime; with `cycle`, the last settles back to 1.
fn session_with_a_chain_of_deferred_settlements(len: u64, cycle: bool) -> S {
    let mut s = session_holding_unheld_promises(1);
    for p in 1..len {
        resolve_to_promise(&mut s, p, p + 1);
    }
    if cycle {
        resolve_to_promise(&mut s, len, 1);
    }
    assert_eq!(s.stats().imports, len as usize);
    s
}

const CHAIN: u64 = 20_000;

#[test]
fn long_chain_of_deferred_settlements_released_from_its_head_does_not_overflow_the_stack() {
    // Found while fixing the cycle leak. Releasing an import drops the handles of its
    // unreported settlement, which may release the next import, and so on: that was a
    // recursion as deep as the chain, and a peer's chain of some 60,000 settlements
    // overflowed a 2 MiB stack in a debug build.
    let (sent, stats) = on_a_small_stack(|| {
        let mut s = session_with_a_chain_of_deferred_settlements(CHAIN, false);
        s.drop_question_ref(QuestionId(1));
        let (sent, _) = drain(&mut s);
        (sent, s.stats())
    });
    assert_eq!(stats, zero());
    let expected: Vec<Message> = (1..=CHAIN)
        .map(|p| Message::Release {
            export: p,
            count: 1,
        })
        .collect();
    assert!(sent == expected, "not released in chain order");
}

#[test]
fn long_chain_of_deferred_settlements_reported_at_once_does_not_overflow_the_stack() {
    // The same for reporting: when the runtime is given promise 1, its settlement
    // follows, which hands it promise 2, whose settlement follows, and so on. That was
    // a recursion as deep as the chain too.
    let events = on_a_small_stack(|| {
        let mut s = session_with_a_chain_of_deferred_settlements(CHAIN, false);
        s.handle_message(Message::Bootstrap {
            question: 1,
            swiss: swiss(1),
        });
        drain(&mut s);
        s.answer(AnswerId(1), Ok(OutPayload::single_cap(OutCap::Local(7))));
        drain(&mut s);
        s.handle_message(Message::Deliver {
            target: Target::Export(1),
            method: "take".into(),
            payload: wire_single(CapDescriptor::SenderPromise(1)),
            question: None,
        });
        drain(&mut s).1
    });
    assert_eq!(events.len(), CHAIN as usize);
    assert_eq!(
        events[0],
        delivered(7, "take", in_single(InCap::Promise(ImportId(1))), None)
    );
    for (p, event) in (1..).zip(&events[1..]) {
        assert_eq!(
            *event,
            Seen::Resolved {
                import: ImportId(p),
                result: Ok(in_single(InCap::Promise(ImportId(p + 1)))),
            }
        );
    }
}

#[test]
fn long_cycle_of_deferred_settlements_is_collected_without_overflowing_the_stack() {
    let (sent, stats) = on_a_small_stack(|| {
        let mut s = session_with_a_chain_of_deferred_settlements(CHAIN, true);
        s.drop_question_ref(QuestionId(1));
        let (sent, _) = drain(&mut s);
        (sent, s.stats())
    });
    assert_eq!(stats, zero());
    // Promise 1 came twice (its return and the last settlement), the others once.
    let expected: Vec<(u64, u64)> = (1..=CHAIN).map(|p| (p, 1 + u64::from(p == 1))).collect();
    assert!(releases(&sent) == expected, "{} releases", sent.len());
}

#[test]
fn an_expensive_collection_is_paid_for_by_later_operations_before_the_next() {
    // Promise 1 (held by question 1) settled to promise 3, 3 to 4, and so on: a chain
    // that is alive, kept by settlements. A call queued on an answer carries promise 3;
    // when the program answers with an error, the call's handle goes, and the collector
    // walks the whole chain to find it still alive. A peer could have the program do
    // that again and again, so the walk must be paid for (a fixed amount of work per
    // operation) before the collector runs again: the self-settled promise 2, garbage
    // once its question lets go, is released only some operations later.
    const LEN: u64 = 1_000;
    let mut s = session_holding_unheld_promises(2);
    resolve_to_promise(&mut s, 1, 3);
    for p in 3..LEN + 2 {
        resolve_to_promise(&mut s, p, p + 1);
    }
    resolve_to_promise(&mut s, 2, 2);
    let imports = s.stats().imports;
    assert_eq!(imports, LEN as usize + 2);
    s.handle_message(Message::Bootstrap {
        question: 10,
        swiss: swiss(1),
    });
    s.handle_message(Message::Deliver {
        target: Target::Answer(10),
        method: "take".into(),
        payload: wire_single(CapDescriptor::SenderPromise(3)),
        question: None,
    });
    drain(&mut s);
    s.answer(AnswerId(10), Err(Broken::unknown_object()));
    s.handle_message(Message::Finish { question: 10 });
    let (sent, _) = drain(&mut s);
    assert_eq!(releases(&sent), []);
    assert_eq!(s.stats().imports, imports);

    s.drop_question_ref(QuestionId(2));
    let (sent, _) = drain(&mut s);
    assert_eq!(releases(&sent), [], "the walk is not paid for yet");
    let mut operations = 1;
    loop {
        s.handle_message(Message::Ping { nonce: operations });
        operations += 1;
        let (sent, _) = drain(&mut s);
        if !releases(&sent).is_empty() {
            assert_eq!(releases(&sent), [(2, 2)]);
            break;
        }
        assert!(operations < 3 * LEN / 256, "never collected");
    }
    assert_eq!(s.stats().imports, imports - 1);

    // The chain itself goes with promise 1, link by link (no collection needed).
    s.drop_question_ref(QuestionId(1));
    let (sent, _) = drain(&mut s);
    assert_eq!(releases(&sent).len(), LEN as usize + 1);
    assert_eq!(s.stats(), zero());
}
