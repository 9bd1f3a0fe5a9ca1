//! The session task: one per connection. It feeds the sans-IO [`Session`] with frames
//! from the [`Connection`] and commands from handles, runs local objects' methods for
//! delivered calls, and queues what the session produces on the connection.
//!
//! One task per connection reads, writes and dispatches with a single `select!`, so no
//! lock is ever held across an await and replies leave in the same write as the frames
//! that caused them. Handles reach the task only through
//! [`SessionHandle::post`](super::handle::SessionHandle::post).
//!
//! This module decides *when* to read and write (backpressure, the bookkeeping that
//! waits for the next write, the inline write); it must not touch bytes (that is
//! [`Connection`]'s job) nor decide protocol questions (that is [`Session`]'s).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{AbortHandle, Abortable, BoxFuture};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::codec::RefPayload;
use super::export::Watched;
use super::handle::{Command, SessionHandle, Traffic};
use super::handoff::Switch;
use super::local::{guard, invoke};
use super::mailbox::Inbox;
use super::object::{self, Args, ObjectHandle, Outcome, ReplyInner};
use super::promise::{Resolver, Settled};
use super::reference::{Ref, out_caps};
use super::shared::{VatInner, lock};
use super::stream::call_bytes;
use crate::broken::{Broken, BrokenKind};
use crate::identity::VatId;
use crate::limits::Limits;
use crate::proto::{
    AnswerId, CloseReason, Event, ImportId, InCap, InPayload, LocalTarget, OutCap, OutPayload,
    SHUTDOWN_REASON, Session,
};
use crate::transport::{self, Connection, FrameBody, TlsStream, TransportError};
use crate::wire::message::HANDOFF_VERSION;
use crate::wire::{CborLimits, Message};

mod host;
mod payloads;
mod trace;

use trace::*;

/// Commands taken from the channel per wake-up, so one busy handle cannot starve reads.
const COMMAND_BATCH: usize = 256;
/// Time allowed to flush the last frames (an `abort`, say) when a session closes.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// The session to `peer`: the live outbound one if there is one, else a new one whose
/// task connects to `address` (commands posted meanwhile wait for the connection).
pub(crate) fn outbound_session(vat: &Arc<VatInner>, peer: VatId, address: String) -> SessionHandle {
    let mut outbound = lock(&vat.outbound);
    if let Some(handle) = outbound.get(&peer) {
        if !handle.is_closed() {
            return handle.clone();
        }
    }
    let (handle, rx) = vat.new_session(peer, false);
    outbound.insert(peer, handle.clone());
    drop(outbound);
    // An introducer passes on where it reached a host (PROTOCOL.md 9.16).
    handle.add_hints([address.clone()]);
    // One span per session: every event of the session task carries the peer, the
    // direction and the address. Created once per session, never per call.
    let span = tracing::info_span!(
        "session",
        peer = %peer,
        direction = "outbound",
        address = %crate::broken::Escaped(&address),
    );
    vat.spawn(connect_and_run(vat.clone(), handle.clone(), rx, address).instrument(span));
    handle
}

/// Connects to a peer vat, then serves the session; on failure, breaks everything that
/// was queued for it with the reason.
async fn connect_and_run(
    vat: Arc<VatInner>,
    handle: SessionHandle,
    mut rx: Inbox<Command>,
    address: String,
) {
    let peer = handle.peer();
    // The connection's result is gone before the session is awaited: a result held
    // across that await would keep a slot for the TLS stream in this task for the
    // session's whole life.
    let session = match connect(&vat, peer, &address).await {
        Ok(stream) => run(vat.clone(), handle.clone(), rx, stream),
        Err(e) => {
            tracing::info!(error = %e, "connect failed");
            let broken = match e {
                TransportError::VatIdMismatch { .. } => {
                    Broken::new(BrokenKind::VatIdMismatch, e.to_string())
                }
                e => Broken::new(
                    BrokenKind::Unreachable,
                    format!("could not reach vat {peer} at {address}: {e}"),
                ),
            };
            handle.close(&mut rx, broken);
            vat.forget_session(&handle);
            return;
        }
    };
    session.await;
}

