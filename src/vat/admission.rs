//! [`Admission`]: which inbound connections a listening vat takes, and which it lets go
//! to make room, so that peers who have not yet proved anything cannot take the slots of
//! established sessions nor lock out newcomers.
//!
//! Two budgets. A connection is *handshaking* from its TCP accept until the peer's
//! `hello` arrives (TLS handshake, then the wait for `hello`), and *established* after.
//! Handshaking connections count against
//! [`Limits::max_handshaking`](crate::Limits::max_handshaking), at most
//! [`Limits::max_handshaking_per_address`](crate::Limits::max_handshaking_per_address)
//! from one source; established ones against
//! [`Limits::max_connections`](crate::Limits::max_connections). Moving from one budget to
//! the other happens once, when the session task reports the `hello`
//! ([`Ticket::promotion`]).
//!
//! A connection over its source's cap, or arriving when the handshake budget is full
//! and nobody holds more than their share, waits for a slot, unread, in a queue of at
//! most [`Limits::max_handshake_queue`](crate::Limits::max_handshake_queue) and for at
//! most a quarter of the handshake timeout; a freed slot goes to the source with the
//! fewest handshakes, its longest waiting connection first. So a burst from one address
//! (many clients behind one NAT, or one process) is served a cap at a time rather than
//! refused.
//!
//! When the handshake budget is full, a newcomer takes the slot of the oldest handshake
//! from the source holding the most, if that source holds at least two more than the
//! newcomer's: a source can only be cut back towards an equal share, so one with a
//! single connection in the handshake (a client connecting once) is never cut while some
//! source holds three. A full queue makes room the same way. When more than half of the
//! budget is in use, a new handshake gets a quarter of the handshake timeout, for TLS
//! and `hello` together.
//!
//! This module decides; it does no I/O and starts no task. It reads the (tokio) clock
//! only to stamp a slot handed to a waiting connection; other instants are passed in.
//! Its one lock is held for map operations bounded by the budgets, never across an
//! await.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::handle::Promotion;
use crate::limits::Limits;

/// Under pressure (more than half the handshake budget in use), a new connection gets
/// this fraction of the handshake timeout, for TLS and `hello` together.
const PRESSURE_DIVISOR: u32 = 4;

/// The connection budgets of one vat. Shared by the accept loop, the connection tasks
/// (through their [`Ticket`]s) and [`Vat::stats`](super::Vat::stats).
pub(crate) struct Admission {
    max_connections: usize,
    max_handshaking: usize,
    max_per_address: usize,
    max_queue: usize,
    handshake_timeout: Duration,
    state: Mutex<State>,
}

/// What [`Admission`] counts, under its lock.
#[derive(Default)]
struct State {
    /// Connections in the handshake (before the peer's `hello`), by ticket number.
    handshaking: HashMap<u64, Handshake>,
    /// How many of `handshaking` come from each source; no zero entries.
    per_source: HashMap<Source, usize>,
    /// Tickets of established connections.
    established: HashSet<u64>,
    /// Connections waiting for a handshake slot, oldest first in each source's queue;
    /// no empty queues.
    waiting: HashMap<Source, VecDeque<Waiting>>,
    /// How many connections `waiting` holds in all.
    waiting_total: usize,
    next_ticket: u64,
    /// Connections closed before any TLS work since the vat started: at accept, or
    /// after waiting for a slot in vain.
    refused: u64,
    /// Handshakes cut to make room for a newcomer, or at the deadline under pressure.
    cut: u64,
}

/// One connection in the handshake.
struct Handshake {
    source: Source,
    since: Instant,
    /// Fired to cut the connection; dropped once it is established.
    cut: oneshot::Sender<()>,
}

/// One connection waiting for a handshake slot.
struct Waiting {
    id: u64,
    /// Where its slot is sent; dropped to close it.
    grant: oneshot::Sender<Grant>,
}

/// A handshake slot, as handed to a connection: what becomes its [`Ticket`].
pub(crate) struct Grant {
    id: u64,
    cut: oneshot::Receiver<()>,
    deadline: Option<Instant>,
}

/// What [`Admission::admit`] decides for a connection that is not refused.
pub(crate) enum Admitted {
    /// It may start its handshake now.
    Now(Ticket),
    /// It waits for a slot, holding nothing but its socket.
    Wait(Waiter),
}

/// A connection waiting for a handshake slot. Dropping it gives up the place in the
/// queue (or the slot, if one was sent meanwhile).
pub(crate) struct Waiter {
    admission: Arc<Admission>,
    id: u64,
    source: Source,
    rx: oneshot::Receiver<Grant>,
    /// When it stops waiting.
    until: Instant,
    /// It became a [`Ticket`].
    granted: bool,
}

