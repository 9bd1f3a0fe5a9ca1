//! Property tests of the session state machine (`captp::proto::Session`) over in-memory
//! networks of two and three sessions, with random sequences of local operations and
//! random interleavings of message delivery.
//!
//! The network is one server vat B and one or two client vats (A, and C): each client
//! has one session with B, and B serves the same objects on both. References travel
//! only between the two ends of one session, so A and C each talk to B, and B calls
//! back objects a client passed it. A small runtime on each end answers delivered calls
//! (at once, or later for the "slow" methods), keeps the references it receives, and
//! drops them when told to.
//!
//! The properties, checked after every step or once the network has drained:
//!
//! - **settling**: once the network drains and every object has answered, every
//!   promise (every resolver given with a question) has come back, exactly once;
//! - **E-order**: the calls sent on one reference reach their target in the order they
//!   were sent (each call's arguments carry a per-reference sequence number);
//! - **no call reaches a freed export**: a delivered call's target is the object its
//!   reference designates, and that object is the bootstrap object or one still
//!   exported to the caller (or what the caller's pipelined promise resolved to);
//! - **clean-up**: once every handle is dropped, everything answered and the network
//!   drained, every table of every session is empty;
//! - **bounded memory**: no table ever exceeds its limit, and no session between these
//!   well-behaved peers ever aborts.

use std::collections::{HashMap, HashSet, VecDeque};

use captp::proto::{
    AnswerId, Call, Event, ImportId, InCap, LocalTarget, OutCap, OutPayload, QuestionId, Session,
    SessionStats,
};
use captp::wire::frame;
use captp::wire::{CapDescriptor, CborLimits, Message, ReturnResult, Target};
use captp::{Broken, Limits, SwissNumber};
use proptest::prelude::*;

type Obj = u32;
type Res = u64;

/// `CAP_TAG(0)`: payload data that is exactly one reference.
const SINGLE_CAP: [u8; 4] = [0xd9, 0x63, 0x61, 0x00];
/// The object B serves under the swiss number `[1; 32]`.
const ROOT: Obj = 1;
/// Rounds of "deliver everything, answer everything" allowed to settle.
const SETTLE_ROUNDS: usize = 1_000;
/// B exports at most this many objects to one peer (so the limit is exercised).
const MAX_EXPORTS: usize = 4;

fn limits() -> Limits {
    let mut l = Limits::default();
    l.max_exports = MAX_EXPORTS;
    l.max_inbound_questions = 64;
    l
}

fn nonce_data(nonce: u64) -> Vec<u8> {
    let mut v = vec![0x1b];
    v.extend_from_slice(&nonce.to_be_bytes());
    v
}

fn data_nonce(data: &[u8]) -> Option<u64> {
    match data {
        [0x1b, rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// What a called object does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// Answers data at once.
    Data,
    /// Answers a new object at once.
    Make,
    /// Answers an error at once.
    Fail,
    /// Answers with the first reference in its arguments (or data if none).
    Echo,
    /// Answers data later.
    SlowData,
    /// Answers a new object later.
    SlowMake,
}

const METHODS: [Method; 6] = [
    Method::Data,
    Method::Make,
    Method::Fail,
    Method::Echo,
    Method::SlowData,
    Method::SlowMake,
];

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Data => "data",
            Method::Make => "make",
            Method::Fail => "fail",
            Method::Echo => "echo",
            Method::SlowData => "slow_data",
            Method::SlowMake => "slow_make",
        }
    }

    fn from_name(name: &str) -> Method {
        *METHODS
            .iter()
            .find(|m| m.name() == name)
            .expect("a known method")
    }
}

