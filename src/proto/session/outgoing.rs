//! Questions this side asks: local sends and bootstraps, their `return`s, and the
//! pipelined handles on their answers.
//!
//! A command that cannot go out never vanishes: it breaks, and its resolver comes back in
//! an [`Event::Return`]. A question can end before its `return`: cancelled by the
//! runtime, or past its deadline. Either sends an early `finish` and keeps the question,
//! still counted against the peer's limit, until the `return` the peer owes for it
//! arrives (PROTOCOL.md 9.7, 9.11); that `return` is then dropped. This room must not decide when a question may go out (the hold
//! queue does, in `hold`) nor export anything itself (`exports` turns payloads into
//! descriptors).

use std::hash::Hash;
use std::time::Instant;

use super::hold::Held;
use super::imports::{PayloadOrigin, Suspect};
use super::{Call, Deadline, Event, LocalTarget, OutPayload, Resolution, Session, Violation};
use crate::broken::{Broken, BrokenKind};
use crate::proto::QuestionId;
use crate::sturdy::SwissNumber;
use crate::wire::{Message, Payload, ReturnResult, Target};

/// The first protocol version with quiet questions.
const QUIET_VERSION: u32 = 3;

/// A question this side asked (or one that broke before it could be, kept for the
/// handles pipelined on it).
#[derive(Debug)]
pub(super) struct Question<O, R> {
    /// Who to tell the result to; taken when the result arrives.
    pub(super) resolver: Option<R>,
    /// Local handles that may still send to the answer (see [`Call::pipeline_refs`]).
    pub(super) pipeline_refs: u32,
    /// `None` until the `return` arrives.
    pub(super) resolution: Option<Resolution<O>>,
    /// Messages sent to the answer before its `return` arrived: what the peer may have
    /// queued on it, kept within the peer's `max_queued` by the hold queue.
    pub(super) pipelined: usize,
    /// The `finish` is held back: the answer resolved to one of our own objects, and
    /// messages sent to the promise keep going through the peer (which forwards them
    /// back) so that they stay in order with those already sent.
    pub(super) finish_deferred: bool,
    /// When to give up waiting for the `return` (its entry in `Session::deadlines`).
    pub(super) deadline: Option<Deadline>,
    /// A message went out aimed at the answer before it resolved: someone depends on
    /// the answer, so dropping the last pipelined handle does not cancel it.
    pub(super) pipelined_on: bool,
    /// The `finish` went out before the `return` (cancelled, or past its deadline):
    /// the `return` is still due, and is dropped when it comes.
    pub(super) finished_early: bool,
    /// Asked quiet and not asked for since: the peer sends the result only after a
    /// `want_return` (PROTOCOL.md 9.15).
    pub(super) quiet: bool,
}

impl<O, R> Question<O, R> {
    /// A question just sent, awaiting its `return`.
    fn asked(
        resolver: Option<R>,
        pipeline_refs: u32,
        deadline: Option<Deadline>,
        quiet: bool,
    ) -> Question<O, R> {
        Question {
            resolver,
            pipeline_refs,
            resolution: None,
            pipelined: 0,
            finish_deferred: false,
            deadline,
            pipelined_on: false,
            finished_early: false,
            quiet,
        }
    }

    /// Whether the `return` has not come and the question is still wanted.
    fn is_pending(&self) -> bool {
        self.resolution.is_none() && !self.finished_early
    }
}

impl<O: Clone + Eq + Hash, R> Session<O, R> {
    /// Asks the peer for the object under `swiss`. The answer arrives as a single
    /// reference or as `unknown_object`; `pipeline_refs` local handles may send to it.
    ///
    /// `question` must not be in use (see [`Call::question`]); a reused id is a bug in
    /// the runtime: it panics in debug builds and breaks the new question otherwise.
    pub fn bootstrap(
        &mut self,
        question: QuestionId,
        swiss: SwissNumber,
        resolver: Option<R>,
        pipeline_refs: u32,
    ) {
        if let Some(b) = self.closed_reason() {
            self.break_question(question, resolver, pipeline_refs, b);
            return;
        }
        self.debug_assert_fresh_question(question);
        self.send_or_hold(Held::Bootstrap {
            question,
            swiss,
            resolver,
            pipeline_refs,
        });
    }