/// TCP connect and TLS handshake to `peer` at `address`.
async fn connect(vat: &VatInner, peer: VatId, address: &str) -> Result<TlsStream, TransportError> {
    let config = vat.client_config(peer)?;
    let (stream, _) =
        transport::connect(address, config, peer, vat.limits.handshake_timeout).await?;
    Ok(stream)
}

/// Serves an established session until it closes.
///
/// The session's state is built here, before the returned future is first polled, and
/// the future holds it once: an `async fn` would keep a dead slot for `stream` (about
/// 1.2 KB) and a copy of every argument for the session's whole life, and thousands of
/// idle sessions pay for each byte of their task (see `Connection`'s buffers too).
pub(crate) fn run(
    vat: Arc<VatInner>,
    handle: SessionHandle,
    rx: Inbox<Command>,
    stream: TlsStream,
) -> impl Future<Output = ()> + Send + 'static {
    let started = Instant::now();
    let limits = &vat.limits;
    let mut d = Driver {
        core: if handle.inbound() {
            Session::new_listening(limits.clone(), started.into_std())
        } else {
            Session::new(limits.clone(), started.into_std())
        },
        cbor: limits.cbor(),
        conn: Connection::new(stream, limits.max_frame),
        quiet: Quiet::new(limits, started),
        share: limits.outbound_share(),
        handle,
        vat,
        rx,
        calls: FuturesUnordered::new(),
        running: HashMap::new(),
        one_way_running: 0,
        promises: HashMap::new(),
        syncs: HashMap::new(),
        urgent: false,
        lazy_due: false,
        unsent_applied: 0,
        frames_waiting: false,
        reported: 0,
        introduced: HashMap::new(),
        versioned: false,
    };
    // Where this vat can be reached, for the peer to pass on in introductions (not
    // with handoff off).
    let hands_off = !d.vat.limits.handoff_timeout.is_zero();
    if let Some((host, port)) = d.vat.address().filter(|_| hands_off) {
        d.core.set_listen(vec![format!("{host}:{port}")]);
    }
    async move {
        let d = &mut d;
        let vat = d.vat.clone();
        let handle = d.handle.clone();
        // A vat that shuts down posts `Command::Shutdown` to every session it has; this
        // catches a shutdown that came before the session was registered.
        if *vat.shutdown.borrow() {
            d.shut_down();
        }
        let mut rx_open = true;
        // Bookkeeping messages (`finish`, `release`, and our `hello`) wait for the next
        // message that needs an answer, so they ride in its write instead of waking the
        // peer on their own. They wait at most one turn of the scheduler (`lazy_due`), and
        // a listening side's `hello` waits for the peer's first bytes: the connecting side
        // always speaks first, and the `hello` then leaves with the first answer.
        let mut heard = !handle.inbound();
        // Whether the listener has been told of the peer's `hello` (connection admission).
        let mut admitted = false;
        let mut inline_write = true;
        // One timer for every deadline the task has (see `Driver::next_wakeup`).
        let timer = tokio::time::sleep_until(started);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;

        // Commands queued before the connection was up (a fetch and the calls pipelined
        // on it, say) leave with the `hello`.
        d.apply_queued();
        loop {
            d.apply_batch();
            d.pump();
            // Frames left unhandled while the peer was owed too much go first, before
            // anything more is read.
            if d.frames_waiting && d.may_take_frames() {
                d.read_frames();
            }
            if d.core.is_closed() {
                break;
            }
            // Calls that broke without being written are released here.
            d.release_unsent();
            let backlog = d.conn.writer.backlog();
            let write_now = backlog > 0 && (d.urgent || d.lazy_due);
            let lazy_waiting = backlog > 0 && !write_now && heard;
            // Write at once when the socket takes it, without a turn of the select below
            // (which would poll every other branch first); at most once between turns, so
            // a handle that keeps sending cannot starve reads.
            let inline = if write_now && inline_write {
                d.conn.writer.try_write_now()
            } else {
                None
            };
            if let Some(r) = inline {
                d.wrote(r);
                inline_write = false;
                continue;
            }
            inline_write = true;
            // Backpressure: a peer that does not read what we owe it, or keeps too many
            // one-way calls running, is not read from until that drains. Writing goes on
            // meanwhile, so a peer that reads is never stuck behind its own answers.
            let may_read = !d.frames_waiting && d.may_take_frames();
            // Finished asynchronous calls wait too: each would queue an answer.
            let may_answer = d.answer_room();
            // The timer is reset only when a deadline comes earlier than the one it is set
            // for. One that moved later (the peer spoke, so the keepalive waits longer) is
            // found when the timer fires: nothing is due then, and it is set again. So a
            // busy session does not touch the timer on every read.
            if let Some(due) = d.next_wakeup() {
                if armed.is_none_or(|at| due < at) {
                    timer.as_mut().reset(due);
                    armed = Some(due);
                }
            }
            tokio::select! {
                r = d.conn.reader.read(), if may_read => match r {
                    Ok(0) => d.core.handle_connection_lost("the peer closed the connection"),
                    Ok(_) => {
                        d.heard(Instant::now());
                        heard = true;
                        d.frames_waiting = true;
                        d.read_frames();
                        if !admitted && d.core.is_established() {
                            admitted = true;
                            if let Err(reason) = handle.established() {
                                d.core.abort(reason);
                            }
                        }
                    }
                    Err(e) => d.core.handle_connection_lost(read_failure(&e)),
                },
                cmd = d.rx.recv(), if rx_open => match cmd {
                    Some(cmd) => d.apply(cmd),
                    None => rx_open = false,
                },
                r = d.conn.writer.write_some(), if write_now || d.conn.writer.flush_pending() => {
                    d.wrote(r);
                }
                Some(finished) = d.calls.next(), if may_answer && !d.calls.is_empty() => {
                    match finished {
                        Ok((Some(answer), outcome)) => {
                            d.running.remove(&answer);
                            d.answer(answer, outcome);
                        }
                        Ok((None, _)) => d.one_way_running -= 1,
                        // Cancelled (`Event::Cancel`): the session answered it already.
                        Err(_aborted) => {}
                    }
                }
                // Only bookkeeping is waiting: give the tasks this session just woke one
                // turn to queue their next calls, then send it all together.
                () = tokio::task::yield_now(), if lazy_waiting => d.lazy_due = true,
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    d.on_timer(Instant::now());
                }
            }
        }

        // Closed: break whatever is still queued, deliver the last events, flush, and go.
        let reason = d
            .core
            .closed_reason()
            .unwrap_or_else(|| Broken::disconnected("the session closed"));
        handle.close(&mut d.rx, reason);
        d.pump();
        d.conn.close(CLOSE_FLUSH).await;
        vat.forget_session(&handle);
    }
}