/// One end of a session and the runtime around it.
struct End {
    session: Session<Obj, Res>,
    /// Messages sent by this end, not yet delivered to the other end.
    in_flight: VecDeque<Message>,
    next_question: u64,
    /// Import handles the runtime holds (one entry per handle).
    imports: Vec<ImportId>,
    /// Pipelined handles the runtime holds (one entry per handle).
    question_refs: Vec<QuestionId>,
    /// Answers owed later, with how they will be answered.
    slow: Vec<(AnswerId, Method)>,
    /// Payload caps of every payload this end sent, by nonce (calls) or answer id.
    call_caps: HashMap<u64, Vec<OutCap<Obj>>>,
    answer_caps: HashMap<u64, Vec<OutCap<Obj>>>,
    /// This end's exports as the peer holds them: id → (object, count).
    exports: HashMap<u64, (Obj, u64)>,
    /// What answers resolved to: a local object, or a reference the peer gave (where
    /// calls pipelined on them go, the latter forwarded back to the peer).
    answered_with: HashMap<u64, InCap<Obj>>,
    /// Calls forwarded to the peer on behalf of an answer of ours: resolver → answer.
    forwarding: HashMap<Res, AnswerId>,
}

/// A call in flight, by its nonce.
#[derive(Debug, Clone)]
struct Sent {
    from: usize,
    key: (bool, u64),
    seq: u64,
    /// The wire target, once the call is seen on the wire.
    target: Option<Target>,
}

struct Net {
    ends: Vec<End>,
    limits: Limits,
    next_nonce: u64,
    next_resolver: Res,
    next_object: Obj,
    /// Resolvers of questions not yet come back.
    outstanding: HashSet<Res>,
    calls: HashMap<u64, Sent>,
    /// Next sequence number per (end, reference).
    seqs: HashMap<(usize, (bool, u64)), u64>,
    /// Last sequence number delivered per (end, reference).
    delivered: HashMap<(usize, (bool, u64)), u64>,
}

/// A reference as received, named for sending on (back home, or as our own object).
fn out_cap(cap: &InCap<Obj>) -> OutCap<Obj> {
    match cap {
        InCap::Import(i) | InCap::Promise(i) => OutCap::Import(*i),
        InCap::Local(o) => OutCap::Local(*o),
    }
}

/// The import a reference sent back home names, if it is one.
fn held_import(cap: &OutCap<Obj>) -> Option<InCap<Obj>> {
    match cap {
        OutCap::Import(i) => Some(InCap::Import(*i)),
        _ => None,
    }
}

fn key(t: LocalTarget) -> (bool, u64) {
    match t {
        LocalTarget::Import(i) => (false, i.0),
        LocalTarget::Answer(q) => (true, q.0),
    }
}

fn peer(end: usize) -> usize {
    end ^ 1
}

impl Net {
    /// `clients` client vats, each with one session to B. End `2k` is client `k`'s,
    /// end `2k + 1` is B's end of that session.
    fn new(clients: usize) -> Net {
        let limits = limits();
        let ends = (0..2 * clients)
            .map(|_| End {
                session: Session::new(limits.clone(), std::time::Instant::now()),
                in_flight: VecDeque::new(),
                next_question: 1,
                imports: Vec::new(),
                question_refs: Vec::new(),
                slow: Vec::new(),
                call_caps: HashMap::new(),
                answer_caps: HashMap::new(),
                exports: HashMap::new(),
                answered_with: HashMap::new(),
                forwarding: HashMap::new(),
            })
            .collect();
        let mut net = Net {
            ends,
            limits,
            next_nonce: 1,
            next_resolver: 1,
            next_object: 100,
            outstanding: HashSet::new(),
            calls: HashMap::new(),
            seqs: HashMap::new(),
            delivered: HashMap::new(),
        };
        net.settle();
        net
    }

    fn check_limits(&self) {
        for (i, end) in self.ends.iter().enumerate() {
            assert!(!end.session.is_closed(), "end {i} closed");
            let st = end.session.stats();
            assert!(st.exports <= self.limits.max_exports, "end {i}: {st:?}");
            assert!(st.imports <= self.limits.max_imports, "end {i}: {st:?}");
            assert!(
                st.answers <= self.limits.max_inbound_questions,
                "end {i}: {st:?}"
            );
        }
    }

