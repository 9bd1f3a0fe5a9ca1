//! The session state machine: the four tables and every rule about them.
//!
//! No I/O, no clock, no user code (see the module docs of [`crate::proto`]). Every id a
//! peer sends is looked up in the table it names; anything that does not fit is a
//! [`Violation`], which queues an `abort` with the reason and closes the session. Nothing
//! here panics on peer input.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::Hash;

use super::{AnswerId, ExportId, ImportId, QuestionId};
use crate::broken::{Broken, BrokenKind};
use crate::limits::Limits;
use crate::sturdy::SwissNumber;
use crate::wire::message::PROTOCOL_VERSION;
use crate::wire::{
    CapDescriptor, CborLimits, DecodeError, Message, Payload, ReturnResult, Target, WireBroken,
};

/// The encoding of a payload whose data is exactly one reference: `CAP_TAG(0)`.
///
/// A promise whose result has this shape resolves to that reference, so messages
/// pipelined on it go to the referenced object.
pub const SINGLE_CAP_DATA: [u8; 4] = [0xd9, 0x63, 0x61, 0x00];

/// Bytes a message adds around its payload data and method name, counted generously
/// for the local frame-size check.
const MESSAGE_OVERHEAD: usize = 96;
/// Bytes one capability descriptor may take on the wire, counted generously.
const DESCRIPTOR_OVERHEAD: usize = 32;

/// Work the cycle collector may do per operation, on average (see `Session::collect`):
/// about what taking one message with 256 references costs anyway.
const COLLECT_WORK_PER_OPERATION: usize = 256;

/// The smallest frame limit a peer may announce: every error return and abort fits.
pub const MIN_FRAME: usize = 8192;

/// The fewest outstanding questions a peer may announce it accepts. Until the peer's
/// `hello` arrives, a session sends at most this many.
pub const MIN_QUESTIONS: usize = 64;

/// A protocol violation by the peer: bad bytes or bad behaviour. It aborts the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// A frame that is not a well-formed captp message.
    #[error("undecodable message: {0}")]
    Decode(#[from] DecodeError),
    /// The first message was not `hello`.
    #[error("expected hello as the first message, got {got}")]
    NoHello {
        /// The kind that came instead.
        got: &'static str,
    },
    /// A `hello` announcing a frame limit below [`MIN_FRAME`].
    #[error("the peer's frame limit of {max_frame} bytes is below the minimum of {MIN_FRAME}")]
    FrameLimitTooSmall {
        /// The limit the peer announced.
        max_frame: u64,
    },
    /// A `hello` announcing a question limit below [`MIN_QUESTIONS`].
    #[error(
        "the peer accepts only {max_questions} outstanding questions, below the minimum of {MIN_QUESTIONS}"
    )]
    QuestionLimitTooSmall {
        /// The limit the peer announced.
        max_questions: u64,
    },
    /// A second `hello`.
    #[error("hello sent twice")]
    DuplicateHello,
    /// A protocol version this crate does not speak.
    #[error("unsupported protocol version {version} (this vat speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The version the peer announced.
        version: u32,
    },
    /// A question id that is already in use.
    #[error("question id {0} is already in use")]
    DuplicateQuestion(AnswerId),
    /// A target or descriptor naming an export that does not exist.
    #[error("no export with id {0}")]
    UnknownExport(ExportId),
    /// A target or `finish` naming an answer that does not exist.
    #[error("no answer with id {0}")]
    UnknownAnswer(AnswerId),
    /// A `return` for a question never asked or already answered.
    #[error("return for question {0}, which was never asked or is already answered")]
    UnknownQuestion(QuestionId),
    /// A `resolve` for an import that is not a promise, or that already resolved.
    #[error("resolve of {0}, which is not an unresolved promise")]
    BadResolve(ImportId),
    /// A `release` with a zero count or a count above what the peer holds.
    #[error("release of export {export} with count {count}, but the peer holds {held}")]
    BadRelease {
        /// The export named.
        export: ExportId,
        /// The count in the message.
        count: u64,
        /// The count the peer actually holds.
        held: u64,
    },
    /// More outstanding questions than [`Limits::max_inbound_questions`].
    #[error("more than {limit} outstanding questions")]
    TooManyQuestions {
        /// The limit in force.
        limit: usize,
    },
    /// More imports than [`Limits::max_imports`].
    #[error("more than {limit} imported references")]
    TooManyImports {
        /// The limit in force.
        limit: usize,
    },
    /// More messages queued on one unresolved answer than
    /// [`Limits::max_queued_per_promise`].
    #[error("more than {limit} messages queued on one unresolved promise")]
    TooManyQueued {
        /// The limit in force.
        limit: usize,
    },
    /// More capability-table entries in one message than [`Limits::max_caps_per_message`].
    #[error("more than {limit} capability-table entries in one message")]
    TooManyCaps {
        /// The limit in force.
        limit: usize,
    },
}

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

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Violation(v) => write!(f, "protocol violation by the peer: {v}"),
            CloseReason::PeerAborted(r) => write!(f, "the peer aborted the session: {r}"),
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
}

/// Data plus references, on its way to the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutPayload<O> {
    /// One CBOR item.
    pub data: Vec<u8>,
    /// The references the data's capability tags index.
    pub caps: Vec<OutCap<O>>,
}

impl<O> OutPayload<O> {
    /// A payload that is exactly one reference.
    pub fn single_cap(cap: OutCap<O>) -> OutPayload<O> {
        OutPayload {
            data: SINGLE_CAP_DATA.to_vec(),
            caps: vec![cap],
        }
    }

    /// A payload of plain data.
    pub fn data(data: Vec<u8>) -> OutPayload<O> {
        OutPayload {
            data,
            caps: Vec::new(),
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
}

/// Data plus references, arrived from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InPayload<O> {
    /// One CBOR item, not yet checked or decoded (the runtime decodes it with limits).
    pub data: Vec<u8>,
    /// The references the data's capability tags index.
    pub caps: Vec<InCap<O>>,
}

impl<O> InPayload<O> {
    fn is_single_cap(&self) -> bool {
        self.caps.len() == 1 && self.data == SINGLE_CAP_DATA
    }
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
    /// The peer answered a ping.
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

/// A local command held back by flow control.
#[derive(Debug)]
enum Held<O, R> {
    Call(Call<O, R>),
    /// A handle dropped while sends were held: it applies after them, so the held
    /// sends still find their target.
    DropImport(ImportId),
    DropQuestionRef(QuestionId),
    Bootstrap {
        question: QuestionId,
        swiss: SwissNumber,
        resolver: Option<R>,
        pipeline_refs: u32,
    },
}

impl<O, R> Held<O, R> {
    /// Whether sending it asks a question (and so needs room under the peer's limit).
    fn asks(&self) -> bool {
        match self {
            Held::Call(c) => c.question.is_some(),
            Held::Bootstrap { .. } => true,
            Held::DropImport(_) | Held::DropQuestionRef(_) => false,
        }
    }

