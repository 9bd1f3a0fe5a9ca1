//! The hold queue: flow control against the limits the peer announced, kept in E-order.
//!
//! A send that asks a question while the peer already has as many outstanding as it
//! announced waits here, and so does every command given after it (a later command must
//! not overtake an earlier one: E-order). So does a send pipelined on one of our
//! unanswered questions once the peer's `max_queued` messages are already queued on it.
//! They go out, in order, as answers come back.
//! Before the peer's `hello` a call that needs more than the least a peer may announce
//! (a frame over [`MIN_FRAME`], more than [`MIN_CAPS`] references, data over
//! [`MIN_DEPTH`] or [`MIN_ITEMS`]) waits here too, until that `hello` says what the
//! peer takes (PROTOCOL.md 5, 9.1).
//! This room must not reorder commands, nor hold one that has room and nothing ahead of
//! it; it decides only *when* a command goes out, not how (that is `outgoing`).

use std::hash::Hash;

use super::exports::frame_estimate;
use super::imports::Suspect;
use super::{Call, LocalTarget, OutCap, OutPayload, Session};
use crate::broken::Broken;
use crate::proto::{ImportId, QuestionId};
use crate::sturdy::SwissNumber;
use crate::wire::{self, CborLimits, MIN_CAPS, MIN_DEPTH, MIN_FRAME, MIN_ITEMS, ScanError};

/// A local command held back by flow control.
#[derive(Debug)]
pub(super) enum Held<O, R> {
    Call(Call<O, R>),
    Bootstrap {
        question: QuestionId,
        swiss: SwissNumber,
        resolver: Option<R>,
        pipeline_refs: u32,
    },
    /// A handle dropped while sends were held: it applies after them, so the held
    /// sends still find their target.
    DropImport(ImportId),
    /// A pipelined handle dropped while sends that ask or target its question were held.
    DropQuestionRef(QuestionId),
}

impl<O: PartialEq, R> Held<O, R> {
    /// The question sending it asks, if it asks one (and so needs room under the peer's
    /// limit).
    fn question(&self) -> Option<QuestionId> {
        match self {
            Held::Call(c) => c.question,
            Held::Bootstrap { question, .. } => Some(*question),
            Held::DropImport(_) | Held::DropQuestionRef(_) => None,
        }
    }

    /// Whether sending it asks question `id`.
    pub(super) fn asks(&self, id: QuestionId) -> bool {
        self.question() == Some(id)
    }

    /// Whether sending it asks question `id` or targets its answer.
    pub(super) fn uses_question(&self, id: QuestionId) -> bool {
        self.asks(id) || matches!(self, Held::Call(c) if c.target == LocalTarget::Answer(id))
    }

    /// A generous estimate of its frame's size: for a call; 0 for a bootstrap (far
    /// below any frame limit) and for the drops (which send nothing themselves).
    fn frame_estimate(&self) -> usize {
        match self {
            Held::Call(c) => frame_estimate(Some(&c.method), &c.payload),
            Held::Bootstrap { .. } | Held::DropImport(_) | Held::DropQuestionRef(_) => 0,
        }
    }

    /// Whether it fits the least any peer may announce: what may go out before the
    /// peer's `hello`. Only calls can need more.
    fn fits_minimums(&self) -> bool {
        const LEAST: CborLimits = CborLimits {
            max_depth: MIN_DEPTH,
            max_items: MIN_ITEMS,
        };
        match self {
            Held::Call(c) => {
                self.frame_estimate() <= MIN_FRAME
                    && c.payload.caps.len() <= MIN_CAPS
                    // Scans at most a frame of MIN_FRAME bytes, and only before `hello`.
                    && !matches!(
                        match c.payload.shape {
                            Some(shape) => shape.check(&LEAST),
                            None => wire::scan::check(&c.payload.data, &LEAST),
                        },
                        Err(ScanError::TooDeep { .. } | ScanError::TooManyItems { .. })
                    )
            }
            Held::Bootstrap { .. } | Held::DropImport(_) | Held::DropQuestionRef(_) => true,
        }
    }

    /// The unanswered question whose answer it is pipelined on, if it is a call to one.
    fn pipelined_on(&self) -> Option<QuestionId> {
        match self {
            Held::Call(c) => match c.target {
                LocalTarget::Answer(q) => Some(q),
                LocalTarget::Import(_) => None,
            },
            Held::Bootstrap { .. } | Held::DropImport(_) | Held::DropQuestionRef(_) => None,
        }
    }

    /// Whether it is a call whose arguments carry the local promise `object`.
    fn carries_promise(&self, object: &O) -> bool {
        match self {
            Held::Call(c) => payload_carries_promise(&c.payload, object),
            _ => false,
        }
    }

    /// The resolver waiting on it, to give back broken when the session closes.
    pub(super) fn into_resolver(self) -> Option<R> {
        match self {
            Held::Call(c) => c.resolver,
            Held::Bootstrap { resolver, .. } => resolver,
            Held::DropImport(_) | Held::DropQuestionRef(_) => None,
        }
    }
}