    // ---- moving messages ----

    /// Collects what end `e` transmits, noting what the peer will be able to reach.
    fn collect(&mut self, e: usize) {
        while let Some(msg) = self.ends[e].session.poll_transmit() {
            match &msg {
                Message::Deliver {
                    target, payload, ..
                } => {
                    let nonce = data_nonce(&payload.data).expect("calls carry a nonce");
                    if let Some(call) = self.calls.get_mut(&nonce) {
                        call.target = Some(*target);
                    }
                    let caps = self.ends[e].call_caps.remove(&nonce).unwrap_or_default();
                    self.note_exports(e, &caps, &payload.caps);
                }
                Message::Return {
                    question,
                    result: ReturnResult::Ok(payload),
                } => {
                    let caps = self.ends[e]
                        .answer_caps
                        .remove(question)
                        .unwrap_or_default();
                    self.note_exports(e, &caps, &payload.caps);
                }
                Message::Return {
                    question,
                    result: ReturnResult::Err(_),
                } => {
                    self.ends[e].answered_with.remove(question);
                }
                _ => {}
            }
            self.ends[e].in_flight.push_back(msg);
        }
    }

    fn note_exports(&mut self, e: usize, local: &[OutCap<Obj>], wire: &[CapDescriptor]) {
        assert_eq!(local.len(), wire.len());
        for (l, w) in local.iter().zip(wire) {
            if let (OutCap::Local(o), CapDescriptor::SenderHosted(id)) = (l, w) {
                let entry = self.ends[e].exports.entry(*id).or_insert((*o, 0));
                assert_eq!(entry.0, *o, "export {id} names two objects");
                entry.1 += 1;
            }
        }
    }

    /// Delivers one message from end `e` to its peer; false if none was in flight.
    fn deliver_one(&mut self, e: usize) -> bool {
        self.collect(e);
        let Some(msg) = self.ends[e].in_flight.pop_front() else {
            return false;
        };
        let to = peer(e);
        if let Message::Release { export, count } = &msg {
            let entry = self.ends[to]
                .exports
                .get_mut(export)
                .expect("released an export it holds");
            entry.1 -= count;
            if entry.1 == 0 {
                self.ends[to].exports.remove(export);
            }
        }
        // Through the codec, as the runtime carries it.
        let mut buf = Vec::new();
        msg.encode_frame(&mut buf).expect("encodes");
        let span = frame::next_frame(&buf, self.limits.max_frame)
            .expect("within the frame limit")
            .expect("a whole frame");
        assert_eq!(
            Message::decode(&buf[span.start..span.end], &CborLimits::DEFAULT).as_ref(),
            Ok(&msg)
        );
        self.ends[to]
            .session
            .handle_frame(&buf[span.start..span.end]);
        self.events(to);
        true
    }

    // ---- the runtimes ----

    fn events(&mut self, e: usize) {
        while let Some(ev) = self.ends[e].session.poll_event() {
            match ev {
                Event::Deliver {
                    target,
                    method,
                    payload,
                    answer,
                } => self.delivered_call(e, target, &method, payload, answer),
                Event::Bootstrap { answer, swiss } => {
                    let result = if swiss.as_bytes() == &[1; 32] {
                        Ok(OutPayload::single_cap(OutCap::Local(ROOT)))
                    } else {
                        Err(Broken::unknown_object())
                    };
                    self.answer(e, answer, result);
                }
                Event::Return { resolver, result } => {
                    assert!(
                        self.outstanding.remove(&resolver),
                        "resolver {resolver} came back twice"
                    );
                    if let Some(answer) = self.ends[e].forwarding.remove(&resolver) {
                        // The result of a forwarded call answers the call it stands for.
                        let result = result.map(|p| OutPayload {
                            data: p.data,
                            caps: p.caps.iter().map(out_cap).collect(),
                        });
                        if let Ok(p) = &result {
                            self.keep(e, p.caps.iter().filter_map(held_import).collect());
                        }
                        self.answer(e, answer, result);
                        continue;
                    }
                    if let Err(b) = &result {
                        assert!(
                            !b.message().contains("released"),
                            "a call on a held reference broke: {b}"
                        );
                    }
                    if let Ok(p) = result {
                        self.keep(e, p.caps);
                    }
                }
                Event::Closed { reason } => panic!("end {e} closed: {reason}"),
                other => panic!("unexpected event {other:?}"),
            }
        }
    }