    /// Whether sending it asks question `id` or targets its answer.
    fn uses_question(&self, id: QuestionId) -> bool {
        match self {
            Held::Call(c) => c.question == Some(id) || c.target == LocalTarget::Answer(id),
            Held::Bootstrap { question, .. } => *question == id,
            Held::DropImport(_) | Held::DropQuestionRef(_) => false,
        }
    }

    fn into_resolver(self) -> Option<R> {
        match self {
            Held::Call(c) => c.resolver,
            Held::Bootstrap { resolver, .. } => resolver,
            Held::DropImport(_) | Held::DropQuestionRef(_) => None,
        }
    }
}

#[derive(Debug)]
struct Question<O, R> {
    resolver: Option<R>,
    pipeline_refs: u32,
    resolution: Option<Resolution<O>>,
    /// The `finish` is held back: the answer resolved to one of our own objects, and
    /// messages sent to the promise keep going through the peer (which forwards them
    /// back) so that they stay in order with those already sent.
    finish_deferred: bool,
}

#[derive(Debug)]
struct Answer<O> {
    /// `None` while pending.
    resolution: Option<Resolution<O>>,
    /// Messages pipelined on the answer before it resolved, in arrival order.
    queued: Vec<Queued<O>>,
    /// The peer sent `finish` while the answer was pending.
    finished: bool,
}

#[derive(Debug)]
struct Queued<O> {
    method: String,
    payload: InPayload<O>,
    question: Option<AnswerId>,
}

#[derive(Debug)]
struct Export<O> {
    object: O,
    /// How many times the peer received this export and has not released it.
    refcount: u64,
    /// Exported as a promise, and whether its `resolve` has been sent.
    promise: Option<bool>,
}

#[derive(Debug)]
struct Import<O> {
    /// How many times the peer sent it (what `release` must give back).
    remote: u64,
    /// Handles held, by the runtime and by this session (questions, answers, messages
    /// queued on answers).
    local: u64,
    /// Of those, the handles the runtime holds (given in events, not yet dropped).
    given: u64,
    /// Imported as a promise, and whether its `resolve` has arrived.
    promise: Option<bool>,
    /// A settlement not yet reported: it arrived while the runtime held no handle, and
    /// is reported right after the runtime is given one.
    deferred: Option<Result<InPayload<O>, Broken>>,
    /// Of `local`, the handles held by the payloads of deferred settlements (this
    /// import's own included). When these are all that is left, only the cycle
    /// collector can tell whether anything can still reach it (`Session::collect`).
    held_by_deferred: u64,
    /// In `Session::suspects` (so it is recorded there once).
    suspected: bool,
}

impl<O> Import<O> {
    fn new(promise: Option<bool>) -> Import<O> {
        Import {
            remote: 0,
            local: 0,
            given: 0,
            promise,
            deferred: None,
            held_by_deferred: 0,
            suspected: false,
        }
    }

    /// Whether it holds a deferred settlement and nothing but deferred settlements
    /// hold it: whether it is alive may depend on a cycle of them.
    fn held_only_by_deferred(&self) -> bool {
        self.deferred.is_some() && self.local == self.held_by_deferred
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingHello,
    Open,
    Closed,
}

/// The protocol state between this vat and one peer over one connection.
///
/// `O` is the runtime's handle to a local object (compared and hashed to reuse exports);
/// `R` is the runtime's resolver for a question's result.
#[derive(Debug)]
pub struct Session<O, R> {
    limits: Limits,
    cbor: CborLimits,
    state: State,
    closed: Option<Broken>,
    peer_max_frame: usize,
    /// The most questions the peer accepts outstanding (from its `hello`).
    peer_max_questions: usize,
    /// Questions sent whose `return` has not arrived.
    awaiting_return: usize,
    /// Sends held back, in order, until the peer has room for more questions.
    held: VecDeque<Held<O, R>>,
    /// Promises that settled while the send exporting them was held.
    early: Vec<(O, Result<OutPayload<O>, Broken>)>,
    /// Answers to give because what their calls were pipelined on broke.
    broken_answers: VecDeque<(AnswerId, Broken)>,
    questions: HashMap<QuestionId, Question<O, R>>,
    answers: HashMap<AnswerId, Answer<O>>,
    exports: HashMap<ExportId, Export<O>>,
    export_ids: HashMap<O, ExportId>,
    next_export: u64,
    imports: HashMap<ImportId, Import<O>>,
    /// Imports with a deferred settlement that lost their last handle other than those
    /// of deferred settlements: where the cycle collector starts, at the end of the
    /// operation (`collect`), or later if earlier collections are not paid for yet.
    suspects: Vec<ImportId>,
    /// Work done by the cycle collector and not yet paid for by operations (each pays
    /// [`COLLECT_WORK_PER_OPERATION`]); it runs only when this is zero.
    collect_debt: usize,
    next_ping: u64,
    outbox: VecDeque<Message>,
    events: VecDeque<Event<O, R>>,
}

impl<O: Clone + Eq + Hash, R> Session<O, R> {
    /// A new session; its `hello` is already queued for transmission.
    pub fn new(limits: Limits) -> Session<O, R> {
        let limits = limits.normalized();
        let mut outbox = VecDeque::new();
        outbox.push_back(Message::Hello {
            version: PROTOCOL_VERSION,
            max_frame: limits.max_frame as u64,
            max_questions: limits.max_inbound_questions as u64,
        });
        Session {
            cbor: limits.cbor(),
            // Until the peer says otherwise, assume it accepts what we accept.
            peer_max_frame: limits.max_frame,
            peer_max_questions: MIN_QUESTIONS,
            awaiting_return: 0,
            held: VecDeque::new(),
            early: Vec::new(),
            broken_answers: VecDeque::new(),
            limits,
            state: State::AwaitingHello,
            closed: None,
            questions: HashMap::new(),
            answers: HashMap::new(),
            exports: HashMap::new(),
            export_ids: HashMap::new(),
            next_export: 1,
            imports: HashMap::new(),
            suspects: Vec::new(),
            collect_debt: 0,
            next_ping: 1,
            outbox,
            events: VecDeque::new(),
        }
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
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
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
        self.closed.clone()
    }

    /// The largest frame body the peer accepts (from its `hello`).
    pub fn peer_max_frame(&self) -> usize {
        self.peer_max_frame
    }

    // ---- peer input ----

