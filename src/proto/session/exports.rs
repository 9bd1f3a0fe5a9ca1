//! The export table: local objects this side hands the peer, payloads given to the peer,
//! the peer's `release`s, and the `resolve` of local promises.
//!
//! An export counts how many times the peer received it; the peer gives the count back
//! in `release`, and the export is freed at zero. Sending the same object again reuses
//! its export. This room also holds the size checks every outgoing payload passes,
//! against what the peer announced in its `hello` (frame size, references per message,
//! CBOR depth and items, the peer's imports) and this vat's own `max_exports`: a payload
//! that fails them breaks locally with `too_large` and must never reach the peer, which
//! would abort the session (or refuse the data).

use std::collections::HashSet;
use std::hash::Hash;

use super::{Introduction, OutCap, OutPayload, PromiseState, Session, Violation};
use crate::broken::{Broken, BrokenKind};
use crate::proto::ExportId;
use crate::wire::message::{HANDOFF_VERSION, ThirdParty};
use crate::wire::scan::{self, Shape};
use crate::wire::{CapDescriptor, Message, Payload, ReturnResult, ScanError, WireBroken};

/// Bytes a message adds around its payload data and method name, counted generously
/// for the local frame-size check.
const MESSAGE_OVERHEAD: usize = 96;
/// Bytes one capability descriptor may take on the wire, counted generously.
const DESCRIPTOR_OVERHEAD: usize = 32;
/// CBOR items in a `deliver`, `return` or `resolve` besides its capability table (the
/// largest, a `deliver` with a question, has 17), counted generously.
const ENVELOPE_ITEMS: usize = 24;
/// CBOR items one capability descriptor adds to a message: a map, its key and its id.
const ITEMS_PER_CAP: usize = 3;
/// CBOR items a `third_party` descriptor adds besides its hints: its map and key, its
/// field map, four keys, the host, the gift, the vine, and the hints array.
const ITEMS_PER_THIRD_PARTY: usize = 11;
/// Bytes a `third_party` descriptor takes besides its hints' text, counted generously.
const THIRD_PARTY_OVERHEAD: usize = 128;

/// CBOR items `cap` adds to a message, as a descriptor.
fn cap_items<O>(cap: &OutCap<O>) -> usize {
    match cap {
        OutCap::ThirdParty(_, intro) => ITEMS_PER_THIRD_PARTY + intro.hints.len(),
        _ => ITEMS_PER_CAP,
    }
}

/// Bytes `cap` takes on the wire, as a descriptor, counted generously.
fn cap_bytes<O>(cap: &OutCap<O>) -> usize {
    match cap {
        OutCap::ThirdParty(_, intro) => {
            THIRD_PARTY_OVERHEAD + intro.hints.iter().map(|h| h.len() + 3).sum::<usize>()
        }
        _ => DESCRIPTOR_OVERHEAD,
    }
}

/// A local object this side exports to the peer.
#[derive(Debug)]
pub(super) struct Export<O> {
    pub(super) object: O,
    /// How many times the peer received this export and has not released it.
    refcount: u64,
    promise: PromiseState,
}

