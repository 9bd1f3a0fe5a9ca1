//! The import table: references the peer hands this side, the local handles on them,
//! and the settlements of the peer's promises.
//!
//! An import counts what the peer sent (`remote`, given back in one `release`) apart from
//! the handles held here (`local`); it is released when the last handle goes. A
//! settlement that arrives while the runtime holds no handle is deferred until it does.
//! This room must not recurse on peer input (a peer can chain settlements as long as its
//! import limit), and must not run the cycle collector itself (`collector` does, once per
//! operation).

use std::collections::HashSet;
use std::hash::Hash;

use super::{Event, InCap, InPayload, Introduction, PromiseState, Session, Violation};
use crate::broken::Broken;
use crate::proto::{ExportId, ImportId};
use crate::wire::message::{HANDOFF_VERSION, ThirdParty};
use crate::wire::{CapDescriptor, Message, Payload, ReturnResult};

/// A reference the peer exports to this side.
#[derive(Debug)]
pub(super) struct Import<O> {
    /// How many times the peer sent it (what `release` must give back).
    remote: u64,
    /// Handles held, by the runtime and by this session (questions, answers, messages
    /// queued on answers).
    pub(super) local: u64,
    /// Of those, the handles the runtime holds (given in events, not yet dropped).
    given: u64,
    promise: PromiseState,
    /// A settlement not yet reported: it arrived while the runtime held no handle, and
    /// is reported right after the runtime is given one.
    pub(super) deferred: Option<Result<InPayload<O>, Broken>>,
    /// Of `local`, the handles held by the payloads of deferred settlements (this
    /// import's own included). When these are all that is left, only the cycle
    /// collector can tell whether anything can still reach it.
    held_by_deferred: u64,
    /// In `Session::suspects` (so it is recorded there once).
    pub(super) suspected: bool,
}

impl<O> Import<O> {
    fn new(promise: PromiseState) -> Import<O> {
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
    pub(super) fn held_only_by_deferred(&self) -> bool {
        self.deferred.is_some() && self.local == self.held_by_deferred
    }
}

/// Where an incoming payload being dropped came from, which decides how its handles go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PayloadOrigin {
    /// Taken from the message being handled and handed to no one: every import it named
    /// is left as it was before the message, and those it created are released. No held
    /// send can name what only this payload held, so the drops need not wait behind
    /// held sends; and since nothing else changed in between, no import can have lost
    /// its last holder that matters to the cycle collector (so a peer cannot make it run
    /// with messages alone).
    ThisMessage,
    /// Queued earlier (on an answer): its handles are dropped in order with held sends.
    Queued,
}

/// Whether dropping a handle records an import that survives held by deferred
/// settlements alone as a suspect for the cycle collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Suspect {
    Record,
    /// The caller knows no import lost a holder that matters to the collector.
    Skip,
}