    fn keep(&mut self, e: usize, caps: Vec<InCap<Obj>>) {
        for cap in caps {
            if let InCap::Import(i) | InCap::Promise(i) = cap {
                self.ends[e].imports.push(i);
            }
        }
    }

    fn delivered_call(
        &mut self,
        e: usize,
        target: InCap<Obj>,
        method: &str,
        payload: captp::proto::InPayload<Obj>,
        answer: Option<AnswerId>,
    ) {
        let nonce = data_nonce(&payload.data).expect("calls carry a nonce");
        let call = self.calls.remove(&nonce).expect("each call delivered once");
        assert_eq!(peer(call.from), e, "delivered on the wrong session");
        // E-order on the reference the call was sent on.
        let last = self.delivered.insert((call.from, call.key), call.seq);
        assert!(
            last.is_none_or(|last| last < call.seq),
            "E-order: seq {} after {last:?} on {:?}",
            call.seq,
            call.key
        );
        // The target is what the reference designates, and it is live.
        let expected = match call.target.expect("seen on the wire") {
            Target::Export(id) => {
                let (obj, count) = *self.ends[e]
                    .exports
                    .get(&id)
                    .unwrap_or_else(|| panic!("call to freed export {id}"));
                assert!(count > 0);
                obj
            }
            Target::Answer(a) => {
                let resolved = self.ends[e]
                    .answered_with
                    .get(&a)
                    .expect("pipelined on an answer that resolved to a reference");
                match (resolved, &target) {
                    // Resolved to the caller's own reference: forwarded back to it.
                    (InCap::Import(i), InCap::Import(j)) => {
                        assert_eq!(i, j, "forwarded to the wrong reference");
                        return self.forward(e, *j, method, payload, answer);
                    }
                    (InCap::Local(o), _) => *o,
                    other => panic!("pipelined call reached {other:?}"),
                }
            }
        };
        let InCap::Local(target) = target else {
            panic!("a call to export {expected} was delivered to {target:?}");
        };
        assert_eq!(target, expected, "the call reached the wrong object");
        let live = target == ROOT || self.ends[e].exports.values().any(|&(o, _)| o == target);
        assert!(live, "a call reached object {target}, not exported");

        let first_cap = payload.caps.first().cloned();
        self.keep(e, payload.caps);
        let Some(answer) = answer else {
            return;
        };
        match Method::from_name(method) {
            m @ (Method::SlowData | Method::SlowMake) => self.ends[e].slow.push((answer, m)),
            Method::Echo => {
                let result = match first_cap {
                    Some(cap) => OutPayload::single_cap(out_cap(&cap)),
                    None => OutPayload::data(nonce_data(0)),
                };
                self.answer(e, answer, Ok(result));
            }
            m => self.answer_with(e, answer, m),
        }
    }

    fn answer_with(&mut self, e: usize, answer: AnswerId, how: Method) {
        let result = match how {
            Method::Data | Method::SlowData | Method::Echo => Ok(OutPayload::data(nonce_data(0))),
            Method::Make | Method::SlowMake => {
                self.next_object += 1;
                Ok(OutPayload::single_cap(OutCap::Local(self.next_object)))
            }
            Method::Fail => Err(Broken::failed("no")),
        };
        self.answer(e, answer, result);
    }