/// A method running for the peer, with the answer it owes (`None` for a one-way send).
type Running = BoxFuture<'static, (Option<AnswerId>, Outcome)>;

/// The session task's state.
struct Driver {
    core: Session<ObjectHandle, Resolver>,
    /// The framed connection to the peer.
    conn: Connection,
    /// Commands from handles (this session's own sends, drops, ...).
    rx: Inbox<Command>,
    cbor: CborLimits,
    handle: SessionHandle,
    vat: Arc<VatInner>,
    /// Asynchronous methods (and forwarded calls) still running, with the answer each
    /// one owes; a cancelled one ends as `Err(Aborted)`, its future dropped.
    calls: FuturesUnordered<Abortable<Running>>,
    /// How to stop each of `calls` that owes an answer, should the peer cancel it.
    running: HashMap<AnswerId, AbortHandle>,
    /// How many of `calls` owe no answer: one-way sends, which flow control does not
    /// bound, so reading pauses while too many run.
    one_way_running: usize,
    /// Watches for the promises the peer gave us, by import.
    promises: HashMap<ImportId, watch::Sender<Option<Settled>>>,
    /// `Vat::sync` callers, by ping nonce.
    syncs: HashMap<u64, oneshot::Sender<()>>,
    /// Whether the connection's queue holds a message the peer is waiting for (see
    /// `Message::is_bookkeeping`).
    urgent: bool,
    /// Bookkeeping alone in the queue has waited its turn and goes out now.
    lazy_due: bool,
    /// Bytes of calls taken from handles and not yet known to be written (they may sit
    /// in the core's hold queue or the connection's queue): released to the handle's
    /// count of unsent bytes once both are empty.
    unsent_applied: usize,
    /// When the connection's buffers may be given back.
    quiet: Quiet,
    /// The read buffer may hold complete frames not yet handled (reading stopped for
    /// backpressure between two of them).
    frames_waiting: bool,
    /// This session's queued answer bytes as last added to the vat's total.
    reported: usize,
    /// This session's fair share of the vat-wide budget ([`Limits::outbound_share`]).
    share: usize,
    /// The references the peer introduced (`third_party`), by their vine's import: a
    /// later reception of the same vine is the same reference.
    introduced: HashMap<ImportId, Weak<Switch>>,
    /// The session's protocol version has been told to the handle.
    versioned: bool,
}

