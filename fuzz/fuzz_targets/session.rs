//! The session state machine, driven by arbitrary sequences of peer messages and local
//! commands.
//!
//! The fuzzer plays both the peer (messages built from small id ranges, so they hit
//! real table entries, plus raw frames) and the local runtime (sends, bootstraps,
//! answers, drops, pings, aborts, draining events). A model of the peer's view of the
//! session checks, after every step:
//!
//! - nothing panics; table sizes stay within the limits (`stats()`); a closed session
//!   has empty tables and transmits nothing after its last `abort`;
//! - every resolver given to the session comes back at most once, and after the
//!   session closes every resolver of a question has come back;
//! - a peer message the model knows to be valid never aborts the session, and one it
//!   knows to be invalid always does (with a violation);
//! - everything the session transmits is something a correct peer accepts: each frame
//!   fits the peer's frame limit; returns answer questions the peer asked, once, and
//!   never after the peer finished them; finishes follow returns; releases give back
//!   exactly the count the peer sent; targets and receiver-hosted references name
//!   imports the session still holds; export ids name one object each and are never
//!   reused; pipelined targets name questions not yet returned;
//! - a delivered call reaches the object its target designates (the live export, or
//!   what the answer resolved to), in the order the peer sent calls to that target,
//!   and local calls leave in the order they were sent on each reference;
//! - a local call breaks as "released" only if the runtime had already dropped the
//!   reference it was sent on;
//! - protocol version 4 holds exactly when the peer's `hello` announced it: a peer's
//!   `listen` reaches the runtime with its hints as sent, and a `third_party` is counted
//!   as `sender_hosted` for its vine and reaches the runtime with its introduction as
//!   sent (before version 4, either aborts the session); a reference the runtime
//!   introduces goes out as `third_party` only to a version-4 peer (as `sender_hosted`
//!   to an older one), and the session's own `listen` right after its `hello`;
//! - at the end, once the peer answers, finishes and releases everything and the
//!   runtime answers everything and drops every handle, every table is empty.
#![no_main]

use std::collections::{HashMap, HashSet, VecDeque};

use arbitrary::Arbitrary;
use captp::internal::proto::{
    AnswerId, Call, CloseReason, Event, ImportId, InCap, Introduction, LocalTarget, OutCap,
    OutPayload, QuestionId, Session, SessionStats, announce,
};
use captp::internal::wire::SINGLE_CAP_DATA as SINGLE_CAP;
use captp::internal::wire::message::{
    HANDOFF_VERSION, MAX_HINT_LEN, MAX_HINTS, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, ThirdParty,
};
use captp::internal::wire::{
    CapDescriptor, CborLimits, Hello, MIN_CAPS, MIN_IMPORTS, MIN_QUEUED, Message, Payload,
    ReturnResult, Target, WireBroken,
};
use captp::{Broken, Limits, SwissNumber};
use libfuzzer_sys::fuzz_target;

type Obj = u32;
type Res = u32;
type S = Session<Obj, Res>;

/// Peer question ids of bursts start here, above the small range of the other ops.
const BURST_IDS: u64 = 1 << 20;
/// Rounds allowed for the final clean-up to settle.
const CLEANUP_ROUNDS: usize = 200;

