//! Answers to the peer's questions: the calls and bootstraps it asks, the messages it
//! pipelines on them before they resolve, answering, and `finish`.
//!
//! Messages queued on an answer are bounded per answer (`max_queued_per_promise`) and
//! the answers by `max_inbound_questions`. A `finish` before the answer is ready
//! cancels it (PROTOCOL.md 9.7): the runtime is told to stop the method, and the answer
//! breaks with `cancelled` at once, `return` included, so it stops counting against the
//! limit when the asker's `finish` arrives. This room must not recurse on peer input: a
//! chain of calls pipelined on broken answers is answered by a loop (`answer_broken`).
//!
//! A quiet question (PROTOCOL.md 9.15) is answered like any other, except that its result
//! is kept here rather than sent, until the asker's `want_return` asks for it; its
//! `finish` does not cancel it once messages were pipelined on it, and then the
//! `return` (with `null`) goes out when it settles, which is when it stops counting on
//! both sides.

use std::collections::hash_map::Entry;

use bytes::Bytes;
use std::hash::Hash;

use super::imports::PayloadOrigin;
use super::{Event, InCap, InPayload, OutCap, OutPayload, Resolution, Session, Violation};
use crate::broken::{Broken, BrokenKind};
use crate::proto::{AnswerId, ExportId, ImportId};
use crate::wire::{Message, NULL_DATA, Payload, ReturnResult, Target, WireBroken};

/// A question the peer asked.
#[derive(Debug)]
pub(super) struct Answer<O> {
    /// `None` while pending.
    resolution: Option<Resolution<O>>,
    /// Messages pipelined on the answer before it resolved, in arrival order.
    queued: Vec<Queued<O>>,
    /// Quiet and not asked for yet: no `return` goes out until `want_return`.
    quiet: bool,
    /// A message was sent to the answer (it arrived pipelined on it): its `finish` no
    /// longer cancels it, if quiet.
    pipelined_on: bool,
    /// The asker finished it (quiet, unsettled, pipelined on): it goes when it settles.
    finished: bool,
    /// A quiet answer's result, settled but not asked for: what `want_return` sends.
    /// The imports it names hold one handle each.
    kept: Option<Result<OutPayload<O>, Broken>>,
}

/// A message the peer sent to an answer that had not resolved yet.
#[derive(Debug)]
struct Queued<O> {
    method: String,
    payload: InPayload<O>,
    question: Option<AnswerId>,
}