    /// Decodes and handles one frame body from the peer. A bad frame is a violation.
    pub fn handle_frame(&mut self, body: &[u8]) {
        if self.is_closed() {
            return;
        }
        match Message::decode(body, &self.cbor) {
            Ok(msg) => self.handle_message(msg),
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
                Message::Hello {
                    version,
                    max_frame,
                    max_questions,
                } => {
                    if version != PROTOCOL_VERSION {
                        return Err(Violation::UnsupportedVersion { version });
                    }
                    if max_frame < MIN_FRAME as u64 {
                        return Err(Violation::FrameLimitTooSmall { max_frame });
                    }
                    if max_questions < MIN_QUESTIONS as u64 {
                        return Err(Violation::QuestionLimitTooSmall { max_questions });
                    }
                    self.peer_max_frame = usize::try_from(max_frame)
                        .unwrap_or(usize::MAX)
                        .min(u32::MAX as usize);
                    self.peer_max_questions = usize::try_from(max_questions).unwrap_or(usize::MAX);
                    self.state = State::Open;
                    self.release_held();
                    Ok(())
                }
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
                self.new_answer(answer)?;
                self.events.push_back(Event::Bootstrap { answer, swiss });
                Ok(())
            }
            Message::Deliver {
                target,
                method,
                payload,
                question,
            } => self.handle_deliver(target, method, payload, question.map(AnswerId)),
            Message::Return { question, result } => {
                self.handle_return(QuestionId(question), result)
            }
            Message::Finish { question } => self.handle_finish(AnswerId(question)),
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
                self.events.push_back(Event::Pong { nonce });
                Ok(())
            }
        }
    }

    fn new_answer(&mut self, id: AnswerId) -> Result<(), Violation> {
        let at_limit = self.answers.len() >= self.limits.max_inbound_questions;
        match self.answers.entry(id) {
            Entry::Occupied(_) => Err(Violation::DuplicateQuestion(id)),
            Entry::Vacant(_) if at_limit => Err(Violation::TooManyQuestions {
                limit: self.limits.max_inbound_questions,
            }),
            Entry::Vacant(v) => {
                v.insert(Answer {
                    resolution: None,
                    queued: Vec::new(),
                    finished: false,
                });
                Ok(())
            }
        }
    }

    fn handle_deliver(
        &mut self,
        target: Target,
        method: String,
        payload: Payload,
        question: Option<AnswerId>,
    ) -> Result<(), Violation> {
        // Check the target before taking anything from the payload, so a violation
        // leaves no half-imported references behind.
        enum Dest<O> {
            Object(O),
            Queue(AnswerId),
            Resolved(Resolution<O>),
        }
        let dest = match target {
            Target::Export(e) => {
                let e = ExportId(e);
                match self.exports.get(&e) {
                    Some(export) => Dest::Object(export.object.clone()),
                    None => return Err(Violation::UnknownExport(e)),
                }
            }
            Target::Answer(a) => {
                let a = AnswerId(a);
                let Some(answer) = self.answers.get(&a) else {
                    return Err(Violation::UnknownAnswer(a));
                };
                match &answer.resolution {
                    None => {
                        if answer.queued.len() >= self.limits.max_queued_per_promise {
                            return Err(Violation::TooManyQueued {
                                limit: self.limits.max_queued_per_promise,
                            });
                        }
                        Dest::Queue(a)
                    }
                    Some(r) => Dest::Resolved(r.clone()),
                }
            }
        };
        if let Some(q) = question {
            self.new_answer(q)?;
        }
        let payload = self.take_payload(payload)?;
        match dest {
            Dest::Object(target) => self.push_event(Event::Deliver {
                target: InCap::Local(target),
                method,
                payload,
                answer: question,
            }),
            Dest::Queue(a) => {
                if let Some(answer) = self.answers.get_mut(&a) {
                    answer.queued.push(Queued {
                        method,
                        payload,
                        question,
                    });
                }
            }
            Dest::Resolved(r) => self.deliver_to(r, method, payload, question, true),
        }
        Ok(())
    }

    /// Delivers a message to what an answer resolved to. `fresh`: the payload was taken
    /// from the message being handled (not queued earlier).
    fn deliver_to(
        &mut self,
        resolution: Resolution<O>,
        method: String,
        payload: InPayload<O>,
        question: Option<AnswerId>,
        fresh: bool,
    ) {
        let broken = match resolution {
            Resolution::Local(target) => {
                self.push_event(Event::Deliver {
                    target: InCap::Local(target),
                    method,
                    payload,
                    answer: question,
                });
                return;
            }
            Resolution::Import(i) => {
                // The answer resolved to something the peer gave us: the runtime
                // forwards the call there, in order, and answers with its result.
                if let Some(target) = self.new_import_handle(i) {
                    self.push_event(Event::Deliver {
                        target,
                        method,
                        payload,
                        answer: question,
                    });
                    return;
                }
                released(i)
            }
            Resolution::Data => Broken::new(
                BrokenKind::NotAnObject,
                format!("cannot call {method:?}: the promise resolved to data, not an object"),
            ),
            Resolution::Broken(b) => b,
        };
        if fresh {
            self.drop_fresh_payload(payload);
        } else {
            self.drop_in_payload(payload);
        }
        if let Some(q) = question {
            // Answered by the caller's loop, not here: a chain of calls pipelined on
            // broken answers would otherwise recurse as deep as the peer likes.
            self.broken_answers.push_back((q, broken));
        }
    }

    fn handle_return(&mut self, id: QuestionId, result: ReturnResult) -> Result<(), Violation> {
        match self.questions.get(&id) {
            Some(q) if q.resolution.is_none() => {}
            _ => return Err(Violation::UnknownQuestion(id)),
        }
        let result = match result {
            ReturnResult::Ok(payload) => Ok(self.take_payload(payload)?),
            ReturnResult::Err(w) => Err(Broken::from(w)),
        };
        let resolution = match &result {
            Err(b) => Resolution::Broken(b.clone()),
            Ok(p) if p.is_single_cap() => match &p.caps[0] {
                InCap::Import(i) | InCap::Promise(i) => Resolution::Import(*i),
                InCap::Local(o) => Resolution::Local(o.clone()),
            },
            Ok(_) => Resolution::Data,
        };
        let Some(question) = self.questions.get_mut(&id) else {
            return Ok(());
        };
        let resolver = question.resolver.take();
        let keep = question.pipeline_refs > 0;
        // Our own object came back through the peer's answer: messages on the promise
        // keep going to the answer (the peer forwards them here), so the answer must
        // live until the last pipelined handle is gone. Taking the shorter local path
        // could overtake messages still travelling the long way.
        let defer = keep && matches!(resolution, Resolution::Local(_));
        if !defer {
            // The peer counts a question until its `finish`, and so do we.
            self.awaiting_return = self.awaiting_return.saturating_sub(1);
            self.outbox.push_back(Message::Finish { question: id.0 });
        }
        if keep {
            if let Resolution::Import(i) = resolution {
                // The question's resolution holds a handle of its own.
                if let Some(import) = self.imports.get_mut(&i) {
                    import.local += 1;
                }
            }
            question.resolution = Some(resolution);
            question.finish_deferred = defer;
        } else {
            self.questions.remove(&id);
        }
        match (resolver, result) {
            (Some(resolver), result) => self.push_event(Event::Return { resolver, result }),
            (None, Ok(payload)) => self.drop_fresh_payload(payload),
            (None, Err(_)) => {}
        }
        // The `finish` above goes out before anything released here, so the peer never
        // counts more than its limit.
        self.release_held();
        Ok(())
    }

