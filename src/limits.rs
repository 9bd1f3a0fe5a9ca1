//! [`Limits`]: every bound a vat puts on what a peer can make it hold or do.
//!
//! Each field names its default and what happens past it. Past a per-session limit the
//! offending peer's session is aborted with a reason; the vat keeps serving everyone
//! else. This module only holds numbers: the checks live where the data is (the frame
//! reader, the CBOR scanner, the session tables).

use std::time::Duration;

use crate::wire::{self, CborLimits};

/// The limits a vat enforces on its peers (and announces where the peer must respect them).
///
/// Start from [`Limits::default()`] and change fields:
///
/// ```
/// let mut limits = captp::Limits::default();
/// limits.max_frame = 4 << 20;
/// limits.max_inbound_questions = 4096;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest frame (one CBOR message) accepted from a peer, in bytes. Default 1 MiB;
    /// at least 8 KiB (smaller values are raised to 8 KiB), at most 4 GiB - 1.
    /// The length prefix is checked before anything is allocated; a larger frame aborts
    /// the session. The value is announced in `hello`, and outgoing messages larger than
    /// the peer's announced limit break locally with [`crate::BrokenKind::TooLarge`].
    pub max_frame: usize,
    /// Deepest CBOR nesting (arrays, maps, tags) in one message or one payload.
    /// Default 32; at least 8 (smaller values are raised to 8). Deeper input is a decode
    /// error: the peer's session is aborted. Announced in `hello` (`max_depth`): a peer
    /// that keeps within it (this crate does) breaks deeper arguments locally instead.
    pub max_cbor_depth: usize,
    /// Most CBOR data items in one message or one payload. Default 65,536; at least 256
    /// (smaller values are raised to 256). More is a decode error: the peer's session is
    /// aborted. Announced in `hello` (`max_items`), like `max_cbor_depth`.
    pub max_cbor_items: usize,
    /// Most questions a peer may have outstanding with this vat (asked and not yet
    /// finished). Default 1,024; at least 64 (smaller values are raised to 64). It is
    /// announced in `hello`, and a well-behaved peer (this crate included) holds further
    /// calls back until answers come; one more than the limit aborts the session of a
    /// peer that ignores it. The same number bounds
    /// the asynchronous methods running for one peer (one-way sends included): at that
    /// many, the vat stops reading from the peer until one finishes.
    pub max_inbound_questions: usize,
    /// Most objects this vat exports to one peer at once. Default 65,536. A result that
    /// would export one more breaks with [`crate::BrokenKind::TooLarge`] instead.
    pub max_exports: usize,
    /// Most references a peer may hand this vat at once. Default 65,536; at least 64
    /// (smaller values are raised to 64). One more aborts the session. Announced in
    /// `hello` (`max_imports`): a peer that keeps within it (this crate does) breaks a
    /// call or result that would export one more with
    /// [`crate::BrokenKind::TooLarge`] instead.
    pub max_imports: usize,
    /// Most capability-table entries in one message. Default 256; at least 16 (smaller
    /// values are raised to 16). More aborts the session. Announced in `hello`
    /// (`max_caps`): a peer that keeps within it (this crate does) breaks a call or
    /// result with more references locally with [`crate::BrokenKind::TooLarge`].
    pub max_caps_per_message: usize,
    /// Most messages a peer may queue on one of this vat's unresolved answers
    /// (pipelining). Default 256; at least 16 (smaller values are raised to 16). One
    /// more aborts the session. Announced in `hello` (`max_queued`): a peer that keeps
    /// within it (this crate does) holds further sends to that answer back, in order,
    /// until the answer's `return` arrives.
    pub max_queued_per_promise: usize,
    /// Most inbound sessions established at once (past the peer's `hello`). Default
    /// 1,024. While all are taken, new TCP connections are closed at once, before the TLS
    /// handshake, and a session whose `hello` arrives when the last slot has just gone
    /// is aborted ("this vat already serves N connections"). Connections still in the
    /// handshake count against [`max_handshaking`](Self::max_handshaking) instead, so
    /// they cannot take these slots.
    pub max_connections: usize,
    /// Bytes of answers (returns and pongs: what the peer asked for) queued for one
    /// peer and not yet written, at which the vat takes no more work from that peer: it
    /// reads nothing more from its socket, handles no further frame already read, runs
    /// no further call and sends no further answer, until the peer has read enough.
    /// Default 8 MiB. Each step is taken only below the budget and queues at most one
    /// answer, so what a peer can make the vat queue for it is at most
    /// `max_outbound_buffer` + one answer (the largest the program gives, at most the
    /// peer's announced frame size; if that answer is an error, the error returns of
    /// the calls pipelined on it come with it, each at most about 4 KiB), while the
    /// read buffer holds at most one frame (`max_frame`) and one read (16 KiB) of the
    /// peer's bytes not yet handled. The program's own calls to the peer do not count:
    /// counting them would let two vats that send much to each other stop reading each
    /// other for good. A peer that never reads is dropped by the keepalive.
    pub max_outbound_buffer: usize,
    /// Time allowed for TCP connect plus the TLS handshake, and again from then for the
    /// peer's `hello`. Default 10 s. Past it the connection is dropped (during TLS) or
    /// the session aborted (no `hello`), at the deadline: the session's core decides
    /// it, and its task wakes exactly then.
    pub handshake_timeout: Duration,
    /// Silence from a peer after which the vat pings it, once per silent period.
    /// Default 30 s; per vat, for every session (inbound and outbound). Any bytes from
    /// the peer end the silence. A vat that stopped reading a peer (see
    /// `max_outbound_buffer`) hears nothing from it meanwhile.
    pub keepalive_idle: Duration,
    /// Silence from a peer after which it is declared dead and the session ends: every
    /// pending promise breaks with [`crate::BrokenKind::Disconnected`]. Default 90 s;
    /// per vat, for every session. Shorter values find dead peers sooner and drop slow
    /// or paused ones sooner too.
    pub keepalive_dead: Duration,

    // ---- memory budget across sessions ----
    /// Bytes of answers queued for all peers together (what `max_outbound_buffer`
    /// bounds per peer, summed over the vat's sessions). Default 64 MiB: eight peers at
    /// the full per-peer budget. At or past it, a session whose own queued answers
    /// exceed its fair share, `max_outbound_total / max_connections` (64 KiB by
    /// default, at most `max_outbound_buffer`), takes no more work from its peer until
    /// they drain below the share or the total falls under the budget. A session under
    /// its share is always served, so peers that do not read cannot lock out the
    /// others. With N sessions the total stays within `max_outbound_total` + N × (fair
    /// share + one answer); for N up to `max_connections`, at most twice
    /// `max_outbound_total` plus one answer per session.
    pub max_outbound_total: usize,
    // ---- deadlines and cancellation ----
    /// How long a remote call (`Ref::send`, `Ref::send_ref`) waits for its answer when
    /// it sets no deadline of its own ([`crate::Promise::timeout`]). Past it the
    /// promise breaks with [`crate::BrokenKind::Timeout`] and the callee is told to
    /// stop the method (an early `finish`). Default `None`: calls wait as long as
    /// the session lives, so a method that legitimately answers late (a long job, a
    /// subscription that answers on an event) keeps working, and a peer that stops
    /// answering altogether is still caught by `keepalive_dead`. Set it to bound every
    /// call of a vat; local calls and one-way sends have no deadline from it.
    pub call_timeout: Option<Duration>,
    // ---- flow control of this vat's own sends (not announced; local only) ----
    /// Bytes of arguments that [`crate::Ref::send_streaming`] keeps in flight per
    /// session: sent and not yet acknowledged by the callee's answer. Default 256 KiB.
    /// At the window, the next `send_streaming` waits (its future stays pending) until
    /// answers make room; one call larger than the window goes alone.
    pub stream_window: usize,
    /// Bytes of calls posted to one session and not yet written to its connection
    /// (arguments counted; the bound on what a producer can queue without waiting).
    /// Default 16 MiB. A [`crate::Ref::send_only`] or [`crate::Ref::send`] that would
    /// pass it breaks with [`crate::BrokenKind::TooLarge`] instead of queueing (for
    /// `send_only`, the `Err` it returns); use [`crate::Ref::send_streaming`] to wait
    /// for room instead.
    pub max_unsent: usize,
    // Connection admission: budgets for connections before the peer's `hello`.
    /// Most inbound connections in the handshake at once: from TCP accept, through TLS,
    /// until the peer's `hello`. Default 128; at least 1. When they are all taken, a new
    /// connection takes the slot of the oldest handshake from the source (address) with
    /// the most, if that source holds at least two more than the newcomer's; otherwise
    /// the new connection waits for a slot (see
    /// [`max_handshake_queue`](Self::max_handshake_queue)). While more than half are taken,
    /// a new connection must finish TLS and send `hello` within a quarter of
    /// [`handshake_timeout`](Self::handshake_timeout), or it is dropped. 128 handshakes
    /// of about one round trip each refill all 1,024 established slots in about a second
    /// at 100 ms of latency, and cost a few MiB of TLS state at most.
    pub max_handshaking: usize,
    /// Most connections in the handshake from one source: an IPv4 address, or an IPv6
    /// /64 prefix. Default 16; at least 1. Past it, a new connection from that source
    /// waits, unread, in the queue of [`max_handshake_queue`](Self::max_handshake_queue)
    /// until one of its source's handshakes ends. Sixteen concurrent handshakes is far
    /// more than one client needs; a burst from one address (clients behind one NAT) is
    /// served sixteen at a time.
    pub max_handshaking_per_address: usize,
    /// Most inbound connections waiting for a handshake slot: accepted, nothing read
    /// yet, over their source's cap or arriving while every slot is held by sources
    /// with no more than their share. Default 1,024. Each waits at most a quarter of
    /// [`handshake_timeout`](Self::handshake_timeout) and is then closed; a freed slot
    /// goes to the source with the fewest handshakes, its longest waiting connection
    /// first. When the queue is full, a newcomer takes the place of the longest waiting
    /// connection from the source with the most waiting, if that source has at least two
    /// more than the newcomer's; otherwise the newcomer is closed at once. A waiting
    /// connection costs one socket and no TLS work; 1,024 lets every established slot
    /// reconnect at once (after a restart, say) without a refusal.
    pub max_handshake_queue: usize,
    /// Gifts one introducer may have deposited at this vat and not yet had withdrawn
    /// (three-party handoff, PROTOCOL.md 9.16). Default 256. A deposit past it is
    /// refused (the recipient then keeps calling through the introducer), so a hostile
    /// introducer cannot fill this vat's gift table; 0 refuses every deposit.
    pub max_gifts: usize,
    /// Gifts this vat holds at once, from all introducers. Default 16,384 (a few
    /// hundred bytes each); past it deposits are refused as past `max_gifts`. New vat
    /// IDs cost an attacker nothing, so the per-introducer bound alone would not bound
    /// the table.
    pub max_gifts_total: usize,
    /// How long a deposited gift waits for its recipient before it is dropped.
    /// Default 60 s.
    pub gift_ttl: Duration,
    /// How long a recipient tries to pick up an introduced reference (connect to the
    /// host, order its calls, withdraw the gift) before it gives up and keeps calling
    /// through the introducer for good. Default 10 s; `Duration::ZERO` turns handoff
    /// off on this vat: references it passes on go as proxies, and references it
    /// receives are always called through their introducer; it also sends no `listen`
    /// (its address is not passed on in introductions).
    pub handoff_timeout: Duration,
    /// Introduced references this vat picks up at once (connecting to their hosts,
    /// waiting for fences). Default 64. Past it, a newly introduced reference is
    /// called through its introducer for good (counted as a fallback): an introducer
    /// cannot make this vat dial without end.
    pub max_handoffs: usize,
}