impl Drop for Driver {
    /// Whatever ends the task (the session closing, or the vat stopping it), its
    /// unwritten answers leave the vat's total with it.
    fn drop(&mut self) {
        self.vat
            .queued_answers
            .fetch_sub(self.reported, Ordering::Relaxed);
    }
}

/// Buffer housekeeping: a session quiet for a while gives back the space a burst left
/// in its buffers, so a thousand idle sessions cost little. This is the runtime's own
/// memory policy, not protocol: every protocol deadline (handshake, keepalive) is the
/// core's, through `Session::poll_timeout`.
struct Quiet {
    /// Silence after which the buffers shrink: a quarter of the shorter of the
    /// keepalive idle time and the handshake timeout, and at least 10 ms.
    after: Duration,
    /// When the peer last sent bytes.
    last_read: Instant,
    /// The buffers were shrunk since the last read.
    shrunk: bool,
}

impl Quiet {
    fn new(limits: &Limits, now: Instant) -> Quiet {
        Quiet {
            after: (limits.keepalive_idle.min(limits.handshake_timeout) / 4)
                .max(Duration::from_millis(10)),
            last_read: now,
            // Buffers start small.
            shrunk: true,
        }
    }

    /// When the buffers are next due to shrink, if they may have grown.
    fn due(&self) -> Option<Instant> {
        (!self.shrunk).then(|| self.last_read + self.after)
    }
}

impl Driver {
    /// Bytes arrived from the peer at `now`.
    fn heard(&mut self, now: Instant) {
        self.core.handle_heard(now.into_std());
        self.quiet.last_read = now;
        self.quiet.shrunk = false;
    }

    /// The next instant the task must wake with nothing else to do: the core's next
    /// timeout (handshake, keepalive), or when quiet buffers may shrink.
    fn next_wakeup(&self) -> Option<Instant> {
        let core = self.core.poll_timeout().map(Instant::from_std);
        [core, self.quiet.due()].into_iter().flatten().min()
    }

    /// The timer fired: the core handles what is due (it decides), and quiet buffers
    /// shrink.
    fn on_timer(&mut self, now: Instant) {
        self.core.handle_timeout(now.into_std());
        if self.quiet.due().is_some_and(|due| now >= due) {
            self.conn.shrink_idle_buffers();
            self.rx.shrink_idle();
            self.quiet.shrunk = true;
        }
    }

    /// Accounts for a write (or flush) the connection made: a failure loses the
    /// connection; an emptied queue has nothing urgent or due left.
    fn wrote(&mut self, r: std::io::Result<()>) {
        if let Err(e) = r {
            self.core
                .handle_connection_lost(format!("write failed: {e}"));
        }
        if self.conn.writer.backlog() == 0 {
            self.urgent = false;
            self.lazy_due = false;
            self.release_unsent();
        }
    }

