//! The cycle collector: releases imports that only deferred settlements keep alive.
//!
//! A deferred settlement (see `imports`) holds handles on the imports its payload names.
//! Promises of the peer that settle to each other while the runtime holds none of them
//! would keep each other forever without this. The collector is paid for by operations
//! ([`COLLECT_WORK_PER_OPERATION`] each) so a peer cannot make it walk long chains again
//! and again for free. It must not drop anything still reachable from a handle of the
//! runtime or of the session, and must not recurse.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use super::imports::{Suspect, import_of};
use super::{InPayload, Session};
use crate::proto::ImportId;

/// Work the cycle collector may do per operation, on average (see `Session::collect`):
/// about what taking one message with 256 references costs anyway.
const COLLECT_WORK_PER_OPERATION: usize = 256;

impl<O: Clone + Eq + Hash, R> Session<O, R> {
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
    pub(super) fn collect(&mut self) {
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
                self.drop_handle_now(i, Suspect::Skip);
            }
        }
        work
    }
}
