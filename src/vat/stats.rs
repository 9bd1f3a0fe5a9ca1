//! What [`Vat::stats`](super::Vat::stats) reports, and how it is gathered: each
//! session's tables and traffic (asked of its task), the vat's connection budgets and
//! its handoff counters. Only reads: it must not change a table or a counter.

use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use super::ConnectionStats;
use super::handle::Command;
use super::persist::Export;
use super::shared::{VatInner, lock};
use crate::identity::VatId;
use crate::proto::SessionStats;

/// The sizes of every session's tables, for monitoring and for checking that
/// everything is released.
pub(super) async fn collect(inner: &VatInner) -> VatStats {
    let handles = inner.session_handles();
    let mut sessions = Vec::with_capacity(handles.len());
    for handle in handles {
        let (tx, rx) = oneshot::channel();
        if handle.post(Command::Stats(tx)).is_ok() {
            if let Ok((tables, traffic)) = rx.await {
                sessions.push(SessionInfo {
                    peer: handle.peer(),
                    inbound: handle.inbound(),
                    tables: Tables::from(tables),
                    frames_sent: traffic.frames,
                    writes: traffic.writes,
                    queued_bytes: traffic.queued,
                    queued_answer_bytes: traffic.queued_answers,
                    unsent_bytes: handle.unsent().now(),
                    peak_unsent_bytes: handle.unsent().peak(),
                });
            }
        }
    }
    VatStats {
        sessions,
        sturdy_refs: lock(&inner.registry).count(|export| matches!(export, Export::Live { .. })),
        queued_answer_bytes: inner.queued_answers.load(Ordering::Relaxed),
        connections: inner.admission.stats(),
        handoffs: handoffs(inner),
    }
}

/// The handoff counters: this vat's gift table, and the references it received.
fn handoffs(inner: &VatInner) -> HandoffStats {
    let gifts = inner.gifts.stats(tokio::time::Instant::now());
    HandoffStats {
        direct: inner.handoffs.direct.load(Ordering::Relaxed),
        fallback: inner.handoffs.fallback.load(Ordering::Relaxed),
        gifts: gifts.held,
        deposited: gifts.deposited,
        refused: gifts.refused,
        withdrawn: gifts.withdrawn,
        expired: gifts.expired,
    }
}

/// What [`Vat::stats`](super::Vat::stats) reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VatStats {
    /// One entry per live session.
    pub sessions: Vec<SessionInfo>,
    /// Objects exported by sturdy ref and not revoked, held in memory: this run's
    /// exports and the persistent refs restored so far (expired ones included).
    pub sturdy_refs: usize,
    /// Bytes of answers queued for peers and not yet written, over all sessions: what
    /// [`Limits::max_outbound_total`](crate::Limits::max_outbound_total) bounds. Read when the stats are taken, after the
    /// sessions' entries.
    pub queued_answer_bytes: usize,
    /// Inbound connections against their budgets: established, in the handshake, and
    /// how many were refused or cut so far. All zero for a vat that does not listen.
    pub connections: ConnectionStats,
    /// Three-party handoff (PROTOCOL.md 9.16): references this vat received from an
    /// introducer, and the gifts introducers deposited here.
    pub handoffs: HandoffStats,
}

/// Three-party handoff at one vat ([`VatStats::handoffs`]). As a recipient: how many
/// introduced references now go to their host directly, and how many stayed with
/// their introducer (the handoff failed; the reason is logged at `INFO` under the
/// target `captp::handoff`). As a host: the gifts introducers deposited here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct HandoffStats {
    /// Introduced references switched to their host.
    pub direct: u64,
    /// Introduced references left calling through their introducer.
    pub fallback: u64,
    /// Gifts held here now, waiting for their recipient (expired ones dropped).
    pub gifts: usize,
    /// Gifts deposited here so far.
    pub deposited: u64,
    /// Deposits refused so far: past `Limits::max_gifts` for their depositor, or a
    /// gift id used twice.
    pub refused: u64,
    /// Gifts withdrawn by their recipient so far.
    pub withdrawn: u64,
    /// Gifts dropped unclaimed after `Limits::gift_ttl` so far.
    pub expired: u64,
}

/// One session in [`VatStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The peer's vat ID (identity, not authority).
    pub peer: VatId,
    /// Whether the peer connected to this vat (rather than this vat to it).
    pub inbound: bool,
    /// The sizes of the session's four tables.
    pub tables: Tables,
    /// Messages (frames) this vat has queued for the peer so far: written, or waiting
    /// in the session's write buffer.
    pub frames_sent: u64,
    /// Writes to the connection so far. Bookkeeping messages (`finish`, `release`) ride
    /// in the write of the next message, so a caller making one call after another
    /// makes about one write per call.
    pub writes: u64,
    /// Bytes queued for the peer and not yet written: answers, and this vat's own
    /// calls and bookkeeping.
    pub queued_bytes: usize,
    /// The part of `queued_bytes` that answers the peer (returns and pongs): what
    /// [`Limits::max_outbound_buffer`](crate::Limits::max_outbound_buffer) bounds.
    pub queued_answer_bytes: usize,
    /// Bytes of calls this vat's program posted to the peer and not yet written to the
    /// connection (arguments and method names, plus a small allowance per call): what
    /// a producer makes the vat hold for a slow peer. At most `Limits::max_unsent`
    /// (past it, sends break with `too_large`), plus one call larger than that.
    pub unsent_bytes: usize,
    /// The most `unsent_bytes` has been since the session started.
    pub peak_unsent_bytes: usize,
}

/// The sizes of one session's tables ([`SessionInfo::tables`]). Once everything is
/// dropped and the network has settled ([`Vat::sync`](crate::Vat::sync)), every field is zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Tables {
    /// Sends held back because the peer's question limit was reached; they go out, in
    /// order, as answers come back.
    pub held: usize,
    /// Questions this vat asked and still tracks (awaiting an answer, or pipelined on).
    pub questions: usize,
    /// Answers this vat holds for the peer's questions.
    pub answers: usize,
    /// References this vat imports from the peer.
    pub imports: usize,
    /// Objects this vat exports to the peer (proxies and promises included).
    pub exports: usize,
}

impl From<SessionStats> for Tables {
    fn from(s: SessionStats) -> Tables {
        Tables {
            held: s.held,
            questions: s.questions,
            answers: s.answers,
            imports: s.imports,
            exports: s.exports,
        }
    }
}