    /// Gives the bytes of the calls applied so far back to the handles' count of unsent
    /// bytes, once nothing is held or waiting to be written (so every one of them went
    /// out, or broke).
    fn release_unsent(&mut self) {
        if self.unsent_applied > 0 && self.conn.writer.backlog() == 0 && self.core.stats().held == 0
        {
            self.handle
                .unsent()
                .release(std::mem::take(&mut self.unsent_applied));
        }
        self.account();
    }

    /// Brings the vat's total of queued answers up to date with this session's.
    fn account(&mut self) {
        let now = self.conn.writer.answer_backlog();
        let total = &self.vat.queued_answers;
        if now > self.reported {
            total.fetch_add(now - self.reported, Ordering::Relaxed);
        } else if now < self.reported {
            total.fetch_sub(self.reported - now, Ordering::Relaxed);
        }
        self.reported = now;
    }

    /// Whether the session may queue one more answer for the peer: its own queued
    /// answers are under [`Limits::max_outbound_buffer`], and either under its fair
    /// share or the vat's total is under [`Limits::max_outbound_total`].
    ///
    /// Checked before each step that can queue an answer (reading, handling a frame
    /// or an event, answering a finished call), so each step adds at most one answer
    /// past the budget. The share keeps every session whose peer reads served however
    /// full the vat is: such a session's own writes wake it as they drain.
    fn answer_room(&self) -> bool {
        let mine = self.conn.writer.answer_backlog();
        mine < self.vat.limits.max_outbound_buffer
            && (mine < self.share
                || self.vat.queued_answers.load(Ordering::Relaxed)
                    < self.vat.limits.max_outbound_total)
    }

    /// Whether the session may take the peer's next frame: [`Driver::answer_room`],
    /// and fewer one-way calls running than `max_inbound_questions`.
    fn may_take_frames(&self) -> bool {
        self.answer_room() && self.one_way_running < self.vat.limits.max_inbound_questions
    }

    /// Handles pending events while there is room for their answers (all of them once
    /// the session is closed), then encodes every pending message.
    ///
    /// Events left waiting stay in the session, in order, until the peer reads: one
    /// frame can release many calls (those pipelined on an answer), and each answers.
    fn pump(&mut self) {
        // A closed session's handles say so before any promise breaks because of it.
        // (`is_closed` first: this runs several times per call.)
        if self.core.is_closed() {
            if let Some(reason) = self.core.closed_reason() {
                self.handle.mark_closed(&reason);
            }
        }
        // The version is known from the peer's `hello` on, before any event after it
        // (a reference passed back at once may be handed off).
        if !self.versioned && self.core.is_established() {
            self.versioned = true;
            self.handle.set_version(self.core.version());
        }
        loop {
            if !self.core.is_closed() && !self.answer_room() {
                break;
            }
            let Some(event) = self.core.poll_event() else {
                break;
            };
            self.handle_event(event);
            self.transmit();
        }
        self.transmit();
    }

    /// Encodes every message the session has produced; answers to the peer count
    /// toward its budget.
    fn transmit(&mut self) {
        self.deposit_introduced();
        while let Some(msg) = self.core.poll_transmit() {
            tracing::trace!(kind = msg.kind(), "message out");
            self.urgent |= !msg.is_bookkeeping();
            if matches!(msg, Message::Return { .. } | Message::Pong { .. }) {
                self.conn.writer.queue_answer(msg);
            } else {
                self.conn.writer.queue(msg);
            }
        }
        self.account();
    }

    /// Hands the session the complete frames the connection has buffered, one at a
    /// time, while there is room for what they may cause (see
    /// [`Driver::may_take_frames`]); the rest wait in the buffer (`frames_waiting`).
    fn read_frames(&mut self) {
        loop {
            if !self.may_take_frames() {
                return;
            }
            let core = &mut self.core;
            let handled = self.conn.reader.next_frame(|body| match body {
                FrameBody::Borrowed(body) => core.handle_frame(body),
                FrameBody::Shared(body) => core.handle_shared_frame(&body),
            });
            match handled {
                Ok(true) => {
                    // Answer what can be answered at once (a fetch, a synchronous method)
                    // before the next frame, so calls pipelined behind it in the same read
                    // go to the result instead of counting against the queue limit.
                    self.pump();
                    if self.core.is_closed() {
                        return;
                    }
                }
                Ok(false) => {
                    self.frames_waiting = false;
                    return;
                }
                Err(e) => {
                    self.frames_waiting = false;
                    self.core.handle_decode_error(e);
                    return;
                }
            }
        }
    }