/// Where a connection comes from, as the per-source cap counts it: an IPv4 address, or
/// the /64 prefix of an IPv6 address (one host, or one site, usually holds a whole /64,
/// so counting single IPv6 addresses would be no cap at all). An IPv4-mapped IPv6
/// address counts as its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Source(IpAddr);

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => Source(IpAddr::V6(Ipv6Addr::from(
                    u128::from(v6) & !((1u128 << 64) - 1),
                ))),
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a connection was closed at accept, before any TLS work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Every established slot is taken.
    Connections { limit: usize },
    /// The queue for handshake slots is full and no source has more than its share
    /// waiting.
    Queue { limit: usize },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Connections { limit } => write!(
                f,
                "all {limit} connection slots are taken by established sessions \
                 (raise Limits::max_connections if the machine can serve more)"
            ),
            Refusal::Queue { limit } => write!(
                f,
                "{limit} connections already wait for a handshake slot and no source has \
                 more than its share waiting (Limits::max_handshake_queue)"
            ),
        }
    }
}

/// The connection counts [`Vat::stats`](super::Vat::stats) reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Inbound connections past the peer's `hello`, counted against
    /// [`Limits::max_connections`](crate::Limits::max_connections).
    pub established: usize,
    /// Inbound connections in the TCP/TLS handshake or waiting for the peer's `hello`,
    /// counted against [`Limits::max_handshaking`](crate::Limits::max_handshaking).
    pub handshaking: usize,
    /// The most of `handshaking` from any one source (an IPv4 address or an IPv6 /64),
    /// at most [`Limits::max_handshaking_per_address`](crate::Limits::max_handshaking_per_address).
    pub handshaking_from_busiest_source: usize,
    /// Inbound connections accepted and waiting for a handshake slot (nothing read from
    /// them yet), at most [`Limits::max_handshake_queue`](crate::Limits::max_handshake_queue).
    pub waiting: usize,
    /// Connections closed before any TLS work since the vat started: at accept (every
    /// established slot taken, or the queue full) or after waiting for a handshake slot
    /// in vain.
    pub refused: u64,
    /// Connections dropped during their handshake since the vat started: to make room
    /// for a newcomer from a source with fewer, or at the shortened deadline under
    /// pressure.
    pub cut: u64,
}

/// One admitted connection's place in the budgets. Dropping it gives the place back,
/// whichever budget it is in.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    /// Fires if the connection is cut during its handshake; `None` once it has reported.
    cut: Option<oneshot::Receiver<()>>,
    /// Set under pressure: TLS and `hello` must both be done by then.
    deadline: Option<Instant>,
}

impl Admission {
    pub(crate) fn new(limits: &Limits) -> Admission {
        Admission {
            max_connections: limits.max_connections,
            max_handshaking: limits.max_handshaking.max(1),
            max_per_address: limits.max_handshaking_per_address.max(1),
            max_queue: limits.max_handshake_queue,
            handshake_timeout: limits.handshake_timeout,
            state: Mutex::new(State::default()),
        }
    }