    fn handle_resolve(&mut self, id: ImportId, result: ReturnResult) -> Result<(), Violation> {
        let known = match self.imports.get(&id) {
            None => false,
            Some(Import {
                promise: Some(false),
                ..
            }) => true,
            Some(_) => return Err(Violation::BadResolve(id)),
        };
        let result = match result {
            ReturnResult::Ok(payload) => Ok(self.take_payload(payload)?),
            ReturnResult::Err(w) => Err(Broken::from(w)),
        };
        if !known {
            // We released the promise while its resolution was on the way: give back
            // whatever the resolution brought.
            if let Ok(payload) = result {
                self.drop_fresh_payload(payload);
            }
            return Ok(());
        }
        if let Some(import) = self.imports.get_mut(&id) {
            import.promise = Some(true);
            if import.given == 0 {
                // The runtime holds no handle on it (one may still come, in a message
                // queued on an answer): tell it once it has one.
                self.defer(id, result);
                return Ok(());
            }
        }
        self.push_event(Event::Resolved { import: id, result });
        Ok(())
    }

    /// Keeps a settlement of `id` until the runtime is given a handle on it.
    fn defer(&mut self, id: ImportId, result: Result<InPayload<O>, Broken>) {
        if let Ok(payload) = &result {
            for i in payload.caps.iter().filter_map(import_of) {
                if let Some(import) = self.imports.get_mut(&i) {
                    import.held_by_deferred += 1;
                }
            }
        }
        if let Some(import) = self.imports.get_mut(&id) {
            import.deferred = Some(result);
        }
    }

    /// Takes the deferred settlement of `id`, if any: its handles are no longer held by
    /// a deferred settlement, but by whoever takes it.
    fn take_deferred(&mut self, id: ImportId) -> Option<Result<InPayload<O>, Broken>> {
        let deferred = self.imports.get_mut(&id)?.deferred.take();
        if let Some(Ok(payload)) = &deferred {
            for i in payload.caps.iter().filter_map(import_of) {
                if let Some(import) = self.imports.get_mut(&i) {
                    import.held_by_deferred = import.held_by_deferred.saturating_sub(1);
                }
            }
        }
        deferred
    }

    /// Queues an event for the runtime. The references in it are the runtime's now; a
    /// settlement held back for one of them (see `handle_resolve`) follows the event,
    /// and so on depth-first: a loop, not a recursion, because a peer can chain deferred
    /// settlements as long as its import limit.
    fn push_event(&mut self, event: Event<O, R>) {
        // Imports handed out and not yet counted, the next on top.
        let mut handed: Vec<ImportId> = Vec::new();
        let mut next = Some(event);
        loop {
            if let Some(event) = next.take() {
                let start = handed.len();
                let caps: &[InCap<O>] = match &event {
                    Event::Deliver {
                        target, payload, ..
                    } => {
                        handed.extend(import_of(target));
                        &payload.caps
                    }
                    Event::Return {
                        result: Ok(payload),
                        ..
                    }
                    | Event::Resolved {
                        result: Ok(payload),
                        ..
                    } => &payload.caps,
                    _ => &[],
                };
                handed.extend(caps.iter().filter_map(import_of));
                handed[start..].reverse();
                self.events.push_back(event);
            }
            let Some(i) = handed.pop() else {
                break;
            };
            let Some(import) = self.imports.get_mut(&i) else {
                continue;
            };
            import.given += 1;
            if let Some(result) = self.take_deferred(i) {
                next = Some(Event::Resolved { import: i, result });
            }
        }
    }

    /// A new local handle on an import, for the runtime.
    fn new_import_handle(&mut self, id: ImportId) -> Option<InCap<O>> {
        let import = self.imports.get_mut(&id)?;
        import.local += 1;
        Some(match import.promise {
            Some(false) => InCap::Promise(id),
            Some(true) | None => InCap::Import(id),
        })
    }

    fn handle_finish(&mut self, id: AnswerId) -> Result<(), Violation> {
        let Some(answer) = self.answers.get_mut(&id) else {
            return Err(Violation::UnknownAnswer(id));
        };
        if answer.resolution.is_some() {
            self.remove_answer(id);
        } else {
            answer.finished = true;
        }
        Ok(())
    }

    /// Frees an answer, and the handle it held if it resolved to a peer's reference.
    fn remove_answer(&mut self, id: AnswerId) {
        if let Some(Answer {
            resolution: Some(Resolution::Import(i)),
            ..
        }) = self.answers.remove(&id)
        {
            self.drop_handle(i);
        }
    }

    fn handle_release(&mut self, id: ExportId, count: u64) -> Result<(), Violation> {
        let Some(export) = self.exports.get_mut(&id) else {
            return Err(Violation::UnknownExport(id));
        };
        if count == 0 || count > export.refcount {
            return Err(Violation::BadRelease {
                export: id,
                count,
                held: export.refcount,
            });
        }
        export.refcount -= count;
        if export.refcount == 0 {
            if let Some(export) = self.exports.remove(&id) {
                self.export_ids.remove(&export.object);
            }
        }
        Ok(())
    }