    /// Sends a method call. Calls that cannot go out (the session is closed, the target
    /// is broken or plain data, the message is too large) break at once: the resolver
    /// comes back in an [`Event::Return`].
    ///
    /// A call that asks a question while the peer already has as many outstanding as it
    /// accepts, or that is pipelined on one of our questions while the peer already has
    /// as many messages queued on its answer as it accepts, is held back, with every
    /// later send, and goes out in order as answers come back
    /// ([`super::SessionStats::held`]).
    ///
    /// A question id already in use is a bug in the runtime: it panics in debug builds
    /// and breaks the new call otherwise.
    ///
    /// A call with a [`Call::deadline`] that is still unanswered then (held or asked)
    /// breaks with [`crate::BrokenKind::Timeout`] at [`Session::handle_timeout`].
    pub fn send(&mut self, call: Call<O, R>) {
        if self.is_closed() {
            // Breaks at once, with the session's reason.
            self.transmit_call(call);
            return;
        }
        if let Some(q) = call.question {
            self.debug_assert_fresh_question(q);
            if let Some(d) = call.deadline {
                self.deadlines.insert((d.at, q));
            }
        }
        self.send_or_hold(Held::Call(call));
    }

    /// Sends a bootstrap now (its turn has come and the peer has room).
    pub(super) fn transmit_bootstrap(
        &mut self,
        question: QuestionId,
        swiss: SwissNumber,
        resolver: Option<R>,
        pipeline_refs: u32,
    ) {
        if self.questions.contains_key(&question) {
            self.report_broken(resolver, reused_question(question));
            return;
        }
        self.questions.insert(
            question,
            Question::asked(resolver, pipeline_refs, None, false),
        );
        self.awaiting_return += 1;
        self.outbox.push_back(Message::Bootstrap {
            question: question.0,
            swiss,
        });
    }

    /// Sends a call now (its turn has come and the peer has room), or breaks it if it
    /// cannot go out.
    pub(super) fn transmit_call(&mut self, call: Call<O, R>) {
        let Call {
            target,
            method,
            payload,
            question,
            resolver,
            pipeline_refs,
            deadline,
            quiet,
        } = call;
        // Only a question can be quiet, and only a peer speaking version 3 knows it.
        let quiet = quiet && question.is_some() && self.peer.version >= QUIET_VERSION;
        if let Some(q) = question {
            // Checked here, where the question enters the table, so that a reused id
            // breaks the new call instead of overwriting the question already asked.
            if self.questions.contains_key(&q) {
                self.report_broken(resolver, reused_question(q));
                return;
            }
        }
        match self.call_message(target, &method, payload) {
            Err(b) => match question {
                Some(q) => {
                    self.forget_deadline(q, deadline);
                    self.break_question(q, resolver, pipeline_refs, b);
                }
                None => self.report_broken(resolver, b),
            },
            Ok((target, payload)) => {
                if let Some(q) = question {
                    self.questions
                        .insert(q, Question::asked(resolver, pipeline_refs, deadline, quiet));
                    self.awaiting_return += 1;
                }
                self.outbox.push_back(Message::Deliver {
                    target,
                    method,
                    payload,
                    question: question.map(|q| q.0),
                    quiet,
                });
            }
        }
    }

    /// Where a call goes on the wire and its payload as descriptors, or why it cannot
    /// go. Nothing is exported unless the call can go.
    fn call_message(
        &mut self,
        target: LocalTarget,
        method: &str,
        payload: OutPayload<O>,
    ) -> Result<(Target, Payload), Broken> {
        if let Some(b) = self.closed_reason() {
            return Err(b);
        }
        self.check_frame_size(Some(method), &payload)?;
        self.check_caps(&payload.caps)?;
        let wire_target = match target {
            LocalTarget::Import(i) => {
                if !self.imports.contains_key(&i) {
                    return Err(Broken::new(
                        BrokenKind::Other,
                        format!("reference {i} was released"),
                    ));
                }
                Target::Export(i.0)
            }
            LocalTarget::Answer(q) => match self.questions.get_mut(&q).map(|q| {
                if q.resolution.is_none() {
                    q.pipelined_on = true;
                }
                &q.resolution
            }) {
                None => {
                    return Err(Broken::new(
                        BrokenKind::Other,
                        format!("promise {q} was released"),
                    ));
                }
                Some(None) => Target::Answer(q.0),
                Some(Some(Resolution::Import(i))) => Target::Export(i.0),
                Some(Some(Resolution::Broken(b))) => return Err(b.clone()),
                Some(Some(Resolution::Data)) => return Err(Broken::not_an_object(Some(method))),
                // Resolved to one of our own objects: keep the promise's path (see
                // `handle_return`); the peer forwards the call back here in order.
                Some(Some(Resolution::Local(_))) => Target::Answer(q.0),
            },
        };
        let payload = self.give_payload(payload)?;
        // A message to an unanswered question may be queued at the peer: count it
        // (the hold queue keeps the count within the peer's `max_queued`).
        if let (LocalTarget::Answer(q), Target::Answer(_)) = (target, &wire_target) {
            if let Some(question) = self.questions.get_mut(&q) {
                if question.resolution.is_none() {
                    question.pipelined += 1;
                }
            }
        }
        Ok((wire_target, payload))
    }