    /// Sends what handles queued before the shutdown (one-way sends included), then
    /// aborts: the abort follows them on the wire, so the peer still delivers them.
    fn shut_down(&mut self) {
        self.apply_queued();
        self.core.abort(SHUTDOWN_REASON);
    }

    /// Applies up to [`COMMAND_BATCH`] queued commands, so one busy handle cannot starve
    /// reads.
    fn apply_batch(&mut self) {
        for _ in 0..COMMAND_BATCH {
            match self.rx.try_recv() {
                Some(cmd) => self.apply(cmd),
                None => break,
            }
        }
    }

    /// Applies every command handles have queued so far.
    fn apply_queued(&mut self) {
        while let Some(cmd) = self.rx.try_recv() {
            self.apply(cmd);
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Send { call, watched } => {
                self.unsent_applied += call_bytes(&call.method, &call.payload.data);
                self.core.send(call);
                self.watch(watched);
            }
            Command::Bootstrap {
                question,
                swiss,
                resolver,
            } => {
                self.core.bootstrap(question, swiss, Some(resolver), 1);
            }
            Command::ResolveExport(object, settled) => {
                let (result, watched) = match settled {
                    Ok(payload) => {
                        let (payload, watched) = self.out_payload(payload);
                        (Ok(payload), watched)
                    }
                    Err(b) => (Err(b), Vec::new()),
                };
                self.core.resolve_export(&object, result);
                self.watch(watched);
            }
            Command::DropImport(i) => self.core.drop_import(i),
            Command::DropQuestionRef(q) => self.core.drop_question_ref(q),
            Command::Cancel(q) => self.core.cancel(q),
            Command::WantReturn(q) => self.core.want_return(q),
            Command::SetDeadline(q, deadline) => self.core.set_deadline(q, deadline),
            Command::Stats(tx) => {
                let traffic = Traffic {
                    frames: self.conn.writer.frames(),
                    writes: self.conn.writer.writes(),
                    queued: self.conn.writer.backlog(),
                    queued_answers: self.conn.writer.answer_backlog(),
                };
                let _ = tx.send((self.core.stats(), traffic));
            }
            Command::Sync(tx) => {
                if let Some(nonce) = self.core.ping() {
                    self.syncs.insert(nonce, tx);
                }
            }
            // Commands queued before it were applied before it.
            Command::Shutdown => self.core.abort(SHUTDOWN_REASON),
        }
    }