    /// Turns a payload's descriptors into local references, importing as needed.
    fn take_payload(&mut self, payload: Payload) -> Result<InPayload<O>, Violation> {
        if payload.caps.len() > self.limits.max_caps_per_message {
            return Err(Violation::TooManyCaps {
                limit: self.limits.max_caps_per_message,
            });
        }
        // Validate every descriptor before touching the import table. A reference
        // named twice in one message is one new import, not two.
        let mut new_imports = HashSet::new();
        for desc in &payload.caps {
            match *desc {
                CapDescriptor::SenderHosted(i) | CapDescriptor::SenderPromise(i) => {
                    if !self.imports.contains_key(&ImportId(i)) {
                        new_imports.insert(i);
                    }
                }
                CapDescriptor::ReceiverHosted(e) => {
                    if !self.exports.contains_key(&ExportId(e)) {
                        return Err(Violation::UnknownExport(ExportId(e)));
                    }
                }
            }
        }
        if self.imports.len() + new_imports.len() > self.limits.max_imports {
            return Err(Violation::TooManyImports {
                limit: self.limits.max_imports,
            });
        }
        let mut caps = Vec::with_capacity(payload.caps.len());
        for desc in payload.caps {
            caps.push(match desc {
                CapDescriptor::SenderHosted(i) => {
                    let id = ImportId(i);
                    let import = self.imports.entry(id).or_insert_with(|| Import::new(None));
                    import.remote += 1;
                    import.local += 1;
                    InCap::Import(id)
                }
                CapDescriptor::SenderPromise(i) => {
                    let id = ImportId(i);
                    let import = self
                        .imports
                        .entry(id)
                        .or_insert_with(|| Import::new(Some(false)));
                    import.remote += 1;
                    import.local += 1;
                    InCap::Promise(id)
                }
                CapDescriptor::ReceiverHosted(e) => match self.exports.get(&ExportId(e)) {
                    Some(export) => InCap::Local(export.object.clone()),
                    None => return Err(Violation::UnknownExport(ExportId(e))),
                },
            });
        }
        Ok(InPayload {
            data: payload.data,
            caps,
        })
    }

    /// Gives back the local handles an incoming payload held.
    fn drop_in_payload(&mut self, payload: InPayload<O>) {
        for cap in payload.caps {
            if let InCap::Import(i) | InCap::Promise(i) = cap {
                self.drop_handle(i);
            }
        }
    }

    /// Gives back the handles of a payload taken from the message being handled and
    /// handed to no one: every import it named is left as it was before the message,
    /// and those it created are released. No held send can name what only this payload
    /// held, so the drops need not wait behind held sends; and since nothing else
    /// changed in between, no import can have lost its last holder that matters to the
    /// cycle collector (so a peer cannot make it run with messages alone).
    fn drop_fresh_payload(&mut self, payload: InPayload<O>) {
        for i in payload.caps.iter().filter_map(import_of) {
            self.drop_now(i, false);
        }
    }

    // ---- local commands ----

    /// Asks the peer for the object under `swiss`. The answer arrives as a single
    /// reference or as `unknown_object`; `pipeline_refs` local handles may send to it.
    pub fn bootstrap(
        &mut self,
        question: QuestionId,
        swiss: SwissNumber,
        resolver: Option<R>,
        pipeline_refs: u32,
    ) {
        if let Some(b) = self.closed.clone() {
            self.fail_question(question, resolver, pipeline_refs, b);
            return;
        }
        let held = Held::Bootstrap {
            question,
            swiss,
            resolver,
            pipeline_refs,
        };
        if self.must_hold(&held) {
            self.held.push_back(held);
        } else {
            self.send_held(held);
        }
    }

    /// Whether a command must wait: something is already waiting (E-order), or it asks a
    /// question and the peer has no room for one.
    fn must_hold(&self, held: &Held<O, R>) -> bool {
        !self.held.is_empty() || (held.asks() && self.awaiting_return >= self.peer_max_questions)
    }

    /// Sends held commands, in order, while the peer has room.
    fn release_held(&mut self) {
        while let Some(front) = self.held.front() {
            if front.asks() && self.awaiting_return >= self.peer_max_questions {
                break;
            }
            if let Some(held) = self.held.pop_front() {
                self.send_held(held);
            }
        }
    }

    fn send_held(&mut self, held: Held<O, R>) {
        let was_call = matches!(held, Held::Call(_));
        self.send_held_now(held);
        if was_call && !self.early.is_empty() {
            for (object, result) in std::mem::take(&mut self.early) {
                self.resolve_export(&object, result);
            }
        }
    }

    fn send_held_now(&mut self, held: Held<O, R>) {
        match held {
            Held::Call(call) => self.send_now(call),
            Held::DropImport(i) => self.drop_import_now(i),
            Held::DropQuestionRef(q) => self.drop_question_ref_now(q),
            Held::Bootstrap {
                question,
                swiss,
                resolver,
                pipeline_refs,
            } => {
                self.questions.insert(
                    question,
                    Question {
                        resolver,
                        pipeline_refs,
                        resolution: None,
                        finish_deferred: false,
                    },
                );
                self.awaiting_return += 1;
                self.outbox.push_back(Message::Bootstrap {
                    question: question.0,
                    swiss,
                });
            }
        }
    }

    /// Sends a method call. Calls that cannot go out (the session is closed, the target
    /// is broken or plain data, the message is too large) break at once: the resolver
    /// comes back in an [`Event::Return`].
    ///
    /// A call that asks a question while the peer already has as many outstanding as it
    /// accepts is held back, with every later send, and goes out in order as answers
    /// come back ([`SessionStats::held`]).
    pub fn send(&mut self, call: Call<O, R>) {
        if self.closed.is_none() {
            let held = Held::Call(call);
            if self.must_hold(&held) {
                self.held.push_back(held);
                return;
            }
            self.send_held(held);
        } else {
            self.send_now(call);
        }
    }

    fn send_now(&mut self, call: Call<O, R>) {
        let Call {
            target,
            method,
            payload,
            question,
            resolver,
            pipeline_refs,
        } = call;
        let fail = |this: &mut Self, resolver, b| match question {
            Some(q) => this.fail_question(q, resolver, pipeline_refs, b),
            None => {
                if let Some(resolver) = resolver {
                    this.events.push_back(Event::Return {
                        resolver,
                        result: Err(b),
                    });
                }
            }
        };
        if let Some(b) = self.closed.clone() {
            return fail(self, resolver, b);
        }
        let size = MESSAGE_OVERHEAD
            + method.len()
            + payload.data.len()
            + payload.caps.len() * DESCRIPTOR_OVERHEAD;
        if size > self.peer_max_frame || payload.caps.len() > self.limits.max_caps_per_message {
            let b = Broken::new(
                BrokenKind::TooLarge,
                format!(
                    "a call to {method:?} with {} bytes of arguments and {} references exceeds \
                     the peer's frame limit of {} bytes or the limit of {} references",
                    payload.data.len(),
                    payload.caps.len(),
                    self.peer_max_frame,
                    self.limits.max_caps_per_message
                ),
            );
            return fail(self, resolver, b);
        }
        let wire_target = match target {
            LocalTarget::Import(i) => {
                if !self.imports.contains_key(&i) {
                    let b = Broken::new(BrokenKind::Other, format!("reference {i} was released"));
                    return fail(self, resolver, b);
                }
                Target::Export(i.0)
            }
            LocalTarget::Answer(q) => match self.questions.get(&q).map(|q| &q.resolution) {
                None => {
                    let b = Broken::new(BrokenKind::Other, format!("promise {q} was released"));
                    return fail(self, resolver, b);
                }
                Some(None) => Target::Answer(q.0),
                Some(Some(Resolution::Import(i))) => Target::Export(i.0),
                Some(Some(Resolution::Broken(b))) => {
                    let b = b.clone();
                    return fail(self, resolver, b);
                }
                Some(Some(Resolution::Data)) => {
                    let b = Broken::new(
                        BrokenKind::NotAnObject,
                        format!(
                            "cannot call {method:?}: the promise resolved to data, not an object"
                        ),
                    );
                    return fail(self, resolver, b);
                }
                // Resolved to one of our own objects: keep the promise's path (see
                // `handle_return`); the peer forwards the call back here in order.
                Some(Some(Resolution::Local(_))) => Target::Answer(q.0),
            },
        };
        let payload = match self.give_payload(payload) {
            Ok(p) => p,
            Err(b) => return fail(self, resolver, b),
        };
        if let Some(q) = question {
            self.questions.insert(
                q,
                Question {
                    resolver,
                    pipeline_refs,
                    resolution: None,
                    finish_deferred: false,
                },
            );
            self.awaiting_return += 1;
        }
        self.outbox.push_back(Message::Deliver {
            target: wire_target,
            method,
            payload,
            question: question.map(|q| q.0),
        });
    }