    /// Forwards a call delivered to import `i` (an answer of ours resolved to the
    /// caller's own reference) back to the peer, in order; its result will answer the
    /// original call. The delivery's handle on `i` is dropped once the call is sent.
    fn forward(
        &mut self,
        e: usize,
        i: ImportId,
        method: &str,
        payload: captp::proto::InPayload<Obj>,
        answer: Option<AnswerId>,
    ) {
        let nonce = data_nonce(&payload.data).expect("calls carry a nonce");
        let target = LocalTarget::Import(i);
        let seq = self.seqs.entry((e, key(target))).or_insert(0);
        *seq += 1;
        self.calls.insert(
            nonce,
            Sent {
                from: e,
                key: key(target),
                seq: *seq,
                target: None,
            },
        );
        let caps: Vec<OutCap<Obj>> = payload.caps.iter().map(out_cap).collect();
        // The arguments' handles stay with the runtime, like any it receives.
        self.keep(e, payload.caps);
        self.ends[e].call_caps.insert(nonce, caps.clone());
        let end = &mut self.ends[e];
        let question = answer.map(|_| {
            let q = QuestionId(end.next_question);
            end.next_question += 1;
            q
        });
        let resolver = answer.map(|a| {
            self.next_resolver += 1;
            self.outstanding.insert(self.next_resolver);
            self.ends[e].forwarding.insert(self.next_resolver, a);
            self.next_resolver
        });
        self.ends[e].session.send(Call {
            target,
            method: method.to_owned(),
            payload: OutPayload {
                data: nonce_data(nonce),
                caps,
            },
            question,
            resolver,
            pipeline_refs: 0,
        });
        self.ends[e].session.drop_import(i);
        self.collect(e);
    }

    fn answer(&mut self, e: usize, answer: AnswerId, result: Result<OutPayload<Obj>, Broken>) {
        if let Ok(p) = &result {
            self.ends[e].answer_caps.insert(answer.0, p.caps.clone());
            match (&p.caps[..], p.data == SINGLE_CAP) {
                ([OutCap::Local(o)], true) => {
                    self.ends[e]
                        .answered_with
                        .insert(answer.0, InCap::Local(*o));
                }
                ([OutCap::Import(i)], true) => {
                    self.ends[e]
                        .answered_with
                        .insert(answer.0, InCap::Import(*i));
                }
                _ => {}
            }
        }
        self.ends[e].session.answer(answer, result);
        self.collect(e);
        self.events(e);
    }

    // ---- local operations ----

    /// The references end `e`'s runtime can send on.
    fn refs(&self, e: usize) -> Vec<LocalTarget> {
        let end = &self.ends[e];
        let mut refs: Vec<LocalTarget> = end
            .imports
            .iter()
            .map(|&i| LocalTarget::Import(i))
            .collect();
        refs.extend(end.question_refs.iter().map(|&q| LocalTarget::Answer(q)));
        refs
    }

    fn bootstrap(&mut self, e: usize, refs: u32, resolver: bool, known: bool) {
        let end = &mut self.ends[e];
        let q = QuestionId(end.next_question);
        end.next_question += 1;
        end.question_refs
            .extend(std::iter::repeat_n(q, refs as usize));
        let resolver = resolver.then(|| {
            self.next_resolver += 1;
            self.outstanding.insert(self.next_resolver);
            self.next_resolver
        });
        let swiss = SwissNumber::from_bytes([u8::from(known); 32]);
        self.ends[e].session.bootstrap(q, swiss, resolver, refs);
        self.collect(e);
        self.events(e);
    }