impl<O: Clone + Eq + Hash, R> Session<O, R> {
    /// Records a question the peer asks, within the limit of outstanding questions.
    pub(super) fn new_answer(&mut self, id: AnswerId, quiet: bool) -> Result<(), Violation> {
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
                    quiet,
                    pipelined_on: false,
                    finished: false,
                    kept: None,
                });
                Ok(())
            }
        }
    }

    pub(super) fn handle_deliver(
        &mut self,
        target: Target,
        method: String,
        payload: Payload,
        question: Option<AnswerId>,
        quiet: bool,
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
                let Some(answer) = self.answers.get_mut(&a) else {
                    return Err(Violation::UnknownAnswer(a));
                };
                answer.pipelined_on = true;
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
            self.new_answer(q, quiet)?;
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
            Dest::Resolved(r) => {
                self.deliver_to(r, method, payload, question, PayloadOrigin::ThisMessage);
            }
        }
        Ok(())
    }

    /// Delivers a message to what an answer resolved to; `origin` tells whether the
    /// payload was taken from the message being handled or queued earlier.
    fn deliver_to(
        &mut self,
        resolution: Resolution<O>,
        method: String,
        payload: InPayload<O>,
        question: Option<AnswerId>,
        origin: PayloadOrigin,
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
            Resolution::Data => Broken::not_an_object(Some(&method)),
            Resolution::Broken(b) => b,
        };
        self.drop_payload(payload, origin);
        if let Some(q) = question {
            // Answered by the caller's loop, not here: a chain of calls pipelined on
            // broken answers would otherwise recurse as deep as the peer likes.
            self.broken_answers.push_back((q, broken));
        }
    }

    pub(super) fn handle_finish(&mut self, id: AnswerId) -> Result<(), Violation> {
        let Some(answer) = self.answers.get_mut(&id) else {
            return Err(Violation::UnknownAnswer(id));
        };
        if answer.finished {
            return Err(Violation::UnknownAnswer(id));
        }
        if answer.quiet {
            if answer.resolution.is_some() {
                // Settled and never asked for: it goes now, and the `return` tells the
                // asker it stopped counting.
                let kept = answer.kept.take();
                self.release_kept(kept);
                self.remove_answer(id);
                self.outbox.push_back(quiet_return(id));
                return Ok(());
            }
            if answer.pipelined_on {
                // Messages wait on it: it runs to its end, which sends the `return`.
                answer.finished = true;
                return Ok(());
            }
            // Nothing depends on it: cancelled like any question, its `return` saying so.
            answer.quiet = false;
        }
        if answer.resolution.is_none() {
            // An early `finish` cancels the call (PROTOCOL.md 9.7). The method stops (the
            // runtime drops it), and the answer breaks now rather than when the method
            // would have ended: a peer that finishes early cannot keep work running here
            // beyond its question limit. The `return` still goes, so the asker knows
            // exactly when the question stops counting; the calls pipelined on the
            // answer break the same way (answered by the caller's loop).
            self.push_event(Event::Cancel { answer: id });
            self.answer_one(id, Err(Broken::cancelled()));
        }
        self.remove_answer(id);
        Ok(())
    }

    /// The peer's `want_return`: the result of its quiet question goes now if it is
    /// kept, or when the question settles.
    pub(super) fn handle_want_return(&mut self, id: AnswerId) -> Result<(), Violation> {
        let Some(answer) = self.answers.get_mut(&id) else {
            return Err(Violation::UnknownAnswer(id));
        };
        if answer.finished {
            return Err(Violation::WantReturnAfterFinish(id));
        }
        if !answer.quiet {
            // Asked for already, or its `return` went out anyway (a result that could
            // not be kept): the asker's `want_return` crossed it on the wire.
            return Ok(());
        }
        answer.quiet = false;
        let Some(kept) = answer.kept.take() else {
            // Not settled yet: `answer_one` sends the `return`.
            return Ok(());
        };
        let result = kept.and_then(|p| self.check_frame_size(None, &p).map(|()| p));
        let names = kept_imports(&result);
        let wire = match result {
            Ok(p) => match self.give_payload(p) {
                Ok(p) => ReturnResult::Ok(p),
                Err(b) => ReturnResult::Err(WireBroken::from(&b)),
            },
            Err(b) => ReturnResult::Err(WireBroken::from(&b)),
        };
        // The handles kept for the result's imports: the descriptors have gone out.
        for i in names {
            self.drop_handle_in_order(i);
        }
        self.outbox.push_back(Message::Return {
            question: id.0,
            result: wire,
        });
        Ok(())
    }

    /// An answer that resolved to the peer's own reference holds a handle on it, so
    /// calls pipelined on the answer can still be forwarded there after the runtime
    /// has dropped its own handles.
    fn hold_resolution(&mut self, resolution: Resolution<O>) -> Resolution<O> {
        match resolution {
            Resolution::Import(i) => match self.imports.get_mut(&i) {
                Some(import) => {
                    import.local += 1;
                    Resolution::Import(i)
                }
                None => Resolution::Broken(released(i)),
            },
            other => other,
        }
    }

    /// Gives back the import handles a kept result held.
    fn release_kept(&mut self, kept: Option<Result<OutPayload<O>, Broken>>) {
        if let Some(result) = kept {
            for i in kept_imports(&result) {
                self.drop_handle_in_order(i);
            }
        }
    }

    /// Whether a quiet answer can keep `result` for a later `want_return`: every import
    /// it names is still held (each then holds one handle more), and it carries no local
    /// promise (whose settlement could only be sent once it is exported). Otherwise
    /// the result goes at once, as for any question.
    fn keep_result(&mut self, result: &Result<OutPayload<O>, Broken>) -> bool {
        let Ok(p) = result else {
            return true;
        };
        let keepable = p.caps.iter().all(|cap| match cap {
            OutCap::Import(i) => self.imports.contains_key(i),
            OutCap::Local(_) | OutCap::ThirdParty(..) => true,
            OutCap::Promise(_) => false,
        });
        if keepable {
            for i in kept_imports(result) {
                if let Some(import) = self.imports.get_mut(&i) {
                    import.local += 1;
                }
            }
        }
        keepable
    }

    /// Frees an answer, and the handle it held if it resolved to a peer's reference.
    fn remove_answer(&mut self, id: AnswerId) {
        if let Some(Answer {
            resolution: Some(Resolution::Import(i)),
            ..
        }) = self.answers.remove(&id)
        {
            self.drop_handle_in_order(i);
        }
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
    pub(super) fn answer_broken(&mut self) {
        while let Some((id, broken)) = self.broken_answers.pop_front() {
            self.answer_one(id, Err(broken));
        }
    }

    fn answer_one(&mut self, id: AnswerId, result: Result<OutPayload<O>, Broken>) {
        if self.is_closed() {
            return;
        }
        let quiet = match self.answers.get(&id) {
            Some(a) if a.resolution.is_none() => a.quiet,
            _ => return,
        };
        if quiet {
            if self.keep_result(&result) {
                self.settle_quietly(id, result);
                return;
            }
            if let Some(a) = self.answers.get_mut(&id) {
                a.quiet = false;
            }
        }
        let result = result.and_then(|p| self.check_frame_size(None, &p).map(|()| p));
        // Export the result's references before deciding what the answer resolved to:
        // a result that cannot be exported breaks, and so must every message pipelined
        // on it.
        let (resolution, wire) = match result {
            Ok(p) => {
                let resolution = Resolution::of_outgoing(&p);
                match self.give_payload(p) {
                    Ok(p) => (resolution, ReturnResult::Ok(p)),
                    Err(b) => {
                        let wire = ReturnResult::Err(WireBroken::from(&b));
                        (Resolution::Broken(b), wire)
                    }
                }
            }
            Err(b) => {
                let wire = ReturnResult::Err(WireBroken::from(&b));
                (Resolution::Broken(b), wire)
            }
        };
        let resolution = self.hold_resolution(resolution);
        let Some(answer) = self.answers.get_mut(&id) else {
            return;
        };
        let queued = std::mem::take(&mut answer.queued);
        answer.resolution = Some(resolution.clone());
        // A quiet question its asker finished, whose result could not be kept: the
        // `return` goes with the result after all, and ends it on both sides.
        let finished = answer.finished;
        self.outbox.push_back(Message::Return {
            question: id.0,
            result: wire,
        });
        self.deliver_queued(&resolution, queued);
        if finished {
            self.remove_answer(id);
        }
    }
}