    /// Records a question that broke before it was sent: its resolver gets `b`, and
    /// while handles are pipelined on it, sends to it break the same way.
    pub(super) fn break_question(
        &mut self,
        q: QuestionId,
        resolver: Option<R>,
        pipeline_refs: u32,
        b: Broken,
    ) {
        if pipeline_refs > 0 && !self.is_closed() {
            self.questions.insert(
                q,
                Question {
                    resolver: None,
                    pipeline_refs,
                    resolution: Some(Resolution::Broken(b.clone())),
                    pipelined: 0,
                    finish_deferred: false,
                    deadline: None,
                    pipelined_on: false,
                    finished_early: false,
                    quiet: false,
                },
            );
        }
        self.report_broken(resolver, b);
    }

    /// Gives a resolver back broken, if there is one.
    pub(super) fn report_broken(&mut self, resolver: Option<R>, b: Broken) {
        if let Some(resolver) = resolver {
            self.events.push_back(Event::Return {
                resolver,
                result: Err(b),
            });
        }
    }

    /// Panics in debug builds when `id` is already asked or waiting to be: ids must be
    /// unique for the life of the session. Release builds catch the reuse when the
    /// question would enter the table (`transmit_call`, `transmit_bootstrap`).
    fn debug_assert_fresh_question(&self, id: QuestionId) {
        debug_assert!(
            !self.questions.contains_key(&id) && !self.held.iter().any(|h| h.asks(id)),
            "question id {id} is already in use: the runtime must never reuse one"
        );
    }