    /// Records a question that broke before it was sent.
    fn fail_question(&mut self, q: QuestionId, resolver: Option<R>, pipeline_refs: u32, b: Broken) {
        if pipeline_refs > 0 && !self.is_closed() {
            self.questions.insert(
                q,
                Question {
                    resolver: None,
                    pipeline_refs,
                    resolution: Some(Resolution::Broken(b.clone())),
                    finish_deferred: false,
                },
            );
        }
        if let Some(resolver) = resolver {
            self.events.push_back(Event::Return {
                resolver,
                result: Err(b),
            });
        }
    }

    /// Turns local references into descriptors, exporting local objects.
    fn give_payload(&mut self, payload: OutPayload<O>) -> Result<Payload, Broken> {
        if payload.caps.len() > self.limits.max_caps_per_message {
            return Err(Broken::new(
                BrokenKind::TooLarge,
                format!(
                    "{} references in one message exceed the limit of {}",
                    payload.caps.len(),
                    self.limits.max_caps_per_message
                ),
            ));
        }
        // An object named twice in one payload is one new export, not two.
        let fresh = payload
            .caps
            .iter()
            .filter_map(|c| match c {
                OutCap::Local(o) | OutCap::Promise(o) if !self.export_ids.contains_key(o) => {
                    Some(o)
                }
                _ => None,
            })
            .collect::<HashSet<_>>()
            .len();
        if self.exports.len() + fresh > self.limits.max_exports {
            return Err(Broken::new(
                BrokenKind::TooLarge,
                format!(
                    "exporting {fresh} more objects would pass the limit of {} exports to this peer",
                    self.limits.max_exports
                ),
            ));
        }
        // A reference going home must still be held, or the peer would see an unknown
        // export and abort.
        if let Some(OutCap::Import(i)) = payload
            .caps
            .iter()
            .find(|c| matches!(c, OutCap::Import(i) if !self.imports.contains_key(i)))
        {
            return Err(Broken::new(
                BrokenKind::Other,
                format!("reference {i} was released before it could be sent"),
            ));
        }
        let mut caps = Vec::with_capacity(payload.caps.len());
        for cap in payload.caps {
            caps.push(match cap {
                OutCap::Local(o) => CapDescriptor::SenderHosted(self.export(o, false).0.0),
                OutCap::Promise(o) => match self.export(o, true) {
                    (e, true) => CapDescriptor::SenderPromise(e.0),
                    // Already settled (its `resolve` went out): it is an object now.
                    (e, false) => CapDescriptor::SenderHosted(e.0),
                },
                OutCap::Import(i) => CapDescriptor::ReceiverHosted(i.0),
            });
        }
        Ok(Payload {
            data: payload.data,
            caps,
        })
    }

    /// Exports `object` (as a promise if `promise`), or counts one more reference to its
    /// existing export. Returns the id and whether it is an unresolved promise.
    fn export(&mut self, object: O, promise: bool) -> (ExportId, bool) {
        if let Some(id) = self.export_ids.get(&object) {
            if let Some(export) = self.exports.get_mut(id) {
                export.refcount += 1;
                return (*id, export.promise == Some(false));
            }
        }
        let id = ExportId(self.next_export);
        self.next_export += 1;
        self.export_ids.insert(object.clone(), id);
        self.exports.insert(
            id,
            Export {
                object,
                refcount: 1,
                promise: promise.then_some(false),
            },
        );
        (id, promise)
    }

    /// Answers a question the peer asked (a delivered call or a bootstrap).
    ///
    /// Messages the peer pipelined on the answer are then delivered to what it resolved
    /// to, in the order they arrived. Answering an answer that is unknown or already
    /// answered does nothing.
    pub fn answer(&mut self, id: AnswerId, result: Result<OutPayload<O>, Broken>) {
        self.answer_one(id, result);
        self.answer_broken();
        self.collect();
    }

    /// Answers the calls that broke because what they were pipelined on broke, one at
    /// a time (each may break more).
    fn answer_broken(&mut self) {
        while let Some((id, broken)) = self.broken_answers.pop_front() {
            self.answer_one(id, Err(broken));
        }
    }

    fn answer_one(&mut self, id: AnswerId, result: Result<OutPayload<O>, Broken>) {
        if self.is_closed() {
            return;
        }
        let finished = match self.answers.get(&id) {
            Some(a) if a.resolution.is_none() => a.finished,
            _ => return,
        };
        let result = result.and_then(|p| self.fits(p));
        // Export the result's references before deciding what the answer resolved to:
        // a result that cannot be exported breaks, and so must every message pipelined
        // on it. If the asker is gone (finished), nothing is sent and nothing exported.
        let (resolution, wire) = match result {
            Ok(p) => {
                let resolution = if p.caps.len() == 1 && p.data == SINGLE_CAP_DATA {
                    match &p.caps[0] {
                        OutCap::Local(o) | OutCap::Promise(o) => Resolution::Local(o.clone()),
                        OutCap::Import(i) => Resolution::Import(*i),
                    }
                } else {
                    Resolution::Data
                };
                if finished {
                    (resolution, None)
                } else {
                    match self.give_payload(p) {
                        Ok(p) => (resolution, Some(ReturnResult::Ok(p))),
                        Err(b) => {
                            let wire = ReturnResult::Err(WireBroken::from(&b));
                            (Resolution::Broken(b), Some(wire))
                        }
                    }
                }
            }
            Err(b) => {
                let wire = (!finished).then(|| ReturnResult::Err(WireBroken::from(&b)));
                (Resolution::Broken(b), wire)
            }
        };
        // An answer that resolved to the peer's own reference holds a handle on it, so
        // calls pipelined on the answer can still be forwarded there after the runtime
        // has dropped its own handles.
        let resolution = match resolution {
            Resolution::Import(i) => match self.imports.get_mut(&i) {
                Some(import) => {
                    import.local += 1;
                    Resolution::Import(i)
                }
                None => Resolution::Broken(released(i)),
            },
            other => other,
        };
        let Some(answer) = self.answers.get_mut(&id) else {
            return;
        };
        let queued = std::mem::take(&mut answer.queued);
        answer.resolution = Some(resolution.clone());
        if finished {
            self.remove_answer(id);
        }
        if let Some(result) = wire {
            self.outbox.push_back(Message::Return {
                question: id.0,
                result,
            });
        }
        for q in queued {
            self.deliver_to(resolution.clone(), q.method, q.payload, q.question, false);
        }
    }