impl<O: Clone + Eq + Hash, R> Session<O, R> {
    /// Turns a payload's descriptors into local references, importing as needed.
    pub(super) fn take_payload(&mut self, payload: Payload) -> Result<InPayload<O>, Violation> {
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
                CapDescriptor::ThirdParty(ref t) => {
                    if self.peer.version < HANDOFF_VERSION {
                        return Err(Violation::NotInVersion {
                            what: "third_party",
                            version: self.peer.version,
                        });
                    }
                    if !self.imports.contains_key(&ImportId(t.vine)) {
                        new_imports.insert(t.vine);
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
                    InCap::Import(self.count_sent(ImportId(i), PromiseState::NotAPromise))
                }
                CapDescriptor::SenderPromise(i) => {
                    InCap::Promise(self.count_sent(ImportId(i), PromiseState::Unresolved))
                }
                CapDescriptor::ReceiverHosted(e) => match self.exports.get(&ExportId(e)) {
                    Some(export) => InCap::Local(export.object.clone()),
                    None => return Err(Violation::UnknownExport(ExportId(e))),
                },
                CapDescriptor::ThirdParty(t) => {
                    let ThirdParty {
                        host,
                        gift,
                        vine,
                        hints,
                    } = *t;
                    let import = self.count_sent(ImportId(vine), PromiseState::NotAPromise);
                    InCap::ThirdParty(import, Box::new(Introduction { host, gift, hints }))
                }
            });
        }
        Ok(InPayload {
            data: payload.data,
            caps,
        })
    }

    /// Counts one more sending of import `id` by the peer, and the local handle the
    /// payload holds on it; a new import starts as `promise`.
    fn count_sent(&mut self, id: ImportId, promise: PromiseState) -> ImportId {
        let import = self
            .imports
            .entry(id)
            .or_insert_with(|| Import::new(promise));
        import.remote += 1;
        import.local += 1;
        id
    }

    /// Gives back the local handles an incoming payload held; see [`PayloadOrigin`].
    pub(super) fn drop_payload(&mut self, payload: InPayload<O>, origin: PayloadOrigin) {
        for i in payload.caps.iter().filter_map(import_of) {
            match origin {
                PayloadOrigin::ThisMessage => self.drop_handle_now(i, Suspect::Skip),
                PayloadOrigin::Queued => self.drop_handle_in_order(i),
            }
        }
    }

    pub(super) fn handle_resolve(
        &mut self,
        id: ImportId,
        result: ReturnResult,
    ) -> Result<(), Violation> {
        let known = match self.imports.get(&id) {
            None => false,
            Some(import) if import.promise == PromiseState::Unresolved => true,
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
                self.drop_payload(payload, PayloadOrigin::ThisMessage);
            }
            return Ok(());
        }
        if let Some(import) = self.imports.get_mut(&id) {
            import.promise = PromiseState::Resolved;
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
    pub(super) fn take_deferred(&mut self, id: ImportId) -> Option<Result<InPayload<O>, Broken>> {
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
    pub(super) fn push_event(&mut self, event: Event<O, R>) {
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
    pub(super) fn new_import_handle(&mut self, id: ImportId) -> Option<InCap<O>> {
        let import = self.imports.get_mut(&id)?;
        import.local += 1;
        Some(match import.promise {
            PromiseState::Unresolved => InCap::Promise(id),
            PromiseState::Resolved | PromiseState::NotAPromise => InCap::Import(id),
        })
    }

    /// The runtime dropped one handle on an import. When the last goes, the import is
    /// released at the peer with the full count it sent.
    pub fn drop_import(&mut self, id: ImportId) {
        if let Some(import) = self.imports.get_mut(&id) {
            import.given = import.given.saturating_sub(1);
        }
        self.drop_handle_in_order(id);
        self.collect();
    }

    /// Drops one handle (the runtime's or the session's own) after any held sends,
    /// which may still name the import.
    pub(super) fn drop_handle_in_order(&mut self, id: ImportId) {
        if self.held.is_empty() {
            self.drop_handle_now(id, Suspect::Record);
        } else {
            self.hold_drop_import(id);
        }
    }

    /// Drops one handle on `id` at once. When it was the last, the import is released
    /// at the peer with the full count it sent, and the handles its unreported
    /// settlement held are dropped in turn (after any held sends, as
    /// `drop_handle_in_order` does): depth-first, in a loop rather than a recursion,
    /// because a peer can chain settlements as long as its import limit.
    ///
    /// With [`Suspect::Record`], an import that survives held by deferred settlements
    /// alone is recorded for the cycle collector (`collect`); handles dropped in turn
    /// always are.
    pub(super) fn drop_handle_now(&mut self, id: ImportId, suspect: Suspect) {
        let mut suspect = suspect;
        // Handles still to drop, the next on top.
        let mut pending = vec![id];
        while let Some(id) = pending.pop() {
            let record = std::mem::replace(&mut suspect, Suspect::Record);
            let Some(import) = self.imports.get_mut(&id) else {
                continue;
            };
            import.local = import.local.saturating_sub(1);
            if import.local > 0 {
                if record == Suspect::Record && !import.suspected && import.held_only_by_deferred()
                {
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
                    for i in caps {
                        self.hold_drop_import(i);
                    }
                }
            }
        }
    }
}

/// The import a reference names, if it is one.
pub(super) fn import_of<O>(cap: &InCap<O>) -> Option<ImportId> {
    match cap {
        InCap::Import(i) | InCap::Promise(i) | InCap::ThirdParty(i, _) => Some(*i),
        InCap::Local(_) => None,
    }
}