#[derive(Arbitrary, Debug)]
struct Input {
    config: Config,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
struct Config {
    skip_hello: bool,
    max_imports: u8,
    max_exports: u8,
    max_caps: u8,
    max_queued: u8,
    max_inbound: u8,
    peer_questions: u8,
    peer_small_frame: bool,
    /// Start with the peer holding a promise of ours (a bootstrap answered with one).
    export_a_promise: bool,
    /// Start with the runtime holding a promise of the peer's (a bootstrap returned
    /// with one).
    import_a_promise: bool,
    /// Then answer a peer's bootstrap with that reference of the peer's, and have the
    /// peer pipeline a call on the answer (which the runtime must forward).
    forward_a_call: bool,
    /// The version the peer's first `hello` announces.
    peer_version: Version,
    /// The hints given to `Session::set_listen` (see [`hints`]; none: not called).
    listen: u8,
}

/// A protocol version the peer may announce (`None` in [`Op::Hello`]: one this crate
/// does not speak).
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Version {
    /// This crate's own.
    Current,
    /// The last without `listen` and `third_party`.
    BeforeHandoff,
    /// The oldest this crate speaks.
    Oldest,
}

impl Version {
    /// The number a `hello` carries.
    fn number(self) -> u32 {
        match self {
            Version::Current => PROTOCOL_VERSION,
            Version::BeforeHandoff => HANDOFF_VERSION - 1,
            Version::Oldest => MIN_PROTOCOL_VERSION,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Pick {
    /// An entry of the relevant model list (index modulo its length).
    Known(u8),
    /// A raw small id.
    Raw(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum WTarget {
    Export(Pick),
    Answer(Pick),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Desc {
    Sender(u8),
    SenderPromise(u8),
    Receiver(Pick),
    /// A vine (as `Sender`) with the introduction numbered `intro` ([`introduction`]).
    ThirdParty {
        vine: u8,
        intro: u8,
    },
}

#[derive(Arbitrary, Debug, Clone)]
enum WResult {
    Data,
    Err,
    SenderCap(u8),
    SenderPromiseCap(u8),
    ReceiverCap(Pick),
    /// A single `third_party`: what the answer resolves to is the vine.
    ThirdPartyCap {
        vine: u8,
        intro: u8,
    },
    Caps(Vec<Desc>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum LTarget {
    Import(Pick),
    Answer(Pick),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum LCap {
    Local(u8),
    Promise(u8),
    Import(Pick),
    /// A local object introduced with the introduction numbered `intro`.
    ThirdParty {
        object: u8,
        intro: u8,
    },
}

#[derive(Arbitrary, Debug, Clone)]
enum How {
    Data,
    Err,
    Local(u8),
    Promise(u8),
    Import(Pick),
    DataWithCaps(Vec<LCap>),
    TooBig,
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    // ---- the peer ----
    Hello {
        version: Option<Version>,
        frame: u8,
        questions: u8,
    },
    /// The peer's address hints (see [`hints`]).
    Listen {
        hints: u8,
    },
    Bootstrap {
        q: Pick,
        known: bool,
    },
    Deliver {
        target: WTarget,
        caps: Vec<Desc>,
        question: Option<Pick>,
        single_cap_data: bool,
    },
    Burst {
        target: WTarget,
        n: u8,
        ask: bool,
    },
    Return {
        q: Pick,
        result: WResult,
    },
    Finish {
        q: Pick,
    },
    /// The peer settles one of the promises it exported.
    Resolve {
        i: Pick,
        result: WResult,
    },
    Release {
        e: Pick,
        count: u8,
    },
    PeerAbort,
    Ping(u64),
    Pong(u64),
    RawFrame(Vec<u8>),
    DecodeError,
    ConnectionLost,
    // ---- the local runtime ----
    Send {
        target: LTarget,
        caps: Vec<LCap>,
        ask: bool,
        resolver: bool,
        refs: u8,
        /// 0: small data; `n`: data `4 * (n - 1)` bytes short of one byte over the
        /// peer's frame limit (at most 64 KiB), around what the session lets through.
        big: u8,
    },
    SendBurst {
        target: LTarget,
        n: u8,
    },
    LocalBootstrap {
        resolver: bool,
        refs: u8,
    },
    Answer {
        which: u8,
        how: How,
    },
    AnswerAgain {
        which: u8,
    },
    DropImport {
        which: u8,
    },
    DropQuestionRef {
        which: u8,
    },
    /// The runtime settles one of its promises it may have exported.
    ResolveExport {
        promise: u8,
        how: How,
    },
    LocalPing,
    LocalAbort,
    Events,
}

/// What the model predicts a peer message does to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Valid,
    Invalid,
    Unknown,
}

impl Expect {
    fn and(self, other: Expect) -> Expect {
        match (self, other) {
            (Expect::Invalid, _) | (_, Expect::Invalid) => Expect::Invalid,
            (Expect::Unknown, _) | (_, Expect::Unknown) => Expect::Unknown,
            _ => Expect::Valid,
        }
    }
}

/// An answer the peer asked for, as the model sees the session's answer table.
#[derive(Debug, Clone, Default)]
struct PeerAnswer {
    /// The session sent its `return`.
    returned: bool,
    /// The runtime answered it, or its `return` was seen.
    resolved: bool,
    /// The peer sent `finish` before the return.
    finished_early: bool,
    /// Finished early and possibly answered inside the session since: it may be gone.
    uncertain: bool,
    /// Messages the peer queued on it while unresolved.
    queued: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QState {
    /// Sent on the wire; no return yet.
    Pending,
    /// The peer returned it; the session owes (or sent) its finish.
    Returned,
    /// The session finished it before its return (a cancellation, PROTOCOL.md 9.7):
    /// the peer still owes the return, which the session must accept.
    FinishedEarly,
    /// Finished.
    Finished,
}

/// What a peer `deliver` (by the nonce in its method name) must reach.
#[derive(Debug, Clone)]
struct PeerCall {
    target: Target,
    /// The object the target designated when the call was sent (for exports).
    object: Option<Obj>,
    question: Option<u64>,
    caps: Vec<CapDescriptor>,
    /// For each receiver-hosted descriptor, the object its export designated.
    cap_objects: Vec<Option<Obj>>,
}

/// A local call (by the nonce in its method name).
#[derive(Debug, Clone)]
struct LocalCall {
    key: LocalTarget,
    question: Option<u64>,
    caps: Vec<OutCap<Obj>>,
    /// The runtime held the target reference when it sent the call.
    held: bool,
    /// The runtime held every `Import` reference in the payload.
    caps_held: bool,
    on_wire: bool,
    /// The version the peer's `hello` announced, if it had arrived when the call was
    /// made (from then on, what it introduces goes out in that version's terms).
    version: Option<u32>,
}

struct Harness {
    s: S,
    limits: Limits,
    next_nonce: u64,
    next_question: u64,
    next_resolver: Res,
    next_burst: u64,
    next_object: Obj,
    /// Resolvers of questions: must all come back, once.
    outstanding: HashSet<Res>,
    /// Resolvers of one-way sends: come back at most once (only if the send breaks).
    maybe_back: HashSet<Res>,
    /// Resolver → the local call it belongs to (by nonce), for break checks.
    resolver_call: HashMap<Res, u64>,
    /// Questions that broke because a reference they used was released.
    released_promises: HashSet<u64>,
    // ---- the runtime ----
    import_handles: Vec<ImportId>,
    question_refs: Vec<QuestionId>,
    pending_answers: Vec<AnswerId>,
    answered: Vec<AnswerId>,
    /// Caps of the payload the runtime answered with, by answer id (for the return).
    answer_caps: HashMap<u64, Vec<OutCap<Obj>>>,
    /// Answers resolved to a local object (where calls pipelined on them go).
    answered_with: HashMap<u64, Obj>,
    /// Answers resolved to one of the peer's references (calls pipelined on them are
    /// delivered to that import, for the runtime to forward).
    answered_import: HashMap<u64, u64>,
    local_calls: HashMap<u64, LocalCall>,
    /// The last local call sent on each reference (`true` = a question's answer).
    last_out: HashMap<(bool, u64), u64>,
    // ---- the peer's view ----
    hello_seen: bool,
    peer_hello_sent: bool,
    /// The version the peer's accepted `hello` announced.
    peer_version: Option<u32>,
    /// The session's `listen` owed right after its `hello` (`set_listen` was called).
    listen_out: Option<Vec<String>>,
    /// Hints of peer `listen`s accepted, owed as `Event::Listen`s in order.
    listens_owed: VecDeque<Vec<String>>,
    /// Times the peer sent each of its exports and the session has not released.
    given: HashMap<u64, u64>,
    /// For each import the session holds: `None` for an object, `Some(resolved)` for a
    /// promise (set by the descriptor that created the import).
    import_promise: HashMap<u64, Option<bool>>,
    /// `Event::Resolved`s owed, per import.
    resolved_owed: HashMap<u64, usize>,
    /// Exports whose `resolve` the session sent.
    resolved_exports: HashSet<u64>,
    /// The session's exports as the peer holds them: id → (object, count held).
    s_exports: HashMap<u64, (Obj, u64)>,
    /// Every export id ever seen, with its object: ids are never reused.
    export_history: HashMap<u64, Obj>,
    peer_answers: HashMap<u64, PeerAnswer>,
    s_questions: HashMap<u64, QState>,
    peer_calls: HashMap<u64, PeerCall>,
    /// The last peer call delivered for each wire target (`true` = an answer).
    last_in: HashMap<(bool, u64), u64>,
    /// The session must close with a violation (set when an invalid message went in).
    expect_violation: bool,
    closed_event: bool,
    /// The outbox was drained after the session closed: nothing may follow.
    drained_closed: bool,
}

fn data_nonce(nonce: u64) -> Vec<u8> {
    let mut v = vec![0x1b];
    v.extend_from_slice(&nonce.to_be_bytes());
    v
}

fn method_nonce(method: &str) -> Option<u64> {
    method.strip_prefix('m')?.parse().ok()
}

fn local_key(t: LocalTarget) -> (bool, u64) {
    match t {
        LocalTarget::Import(i) => (false, i.0),
        LocalTarget::Answer(q) => (true, q.0),
    }
}

fn wire_key(t: Target) -> (bool, u64) {
    match t {
        Target::Export(e) => (false, e),
        Target::Answer(a) => (true, a),
    }
}

/// The runtime's promises (exported with `OutCap::Promise`) are objects of their own.
fn promise_object(o: u8) -> Obj {
    50 + Obj::from(o % 3)
}

/// What `resolve_export` settles a promise to: data, an error, or this object.
const RESOLVED_TO: Obj = 6;

fn pick<T: Copy>(list: &[T], i: u8) -> Option<T> {
    (!list.is_empty()).then(|| list[usize::from(i) % list.len()])
}

/// `n % 5` address hints (at most `MAX_HINTS`), the fourth as long as a hint may be.
fn hints(n: u8) -> Vec<String> {
    (0..usize::from(n) % (MAX_HINTS + 1))
        .map(|j| match j {
            3 => format!("{}:4003", "h".repeat(MAX_HINT_LEN - 5)),
            _ => format!("host{j}.example:400{j}"),
        })
        .collect()
}

/// The introduction numbered `n`: its host, gift and hints all follow from `n`.
fn introduction(n: u8) -> Introduction {
    Introduction {
        host: [n; 32],
        gift: [!n; 32],
        hints: hints(n),
    }
}

/// The introduction a `third_party` descriptor carries.
fn introduced(t: &ThirdParty) -> Introduction {
    Introduction {
        host: t.host,
        gift: t.gift,
        hints: t.hints.clone(),
    }
}

/// A peer's `third_party` descriptor: its vine `vine % 6`, the introduction numbered `n`.
fn third_party(vine: u8, n: u8) -> CapDescriptor {
    let Introduction { host, gift, hints } = introduction(n);
    CapDescriptor::ThirdParty(Box::new(ThirdParty {
        host,
        gift,
        vine: u64::from(vine % 6),
        hints,
    }))
}

impl Harness {
    fn new(config: &Config) -> Harness {
        let mut limits = Limits::default();
        // The announced limits start at their protocol minimums (the session would raise
        // smaller values), so the fuzzer can still reach them.
        limits.max_imports = MIN_IMPORTS + usize::from(config.max_imports % 8);
        limits.max_exports = 1 + usize::from(config.max_exports % 8);
        limits.max_caps_per_message = MIN_CAPS + usize::from(config.max_caps % 4);
        limits.max_queued_per_promise = MIN_QUEUED + usize::from(config.max_queued % 4);
        limits.max_inbound_questions = usize::from(config.max_inbound);
        let mut s = Session::new(limits.clone(), std::time::Instant::now());
        let listen = hints(config.listen);
        s.set_listen(listen.clone());
        // The session raises some limits; the model uses the raised ones.
        limits.max_inbound_questions = limits.max_inbound_questions.max(64);
        limits.max_frame = limits.max_frame.max(8192);
        Harness {
            s,
            limits,
            next_nonce: 1,
            next_question: 1,
            next_resolver: 1,
            next_burst: BURST_IDS,
            next_object: 100,
            outstanding: HashSet::new(),
            maybe_back: HashSet::new(),
            resolver_call: HashMap::new(),
            released_promises: HashSet::new(),
            import_handles: Vec::new(),
            question_refs: Vec::new(),
            pending_answers: Vec::new(),
            answered: Vec::new(),
            answer_caps: HashMap::new(),
            answered_with: HashMap::new(),
            answered_import: HashMap::new(),
            local_calls: HashMap::new(),
            last_out: HashMap::new(),
            hello_seen: false,
            peer_hello_sent: false,
            peer_version: None,
            listen_out: (!listen.is_empty()).then_some(listen),
            listens_owed: VecDeque::new(),
            given: HashMap::new(),
            import_promise: HashMap::new(),
            resolved_owed: HashMap::new(),
            resolved_exports: HashSet::new(),
            s_exports: HashMap::new(),
            export_history: HashMap::new(),
            peer_answers: HashMap::new(),
            s_questions: HashMap::new(),
            peer_calls: HashMap::new(),
            last_in: HashMap::new(),
            expect_violation: false,
            closed_event: false,
            drained_closed: false,
        }
    }

    fn nonce(&mut self) -> u64 {
        self.next_nonce += 1;
        self.next_nonce
    }

    fn resolver(&mut self) -> Res {
        self.next_resolver += 1;
        self.next_resolver
    }

    // ---- picking ids ----

    fn pick_export(&self, p: Pick) -> u64 {
        match p {
            Pick::Known(i) => {
                let mut live: Vec<u64> = self.s_exports.keys().copied().collect();
                live.sort_unstable();
                pick(&live, i).unwrap_or(u64::from(i % 4))
            }
            Pick::Raw(i) => u64::from(i % 8),
        }
    }

    fn pick_peer_answer(&self, p: Pick) -> u64 {
        match p {
            Pick::Known(i) => {
                let mut ids: Vec<u64> = self.peer_answers.keys().copied().collect();
                ids.sort_unstable();
                pick(&ids, i).unwrap_or(u64::from(i % 4))
            }
            Pick::Raw(i) => u64::from(i % 16),
        }
    }

    fn pick_s_question(&self, p: Pick) -> u64 {
        match p {
            Pick::Known(i) => {
                let mut ids: Vec<u64> = self
                    .s_questions
                    .iter()
                    .filter(|(_, st)| matches!(st, QState::Pending | QState::FinishedEarly))
                    .map(|(q, _)| *q)
                    .collect();
                ids.sort_unstable();
                pick(&ids, i).unwrap_or(u64::from(i % 8))
            }
            Pick::Raw(i) => u64::from(i % 16),
        }
    }

    fn pick_import(&self, p: Pick) -> (ImportId, bool) {
        match p {
            Pick::Known(i) => match pick(&self.import_handles, i) {
                Some(id) => (id, true),
                None => (ImportId(u64::from(i % 4)), false),
            },
            Pick::Raw(i) => {
                let id = ImportId(u64::from(i % 6));
                (id, self.import_handles.contains(&id))
            }
        }
    }

    fn pick_local_target(&self, t: LTarget) -> (LocalTarget, bool) {
        match t {
            LTarget::Import(p) => {
                let (id, held) = self.pick_import(p);
                (LocalTarget::Import(id), held)
            }
            LTarget::Answer(Pick::Known(i)) => match pick(&self.question_refs, i) {
                Some(q) => (LocalTarget::Answer(q), true),
                None => (LocalTarget::Answer(QuestionId(u64::from(i % 4))), false),
            },
            LTarget::Answer(Pick::Raw(i)) => {
                let q = QuestionId(u64::from(i % 8));
                (LocalTarget::Answer(q), self.question_refs.contains(&q))
            }
        }
    }

    fn local_caps(&mut self, caps: &[LCap]) -> (Vec<OutCap<Obj>>, bool) {
        let mut held = true;
        let caps = caps
            .iter()
            .take(6)
            .map(|c| match *c {
                LCap::Local(o) => OutCap::Local(Obj::from(o % 6) + 1),
                LCap::Promise(o) => OutCap::Promise(promise_object(o)),
                LCap::Import(p) => {
                    let (id, h) = self.pick_import(p);
                    held &= h;
                    OutCap::Import(id)
                }
                LCap::ThirdParty { object, intro } => {
                    OutCap::ThirdParty(Obj::from(object % 6) + 1, Box::new(introduction(intro)))
                }
            })
            .collect();
        (caps, held)
    }

    fn wire_target(&self, t: WTarget) -> Target {
        match t {
            WTarget::Export(p) => Target::Export(self.pick_export(p)),
            WTarget::Answer(p) => Target::Answer(self.pick_peer_answer(p)),
        }
    }

    fn wire_caps(&self, caps: &[Desc]) -> Vec<CapDescriptor> {
        caps.iter()
            .take(6)
            .map(|d| match *d {
                Desc::Sender(i) => CapDescriptor::SenderHosted(u64::from(i % 6)),
                Desc::SenderPromise(i) => CapDescriptor::SenderPromise(u64::from(i % 6)),
                Desc::Receiver(p) => CapDescriptor::ReceiverHosted(self.pick_export(p)),
                Desc::ThirdParty { vine, intro } => third_party(vine, intro),
            })
            .collect()
    }

    // ---- predicting what a peer message does ----

    fn answers_in_table(&self) -> (usize, usize) {
        let uncertain = self.peer_answers.values().filter(|a| a.uncertain).count();
        (self.peer_answers.len() - uncertain, uncertain)
    }

    fn expect_new_answer(&self, id: u64, also_new: usize) -> Expect {
        match self.peer_answers.get(&id) {
            Some(a) if a.uncertain => return Expect::Unknown,
            Some(_) => return Expect::Invalid,
            None => {}
        }
        let (certain, uncertain) = self.answers_in_table();
        let limit = self.limits.max_inbound_questions;
        if certain + also_new >= limit {
            Expect::Invalid
        } else if certain + uncertain + also_new >= limit {
            Expect::Unknown
        } else {
            Expect::Valid
        }
    }

    fn expect_caps(&self, caps: &[CapDescriptor]) -> Expect {
        if caps.len() > self.limits.max_caps_per_message {
            return Expect::Invalid;
        }
        let mut fresh = HashSet::new();
        for c in caps {
            match *c {
                CapDescriptor::SenderHosted(i) | CapDescriptor::SenderPromise(i) => {
                    if self.given.get(&i).copied().unwrap_or(0) == 0 {
                        fresh.insert(i);
                    }
                }
                CapDescriptor::ReceiverHosted(e) => {
                    if self.s_exports.get(&e).is_none_or(|&(_, n)| n == 0) {
                        return Expect::Invalid;
                    }
                }
                // A vine, counted as `sender_hosted`; a version-4 descriptor.
                CapDescriptor::ThirdParty(ref t) => {
                    if !self.speaks_handoff() {
                        return Expect::Invalid;
                    }
                    if self.given.get(&t.vine).copied().unwrap_or(0) == 0 {
                        fresh.insert(t.vine);
                    }
                }
            }
        }
        let held = self.given.values().filter(|&&n| n > 0).count();
        if held + fresh.len() > self.limits.max_imports {
            Expect::Invalid
        } else {
            Expect::Valid
        }
    }

    /// Whether the peer's `hello` announced version 4 (`listen`, `third_party`).
    fn speaks_handoff(&self) -> bool {
        self.peer_version.is_some_and(|v| v >= HANDOFF_VERSION)
    }

    fn expect(&self, msg: &Message) -> Expect {
        if !self.peer_hello_sent {
            return match msg {
                Message::Hello(hello) => {
                    let minimums = Hello {
                        version: PROTOCOL_VERSION,
                        ..Hello::MINIMUM
                    };
                    if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.version)
                        && hello.max_frame >= minimums.max_frame
                        && hello.max_questions >= minimums.max_questions
                        && hello.max_queued >= minimums.max_queued
                        && hello.max_imports >= minimums.max_imports
                        && hello.max_caps >= minimums.max_caps
                        && hello.max_depth >= minimums.max_depth
                        && hello.max_items >= minimums.max_items
                    {
                        Expect::Valid
                    } else {
                        Expect::Invalid
                    }
                }
                Message::Abort { .. } => Expect::Valid,
                _ => Expect::Invalid,
            };
        }
        match msg {
            Message::Hello { .. } => Expect::Invalid,
            Message::Bootstrap { question, .. } => self.expect_new_answer(*question, 0),
            Message::Deliver {
                target,
                payload,
                question,
                ..
            } => {
                let t = match *target {
                    Target::Export(e) => {
                        if self.s_exports.get(&e).is_some_and(|&(_, n)| n > 0) {
                            Expect::Valid
                        } else {
                            Expect::Invalid
                        }
                    }
                    Target::Answer(a) => match self.peer_answers.get(&a) {
                        None => Expect::Invalid,
                        Some(pa) if pa.uncertain => Expect::Unknown,
                        Some(pa) if pa.resolved => Expect::Valid,
                        Some(pa) if pa.queued >= self.limits.max_queued_per_promise => {
                            Expect::Invalid
                        }
                        Some(_) => Expect::Valid,
                    },
                };
                if t == Expect::Invalid {
                    return t;
                }
                let q = match question {
                    Some(q) => self.expect_new_answer(*q, 0),
                    None => Expect::Valid,
                };
                if q == Expect::Invalid {
                    return q;
                }
                t.and(q).and(self.expect_caps(&payload.caps))
            }
            Message::Return { question, result } => {
                if !matches!(
                    self.s_questions.get(question),
                    Some(QState::Pending | QState::FinishedEarly)
                ) {
                    return Expect::Invalid;
                }
                match result {
                    ReturnResult::Ok(p) => self.expect_caps(&p.caps),
                    ReturnResult::Err(_) => Expect::Valid,
                }
            }
            // No quiet question is ever asked here, so a `want_return` for an answer
            // that exists is one that crossed its `return`: ignored.
            Message::Finish { question } | Message::WantReturn { question } => {
                match self.peer_answers.get(question) {
                    None => Expect::Invalid,
                    Some(a) if a.uncertain => Expect::Unknown,
                    Some(_) => Expect::Valid,
                }
            }
            Message::Release { export, count } => match self.s_exports.get(export) {
                Some(&(_, n)) if n > 0 && *count >= 1 && *count <= n => Expect::Valid,
                _ => Expect::Invalid,
            },
            Message::Resolve { export, result } => {
                // Settling an unknown (released) import is ignored; settling an object
                // or a promise twice is a violation.
                if self.given.get(export).copied().unwrap_or(0) > 0
                    && self.import_promise.get(export) != Some(&Some(false))
                {
                    return Expect::Invalid;
                }
                match result {
                    ReturnResult::Ok(p) => self.expect_caps(&p.caps),
                    ReturnResult::Err(_) => Expect::Valid,
                }
            }
            Message::Listen { .. } if !self.speaks_handoff() => Expect::Invalid,
            _ => Expect::Valid,
        }
    }

    // ---- the peer sends ----

    fn peer_send(&mut self, msg: Message) {
        if self.s.is_closed() {
            // A closed session ignores everything.
            self.s.handle_message(msg);
            assert_eq!(self.s.stats(), SessionStats::default());
            return;
        }
        let expect = self.expect(&msg);
        // Record what a deliver must reach before the session sees it.
        if let Message::Deliver {
            target,
            method,
            payload,
            question,
            ..
        } = &msg
        {
            let nonce = method_nonce(method).expect("peer methods carry a nonce");
            let object = match target {
                Target::Export(e) => self.s_exports.get(e).map(|&(o, _)| o),
                Target::Answer(_) => None,
            };
            let cap_objects = payload
                .caps
                .iter()
                .map(|c| match c {
                    CapDescriptor::ReceiverHosted(e) => self.s_exports.get(e).map(|&(o, _)| o),
                    _ => None,
                })
                .collect();
            self.peer_calls.insert(
                nonce,
                PeerCall {
                    target: *target,
                    object,
                    question: *question,
                    caps: payload.caps.clone(),
                    cap_objects,
                },
            );
        }
        // Carry it as a frame, as the runtime does.
        let mut frame = Vec::new();
        msg.encode_frame(&mut frame).expect("encodes");
        self.s.handle_frame(&frame[4..]);
        let closed = self.s.is_closed();
        match expect {
            Expect::Valid => assert!(
                !closed || matches!(msg, Message::Abort { .. }),
                "a valid {msg:?} closed the session: {:?}",
                self.s.closed_reason()
            ),
            Expect::Invalid => {
                assert!(closed, "an invalid {msg:?} was accepted");
                self.expect_violation = true;
            }
            Expect::Unknown => {}
        }
        if closed {
            return;
        }
        self.accepted(msg);
    }

    fn new_peer_answer(&mut self, id: u64) {
        self.peer_answers.insert(id, PeerAnswer::default());
        self.answered_with.remove(&id);
        self.answered_import.remove(&id);
        self.answer_caps.remove(&id);
    }

    /// Updates the peer's view after the session accepted `msg`.
    fn accepted(&mut self, msg: Message) {
        let take_caps = |this: &mut Harness, caps: &[CapDescriptor]| {
            for c in caps {
                let (i, promise) = match c {
                    CapDescriptor::SenderHosted(i) => (*i, false),
                    CapDescriptor::SenderPromise(i) => (*i, true),
                    CapDescriptor::ThirdParty(t) => (t.vine, false),
                    CapDescriptor::ReceiverHosted(_) => continue,
                };
                let n = this.given.entry(i).or_default();
                if *n == 0 {
                    // The descriptor that creates the import says what it is.
                    this.import_promise.insert(i, promise.then_some(false));
                }
                *n += 1;
            }
        };
        match msg {
            Message::Hello(hello) => {
                self.peer_hello_sent = true;
                self.peer_version = Some(hello.version);
            }
            Message::Listen { hints } => self.listens_owed.push_back(hints),
            Message::Bootstrap { question, .. } => {
                self.new_peer_answer(question);
            }
            Message::Deliver {
                target,
                payload,
                question,
                ..
            } => {
                if let Target::Answer(a) = target
                    && let Some(pa) = self.peer_answers.get_mut(&a)
                    && !pa.resolved
                {
                    pa.queued += 1;
                }
                if let Some(q) = question {
                    self.new_peer_answer(q);
                }
                take_caps(self, &payload.caps);
            }
            Message::Return { question, result } => {
                // A question the session finished early needs no finish after this.
                let after = match self.s_questions.get(&question) {
                    Some(QState::FinishedEarly) => QState::Finished,
                    _ => QState::Returned,
                };
                self.s_questions.insert(question, after);
                if let ReturnResult::Ok(p) = result {
                    take_caps(self, &p.caps);
                }
            }
            Message::Finish { question } => {
                if let Some(pa) = self.peer_answers.get_mut(&question) {
                    if pa.returned || pa.resolved {
                        self.peer_answers.remove(&question);
                    } else {
                        // Cancelled: the session answers it `cancelled` at once and
                        // frees it; the model drops it when it sees that return.
                        pa.finished_early = true;
                        pa.uncertain = true;
                    }
                }
            }
            Message::Resolve { export, result } => {
                if self.given.get(&export).copied().unwrap_or(0) > 0 {
                    self.import_promise.insert(export, Some(true));
                    *self.resolved_owed.entry(export).or_default() += 1;
                }
                if let ReturnResult::Ok(p) = result {
                    take_caps(self, &p.caps);
                }
            }
            Message::Release { export, count } => {
                if let Some(entry) = self.s_exports.get_mut(&export) {
                    entry.1 -= count;
                    if entry.1 == 0 {
                        self.s_exports.remove(&export);
                    }
                }
            }
            _ => {}
        }
    }

    // ---- what the session transmits ----

    fn check_outbox(&mut self) {
        while let Some(msg) = self.s.poll_transmit() {
            assert!(!self.drained_closed, "{msg:?} transmitted after the close");
            let mut frame = Vec::new();
            let len = msg.encode_frame(&mut frame).expect("encodes");
            assert!(
                len <= self.s.peer_max_frame(),
                "a {len}-byte {} over the peer's limit of {}",
                msg.kind(),
                self.s.peer_max_frame()
            );
            let back = Message::decode(&frame[4..], &CborLimits::DEFAULT).expect("decodes");
            assert_eq!(back, msg);
            if !self.hello_seen {
                assert!(matches!(msg, Message::Hello { .. }), "{msg:?} before hello");
                self.hello_seen = true;
                continue;
            }
            if let Some(hints) = self.listen_out.take() {
                assert_eq!(msg, Message::Listen { hints }, "not the listen after hello");
                continue;
            }
            self.check_sent(msg);
        }
        if self.s.is_closed() {
            self.drained_closed = true;
        }
    }

    fn check_held(&self, i: u64, what: &str) {
        assert!(
            self.given.get(&i).copied().unwrap_or(0) > 0,
            "{what} names import {i}, which the session does not hold"
        );
    }

    /// Records `caps` (as the local side named them) against the descriptors sent;
    /// `version` is the peer's, if its `hello` had arrived when the runtime gave them.
    fn check_given_caps(
        &mut self,
        local: &[OutCap<Obj>],
        wire: &[CapDescriptor],
        version: Option<u32>,
    ) {
        assert_eq!(local.len(), wire.len());
        for (l, w) in local.iter().zip(wire) {
            let (o, e) = match (l, w) {
                (OutCap::Local(o), CapDescriptor::SenderHosted(e))
                | (
                    OutCap::Promise(o),
                    CapDescriptor::SenderPromise(e) | CapDescriptor::SenderHosted(e),
                ) => (*o, *e),
                // An introduction goes out in the terms of the version the peer spoke
                // when the session took it (before the peer's `hello`, the oldest).
                (OutCap::ThirdParty(o, intro), CapDescriptor::ThirdParty(t)) => {
                    assert!(
                        self.speaks_handoff() && version.is_none_or(|v| v >= HANDOFF_VERSION),
                        "third_party to a peer of version {:?}",
                        self.peer_version
                    );
                    assert_eq!(
                        **intro,
                        introduced(t),
                        "the introduction changed on the way"
                    );
                    (*o, t.vine)
                }
                (OutCap::ThirdParty(o, _), CapDescriptor::SenderHosted(e)) => {
                    assert!(
                        version.is_none_or(|v| v < HANDOFF_VERSION),
                        "a vine went as sender_hosted to a version-4 peer"
                    );
                    (*o, *e)
                }
                (OutCap::Import(i), CapDescriptor::ReceiverHosted(j)) => {
                    assert_eq!(i.0, *j);
                    self.check_held(*j, "a receiver-hosted descriptor");
                    continue;
                }
                other => panic!("descriptor does not match the reference: {other:?}"),
            };
            if let Some(old) = self.export_history.insert(e, o) {
                assert_eq!(old, o, "export id {e} reused for another object");
            }
            let entry = self.s_exports.entry(e).or_insert((o, 0));
            entry.1 += 1;
            for (&other, &(obj, n)) in &self.s_exports {
                assert!(
                    other == e || obj != o || n == 0,
                    "object {o} exported twice (ids {e} and {other})"
                );
            }
        }
    }

    fn check_sent(&mut self, msg: Message) {
        match msg {
            Message::Hello { .. } => panic!("a second hello"),
            Message::Bootstrap { question, .. } => {
                assert!(
                    question < self.next_question + 1,
                    "unknown question {question}"
                );
                let old = self.s_questions.insert(question, QState::Pending);
                assert!(old.is_none(), "question {question} asked twice");
            }
            Message::Deliver {
                quiet: _,
                target,
                method,
                payload,
                question,
            } => {
                let nonce = method_nonce(&method).expect("a local call");
                let call = self.local_calls.get_mut(&nonce).expect("a call we made");
                assert!(!call.on_wire, "call {nonce} sent twice");
                call.on_wire = true;
                assert_eq!(question, call.question);
                let call = call.clone();
                if let Some(last) = self.last_out.insert(local_key(call.key), nonce) {
                    assert!(
                        last < nonce,
                        "E-order on {:?}: {last} after {nonce}",
                        call.key
                    );
                }
                match target {
                    Target::Export(i) => self.check_held(i, "a deliver"),
                    // Pipelined on a question the peer still answers: not returned yet,
                    // or returned and not finished (a promise that resolved to one of
                    // our own objects keeps its path until the finish).
                    Target::Answer(q) => assert!(
                        matches!(
                            self.s_questions.get(&q),
                            Some(QState::Pending | QState::Returned)
                        ),
                        "pipelined on question {q}, which is finished or was never asked"
                    ),
                }
                self.check_given_caps(&call.caps, &payload.caps, call.version);
                if let Some(q) = question {
                    let old = self.s_questions.insert(q, QState::Pending);
                    assert!(old.is_none(), "question {q} asked twice");
                }
            }
            Message::Return { question, result } => {
                let pa = self
                    .peer_answers
                    .get_mut(&question)
                    .unwrap_or_else(|| panic!("return for {question}, never asked"));
                assert!(!pa.returned, "question {question} returned twice");
                if pa.finished_early {
                    let ReturnResult::Err(w) = &result else {
                        panic!("question {question} was cancelled, yet returned {result:?}");
                    };
                    assert_eq!(w.kind, "cancelled", "return for cancelled {question}");
                    self.peer_answers.remove(&question);
                    self.answer_caps.remove(&question);
                    self.answered_with.remove(&question);
                    self.answered_import.remove(&question);
                    return;
                }
                pa.returned = true;
                pa.resolved = true;
                pa.queued = 0;
                match result {
                    ReturnResult::Ok(p) => {
                        let local = self.answer_caps.remove(&question).unwrap_or_default();
                        self.check_given_caps(&local, &p.caps, self.peer_version);
                    }
                    ReturnResult::Err(_) => {
                        self.answered_with.remove(&question);
                        self.answered_import.remove(&question);
                    }
                }
            }
            Message::Finish { question } => {
                // Before its return only as a cancellation: the session no longer
                // wants the answer (here, its last pipelined handle went unused).
                let state = match self.s_questions.get(&question) {
                    Some(QState::Returned) => QState::Finished,
                    Some(QState::Pending) => QState::FinishedEarly,
                    other => panic!("finish for question {question} in state {other:?}"),
                };
                self.s_questions.insert(question, state);
            }
            Message::Resolve { export, result } => {
                let &(object, n) = self
                    .s_exports
                    .get(&export)
                    .unwrap_or_else(|| panic!("resolve for export {export}, not held"));
                assert!(n > 0);
                assert!(
                    (50..53).contains(&object),
                    "resolve for {object}, not a promise"
                );
                assert!(
                    self.resolved_exports.insert(export),
                    "export {export} resolved twice"
                );
                if let ReturnResult::Ok(p) = result {
                    let local = if p.caps.is_empty() {
                        Vec::new()
                    } else {
                        vec![OutCap::Local(RESOLVED_TO)]
                    };
                    self.check_given_caps(&local, &p.caps, self.peer_version);
                }
            }
            Message::Release { export, count } => {
                self.import_promise.remove(&export);
                // A settlement the session never reported (deferred, then dropped with
                // the import) is not owed any more.
                self.resolved_owed.remove(&export);
                let held = self.given.remove(&export).unwrap_or(0);
                assert!(count >= 1, "release with count 0");
                assert_eq!(
                    count, held,
                    "release of {export} gives back {count} of {held}"
                );
            }
            Message::Abort { .. } => assert!(self.s.is_closed(), "abort from an open session"),
            Message::Ping { .. } | Message::Pong { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    // ---- events ----

    fn events(&mut self) {
        while let Some(ev) = self.s.poll_event() {
            match ev {
                Event::Deliver {
                    target,
                    method,
                    payload,
                    answer,
                } => {
                    let nonce = method_nonce(&method).expect("a peer call");
                    let call = self.peer_calls.remove(&nonce).expect("delivered once");
                    assert_eq!(answer.map(|a| a.0), call.question);
                    match target {
                        InCap::Local(o) => {
                            let expected = match call.target {
                                Target::Export(_) => call.object,
                                Target::Answer(a) => self.answered_with.get(&a).copied(),
                            };
                            assert_eq!(Some(o), expected, "{call:?} reached the wrong object");
                        }
                        InCap::ThirdParty(i, _) => panic!("{call:?} delivered to vine {i}"),
                        InCap::Import(i) | InCap::Promise(i) => {
                            // Pipelined on an answer that resolved to the peer's own
                            // reference: delivered to that import, for the runtime to
                            // forward, with a handle of its own.
                            let Target::Answer(a) = call.target else {
                                panic!("{call:?} delivered to import {i}");
                            };
                            assert_eq!(self.answered_import.get(&a), Some(&i.0), "{call:?}");
                            self.import_handles.push(i);
                        }
                    }
                    if let Some(last) = self.last_in.insert(wire_key(call.target), nonce) {
                        assert!(last < nonce, "E-order on {:?}", call.target);
                    }
                    assert_eq!(payload.caps.len(), call.caps.len());
                    for ((cap, desc), object) in
                        payload.caps.iter().zip(&call.caps).zip(&call.cap_objects)
                    {
                        match (cap, desc) {
                            (InCap::Import(i), CapDescriptor::SenderHosted(j))
                            | (InCap::Promise(i), CapDescriptor::SenderPromise(j)) => {
                                assert_eq!(i.0, *j);
                                self.import_handles.push(*i);
                            }
                            (InCap::ThirdParty(i, intro), CapDescriptor::ThirdParty(t)) => {
                                assert_eq!(i.0, t.vine);
                                assert_eq!(**intro, introduced(t), "introduction changed");
                                self.import_handles.push(*i);
                            }
                            (InCap::Local(o), CapDescriptor::ReceiverHosted(_)) => {
                                assert_eq!(Some(*o), *object, "a reference came home wrong");
                            }
                            other => panic!("cap does not match its descriptor: {other:?}"),
                        }
                    }
                    if let Some(a) = answer {
                        self.pending_answers.push(a);
                    }
                }
                Event::Bootstrap { answer, swiss } => {
                    let _ = swiss;
                    self.pending_answers.push(answer);
                }
                Event::Return { resolver, result } => {
                    let was =
                        self.outstanding.remove(&resolver) || self.maybe_back.remove(&resolver);
                    assert!(
                        was,
                        "resolver {resolver} came back twice or was never given"
                    );
                    if let Err(b) = &result {
                        self.check_break(resolver, b);
                    }
                    if let Ok(p) = result {
                        self.keep(p.caps);
                    }
                }
                Event::Resolved { import, result } => {
                    let owed = self.resolved_owed.entry(import.0).or_default();
                    assert!(*owed > 0, "import {import} resolved without a resolve");
                    *owed -= 1;
                    if let Ok(p) = result {
                        self.keep(p.caps);
                    }
                }
                Event::Pong { .. } => {}
                Event::Listen { hints } => {
                    let owed = self.listens_owed.pop_front();
                    assert_eq!(owed, Some(hints), "a listen event, not as the peer sent it");
                }
                Event::Cancel { answer } => {
                    // The runtime stops the method: it will not answer.
                    self.pending_answers.retain(|&a| a != answer);
                }
                Event::ExportsLost { objects } => {
                    assert!(self.s.is_closed(), "exports lost by an open session");
                    let unique: HashSet<_> = objects.iter().collect();
                    assert_eq!(unique.len(), objects.len(), "{objects:?}");
                }
                Event::Closed { reason } => {
                    assert!(!self.closed_event, "closed twice");
                    assert!(self.s.is_closed());
                    self.closed_event = true;
                    if self.expect_violation {
                        assert!(matches!(reason, CloseReason::Violation(_)), "{reason:?}");
                    }
                }
                other => panic!("unknown event {other:?}"),
            }
        }
    }

    /// The runtime keeps the handles an incoming payload holds.
    fn keep(&mut self, caps: Vec<InCap<Obj>>) {
        for cap in caps {
            if let InCap::Import(i) | InCap::Promise(i) | InCap::ThirdParty(i, _) = cap {
                self.import_handles.push(i);
            }
        }
    }

    /// A call that broke as "released" must have been sent on a dropped reference, or
    /// on a promise that itself broke that way (its calls inherit its error).
    fn check_break(&mut self, resolver: Res, b: &Broken) {
        let Some(call) = self
            .resolver_call
            .get(&resolver)
            .and_then(|n| self.local_calls.get(n))
        else {
            return;
        };
        if !b.message().contains("released") {
            return;
        }
        let inherited =
            matches!(call.key, LocalTarget::Answer(q) if self.released_promises.contains(&q.0));
        if b.message().contains("released before it could be sent") {
            assert!(
                !call.caps_held || inherited,
                "a held reference in the payload broke: {b}"
            );
        } else {
            assert!(
                !call.held || inherited,
                "a call on a held reference broke: {b}"
            );
        }
        if let Some(q) = call.question {
            self.released_promises.insert(q);
        }
    }

    // ---- local commands ----

    fn send(
        &mut self,
        target: LTarget,
        caps: &[LCap],
        ask: bool,
        resolver: bool,
        refs: u8,
        big: u8,
    ) {
        let (key, held) = self.pick_local_target(target);
        let (caps, caps_held) = self.local_caps(caps);
        let nonce = self.nonce();
        let question = ask.then(|| {
            self.next_question += 1;
            self.next_question
        });
        let resolver = (ask || resolver).then(|| self.resolver());
        if let Some(r) = resolver {
            if ask {
                self.outstanding.insert(r);
            } else {
                self.maybe_back.insert(r);
            }
            self.resolver_call.insert(r, nonce);
        }
        let pipeline_refs = if ask { u32::from(refs % 3) } else { 0 };
        if let Some(q) = question {
            for _ in 0..pipeline_refs {
                self.question_refs.push(QuestionId(q));
            }
        }
        let data = match big {
            0 => data_nonce(nonce),
            n => vec![
                0;
                (self.s.peer_max_frame().min(1 << 16) + 1)
                    .saturating_sub(4 * usize::from(n - 1))
            ],
        };
        self.local_calls.insert(
            nonce,
            LocalCall {
                key,
                question,
                caps: caps.clone(),
                held,
                caps_held,
                on_wire: false,
                version: self.peer_version,
            },
        );
        self.s.send(Call {
            quiet: false,
            target: key,
            method: format!("m{nonce}"),
            payload: OutPayload {
                shape: None,
                data: data.into(),
                caps,
            },
            question: question.map(QuestionId),
            resolver,
            pipeline_refs,
            deadline: None,
        });
    }

    fn answer(&mut self, which: u8, how: How) {
        let Some(i) = (!self.pending_answers.is_empty())
            .then(|| usize::from(which) % self.pending_answers.len())
        else {
            return;
        };
        let id = self.pending_answers.swap_remove(i);
        let result = match how {
            How::Data => Ok(OutPayload::data(data_nonce(0))),
            How::Err => Err(Broken::failed("no")),
            How::Local(o) => {
                let o = if o % 2 == 0 {
                    self.next_object += 1;
                    self.next_object
                } else {
                    Obj::from(o % 6) + 1
                };
                Ok(OutPayload::single_cap(OutCap::Local(o)))
            }
            How::Promise(p) => Ok(OutPayload::single_cap(OutCap::Promise(promise_object(p)))),
            How::Import(p) => Ok(OutPayload::single_cap(OutCap::Import(
                self.pick_import(p).0,
            ))),
            How::DataWithCaps(caps) => {
                let (caps, _) = self.local_caps(&caps);
                Ok(OutPayload {
                    shape: None,
                    data: data_nonce(1).into(),
                    caps,
                })
            }
            How::TooBig => Ok(OutPayload::data(vec![0; self.s.peer_max_frame() - 90])),
        };
        if let Ok(p) = &result {
            self.answer_caps.insert(id.0, p.caps.clone());
            if p.data[..] == SINGLE_CAP {
                match p.caps[..] {
                    [OutCap::Local(o) | OutCap::Promise(o)] => {
                        self.answered_with.insert(id.0, o);
                    }
                    [OutCap::Import(i)] => {
                        self.answered_import.insert(id.0, i.0);
                    }
                    _ => {}
                }
            }
        }
        if let Some(pa) = self.peer_answers.get_mut(&id.0) {
            pa.resolved = true;
            pa.queued = 0;
            if pa.finished_early {
                // Answered after the peer's finish: gone, and nothing is sent.
                self.peer_answers.remove(&id.0);
                self.answer_caps.remove(&id.0);
            }
        }
        self.answered.push(id);
        self.s.answer(id, result);
    }

    // ---- invariants after every step ----

    fn check_invariants(&mut self) {
        self.check_outbox();
        let st = self.s.stats();
        if self.s.is_closed() {
            assert_eq!(st, SessionStats::default(), "a closed session holds {st:?}");
        } else {
            assert!(st.imports <= self.limits.max_imports, "{st:?}");
            assert!(st.exports <= self.limits.max_exports, "{st:?}");
            assert!(st.answers <= self.limits.max_inbound_questions, "{st:?}");
            let live_imports = self.given.values().filter(|&&n| n > 0).count();
            assert_eq!(st.imports, live_imports, "imports: session {st:?} vs model");
            let live_exports = self.s_exports.values().filter(|&&(_, n)| n > 0).count();
            assert_eq!(st.exports, live_exports, "exports: session {st:?} vs model");
            let (certain, uncertain) = self.answers_in_table();
            assert!(
                st.answers >= certain && st.answers <= certain + uncertain,
                "answers: session {st:?} vs model {certain}+{uncertain}"
            );
        }
    }

    fn wire_result(&self, result: WResult) -> ReturnResult {
        match result {
            WResult::Data => ReturnResult::Ok(Payload {
                data: data_nonce(7).into(),
                caps: Vec::new(),
            }),
            WResult::Err => ReturnResult::Err(WireBroken {
                kind: "failed".into(),
                message: "no".into(),
                data: None,
            }),
            WResult::SenderCap(i) => ReturnResult::Ok(Payload {
                data: SINGLE_CAP.to_vec().into(),
                caps: vec![CapDescriptor::SenderHosted(u64::from(i % 6))],
            }),
            WResult::SenderPromiseCap(i) => ReturnResult::Ok(Payload {
                data: SINGLE_CAP.to_vec().into(),
                caps: vec![CapDescriptor::SenderPromise(u64::from(i % 6))],
            }),
            WResult::ReceiverCap(p) => ReturnResult::Ok(Payload {
                data: SINGLE_CAP.to_vec().into(),
                caps: vec![CapDescriptor::ReceiverHosted(self.pick_export(p))],
            }),
            WResult::ThirdPartyCap { vine, intro } => ReturnResult::Ok(Payload {
                data: SINGLE_CAP.to_vec().into(),
                caps: vec![third_party(vine, intro)],
            }),
            WResult::Caps(caps) => ReturnResult::Ok(Payload {
                data: data_nonce(8).into(),
                caps: self.wire_caps(&caps),
            }),
        }
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Hello {
                version,
                frame,
                questions,
            } => {
                let max_frame = if frame == 0 {
                    8191
                } else {
                    8192 * u64::from(frame)
                };
                let max_questions = if questions == 0 {
                    63
                } else {
                    63 + u64::from(questions)
                };
                self.peer_send(Message::Hello(Hello {
                    version: version.map_or(PROTOCOL_VERSION + 1, Version::number),
                    max_frame,
                    max_questions,
                    // The other limits as a vat on default settings announces them.
                    ..announce(&Limits::default())
                }));
            }
            Op::Bootstrap { q, known } => {
                let question = self.pick_peer_answer(q);
                let swiss = SwissNumber::from_bytes([u8::from(known); 32]);
                self.peer_send(Message::Bootstrap { question, swiss });
            }
            Op::Deliver {
                target,
                caps,
                question,
                single_cap_data,
            } => {
                let target = self.wire_target(target);
                let caps = self.wire_caps(&caps);
                let question = question.map(|p| match p {
                    Pick::Known(i) | Pick::Raw(i) => u64::from(i % 24),
                });
                let nonce = self.nonce();
                let data = if single_cap_data {
                    SINGLE_CAP.to_vec()
                } else {
                    data_nonce(nonce)
                };
                self.peer_send(Message::Deliver {
                    quiet: false,
                    target,
                    method: format!("m{nonce}"),
                    payload: Payload {
                        data: data.into(),
                        caps,
                    },
                    question,
                });
            }
            Op::Burst { target, n, ask } => {
                let target = self.wire_target(target);
                for _ in 0..n {
                    if self.s.is_closed() {
                        break;
                    }
                    let nonce = self.nonce();
                    let question = ask.then(|| {
                        self.next_burst += 1;
                        self.next_burst
                    });
                    self.peer_send(Message::Deliver {
                        quiet: false,
                        target,
                        method: format!("m{nonce}"),
                        payload: Payload {
                            data: data_nonce(nonce).into(),
                            caps: Vec::new(),
                        },
                        question,
                    });
                    self.check_outbox();
                }
            }
            Op::Return { q, result } => {
                let question = self.pick_s_question(q);
                let result = self.wire_result(result);
                self.peer_send(Message::Return { question, result });
            }
            Op::Resolve { i, result } => {
                let export = match i {
                    Pick::Known(k) => {
                        let mut promises: Vec<u64> = self
                            .import_promise
                            .iter()
                            .filter(|(_, p)| p.is_some())
                            .map(|(i, _)| *i)
                            .collect();
                        promises.sort_unstable();
                        pick(&promises, k).unwrap_or(u64::from(k % 6))
                    }
                    Pick::Raw(k) => u64::from(k % 6),
                };
                let result = self.wire_result(result);
                self.peer_send(Message::Resolve { export, result });
            }
            Op::Finish { q } => {
                let question = self.pick_peer_answer(q);
                self.peer_send(Message::Finish { question });
            }
            Op::Release { e, count } => {
                let export = self.pick_export(e);
                let held = self.s_exports.get(&export).map_or(0, |&(_, n)| n);
                // Mostly the full count or less; sometimes more.
                let count = match count % 4 {
                    0 => held,
                    1 => 1,
                    2 => held + 1,
                    _ => u64::from(count),
                };
                self.peer_send(Message::Release { export, count });
            }
            Op::PeerAbort => self.peer_send(Message::Abort {
                reason: "bye".into(),
            }),
            Op::Listen { hints: n } => self.peer_send(Message::Listen { hints: hints(n) }),
            Op::Ping(nonce) => self.peer_send(Message::Ping { nonce }),
            Op::Pong(nonce) => self.peer_send(Message::Pong { nonce }),
            Op::RawFrame(bytes) => {
                // Well-formed messages go through the model; anything else must abort.
                match Message::decode(&bytes, &CborLimits::DEFAULT) {
                    Ok(Message::Deliver {
                        target,
                        payload,
                        question,
                        ..
                    }) => {
                        // Give it a nonce so that its delivery can be checked.
                        let nonce = self.nonce();
                        self.peer_send(Message::Deliver {
                            quiet: false,
                            target,
                            method: format!("m{nonce}"),
                            payload,
                            question,
                        });
                    }
                    Ok(msg) => self.peer_send(msg),
                    Err(_) => {
                        let was_closed = self.s.is_closed();
                        self.s.handle_frame(&bytes);
                        assert!(self.s.is_closed());
                        if !was_closed {
                            self.expect_violation = true;
                        }
                    }
                }
            }
            Op::DecodeError => {
                let was_closed = self.s.is_closed();
                self.s
                    .handle_decode_error(captp::internal::wire::DecodeError::FrameTooLarge {
                        len: 1 << 30,
                        max: 1 << 20,
                    });
                assert!(self.s.is_closed());
                if !was_closed {
                    self.expect_violation = true;
                }
            }
            Op::ConnectionLost => self.s.handle_connection_lost("gone"),
            Op::Send {
                target,
                caps,
                ask,
                resolver,
                refs,
                big,
            } => self.send(target, &caps, ask, resolver, refs, big),
            Op::SendBurst { target, n } => {
                for _ in 0..n {
                    self.send(target, &[], true, true, 0, 0);
                }
            }
            Op::LocalBootstrap { resolver, refs } => {
                self.next_question += 1;
                let q = self.next_question;
                let resolver = resolver.then(|| self.resolver());
                if let Some(r) = resolver {
                    self.outstanding.insert(r);
                }
                let refs = u32::from(refs % 3);
                for _ in 0..refs {
                    self.question_refs.push(QuestionId(q));
                }
                self.s.bootstrap(
                    QuestionId(q),
                    SwissNumber::from_bytes([1; 32]),
                    resolver,
                    refs,
                );
            }
            Op::Answer { which, how } => self.answer(which, how),
            Op::AnswerAgain { which } => {
                // Answering an answered or unknown id does nothing.
                let id = pick(&self.answered, which).unwrap_or(AnswerId(1 << 40));
                // Only an id the session has resolved, or no longer knows: a peer may
                // have reused it for a new question the runtime has not been given yet.
                let reused = self.peer_answers.get(&id.0).is_some_and(|a| !a.resolved);
                if reused || self.pending_answers.contains(&id) {
                    return;
                }
                self.check_outbox();
                let before = self.s.stats();
                self.s.answer(id, Err(Broken::failed("again")));
                assert_eq!(self.s.stats(), before);
                assert!(self.s.poll_transmit().is_none(), "a second answer was sent");
            }
            Op::DropImport { which } => {
                if let Some(i) = (!self.import_handles.is_empty())
                    .then(|| usize::from(which) % self.import_handles.len())
                {
                    let id = self.import_handles.swap_remove(i);
                    self.s.drop_import(id);
                }
            }
            Op::DropQuestionRef { which } => {
                if let Some(i) = (!self.question_refs.is_empty())
                    .then(|| usize::from(which) % self.question_refs.len())
                {
                    let q = self.question_refs.swap_remove(i);
                    self.s.drop_question_ref(q);
                }
            }
            Op::ResolveExport { promise, how } => {
                let result = match how {
                    How::Err => Err(Broken::failed("settled broken")),
                    How::Local(_) | How::Promise(_) => {
                        Ok(OutPayload::single_cap(OutCap::Local(RESOLVED_TO)))
                    }
                    _ => Ok(OutPayload::data(data_nonce(3))),
                };
                self.s.resolve_export(&promise_object(promise), result);
            }
            Op::LocalPing => {
                let _ = self.s.ping();
            }
            Op::LocalAbort => self.s.abort("local abort"),
            Op::Events => self.events(),
        }
    }

    /// The peer and the runtime clean up everything; then every table must be empty.
    fn clean_up(&mut self) {
        for _ in 0..CLEANUP_ROUNDS {
            self.events();
            self.check_invariants();
            if self.s.is_closed() {
                break;
            }
            let mut acted = false;
            // The runtime answers everything and drops every handle.
            while !self.pending_answers.is_empty() {
                self.answer(0, How::Err);
                acted = true;
            }
            while let Some(i) = self.import_handles.pop() {
                self.s.drop_import(i);
                acted = true;
            }
            while let Some(q) = self.question_refs.pop() {
                self.s.drop_question_ref(q);
                acted = true;
            }
            self.check_invariants();
            if !self.peer_hello_sent {
                self.step(Op::Hello {
                    version: Some(Version::Current),
                    frame: 1,
                    questions: 1,
                });
                acted = true;
            }
            // The peer returns every question, finishes every answer it got, and
            // releases every export it holds.
            let mut pending: Vec<u64> = self
                .s_questions
                .iter()
                .filter(|(_, st)| matches!(st, QState::Pending | QState::FinishedEarly))
                .map(|(q, _)| *q)
                .collect();
            pending.sort_unstable();
            for q in pending {
                self.peer_send(Message::Return {
                    question: q,
                    result: ReturnResult::Err(WireBroken {
                        kind: "failed".into(),
                        message: "clean-up".into(),
                        data: None,
                    }),
                });
                self.check_invariants();
                acted = true;
            }
            let mut returned: Vec<u64> = self
                .peer_answers
                .iter()
                .filter(|(_, a)| a.returned)
                .map(|(q, _)| *q)
                .collect();
            returned.sort_unstable();
            for q in returned {
                self.peer_send(Message::Finish { question: q });
                self.check_invariants();
                acted = true;
            }
            let mut exports: Vec<(u64, u64)> =
                self.s_exports.iter().map(|(e, &(_, n))| (*e, n)).collect();
            exports.sort_unstable();
            for (export, count) in exports {
                self.peer_send(Message::Release { export, count });
                self.check_invariants();
                acted = true;
            }
            if !acted {
                break;
            }
        }
        self.events();
        self.check_invariants();
        if !self.s.is_closed() {
            let st = self.s.stats();
            // Answers the peer finished early and the session answered internally may
            // still be counted by the model; the session's own count must be zero.
            assert_eq!(st, SessionStats::default(), "left after clean-up: {st:?}");
        }
        // Finally the connection goes: every question's resolver comes back.
        self.s.handle_connection_lost("end of input");
        self.events();
        self.check_invariants();
        assert!(self.closed_event);
        assert!(
            self.outstanding.is_empty(),
            "resolvers never came back: {:?}",
            self.outstanding
        );
    }
}

fuzz_target!(|input: Input| {
    let mut h = Harness::new(&input.config);
    h.check_invariants();
    if !input.config.skip_hello {
        h.step(Op::Hello {
            version: Some(input.config.peer_version),
            frame: if input.config.peer_small_frame {
                1
            } else {
                128
            },
            questions: input.config.peer_questions % 8 + 1,
        });
    }
    h.check_invariants();
    // Optional starting points that are hard to reach by chance: promises exported
    // each way, through the ordinary operations (so the model follows them).
    let mut setup = Vec::new();
    if input.config.export_a_promise {
        setup.extend([
            Op::Bootstrap {
                q: Pick::Raw(0),
                known: true,
            },
            Op::Events,
            Op::Answer {
                which: 0,
                how: How::Promise(0),
            },
        ]);
    }
    if input.config.import_a_promise || input.config.forward_a_call {
        setup.extend([
            Op::LocalBootstrap {
                resolver: true,
                refs: 1,
            },
            Op::Return {
                q: Pick::Known(0),
                result: WResult::SenderPromiseCap(1),
            },
            Op::Events,
        ]);
    }
    if input.config.forward_a_call {
        setup.extend([
            Op::Bootstrap {
                q: Pick::Raw(1),
                known: true,
            },
            Op::Events,
            Op::Answer {
                which: u8::MAX,
                how: How::Import(Pick::Known(0)),
            },
            Op::Deliver {
                target: WTarget::Answer(Pick::Raw(1)),
                caps: Vec::new(),
                question: Some(Pick::Raw(2)),
                single_cap_data: false,
            },
            Op::Events,
        ]);
    }
    for op in setup {
        h.step(op);
        h.check_invariants();
    }
    for op in input.ops.into_iter().take(256) {
        h.step(op);
        h.check_invariants();
    }
    h.clean_up();
});