    /// The runtime dropped one handle on an import. When the last goes, the import is
    /// released at the peer with the full count it sent.
    pub fn drop_import(&mut self, id: ImportId) {
        if let Some(import) = self.imports.get_mut(&id) {
            import.given = import.given.saturating_sub(1);
        }
        self.drop_handle(id);
        self.collect();
    }

    /// Drops one handle (the runtime's or the session's own), after any held sends.
    fn drop_handle(&mut self, id: ImportId) {
        if self.held.is_empty() {
            self.drop_import_now(id);
        } else {
            self.held.push_back(Held::DropImport(id));
        }
    }

    fn drop_import_now(&mut self, id: ImportId) {
        self.drop_now(id, true);
    }

    /// Drops one handle on `id` at once. When it was the last, the import is released
    /// at the peer with the full count it sent, and the handles its unreported
    /// settlement held are dropped in turn (after any held sends, as `drop_handle`
    /// does): depth-first, in a loop rather than a recursion, because a peer can chain
    /// settlements as long as its import limit.
    ///
    /// With `suspect`, an import that survives held by deferred settlements alone is
    /// recorded for the cycle collector (`collect`); handles dropped in turn always are.
    fn drop_now(&mut self, id: ImportId, suspect: bool) {
        let mut suspect = suspect;
        // Handles still to drop, the next on top.
        let mut pending = vec![id];
        while let Some(id) = pending.pop() {
            let record = std::mem::replace(&mut suspect, true);
            let Some(import) = self.imports.get_mut(&id) else {
                continue;
            };
            import.local = import.local.saturating_sub(1);
            if import.local > 0 {
                if record && !import.suspected && import.held_only_by_deferred() {
                    import.suspected = true;
                    self.suspects.push(id);
                }
                continue;
            }
            let remote = import.remote;
            let deferred = self.take_deferred(id);
            self.imports.remove(&id);
            if !self.is_closed() {
                self.outbox.push_back(Message::Release {
                    export: id.0,
                    count: remote,
                });
            }
            // A settlement never reported: nobody will use what it brought.
            if let Some(Ok(payload)) = deferred {
                let caps = payload.caps.iter().filter_map(import_of);
                if self.held.is_empty() {
                    let start = pending.len();
                    pending.extend(caps);
                    pending[start..].reverse();
                } else {
                    self.held.extend(caps.map(Held::DropImport));
                }
            }
        }
    }

    /// The cycle collector: releases the imports that only deferred settlements keep,
    /// where no chain of them leads back to anything else. Called at the end of each
    /// operation that can drop a handle (peer messages, answers, drops).
    ///
    /// A deferred settlement (see `handle_resolve`) holds handles on the imports its
    /// payload names, to hand them to the runtime with the settlement. A promise that
    /// settles to itself, or promises that settle to each other, while the runtime holds
    /// none of them, would otherwise keep each other forever: never reported (nothing
    /// can hand them out any more but the peer, sending them again), never released.
    ///
    /// Each operation pays [`COLLECT_WORK_PER_OPERATION`] off the collector's debt, and
    /// the collector runs only when it owes nothing; what it does is added to the debt.
    /// So a collection within that budget runs at the end of the operation that made
    /// the garbage, and a larger one (a peer can chain kept settlements up to
    /// `max_imports`, and make the program walk the chain again and again) delays the
    /// next until enough operations have passed: the work stays within the budget per
    /// operation on average, and the suspects wait, none lost.
    fn collect(&mut self) {
        self.collect_debt = self.collect_debt.saturating_sub(COLLECT_WORK_PER_OPERATION);
        if self.collect_debt > 0 || self.suspects.is_empty() || self.is_closed() {
            return;
        }
        self.collect_debt = self.collect_once();
    }

    /// One collection from the current suspects; returns the work done (entries visited
    /// and handles dropped).
    ///
    /// Trial deletion: the candidates are the imports with a deferred settlement that
    /// only deferred settlements hold, reachable from the suspects through such imports.
    /// A candidate is alive if something besides the candidates' settlements holds it (a
    /// handle of the runtime or of the session, or the settlement of an import that is
    /// not a candidate, which is alive: it is held otherwise, or its liveness did not
    /// change since the last collection), or if an alive candidate's settlement names
    /// it. The rest is garbage: its settlements are dropped, which releases it and
    /// whatever only it held.
    fn collect_once(&mut self) -> usize {
        let mut stack = std::mem::take(&mut self.suspects);
        for id in &stack {
            if let Some(import) = self.imports.get_mut(id) {
                import.suspected = false;
            }
        }
        let mut work = 0;
        // The candidates, in the order found, and the handles their settlements hold
        // on each import.
        let mut candidates = Vec::new();
        let mut seen = HashSet::new();
        let mut inner: HashMap<ImportId, u64> = HashMap::new();
        while let Some(id) = stack.pop() {
            work += 1;
            let Some(import) = self.imports.get(&id) else {
                continue;
            };
            if !import.held_only_by_deferred() || !seen.insert(id) {
                continue;
            }
            candidates.push(id);
            if let Some(Ok(payload)) = &import.deferred {
                for i in payload.caps.iter().filter_map(import_of) {
                    *inner.entry(i).or_default() += 1;
                    stack.push(i);
                }
            }
        }
        // Alive: held from outside the candidates, or named by an alive one.
        let mut stack: Vec<ImportId> = candidates
            .iter()
            .copied()
            .filter(|id| {
                let local = self.imports.get(id).map_or(0, |i| i.local);
                local > inner.get(id).copied().unwrap_or(0)
            })
            .collect();
        let mut alive = HashSet::new();
        while let Some(id) = stack.pop() {
            work += 1;
            if !seen.contains(&id) || !alive.insert(id) {
                continue;
            }
            if let Some(Ok(payload)) = self.imports.get(&id).and_then(|i| i.deferred.as_ref()) {
                stack.extend(payload.caps.iter().filter_map(import_of));
            }
        }
        // Garbage: take every settlement first, so that no drop below sees a handle of
        // another garbage settlement still counted.
        let garbage: Vec<InPayload<O>> = candidates
            .into_iter()
            .filter(|id| !alive.contains(id))
            .filter_map(|id| self.take_deferred(id)?.ok())
            .collect();
        // Nothing held sends still name can be garbage (a held send's reference holds a
        // handle of the runtime, or its queued drop does), so the drops need not wait
        // behind them. What stays alive keeps its holders but these, so they record no
        // suspects; and nothing dropped here still has a settlement to drop in turn.
        for payload in garbage {
            for i in payload.caps.iter().filter_map(import_of) {
                work += 1;
                self.drop_now(i, false);
            }
        }
        work
    }