    fn handle_event(&mut self, event: Event<ObjectHandle, Resolver>) {
        match event {
            Event::Deliver {
                target,
                method,
                payload,
                answer,
            } => {
                let args = Args::new(payload.data, self.refs(payload.caps), self.cbor)
                    .with_caller(self.handle.peer());
                let intercepted = match &target {
                    InCap::Local(object) if method.starts_with("captp.") => {
                        self.protocol_call(&method, object, &args)
                    }
                    _ => None,
                };
                // Per-call timing only when someone listens at DEBUG: one cached
                // callsite check, no clock read otherwise.
                let traced = tracing::enabled!(tracing::Level::DEBUG).then(|| CallTrace {
                    method: method.clone(),
                    answer,
                    target: target_kind(&target),
                    started: Instant::now(),
                });
                // Handoff's own calls are decided here (`host.rs`); the rest go on.
                let reply = match (intercepted, target, answer) {
                    (Some(outcome), _, _) => ReplyInner::Ready(outcome),
                    // A one-way call to a proxy stays one-way on its way on.
                    (None, InCap::Local(object), None) => match object.proxied() {
                        Some(target) => object::forward_one_way(target, &method, args),
                        None => invoke(&object, &method, args),
                    },
                    (None, InCap::Local(object), Some(_)) => invoke(&object, &method, args),
                    // An answer of ours resolved to the peer's own reference: the call
                    // goes back to it, in order, and its result answers this one.
                    (None, forward, Some(_)) => {
                        object::forward(&self.in_ref(forward), &method, args)
                    }
                    (None, forward, None) => {
                        object::forward_one_way(&self.in_ref(forward), &method, args)
                    }
                };
                match reply {
                    ReplyInner::Ready(outcome) => {
                        if let Some(t) = &traced {
                            t.finished(&outcome);
                        }
                        if let Some(answer) = answer {
                            self.answer(answer, outcome);
                        }
                    }
                    ReplyInner::Later(future) => {
                        let (abort, registration) = AbortHandle::new_pair();
                        match answer {
                            Some(answer) => {
                                self.running.insert(answer, abort);
                            }
                            None => self.one_way_running += 1,
                        }
                        let future = guard(future).map(move |outcome| {
                            if let Some(t) = &traced {
                                t.finished(&outcome);
                            }
                            (answer, outcome)
                        });
                        self.calls
                            .push(Abortable::new(future.boxed(), registration));
                    }
                }
            }
            Event::Cancel { answer } => {
                // The future is dropped when `calls` next polls it: soon, since
                // aborting wakes this task.
                if let Some(abort) = self.running.remove(&answer) {
                    abort.abort();
                }
            }
            Event::Resolved { import, result } => {
                let settled = result.map(|p| self.payload(p));
                if let Some(tx) = self.promises.remove(&import) {
                    tx.send_replace(Some(settled));
                }
            }
            Event::ExportsLost { objects } => {
                let peer = self.handle.peer();
                for object in objects {
                    let lost = std::panic::AssertUnwindSafe(|| object.object().lost_client(peer));
                    if std::panic::catch_unwind(lost).is_err() {
                        tracing::error!(%peer, "an object's lost_client hook panicked");
                    }
                }
            }
            Event::Bootstrap { answer, swiss } => {
                let withdrawal = (self.core.version() >= HANDOFF_VERSION)
                    .then(|| self.withdraw(swiss.as_bytes()))
                    .flatten();
                if let Some(outcome) = withdrawal {
                    self.core.answer(answer, outcome);
                    return;
                }
                // The swiss number is a secret: never in a log, at any level.
                let outcome = match self.vat.lookup(&swiss) {
                    Ok(object) => {
                        tracing::debug!(answer = answer.0, "bootstrap: found the object");
                        Ok(OutPayload::single_cap(OutCap::Local(object)))
                    }
                    Err(broken) => {
                        tracing::debug!(
                            answer = answer.0,
                            refused = broken.kind_name(),
                            "bootstrap refused: no object under that swiss number"
                        );
                        Err(broken)
                    }
                };
                self.core.answer(answer, outcome);
            }
            Event::Pong { nonce } => {
                if let Some(tx) = self.syncs.remove(&nonce) {
                    let _ = tx.send(());
                }
            }
            Event::Return { resolver, result } => {
                let settled = result.map(|p| self.payload(p));
                resolver.resolve(settled);
            }
            Event::Closed { reason } => log_close(&reason),
            Event::Listen { hints } => {
                // Only hints in the sturdy-ref grammar are passed on.
                let good = hints
                    .into_iter()
                    .filter(|h| crate::sturdy::parse_address(h).is_ok());
                self.handle.add_hints(good);
            }
        }
    }

    /// Answers a call, first checking the result against the limits the caller applies.
    ///
    /// Sends the method made before it answered (a callback, say) are still in the
    /// command queue: they go first, so the caller never sees the answer overtake them.
    fn answer(&mut self, answer: AnswerId, outcome: Outcome) {
        self.apply_queued();
        let mut watched = Vec::new();
        // The CBOR limits the peer announced are checked by the session as the result goes
        // out (`Session::answer`): a result over them is answered with `too_large`.
        let outcome = outcome.map(|p| {
            let (payload, w) = self.out_payload(p);
            watched = w;
            payload
        });
        self.core.answer(answer, outcome);
        self.watch(watched);
    }
}
