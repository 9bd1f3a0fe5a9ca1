//! A model of the wire between the world's sessions, built from the frames that cross
//! it and the payloads the runtimes hand the sessions: which exports each peer holds,
//! which object each export id names, and where each call on the wire is going.
//!
//! It checks that no call leaves for an export its caller no longer holds, that every
//! call reaches the object its reference designates, that a release never returns more
//! than was sent, and at the end that every call to an export arrived and no export is
//! still held. It reads frames and payloads only; it never drives a session.

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;

use crate::proto::{AnswerId, InCap, OutCap, OutPayload};
use crate::wire::{CapDescriptor, Message, ReturnResult, SINGLE_CAP_DATA, Target as WireTarget};

/// Where the wire says a call is going, checked when the session delivers it.
#[derive(Debug, Clone, Copy)]
enum Bound {
    /// To an export: the object its id names.
    Object(u32),
    /// To an answer: whatever the answer resolved to.
    Answer(AnswerId),
}

/// The wire as the peers see it, for the four sessions of the world (session `s`'s peer
/// is `s ^ 1`).
#[derive(Default)]
pub(super) struct Wire {
    /// Per session, how many copies of each export its peer holds (sent, not released).
    exported: [HashMap<u64, u64>; 4],
    /// The object each export id of each session names (ids are never reused).
    export_object: HashMap<(usize, u64), u32>,
    /// The references of payloads handed to a session, until the frame carrying them
    /// shows under which descriptors they went: calls by tag, answers by id, settlements
    /// by promise.
    call_caps: HashMap<(usize, Bytes), Vec<OutCap<u32>>>,
    answer_caps: HashMap<(usize, AnswerId), Vec<OutCap<u32>>>,
    resolve_caps: HashMap<(usize, u32), Vec<OutCap<u32>>>,
    /// What each answer resolved to, when it was one reference.
    answered_with: HashMap<(usize, AnswerId), OutCap<u32>>,
    /// Calls on the wire, by receiving session and tag, not yet delivered.
    in_flight: HashMap<(usize, Bytes), VecDeque<Bound>>,
    /// Quiet questions whose result was not asked for, by answering session: their
    /// `return`, if its result carries nothing, is the one for a finished quiet
    /// question (`null`), and the answer's references never went out.
    quiet: HashSet<(usize, AnswerId)>,
}

impl Wire {
    /// Session `s` was handed a call tagged `tag` carrying `caps`.
    pub(super) fn call(&mut self, s: usize, tag: &[u8], caps: &[OutCap<u32>]) {
        if !caps.is_empty() {
            self.call_caps
                .insert((s, Bytes::copy_from_slice(tag)), caps.to_vec());
        }
    }

    /// Session `s` was handed answer `a`'s result: note what it carries, and what calls
    /// pipelined on it reach if it is one reference.
    pub(super) fn answer(&mut self, s: usize, a: AnswerId, result: &OutPayload<u32>) {
        if !result.caps.is_empty() {
            self.answer_caps.insert((s, a), result.caps.clone());
        }
        if let [cap] = &result.caps[..] {
            if result.data[..] == SINGLE_CAP_DATA {
                self.answered_with.insert((s, a), cap.clone());
            }
        }
    }

    /// Session `s` was handed the settlement of `promise`.
    pub(super) fn resolve(&mut self, s: usize, promise: u32, result: &OutPayload<u32>) {
        if !result.caps.is_empty() {
            self.resolve_caps.insert((s, promise), result.caps.clone());
        }
    }