impl Limits {
    /// The limits with the protocol's minimums applied (what a session announces and
    /// enforces): a frame limit of at least 8 KiB and at most 4 GiB - 1, at least 64
    /// outstanding questions, and the minimums of the other announced limits
    /// (PROTOCOL.md 9.1).
    pub(crate) fn normalized(mut self) -> Limits {
        self.max_frame = self.max_frame.clamp(wire::MIN_FRAME, u32::MAX as usize);
        self.max_inbound_questions = self.max_inbound_questions.max(wire::MIN_QUESTIONS);
        self.max_queued_per_promise = self.max_queued_per_promise.max(wire::MIN_QUEUED);
        self.max_imports = self.max_imports.max(wire::MIN_IMPORTS);
        self.max_caps_per_message = self.max_caps_per_message.max(wire::MIN_CAPS);
        self.max_cbor_depth = self.max_cbor_depth.max(wire::MIN_DEPTH);
        self.max_cbor_items = self.max_cbor_items.max(wire::MIN_ITEMS);
        self
    }

    /// The queued answers a session may always have before the vat-wide budget
    /// (`max_outbound_total`) holds it back: its fair share of that budget.
    pub(crate) fn outbound_share(&self) -> usize {
        (self.max_outbound_total / self.max_connections.max(1)).min(self.max_outbound_buffer)
    }