impl<O: Clone + Eq + Hash, R> Session<O, R> {
    /// Whether `command` must wait in the hold queue: something is already waiting
    /// (E-order: it must not overtake), or the peer's limits have no room for it yet.
    pub(super) fn must_hold(&self, command: &Held<O, R>) -> bool {
        !self.held.is_empty() || !self.may_send_now(command)
    }

    /// Whether `command` may go out as far as the peer's limits go: a question needs
    /// room under `max_questions`; a call pipelined on our unanswered question needs
    /// room under `max_queued` on it; and before the peer's `hello`, a call must fit the
    /// least a peer may announce.
    fn may_send_now(&self, command: &Held<O, R>) -> bool {
        (command.question().is_none() || self.peer_has_room())
            && command
                .pipelined_on()
                .is_none_or(|q| self.answer_has_room(q))
            && (self.is_established() || command.fits_minimums())
    }

    /// Whether the peer accepts one more message queued on the answer to our question
    /// `q`. Only messages sent before its `return` arrived can be queued there: once the
    /// `return` is here, the peer resolved the answer before any message still in
    /// flight arrives, and delivers them at once.
    fn answer_has_room(&self, q: QuestionId) -> bool {
        match self.questions.get(&q) {
            Some(question) if question.resolution.is_none() => {
                question.pipelined < self.peer.max_queued
            }
            // Answered, broken or gone: nothing more queues at the peer (and
            // `call_message` decides what becomes of the call).
            _ => true,
        }
    }

    /// Whether the peer accepts one more outstanding question.
    fn peer_has_room(&self) -> bool {
        self.awaiting_return < self.peer.max_questions
    }

    /// Sends `command` now if nothing is held and the peer has room, or holds it.
    pub(super) fn send_or_hold(&mut self, command: Held<O, R>) {
        if self.must_hold(&command) {
            self.held.push_back(command);
            self.ask_for_blocking_return();
        } else {
            self.apply_held(command);
        }
    }

    /// A held send waiting for room on a quiet question's answer waits for its
    /// `return`, which the peer sends only when asked: ask for it (PROTOCOL.md 9.15).
    fn ask_for_blocking_return(&mut self) {
        let blocking = self
            .held
            .front()
            .and_then(Held::pipelined_on)
            .filter(|&q| !self.answer_has_room(q));
        if let Some(q) = blocking {
            self.want_return(q);
        }
    }

    /// Drops one handle on an import after the held sends, which may still name it.
    pub(super) fn hold_drop_import(&mut self, id: ImportId) {
        self.held.push_back(Held::DropImport(id));
    }

    pub(super) fn hold_drop_question_ref(&mut self, id: QuestionId) {
        self.held.push_back(Held::DropQuestionRef(id));
    }

    /// Sends held commands, in order, while the peer has room.
    pub(super) fn drain_hold_queue(&mut self) {
        while let Some(front) = self.held.front() {
            if !self.may_send_now(front) {
                self.ask_for_blocking_return();
                break;
            }
            if let Some(held) = self.held.pop_front() {
                self.apply_held(held);
            }
        }
    }

    /// Carries out a command whose turn has come.
    fn apply_held(&mut self, held: Held<O, R>) {
        match held {
            Held::Call(call) => {
                self.transmit_call(call);
                self.resolve_settled_while_held();
            }
            Held::Bootstrap {
                question,
                swiss,
                resolver,
                pipeline_refs,
            } => self.transmit_bootstrap(question, swiss, resolver, pipeline_refs),
            Held::DropImport(i) => self.drop_handle_now(i, Suspect::Record),
            Held::DropQuestionRef(q) => self.drop_question_ref_now(q),
        }
    }

    /// Keeps the settlement of a promise that has no export yet, if a held send (or the
    /// kept settlement of another promise that such a send carries) will export it: it
    /// is resolved right after that send goes out. Otherwise the peer can never hear of
    /// the promise and the settlement is dropped.
    pub(super) fn keep_settlement_until_sent(
        &mut self,
        object: &O,
        result: Result<OutPayload<O>, Broken>,
    ) {
        let held = self.held.iter().any(|h| h.carries_promise(object))
            || self
                .settled_while_held
                .iter()
                .any(|(_, r)| r.as_ref().is_ok_and(|p| payload_carries_promise(p, object)));
        if held {
            self.settled_while_held.push((object.clone(), result));
        }
    }

    /// Resolves the promises that settled while the sends exporting them were held
    /// (after one of those sends went out). Those whose send still waits are kept again.
    pub(super) fn resolve_settled_while_held(&mut self) {
        if self.settled_while_held.is_empty() {
            return;
        }
        for (object, result) in std::mem::take(&mut self.settled_while_held) {
            self.resolve_export(&object, result);
        }
    }
}

/// Whether `payload` carries the local promise `object`.
fn payload_carries_promise<O: PartialEq>(payload: &OutPayload<O>, object: &O) -> bool {
    payload
        .caps
        .iter()
        .any(|cap| matches!(cap, OutCap::Promise(o) if o == object))
}