impl<O: Clone + Eq + Hash, R> Session<O, R> {
    /// Turns local references into descriptors, exporting local objects.
    pub(super) fn give_payload(&mut self, payload: OutPayload<O>) -> Result<Payload, Broken> {
        self.check_caps(&payload.caps)?;
        self.check_data_limits(&payload.data, payload.shape)?;
        // An object named twice in one payload is one new export, not two.
        let fresh = payload
            .caps
            .iter()
            .filter_map(|c| match c {
                OutCap::Local(o) | OutCap::Promise(o) | OutCap::ThirdParty(o, _)
                    if !self.export_ids.contains_key(o) =>
                {
                    Some(o)
                }
                _ => None,
            })
            .collect::<HashSet<_>>()
            .len();
        // The peer imports each export once: its `max_imports` bounds our exports as
        // much as our own `max_exports` does. (Its count of imports never exceeds our
        // count of exports: it forgets an import before its `release` leaves.)
        let (limit, whose) = if self.peer.max_imports < self.limits.max_exports {
            (self.peer.max_imports, "the peer's limit of")
        } else {
            (self.limits.max_exports, "the limit of")
        };
        if self.exports.len() + fresh > limit {
            return Err(Broken::new(
                BrokenKind::TooLarge,
                format!(
                    "exporting {fresh} more objects would pass {whose} {limit} exports to this peer"
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
                OutCap::Local(o) => {
                    CapDescriptor::SenderHosted(self.export(o, PromiseState::NotAPromise).0.0)
                }
                OutCap::Promise(o) => match self.export(o, PromiseState::Unresolved) {
                    (e, PromiseState::Unresolved) => CapDescriptor::SenderPromise(e.0),
                    // Already settled (its `resolve` went out): it is an object now.
                    (e, PromiseState::Resolved | PromiseState::NotAPromise) => {
                        CapDescriptor::SenderHosted(e.0)
                    }
                },
                OutCap::Import(i) => CapDescriptor::ReceiverHosted(i.0),
                OutCap::ThirdParty(o, intro) => {
                    let vine = self.export(o.clone(), PromiseState::NotAPromise).0.0;
                    if self.peer.version >= HANDOFF_VERSION {
                        let Introduction { host, gift, hints } = *intro;
                        // The runtime deposits the gift now that it is named on the wire.
                        self.introduced.push((o, gift));
                        CapDescriptor::ThirdParty(Box::new(ThirdParty {
                            host,
                            gift,
                            vine,
                            hints,
                        }))
                    } else {
                        CapDescriptor::SenderHosted(vine)
                    }
                }
            });
        }
        Ok(Payload {
            data: payload.data,
            caps,
        })
    }

    /// Checks the number of references in one outgoing message against what the peer
    /// accepts (and enforces by aborting): its `max_caps`, and as many as fit its
    /// `max_items` with the rest of the message.
    pub(super) fn check_caps(&self, caps: &[OutCap<O>]) -> Result<(), Broken> {
        let count = caps.len();
        let items: usize = caps.iter().map(cap_items).sum();
        let room = self.peer.cbor.max_items.saturating_sub(ENVELOPE_ITEMS);
        if count > self.peer.max_caps || items > room {
            let limit = self.peer.max_caps.min(room / ITEMS_PER_CAP);
            return Err(Broken::new(
                BrokenKind::TooLarge,
                format!(
                    "{count} references in one message ({items} CBOR items as descriptors) \
                     exceed the peer's limit of {limit} (and {room} items): pass fewer, or \
                     group them in an object"
                ),
            ));
        }
        Ok(())
    }

    /// Checks outgoing payload data against the CBOR limits the peer announced, which
    /// it applies when it decodes the data: over them, the callee could only refuse it.
    /// Only depth and item count are judged here: the data is the program's, and
    /// whether it is well-formed is for the decoder at the other end (PROTOCOL.md 8.1).
    fn check_data_limits(&self, data: &[u8], shape: Option<Shape>) -> Result<(), Broken> {
        let checked = match shape {
            Some(shape) => shape.check(&self.peer.cbor),
            None => scan::check(data, &self.peer.cbor),
        };
        match checked {
            Err(e @ (ScanError::TooDeep { .. } | ScanError::TooManyItems { .. })) => {
                Err(Broken::new(
                    BrokenKind::TooLarge,
                    format!(
                        "the data exceeds the peer's CBOR limits (depth {}, {} items): {e}",
                        self.peer.cbor.max_depth, self.peer.cbor.max_items
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Checks an outgoing payload against the peer's frame limit, with a generous
    /// estimate of the message around it: a call to `method`, or a result (`None`).
    pub(super) fn check_frame_size(
        &self,
        method: Option<&str>,
        payload: &OutPayload<O>,
    ) -> Result<(), Broken> {
        if frame_estimate(method, payload) <= self.peer.max_frame {
            return Ok(());
        }
        let message = match method {
            Some(method) => format!(
                "a call to {method:?} with {} bytes of arguments and {} references exceeds \
                 the peer's frame limit of {} bytes",
                payload.data.len(),
                payload.caps.len(),
                self.peer.max_frame,
            ),
            None => format!(
                "the result ({} bytes) exceeds the peer's frame limit of {} bytes",
                payload.data.len(),
                self.peer.max_frame
            ),
        };
        Err(Broken::new(BrokenKind::TooLarge, message))
    }

    /// Exports `object`, or counts one more reference to its existing export. A new
    /// export starts in state `new_state`; returns the id and the export's state (an
    /// existing export keeps its own).
    fn export(&mut self, object: O, new_state: PromiseState) -> (ExportId, PromiseState) {
        if let Some(id) = self.export_ids.get(&object) {
            if let Some(export) = self.exports.get_mut(id) {
                export.refcount += 1;
                return (*id, export.promise);
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
                promise: new_state,
            },
        );
        (id, new_state)
    }

    pub(super) fn handle_release(&mut self, id: ExportId, count: u64) -> Result<(), Violation> {
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
            self.keep_settlement_until_sent(object, result);
            return;
        };
        match self.exports.get_mut(&id) {
            Some(export) if export.promise == PromiseState::Unresolved => {
                export.promise = PromiseState::Resolved;
            }
            _ => return,
        }
        let result = match result
            .and_then(|p| self.check_frame_size(None, &p).map(|()| p))
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
}
/// A generous estimate of the frame a call to `method` (or, with `None`, a result or
/// another message around a payload) takes with `payload` in it.
pub(super) fn frame_estimate<O>(method: Option<&str>, payload: &OutPayload<O>) -> usize {
    MESSAGE_OVERHEAD
        + method.map_or(0, str::len)
        + payload.data.len()
        + payload.caps.iter().map(cap_bytes).sum::<usize>()
}