    fn call(&mut self, e: usize, via: usize, method: Method, ask: bool, refs: u32, pass: bool) {
        let targets = self.refs(e);
        if targets.is_empty() {
            return;
        }
        let target = targets[via % targets.len()];
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        let seq = self.seqs.entry((e, key(target))).or_insert(0);
        *seq += 1;
        self.calls.insert(
            nonce,
            Sent {
                from: e,
                key: key(target),
                seq: *seq,
                target: None,
            },
        );
        // Pass a reference along: one of ours (a new object of this vat), or one of
        // the peer's coming home.
        let caps = match (pass, via % 3) {
            (false, _) => Vec::new(),
            (true, 0 | 1) => {
                self.next_object += 1;
                vec![OutCap::Local(self.next_object)]
            }
            (true, _) => match self.ends[e].imports.get(via % 2) {
                Some(&i) => vec![OutCap::Import(i)],
                None => Vec::new(),
            },
        };
        self.ends[e].call_caps.insert(nonce, caps.clone());
        let end = &mut self.ends[e];
        let question = ask.then(|| {
            let q = QuestionId(end.next_question);
            end.next_question += 1;
            q
        });
        let pipeline_refs = if ask { refs } else { 0 };
        if let Some(q) = question {
            end.question_refs
                .extend(std::iter::repeat_n(q, pipeline_refs as usize));
        }
        let resolver = ask.then(|| {
            self.next_resolver += 1;
            self.outstanding.insert(self.next_resolver);
            self.next_resolver
        });
        self.ends[e].session.send(Call {
            target,
            method: method.name().to_owned(),
            payload: OutPayload {
                data: nonce_data(nonce),
                caps,
            },
            question,
            resolver,
            pipeline_refs,
        });
        self.collect(e);
        self.events(e);
    }

    fn drop_ref(&mut self, e: usize, which: usize) {
        let end = &mut self.ends[e];
        let total = end.imports.len() + end.question_refs.len();
        if total == 0 {
            return;
        }
        let i = which % total;
        if i < end.imports.len() {
            let id = end.imports.swap_remove(i);
            end.session.drop_import(id);
        } else {
            let q = end.question_refs.swap_remove(i - end.imports.len());
            end.session.drop_question_ref(q);
        }
        self.collect(e);
        self.events(e);
    }

    fn answer_slow(&mut self, e: usize, which: usize) {
        if self.ends[e].slow.is_empty() {
            return;
        }
        let i = which % self.ends[e].slow.len();
        let (answer, how) = self.ends[e].slow.swap_remove(i);
        self.answer_with(e, answer, how);
    }