    /// The CBOR part of the limits, as the scanner takes it.
    pub(crate) fn cbor(&self) -> CborLimits {
        CborLimits {
            max_depth: self.max_cbor_depth,
            max_items: self.max_cbor_items,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_frame: 1 << 20,
            max_cbor_depth: 32,
            max_cbor_items: 65_536,
            max_inbound_questions: 1_024,
            max_exports: 65_536,
            max_imports: 65_536,
            max_caps_per_message: 256,
            max_queued_per_promise: 256,
            max_connections: 1_024,
            max_outbound_buffer: 8 << 20,
            handshake_timeout: Duration::from_secs(10),
            keepalive_idle: Duration::from_secs(30),
            keepalive_dead: Duration::from_secs(90),
            // memory budget across sessions
            max_outbound_total: 64 << 20,
            // deadlines and cancellation
            call_timeout: None,
            // flow control of this vat's own sends
            stream_window: 256 << 10,
            max_unsent: 16 << 20,
            // Connection admission.
            max_handshaking: 128,
            max_handshaking_per_address: 16,
            max_handshake_queue: 1_024,
            // Three-party handoff.
            max_gifts: 256,
            max_gifts_total: 16_384,
            gift_ttl: Duration::from_secs(60),
            handoff_timeout: Duration::from_secs(10),
            max_handoffs: 64,
        }
    }
}