    pub(super) fn handle_return(
        &mut self,
        id: QuestionId,
        result: ReturnResult,
    ) -> Result<(), Violation> {
        match self.questions.get(&id) {
            Some(q) if q.finished_early => return self.handle_late_return(id, result),
            Some(q) if q.resolution.is_none() => {}
            _ => return Err(Violation::UnknownQuestion(id)),
        }
        let result = match result {
            ReturnResult::Ok(payload) => Ok(self.take_payload(payload)?),
            ReturnResult::Err(w) => Err(Broken::from(w)),
        };
        let resolution = Resolution::of_incoming(&result);
        let Some(question) = self.questions.get_mut(&id) else {
            return Ok(());
        };
        let resolver = question.resolver.take();
        if let Some(d) = question.deadline.take() {
            self.deadlines.remove(&(d.at, id));
        }
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
            (None, Ok(payload)) => self.drop_payload(payload, PayloadOrigin::ThisMessage),
            (None, Err(_)) => {}
        }
        // The `finish` above goes out before anything released here, so the peer never
        // counts more than its limit.
        self.drain_hold_queue();
        Ok(())
    }

    /// The `return` for a question finished early (PROTOCOL.md 9.7): not a violation.
    /// Its result goes to no one (references in it are released), and the question
    /// stops counting against the peer's limit now: the peer freed its answer before
    /// sending this.
    fn handle_late_return(
        &mut self,
        id: QuestionId,
        result: ReturnResult,
    ) -> Result<(), Violation> {
        if let ReturnResult::Ok(payload) = result {
            let payload = self.take_payload(payload)?;
            self.drop_payload(payload, PayloadOrigin::ThisMessage);
        }
        self.awaiting_return = self.awaiting_return.saturating_sub(1);
        if let Some(q) = self.questions.get_mut(&id) {
            q.finished_early = false;
            if q.pipeline_refs == 0 {
                self.questions.remove(&id);
            }
        }
        self.drain_hold_queue();
        Ok(())
    }

    /// The runtime no longer wants question `id`'s answer: its promise was dropped
    /// before it settled. A call still held never goes out; an asked one gets an early
    /// `finish`, and the peer stops its method (PROTOCOL.md 9.7). Either way the resolver
    /// comes back broken with [`crate::BrokenKind::Cancelled`], for the record.
    ///
    /// A question answered or unknown is left alone, and so is one that local handles
    /// still pipeline on (they give up with [`Session::drop_question_ref`]). The
    /// question stops counting against the peer's limit when the `return` the peer
    /// still owes arrives.
    pub fn cancel(&mut self, id: QuestionId) {
        if self.is_closed() {
            return;
        }
        let held = self.held.iter().position(
            |h| matches!(h, Held::Call(c) if c.question == Some(id) && c.pipeline_refs == 0),
        );
        if let Some(Held::Call(call)) = held.and_then(|at| self.held.remove(at)) {
            // It never went out, so it never will: nothing to tell the peer, and
            // nothing behind it needs it (nothing pipelines on it).
            self.forget_deadline(id, call.deadline);
            self.report_broken(call.resolver, cancelled_locally());
            self.drain_hold_queue();
            return;
        }
        match self.questions.get(&id) {
            Some(q) if q.is_pending() && q.pipeline_refs == 0 => {
                let resolver = self.finish_early(id);
                self.report_broken(resolver, cancelled_locally());
            }
            _ => {}
        }
    }

    /// Sets (or replaces) the deadline of question `id`, asked or still held: the
    /// per-call deadline chosen after the call was sent. A question answered,
    /// finished or unknown is left alone.
    pub fn set_deadline(&mut self, id: QuestionId, deadline: Deadline) {
        if self.is_closed() {
            return;
        }
        let slot = if let Some(q) = self.questions.get_mut(&id) {
            if !q.is_pending() {
                return;
            }
            &mut q.deadline
        } else if let Some(Held::Call(c)) = self.held.iter_mut().find(|h| h.asks(id)) {
            &mut c.deadline
        } else {
            return;
        };
        if let Some(old) = slot.replace(deadline) {
            self.deadlines.remove(&(old.at, id));
        }
        self.deadlines.insert((deadline.at, id));
    }

    /// The runtime wants the result of question `id` after all: if it was asked quiet
    /// (see [`Call::quiet`]), a `want_return` goes out and the `return` comes as for any
    /// question; if it is still held, it goes out not quiet. Any other question is left
    /// alone, so asking twice costs nothing.
    pub fn want_return(&mut self, id: QuestionId) {
        if self.is_closed() {
            return;
        }
        if let Some(q) = self.questions.get_mut(&id) {
            if q.quiet && q.is_pending() {
                q.quiet = false;
                self.outbox
                    .push_back(Message::WantReturn { question: id.0 });
            }
        } else if let Some(Held::Call(c)) = self.held.iter_mut().find(|h| h.asks(id)) {
            c.quiet = false;
        }
    }

    /// Breaks every question whose deadline is `now` or earlier with
    /// [`crate::BrokenKind::Timeout`]: a held one never goes out; an asked one gets an
    /// early `finish` (cancellation at the peer), and while handles pipeline on it, sends
    /// to it break with the same error.
    pub(super) fn expire_questions(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            self.expire_question(id, at);
        }
        self.drain_hold_queue();
    }

    /// Question `id`'s deadline `at` has passed, unless the entry is stale (answered,
    /// cancelled or moved since).
    fn expire_question(&mut self, id: QuestionId, at: Instant) {
        let is_due = |d: &Option<Deadline>| d.is_some_and(|d| d.at == at);
        let held = self.held.iter().position(
            |h| matches!(h, Held::Call(c) if c.question == Some(id) && is_due(&c.deadline)),
        );
        if let Some(Held::Call(call)) = held.and_then(|at| self.held.remove(at)) {
            // Sends held behind it that pipeline on it find the question broken.
            let b = Broken::timeout(call.deadline.map(|d| d.timeout).unwrap_or_default());
            self.break_question(id, call.resolver, call.pipeline_refs, b);
            return;
        }
        let Some(q) = self.questions.get(&id) else {
            return;
        };
        if !q.is_pending() || !is_due(&q.deadline) {
            return;
        }
        let b = Broken::timeout(q.deadline.map(|d| d.timeout).unwrap_or_default());
        let resolver = self.finish_early(id);
        if let Some(q) = self.questions.get_mut(&id) {
            if q.pipeline_refs > 0 {
                q.resolution = Some(Resolution::Broken(b.clone()));
            }
        }
        self.report_broken(resolver, b);
    }

    /// Sends the early `finish` for a pending question and takes its resolver; the
    /// question stays until its `return` arrives ([`Session::handle_late_return`]).
    fn finish_early(&mut self, id: QuestionId) -> Option<R> {
        let q = self.questions.get_mut(&id)?;
        q.finished_early = true;
        if let Some(d) = q.deadline.take() {
            self.deadlines.remove(&(d.at, id));
        }
        self.outbox.push_back(Message::Finish { question: id.0 });
        q.resolver.take()
    }

    /// Removes a deadline entry for a question that will never be answered.
    fn forget_deadline(&mut self, id: QuestionId, deadline: Option<Deadline>) {
        if let Some(d) = deadline {
            self.deadlines.remove(&(d.at, id));
        }
    }

    /// The runtime dropped one pipelined handle on a question's answer.
    pub fn drop_question_ref(&mut self, id: QuestionId) {
        if self.held.iter().any(|h| h.uses_question(id)) {
            // Sends held before this drop still ask or target the question.
            self.hold_drop_question_ref(id);
        } else {
            // Nothing held needs it: apply it now, so that a deferred `finish` it sends
            // makes room for the held sends instead of waiting behind them forever.
            self.drop_question_ref_now(id);
        }
        self.collect();
    }

    /// Drops one pipelined handle on a question's answer at once; the last one frees the
    /// question (and sends its deferred `finish`, if any), or, if the answer has not
    /// come and nothing was sent to it, cancels it.
    pub(super) fn drop_question_ref_now(&mut self, id: QuestionId) {
        let Some(q) = self.questions.get_mut(&id) else {
            return;
        };
        q.pipeline_refs = q.pipeline_refs.saturating_sub(1);
        if q.pipeline_refs > 0 || q.finished_early {
            // Still used, or its `return` is still due (`handle_late_return` frees it).
            return;
        }
        if q.resolution.is_none() {
            if !q.pipelined_on {
                // Nobody can see the answer any more, and nothing was sent to it:
                // cancel the call at the peer (an early `finish`).
                let resolver = self.finish_early(id);
                self.report_broken(resolver, cancelled_locally());
            } else if q.quiet {
                // Messages sent on it depend on it, and nobody here wants its result:
                // a quiet question's `finish` goes now without cancelling it, and its
                // `return` (with no result) comes when it settles (PROTOCOL.md 9.15).
                drop(self.finish_early(id));
            }
            // Otherwise messages sent on the answer depend on it: it runs to its
            // `return`, which then frees it (no handle keeps it).
            return;
        }
        let Some(q) = self.questions.remove(&id) else {
            return;
        };
        if let Some(Resolution::Import(i)) = q.resolution {
            self.drop_handle_now(i, Suspect::Record);
        }
        if q.finish_deferred && !self.is_closed() {
            self.outbox.push_back(Message::Finish { question: id.0 });
            self.awaiting_return = self.awaiting_return.saturating_sub(1);
            self.drain_hold_queue();
        }
    }
}