    /// Delivers everything and answers everything until nothing moves.
    fn settle(&mut self) {
        for _ in 0..SETTLE_ROUNDS {
            let mut moved = false;
            for e in 0..self.ends.len() {
                while self.deliver_one(e) {
                    moved = true;
                    self.check_limits();
                }
            }
            for e in 0..self.ends.len() {
                while !self.ends[e].slow.is_empty() {
                    self.answer_slow(e, 0);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the network did not settle in {SETTLE_ROUNDS} rounds");
    }

    fn apply(&mut self, op: &Op) {
        let ends = self.ends.len();
        match *op {
            Op::Bootstrap {
                client,
                refs,
                resolver,
                known,
            } => self.bootstrap(2 * (client % (ends / 2)), refs, resolver, known),
            Op::Call {
                end,
                via,
                method,
                ask,
                refs,
                pass,
            } => {
                // B calls back only once it holds a client's reference; until then the
                // client calls.
                let end = end % ends;
                let end = if self.refs(end).is_empty() {
                    end & !1
                } else {
                    end
                };
                self.call(end, via, METHODS[method], ask, refs, pass);
            }
            Op::Burst { client, via, n } => {
                for i in 0..n {
                    let method = if i % 7 == 0 {
                        Method::SlowData
                    } else {
                        Method::Data
                    };
                    self.call(2 * (client % (ends / 2)), via, method, true, 0, false);
                }
            }
            Op::Drop { end, which } => self.drop_ref(end % ends, which),
            Op::AnswerSlow { end, which } => self.answer_slow(end % ends, which),
            Op::Deliver { end, n } => {
                for _ in 0..n {
                    if !self.deliver_one(end % ends) {
                        break;
                    }
                }
            }
        }
        self.check_limits();
    }

    /// Every promise has settled; then, with every handle dropped, every table empties.
    fn finish(&mut self) {
        self.settle();
        assert!(
            self.outstanding.is_empty(),
            "promises never settled: {:?}",
            self.outstanding
        );
        for e in 0..self.ends.len() {
            while !self.refs(e).is_empty() {
                self.drop_ref(e, 0);
            }
        }
        self.settle();
        for (e, end) in self.ends.iter().enumerate() {
            assert_eq!(
                end.session.stats(),
                SessionStats::default(),
                "end {e} still holds something"
            );
            assert!(end.exports.is_empty(), "end {e}: {:?}", end.exports);
        }
        // A call to an export always arrives; only calls pipelined on a promise that
        // resolved to data or an error, or that broke before leaving, never do.
        let lost: Vec<_> = self
            .calls
            .values()
            .filter(|c| matches!(c.target, Some(Target::Export(_))))
            .collect();
        assert!(
            lost.is_empty(),
            "calls to exports never delivered: {lost:?}"
        );
    }
}

#[derive(Debug, Clone)]
enum Op {
    Bootstrap {
        client: usize,
        refs: u32,
        resolver: bool,
        known: bool,
    },
    Call {
        end: usize,
        via: usize,
        method: usize,
        ask: bool,
        refs: u32,
        pass: bool,
    },
    /// Enough calls on one reference to fill the peer's question window (64).
    Burst {
        client: usize,
        via: usize,
        n: u32,
    },
    Drop {
        end: usize,
        which: usize,
    },
    AnswerSlow {
        end: usize,
        which: usize,
    },
    Deliver {
        end: usize,
        n: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..2usize, 0..3u32, any::<bool>(), prop::bool::weighted(0.9)).prop_map(
            |(client, refs, resolver, known)| Op::Bootstrap { client, refs, resolver, known }
        ),
        8 => (0..4usize, 0..8usize, 0..METHODS.len(), any::<bool>(), 0..3u32, prop::bool::weighted(0.5))
            .prop_map(|(end, via, method, ask, refs, pass)| Op::Call { end, via, method, ask, refs, pass }),
        1 => (0..2usize, 0..8usize, 60..80u32).prop_map(|(client, via, n)| Op::Burst { client, via, n }),
        3 => (0..4usize, 0..16usize).prop_map(|(end, which)| Op::Drop { end, which }),
        3 => (0..4usize, 0..8usize).prop_map(|(end, which)| Op::AnswerSlow { end, which }),
        5 => (0..4usize, 1..8u32).prop_map(|(end, n)| Op::Deliver { end, n }),
    ]
}

fn run(clients: usize, ops: &[Op]) {
    let mut net = Net::new(clients);
    // Every client starts with the bootstrap object.
    for k in 0..clients {
        net.bootstrap(2 * k, 1, true, true);
    }
    for op in ops {
        net.apply(op);
    }
    net.finish();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// A client and a server: two sessions' worth of ends, one link.
    #[test]
    fn two_sessions(ops in prop::collection::vec(op(), 0..60)) {
        run(1, &ops);
    }

    /// Two clients of one server: A–B and C–B, B serving the same objects to both.
    #[test]
    fn three_sessions(ops in prop::collection::vec(op(), 0..60)) {
        run(2, &ops);
    }
}

/// The flow-control regression the session fuzzer found, as a property-test scenario:
/// a burst fills the peer's question window, then a call on a reference is sent and
/// the reference dropped at once; the call must still arrive.
#[test]
fn send_then_drop_while_held_settles() {
    run(
        1,
        &[
            Op::Burst {
                client: 0,
                via: 0,
                n: 70,
            },
            Op::Call {
                end: 0,
                via: 0,
                method: 0,
                ask: true,
                refs: 0,
                pass: false,
            },
            Op::Drop { end: 0, which: 0 },
        ],
    );
}