    /// Decides on a connection from `ip` accepted at `now`: a ticket for its handshake,
    /// a place in the queue for one, or why it is closed at once.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Admitted, Refusal> {
        let source = Source::of(ip);
        let mut state = lock(&self.state);
        if state.established.len() >= self.max_connections {
            // No TLS work for a connection that could not be served after it.
            state.refused += 1;
            return Err(Refusal::Connections {
                limit: self.max_connections,
            });
        }
        let held = state.held(source);
        if held < self.max_per_address
            && (state.handshaking.len() < self.max_handshaking || state.make_room(held))
        {
            let id = state.next_id();
            let grant = self.grant(&mut state, id, source, now);
            drop(state);
            return Ok(Admitted::Now(Ticket::new(self.clone(), grant)));
        }
        // No slot for it now: it waits, unread, for one to free.
        if state.waiting_total >= self.max_queue && !state.make_queue_room(source) {
            state.refused += 1;
            return Err(Refusal::Queue {
                limit: self.max_queue,
            });
        }
        let id = state.next_id();
        let (grant, rx) = oneshot::channel();
        state
            .waiting
            .entry(source)
            .or_default()
            .push_back(Waiting { id, grant });
        state.waiting_total += 1;
        Ok(Admitted::Wait(Waiter {
            admission: self.clone(),
            id,
            source,
            rx,
            until: now + self.handshake_timeout / PRESSURE_DIVISOR,
            granted: false,
        }))
    }

    /// Records handshake `id` from `source`, starting at `now`, and hands out its slot.
    fn grant(&self, state: &mut State, id: u64, source: Source, now: Instant) -> Grant {
        // Counted with this one: the first connection past half the budget is shortened.
        let pressure = state.handshaking.len() + 1 > self.max_handshaking / 2;
        let (cut_tx, cut) = oneshot::channel();
        state.handshaking.insert(
            id,
            Handshake {
                source,
                since: now,
                cut: cut_tx,
            },
        );
        *state.per_source.entry(source).or_insert(0) += 1;
        Grant {
            id,
            cut,
            deadline: pressure.then(|| now + self.handshake_timeout / PRESSURE_DIVISOR),
        }
    }

    /// Hands free handshake slots to waiting connections: each to the source with the
    /// fewest handshakes (under its cap), its longest waiting first, so a source that
    /// queued many cannot keep the others waiting.
    fn admit_waiting(&self, state: &mut State) {
        // Each turn gives one slot or stops: bounded by the budget.
        while state.handshaking.len() < self.max_handshaking && state.waiting_total > 0 {
            let best = state
                .waiting
                .iter()
                .map(|(source, queue)| (state.held(*source), queue.front().map(|w| w.id), *source))
                .filter(|(held, _, _)| *held < self.max_per_address)
                .min_by_key(|(held, oldest, _)| (*held, *oldest))
                .map(|(_, _, source)| source);
            let Some(source) = best else {
                return;
            };
            let Some(waiting) = state.pop_waiting(source) else {
                return;
            };
            let grant = self.grant(state, waiting.id, source, Instant::now());
            if let Err(grant) = waiting.grant.send(grant) {
                // It stopped waiting just now.
                state.forget_handshake(grant.id);
            }
        }
    }

    /// The current counts.
    pub(crate) fn stats(&self) -> ConnectionStats {
        let state = lock(&self.state);
        ConnectionStats {
            established: state.established.len(),
            handshaking: state.handshaking.len(),
            handshaking_from_busiest_source: state.per_source.values().copied().max().unwrap_or(0),
            waiting: state.waiting_total,
            refused: state.refused,
            cut: state.cut,
        }
    }

    /// Connections refused at accept so far (cheaper than [`stats`](Self::stats)).
    pub(crate) fn refused(&self) -> u64 {
        lock(&self.state).refused
    }

    /// The connection `id` reported the peer's `hello`.
    fn promote(&self, id: u64) -> Result<(), String> {
        let mut state = lock(&self.state);
        if !state.handshaking.contains_key(&id) {
            return Err("the connection was cut during its handshake to make room".to_owned());
        }
        if state.established.len() >= self.max_connections {
            // It keeps its handshake slot until its task ends, which is at once.
            return Err(format!(
                "this vat already serves {} connections, its limit; try again later",
                self.max_connections
            ));
        }
        state.forget_handshake(id);
        state.established.insert(id);
        self.admit_waiting(&mut state);
        Ok(())
    }

    /// Whether connection `id` is still in its handshake.
    fn is_handshaking(&self, id: u64) -> bool {
        lock(&self.state).handshaking.contains_key(&id)
    }

    /// Connection `id` ended: its place, in whichever budget, is free.
    fn release(&self, id: u64) {
        let mut state = lock(&self.state);
        state.forget_handshake(id);
        state.established.remove(&id);
        self.admit_waiting(&mut state);
    }

    /// Counts connection `id` as cut during its handshake (at the deadline).
    fn count_cut(&self, id: u64) {
        let mut state = lock(&self.state);
        if state.forget_handshake(id) {
            state.cut += 1;
            self.admit_waiting(&mut state);
        }
    }
}

impl State {
    fn next_id(&mut self) -> u64 {
        let id = self.next_ticket;
        self.next_ticket += 1;
        id
    }

    /// Handshakes from `source`.
    fn held(&self, source: Source) -> usize {
        self.per_source.get(&source).copied().unwrap_or(0)
    }

    /// Makes room in a full queue for a newcomer from `source`: drops the longest
    /// waiting connection of the source with the most waiting, if it has at least two
    /// more than `source`. Returns whether a place was freed.
    fn make_queue_room(&mut self, source: Source) -> bool {
        let mine = self.waiting.get(&source).map_or(0, VecDeque::len);
        let Some((&busiest, most)) = self
            .waiting
            .iter()
            .map(|(s, q)| (s, q.len()))
            .max_by_key(|(_, n)| *n)
        else {
            return false;
        };
        if most < mine + 2 {
            return false;
        }
        // Dropping its sender closes it: its task sees no slot is coming.
        let dropped = self.pop_waiting(busiest).is_some();
        if dropped {
            self.refused += 1;
        }
        dropped
    }

    /// The longest waiting connection from `source`, out of the queue.
    fn pop_waiting(&mut self, source: Source) -> Option<Waiting> {
        let queue = self.waiting.get_mut(&source)?;
        let waiting = queue.pop_front();
        if queue.is_empty() {
            self.waiting.remove(&source);
        }
        if waiting.is_some() {
            self.waiting_total -= 1;
        }
        waiting
    }

