//! The hold queue: flow control against the peer's question limit, kept in E-order.
//!
//! A send that asks a question while the peer already has as many outstanding as it
//! announced waits here, and so does every command given after it (a later command must
//! not overtake an earlier one: E-order). They go out, in order, as answers come back.
//! Before the peer's `hello` a call too large for the smallest frame limit a peer may
//! announce ([`MIN_FRAME`]) waits here too, until that `hello` says how large a frame
//! the peer takes (PROTOCOL.md 5).
//! This room must not reorder commands, nor hold one that has room and nothing ahead of
//! it; it decides only *when* a command goes out, not how (that is `outgoing`).

use std::hash::Hash;

use super::exports::frame_estimate;
use super::imports::Suspect;
use super::{Call, LocalTarget, OutCap, OutPayload, Session};
use crate::broken::Broken;
use crate::proto::{ImportId, QuestionId};
use crate::sturdy::SwissNumber;
use crate::wire::MIN_FRAME;

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
    /// Whether a command asking `question` (or none), in a frame of about `frame`
    /// bytes, must wait in the hold queue: something is already waiting (E-order: it must
    /// not overtake), it asks a question and the peer has no room for one, or the
    /// peer's `hello` has not said yet whether a frame that large is welcome.
    pub(super) fn must_hold(&self, question: Option<QuestionId>, frame: usize) -> bool {
        !self.held.is_empty() || !self.may_send_now(question, frame)
    }

    /// Whether a command asking `question` (or none), in a frame of about `frame` bytes,
    /// may go out as far as the peer's limits go.
    fn may_send_now(&self, question: Option<QuestionId>, frame: usize) -> bool {
        (question.is_none() || self.peer_has_room())
            && (frame <= MIN_FRAME || self.is_established())
    }

    /// Whether the peer accepts one more outstanding question.
    fn peer_has_room(&self) -> bool {
        self.awaiting_return < self.peer_max_questions
    }

    pub(super) fn hold_call(&mut self, call: Call<O, R>) {
        self.held.push_back(Held::Call(call));
    }

    pub(super) fn hold_bootstrap(
        &mut self,
        question: QuestionId,
        swiss: SwissNumber,
        resolver: Option<R>,
        pipeline_refs: u32,
    ) {
        self.held.push_back(Held::Bootstrap {
            question,
            swiss,
            resolver,
            pipeline_refs,
        });
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
            if !self.may_send_now(front.question(), front.frame_estimate()) {
                break;
            }
            if let Some(held) = self.held.pop_front() {
                self.apply_held(held);
            }
        }
    }

    /// Carries out a held command whose turn has come.
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