    /// A frame from session `s` is on its way to `to`: count the exports it hands out
    /// or releases, and note where a call is going. A call to an export the caller no
    /// longer holds fails here.
    pub(super) fn see(&mut self, s: usize, to: usize, msg: &Message) {
        match msg {
            Message::Deliver {
                target,
                payload,
                question,
                quiet,
                ..
            } => {
                if let (true, Some(q)) = (*quiet, question) {
                    self.quiet.insert((to, AnswerId(*q)));
                }
                let key = (s, payload.data.clone());
                let caps = self.call_caps.remove(&key).unwrap_or_default();
                self.note_exports(s, &caps, &payload.caps);
                let bound = match *target {
                    WireTarget::Export(id) => {
                        let held = self.exported[to].get(&id).copied().unwrap_or(0);
                        assert!(held > 0, "a call to export {id} of session {to}, freed");
                        Bound::Object(self.export_object[&(to, id)])
                    }
                    WireTarget::Answer(a) => Bound::Answer(AnswerId(a)),
                };
                let key = (to, payload.data.clone());
                self.in_flight.entry(key).or_default().push_back(bound);
            }
            Message::Return {
                question,
                result: ReturnResult::Ok(p),
            } => {
                let caps = self
                    .answer_caps
                    .remove(&(s, AnswerId(*question)))
                    .unwrap_or_default();
                let quiet = self.quiet.remove(&(s, AnswerId(*question)));
                if !(quiet && p.caps.is_empty()) {
                    self.note_exports(s, &caps, &p.caps);
                }
            }
            Message::WantReturn { question } => {
                self.quiet.remove(&(to, AnswerId(*question)));
            }
            Message::Return { question, .. } => {
                self.quiet.remove(&(s, AnswerId(*question)));
            }
            Message::Resolve {
                export,
                result: ReturnResult::Ok(p),
            } => {
                let promise = self.export_object[&(s, *export)];
                let caps = self.resolve_caps.remove(&(s, promise)).unwrap_or_default();
                self.note_exports(s, &caps, &p.caps);
            }
            Message::Release { export, count } => {
                let held = self.exported[to].entry(*export).or_default();
                assert!(
                    *held >= *count,
                    "release of {count} copies of export {export} of session {to}, {held} held"
                );
                *held -= count;
                if *held == 0 {
                    self.exported[to].remove(export);
                }
            }
            _ => {}
        }
    }

    /// Session `s` sent the references `local` of a payload as `wire`: each object or
    /// promise it exports is one more copy its peer holds, under one id per object.
    fn note_exports(&mut self, s: usize, local: &[OutCap<u32>], wire: &[CapDescriptor]) {
        assert_eq!(
            local.len(),
            wire.len(),
            "session {s} sent {wire:?} for {local:?}"
        );
        for (l, w) in local.iter().zip(wire) {
            match (l, w) {
                (
                    OutCap::Local(o) | OutCap::Promise(o),
                    CapDescriptor::SenderHosted(id) | CapDescriptor::SenderPromise(id),
                ) => {
                    let named = *self.export_object.entry((s, *id)).or_insert(*o);
                    assert_eq!(named, *o, "export {id} of session {s} names two objects");
                    *self.exported[s].entry(*id).or_default() += 1;
                }
                (OutCap::Import(_), CapDescriptor::ReceiverHosted(_)) => {}
                other => panic!("session {s} sent {other:?}"),
            }
        }
    }

    /// Session `s` delivered the call tagged `tag` to `target`: the call came over the
    /// wire, and reaches the object its export id names, or what the answer it was
    /// pipelined on resolved to.
    pub(super) fn delivered(&mut self, s: usize, target: &InCap<u32>, tag: &[u8]) {
        let bound = self
            .in_flight
            .get_mut(&(s, Bytes::copy_from_slice(tag)))
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(|| panic!("session {s} delivered a call it never received"));
        match bound {
            Bound::Object(o) => {
                assert_eq!(*target, InCap::Local(o), "a call to object {o} went astray");
            }
            Bound::Answer(a) => match (self.answered_with.get(&(s, a)), target) {
                (Some(OutCap::Local(o) | OutCap::Promise(o)), InCap::Local(t)) => {
                    assert_eq!(o, t, "a call pipelined on {a:?} of session {s} went astray");
                }
                (Some(OutCap::Import(i)), InCap::Import(j) | InCap::Promise(j)) => {
                    assert_eq!(i, j, "a call pipelined on {a:?} of session {s} went astray");
                }
                other => panic!("a call pipelined on {a:?} of session {s} reached {other:?}"),
            },
        }
    }

    /// Once everything settled and every reference was dropped: every call to an export
    /// arrived, and no peer holds an export any more.
    pub(super) fn finish(&self) {
        for (s, held) in self.exported.iter().enumerate() {
            assert!(
                held.is_empty(),
                "session {s}: the peer still holds {held:?}"
            );
        }
        let lost: Vec<&(usize, Bytes)> = self
            .in_flight
            .iter()
            .filter(|(_, bound)| bound.iter().any(|b| matches!(b, Bound::Object(_))))
            .map(|(call, _)| call)
            .collect();
        assert!(
            lost.is_empty(),
            "calls to exports never delivered: {lost:?}"
        );
    }
}