/// What a cancelled question's resolver gets back (no one is waiting for it).
fn cancelled_locally() -> Broken {
    Broken::new(
        crate::broken::BrokenKind::Cancelled,
        "the call was cancelled before its answer came",
    )
}

/// The error for a question id used twice.
fn reused_question(id: QuestionId) -> Broken {
    Broken::new(
        BrokenKind::Other,
        format!(
            "question id {id} is already in use (a bug in the runtime: question ids must be \
             unique for the life of a session)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::limits::Limits;

    type S = Session<u32, u32>;

    /// A session whose peer's `hello` has arrived.
    fn open_session() -> S {
        let mut s: S = Session::new(Limits::default(), Instant::now());
        s.handle_message(Message::Hello(crate::wire::Hello {
            max_frame: 1 << 20,
            max_questions: 1024,
            ..crate::wire::Hello::MINIMUM
        }));
        assert!(s.is_established());
        s.poll_transmit();
        s
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "question id q1 is already in use")]
    fn reusing_a_question_id_panics_in_debug_builds() {
        let mut s = open_session();
        s.bootstrap(QuestionId(1), SwissNumber::from_bytes([1; 32]), Some(1), 0);
        s.bootstrap(QuestionId(1), SwissNumber::from_bytes([2; 32]), Some(2), 0);
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn reusing_a_question_id_breaks_the_new_question_in_release_builds() {
        let mut s = open_session();
        s.bootstrap(QuestionId(1), SwissNumber::from_bytes([1; 32]), Some(1), 0);
        assert!(matches!(
            s.poll_transmit(),
            Some(Message::Bootstrap { question: 1, .. })
        ));
        s.bootstrap(QuestionId(1), SwissNumber::from_bytes([2; 32]), Some(2), 0);
        assert_eq!(s.poll_transmit(), None);
        let Some(Event::Return {
            resolver: 2,
            result: Err(b),
        }) = s.poll_event()
        else {
            panic!("the reused question must break");
        };
        assert!(b.message().contains("q1 is already in use"), "{b}");
        // The first question is untouched: its return still reaches its resolver.
        assert_eq!(s.stats().questions, 1);
        s.handle_message(Message::Return {
            question: 1,
            result: ReturnResult::Err(crate::wire::WireBroken::from(&Broken::unknown_object())),
        });
        assert!(matches!(
            s.poll_event(),
            Some(Event::Return {
                resolver: 1,
                result: Err(_)
            })
        ));
    }
}