    /// Takes waiting connection `id` out of the queue; returns whether it was there.
    fn remove_waiting(&mut self, source: Source, id: u64) -> bool {
        let Some(queue) = self.waiting.get_mut(&source) else {
            return false;
        };
        let Some(at) = queue.iter().position(|w| w.id == id) else {
            return false;
        };
        queue.remove(at);
        if queue.is_empty() {
            self.waiting.remove(&source);
        }
        self.waiting_total -= 1;
        true
    }

    /// Makes room in a full handshake budget for a newcomer whose source holds `held`:
    /// cuts the oldest handshake of the source holding the most, if it holds at least
    /// two more than `held` (so it is cut back towards an equal share, never below the
    /// newcomer's). Returns whether a slot was freed.
    fn make_room(&mut self, held: usize) -> bool {
        // At most `max_handshaking` entries in each map: this is bounded work, done only
        // when the budget is full.
        let Some((&busiest, &most)) = self.per_source.iter().max_by_key(|(_, n)| **n) else {
            return false;
        };
        if most < held + 2 {
            return false;
        }
        let oldest = self
            .handshaking
            .iter()
            .filter(|(_, h)| h.source == busiest)
            .min_by_key(|(id, h)| (h.since, **id))
            .map(|(id, _)| *id);
        let Some(oldest) = oldest else {
            return false;
        };
        if let Some(h) = self.handshaking.get(&oldest) {
            tracing::debug!(source = %h.source, held = most,
                "handshake budget full; cutting the oldest handshake of the busiest source");
        }
        if let Some(h) = self.handshaking.remove(&oldest) {
            self.uncount(h.source);
            // Its task drops the connection when it sees this (or already ended).
            let _ = h.cut.send(());
            self.cut += 1;
        }
        true
    }

    /// Removes handshake `id` if it is there; returns whether it was.
    fn forget_handshake(&mut self, id: u64) -> bool {
        match self.handshaking.remove(&id) {
            Some(h) => {
                self.uncount(h.source);
                true
            }
            None => false,
        }
    }

    fn uncount(&mut self, source: Source) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }
}

impl Waiter {
    /// Waits for a handshake slot: the connection's ticket, or `None` when none came in
    /// time (a quarter of the handshake timeout) or its place was given to a newcomer.
    pub(crate) async fn admitted(mut self) -> Option<Ticket> {
        match tokio::time::timeout_at(self.until, &mut self.rx).await {
            Ok(Ok(grant)) => {
                self.granted = true;
                Some(Ticket::new(self.admission.clone(), grant))
            }
            // Dropping `self` leaves the queue, counted as refused.
            _ => None,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        let mut state = lock(&self.admission.state);
        if state.remove_waiting(self.source, self.id) {
            state.refused += 1;
        }
        drop(state);
        // A slot sent after it stopped waiting goes back.
        self.rx.close();
        if let Ok(grant) = self.rx.try_recv() {
            self.admission.release(grant.id);
        }
    }
}

impl Ticket {
    fn new(admission: Arc<Admission>, grant: Grant) -> Ticket {
        Ticket {
            admission,
            id: grant.id,
            cut: Some(grant.cut),
            deadline: grant.deadline,
        }
    }

    /// The time the TLS handshake may take: the handshake timeout, or what is left of
    /// the shortened deadline under pressure.
    pub(crate) fn tls_timeout(&self, now: Instant) -> Duration {
        match self.deadline {
            Some(deadline) => deadline.saturating_duration_since(now),
            None => self.admission.handshake_timeout,
        }
    }

    /// The hook for the session task to run at the peer's `hello`.
    pub(crate) fn promotion(&self) -> Promotion {
        let admission = self.admission.clone();
        let id = self.id;
        Box::new(move || admission.promote(id))
    }

    /// Resolves when the connection must be dropped before its `hello`: cut to make room
    /// for a newcomer, or past the shortened deadline under pressure. Never resolves once
    /// the connection is established. Race it against the connection's work, polled
    /// first (`biased`).
    pub(crate) async fn cut(&mut self) -> &'static str {
        let admission = &self.admission;
        let id = self.id;
        let cut = &mut self.cut;
        let deadline = self.deadline;
        let fired = async {
            match cut.as_mut() {
                Some(rx) => {
                    let fired = rx.await.is_ok();
                    *cut = None;
                    if fired {
                        return;
                    }
                    // Established: the sender is gone and nothing will cut it.
                    std::future::pending::<()>().await
                }
                None => std::future::pending::<()>().await,
            }
        };
        let expired = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            () = fired => return "cut during its handshake to make room for a newcomer",
            () = expired => {}
        }
        if admission.is_handshaking(id) {
            admission.count_cut(id);
            return "no hello within the shortened handshake deadline (the vat is under handshake pressure)";
        }
        std::future::pending().await
    }
}

/// Locks the state, ignoring poisoning: every critical section leaves it consistent.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.id);
    }
}

#[cfg(test)]
mod tests;