    /// The runtime dropped one pipelined handle on a question's answer.
    pub fn drop_question_ref(&mut self, id: QuestionId) {
        if self.held.iter().any(|h| h.uses_question(id)) {
            // Sends held before this drop still ask or target the question.
            self.held.push_back(Held::DropQuestionRef(id));
        } else {
            // Nothing held needs it: apply it now, so that a deferred `finish` it sends
            // makes room for the held sends instead of waiting behind them forever.
            self.drop_question_ref_now(id);
        }
        self.collect();
    }

    fn drop_question_ref_now(&mut self, id: QuestionId) {
        let Some(q) = self.questions.get_mut(&id) else {
            return;
        };
        q.pipeline_refs = q.pipeline_refs.saturating_sub(1);
        if q.pipeline_refs == 0 && q.resolution.is_some() {
            let Some(q) = self.questions.remove(&id) else {
                return;
            };
            if let Some(Resolution::Import(i)) = q.resolution {
                self.drop_import_now(i);
            }
            if q.finish_deferred && !self.is_closed() {
                self.outbox.push_back(Message::Finish { question: id.0 });
                self.awaiting_return = self.awaiting_return.saturating_sub(1);
                self.release_held();
            }
        }
    }

    /// Checks a result against the peer's frame limit.
    fn fits(&self, p: OutPayload<O>) -> Result<OutPayload<O>, Broken> {
        let size = MESSAGE_OVERHEAD + p.data.len() + p.caps.len() * DESCRIPTOR_OVERHEAD;
        if size > self.peer_max_frame {
            return Err(Broken::new(
                BrokenKind::TooLarge,
                format!(
                    "the result ({} bytes) exceeds the peer's frame limit of {} bytes",
                    p.data.len(),
                    self.peer_max_frame
                ),
            ));
        }
        Ok(p)
    }

    /// Reports that a promise this side exported as [`OutCap::Promise`] settled: sends
    /// `resolve` for it, once, if the peer still holds it. Messages the peer sends to
    /// the promise keep arriving as deliveries to `object`, which forwards them.
    pub fn resolve_export(&mut self, object: &O, result: Result<OutPayload<O>, Broken>) {
        if self.is_closed() {
            return;
        }
        let Some(&id) = self.export_ids.get(object) else {
            // Settled before the send that exports it left the hold queue (or before the
            // settlement of another promise that carries it and waits for such a send):
            // resolve it right after that send goes out.
            let carries = |p: &OutPayload<O>| {
                p.caps
                    .iter()
                    .any(|cap| matches!(cap, OutCap::Promise(o) if o == object))
            };
            let held = self.held.iter().any(|h| match h {
                Held::Call(c) => carries(&c.payload),
                _ => false,
            }) || self
                .early
                .iter()
                .any(|(_, r)| r.as_ref().is_ok_and(carries));
            if held {
                self.early.push((object.clone(), result));
            }
            return;
        };
        match self.exports.get_mut(&id) {
            Some(export) if export.promise == Some(false) => export.promise = Some(true),
            _ => return,
        }
        let result = match result
            .and_then(|p| self.fits(p))
            .and_then(|p| self.give_payload(p))
        {
            Ok(p) => ReturnResult::Ok(p),
            Err(b) => ReturnResult::Err(WireBroken::from(&b)),
        };
        self.outbox.push_back(Message::Resolve {
            export: id.0,
            result,
        });
    }

    /// Queues a ping; returns its nonce, which comes back in [`Event::Pong`]. When the
    /// pong arrives, the peer has handled everything sent before the ping, and
    /// everything it sent before the pong has been handled here.
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
            reason: truncate(reason.clone()),
        });
        self.close(CloseReason::Local(reason));
    }

    fn violate(&mut self, v: Violation) {
        tracing::debug!(violation = %v, "aborting session");
        self.outbox.push_back(Message::Abort {
            reason: truncate(v.to_string()),
        });
        self.close(CloseReason::Violation(v));
    }

    fn close(&mut self, reason: CloseReason) {
        if self.is_closed() {
            return;
        }
        self.state = State::Closed;
        let broken = Broken::disconnected(&reason);
        self.closed = Some(broken.clone());
        let held = std::mem::take(&mut self.held)
            .into_iter()
            .map(Held::into_resolver);
        let asked = self.questions.drain().map(|(_, q)| q.resolver);
        for resolver in asked.chain(held).flatten() {
            self.events.push_back(Event::Return {
                resolver,
                result: Err(broken.clone()),
            });
        }
        self.awaiting_return = 0;
        self.early.clear();
        self.answers.clear();
        let mut lost = Vec::new();
        for (_, export) in self.exports.drain() {
            lost.push(export.object);
        }
        if !lost.is_empty() {
            self.events.push_back(Event::ExportsLost { objects: lost });
        }
        self.export_ids.clear();
        self.imports.clear();
        self.suspects.clear();
        self.events.push_back(Event::Closed { reason });
    }
}

/// Cuts a reason to [`crate::wire::message::MAX_ERROR_MESSAGE`] bytes at a character
/// boundary, so an abort always fits the peer's frame limit.
fn truncate(mut reason: String) -> String {
    let max = crate::wire::message::MAX_ERROR_MESSAGE;
    if reason.len() > max {
        let mut end = max;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// The import a reference names, if it is one.
fn import_of<O>(cap: &InCap<O>) -> Option<ImportId> {
    match cap {
        InCap::Import(i) | InCap::Promise(i) => Some(*i),
        InCap::Local(_) => None,
    }
}

/// The error for a reference used after it was released.
fn released(i: ImportId) -> Broken {
    Broken::new(
        BrokenKind::Other,
        format!("the reference {i} the promise resolved to was released"),
    )
}