impl<O: Clone + Eq + Hash, R> Session<O, R> {
    /// Delivers the messages that waited on an answer to what it resolved to, in the
    /// order they arrived.
    fn deliver_queued(&mut self, resolution: &Resolution<O>, queued: Vec<Queued<O>>) {
        for q in queued {
            self.deliver_to(
                resolution.clone(),
                q.method,
                q.payload,
                q.question,
                PayloadOrigin::Queued,
            );
        }
    }

    /// Settles a quiet answer without a `return`: the messages queued on it go to what it
    /// resolved to, and the result is kept for a `want_return`, or, if the asker has
    /// finished it, dropped with the answer and the `return` (`null`) sent.
    fn settle_quietly(&mut self, id: AnswerId, result: Result<OutPayload<O>, Broken>) {
        let resolution = match &result {
            Ok(p) => Resolution::of_outgoing(p),
            Err(b) => Resolution::Broken(b.clone()),
        };
        let resolution = self.hold_resolution(resolution);
        let Some(answer) = self.answers.get_mut(&id) else {
            self.release_kept(Some(result));
            return;
        };
        let queued = std::mem::take(&mut answer.queued);
        answer.resolution = Some(resolution.clone());
        let finished = if answer.finished {
            Some(result)
        } else {
            answer.kept = Some(result);
            None
        };
        self.deliver_queued(&resolution, queued);
        if let Some(result) = finished {
            self.release_kept(Some(result));
            self.remove_answer(id);
            self.outbox.push_back(quiet_return(id));
        }
    }
}

/// The `return` of a quiet question finished without asking for its result: `null`
/// (PROTOCOL.md 9.15).
fn quiet_return(id: AnswerId) -> Message {
    Message::Return {
        question: id.0,
        result: ReturnResult::Ok(Payload {
            data: Bytes::from_static(&NULL_DATA),
            caps: Vec::new(),
        }),
    }
}

/// The imports a kept result names, each holding one handle.
fn kept_imports<O>(result: &Result<OutPayload<O>, Broken>) -> Vec<ImportId> {
    match result {
        Ok(p) => p
            .caps
            .iter()
            .filter_map(|cap| match cap {
                OutCap::Import(i) => Some(*i),
                _ => None,
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The error for a call to a reference the promise resolved to, released since.
fn released(i: ImportId) -> Broken {
    Broken::new(
        BrokenKind::Other,
        format!("the reference {i} the promise resolved to was released"),
    )
}
