//! The task that owns one connection: it feeds the sans-IO [`Session`] with frames from
//! the TLS stream and commands from handles, runs local objects' methods for delivered
//! calls, and writes what the session produces.
//!
//! One task per connection reads, writes and dispatches with a single `select!`, so no
//! lock is ever held across an await and replies leave in the same write as the frames
//! that caused them. Handles reach the task only through [`SessionHandle::post`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::VatInner;
use super::codec::RefPayload;
use super::local::{guard, invoke};
use super::object::{Args, ObjectHandle, Outcome, ReplyInner};
use super::outbox::Outbox;
use super::reference::{Ref, Resolver, Settled, Watched, check_limits, out_caps};
use crate::broken::{Broken, BrokenKind};
use crate::identity::VatId;
use crate::proto::{
    AnswerId, Call, Event, ImportId, InCap, InPayload, LocalTarget, OutCap, OutPayload, QuestionId,
    Session, SessionStats,
};
use crate::sturdy::SwissNumber;
use crate::transport::{self, TlsStream, TransportError};
use crate::wire::{CborLimits, frame};

/// Initial receive buffer, and how much to grow it by when it runs low.
const READ_CHUNK: usize = 16 * 1024;
/// What an idle session keeps of its buffers: they start this small and shrink back to it
/// when the session is quiet, so a thousand idle sessions cost little.
const IDLE_BUFFER: usize = 2 * 1024;
/// Spare receive capacity below which the buffer grows before the next read.
const MIN_READ: usize = 1024;
/// Payload data of at least this many bytes is written from its own buffer rather than
/// copied into the write buffer.
const DETACH: usize = 16 * 1024;
/// Commands taken from the channel per wake-up, so one busy handle cannot starve reads.
const COMMAND_BATCH: usize = 256;
/// Time allowed to flush the last frames (an `abort`, say) when a session closes.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// A request from a handle to the session task.
pub(crate) enum Command {
    /// A call, and the promise exports in its arguments whose settlement to watch.
    Send {
        call: Call<ObjectHandle, Resolver>,
        watched: Vec<Watched>,
    },
    Bootstrap {
        question: QuestionId,
        swiss: SwissNumber,
        resolver: Resolver,
    },
    /// A promise this session exported settled.
    ResolveExport(ObjectHandle, Settled),
    DropImport(ImportId),
    DropQuestionRef(QuestionId),
    Stats(oneshot::Sender<(SessionStats, Traffic)>),
    /// A ping whose pong is reported: a round trip that orders everything before it.
    Sync(oneshot::Sender<()>),
    /// The vat is shutting down: what was queued before this goes out, then `abort`.
    Shutdown,
}

/// What a session has written to its connection so far.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Traffic {
    /// Frames (messages) encoded for the peer.
    pub(crate) frames: u64,
    /// Writes to the connection that moved bytes (each carries one or more frames).
    pub(crate) writes: u64,
}

/// A cheap, thread-safe handle to a session task.
#[derive(Clone)]
pub(crate) struct SessionHandle(Arc<HandleInner>);

struct HandleInner {
    id: u64,
    peer: VatId,
    inbound: bool,
    tx: mpsc::UnboundedSender<Command>,
    next_question: AtomicU64,
    cbor: CborLimits,
    closed: OnceLock<Broken>,
    /// Mirrors `closed` for those who wait on it.
    closed_watch: watch::Sender<Option<Broken>>,
}

impl SessionHandle {
    pub(crate) fn new(
        id: u64,
        peer: VatId,
        inbound: bool,
        cbor: CborLimits,
    ) -> (SessionHandle, mpsc::UnboundedReceiver<Command>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = SessionHandle(Arc::new(HandleInner {
            id,
            peer,
            inbound,
            tx,
            next_question: AtomicU64::new(1),
            cbor,
            closed: OnceLock::new(),
            closed_watch: watch::Sender::new(None),
        }));
        (handle, rx)
    }

    /// Queues a command; fails with the session's end reason once it has ended.
    pub(crate) fn post(&self, cmd: Command) -> Result<(), Broken> {
        self.0.tx.send(cmd).map_err(|_| {
            self.closed_reason()
                .unwrap_or_else(|| Broken::disconnected("the session task ended"))
        })
    }

    /// A fresh question id (ids are never reused within a session).
    pub(crate) fn next_question(&self) -> QuestionId {
        QuestionId(self.0.next_question.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn id(&self) -> u64 {
        self.0.id
    }

    /// Whether two handles are for the same session.
    pub(crate) fn same(&self, other: &SessionHandle) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// An address unique to this session while any handle to it lives.
    pub(crate) fn addr(&self) -> usize {
        Arc::as_ptr(&self.0).cast::<()>() as usize
    }

    /// Waits until the session has ended, and says why.
    pub(crate) fn when_closed(&self) -> impl Future<Output = Broken> + Send + 'static {
        let mut rx = self.0.closed_watch.subscribe();
        async move {
            match rx.wait_for(Option::is_some).await {
                Ok(reason) => reason
                    .clone()
                    .unwrap_or_else(|| Broken::disconnected("the session ended")),
                Err(_) => Broken::disconnected("the session ended"),
            }
        }
    }

    pub(crate) fn peer(&self) -> VatId {
        self.0.peer
    }

    pub(crate) fn inbound(&self) -> bool {
        self.0.inbound
    }

    pub(crate) fn cbor(&self) -> CborLimits {
        self.0.cbor
    }

    /// Why the session ended, once it has.
    pub(crate) fn closed_reason(&self) -> Option<Broken> {
        self.0.closed.get().cloned()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.0.closed.get().is_some() || self.0.tx.is_closed()
    }

    /// Records why the session ended (the first reason given wins), for
    /// [`closed_reason`](Self::closed_reason) and [`when_closed`](Self::when_closed).
    fn mark_closed(&self, reason: &Broken) {
        if self.0.closed.set(reason.clone()).is_ok() {
            self.0.closed_watch.send_replace(Some(reason.clone()));
        }
    }

    /// Marks the session ended, drains the commands still queued (breaking their
    /// promises with `reason`) and refuses later ones.
    fn close(&self, rx: &mut mpsc::UnboundedReceiver<Command>, reason: Broken) {
        self.mark_closed(&reason);
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Command::Send {
                    call:
                        Call {
                            resolver: Some(resolver),
                            ..
                        },
                    ..
                }
                | Command::Bootstrap { resolver, .. } => resolver.resolve(Err(reason.clone())),
                _ => {}
            }
        }
    }
}

/// Connects to a peer vat, then serves the session; on failure, breaks everything that
/// was queued for it with the reason.
pub(crate) async fn connect_and_run(
    vat: Arc<VatInner>,
    handle: SessionHandle,
    mut rx: mpsc::UnboundedReceiver<Command>,
    address: String,
) {
    let peer = handle.peer();
    let connected = match vat.client_config(peer) {
        Ok(config) => {
            transport::connect(&address, config, peer, vat.limits.handshake_timeout).await
        }
        Err(e) => Err(e),
    };
    match connected {
        Ok((stream, _)) => run(vat, handle, rx, stream).await,
        Err(e) => {
            tracing::debug!(%peer, %address, error = %e, "connect failed");
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
        }
    }
}

/// Serves an established session until it closes.
pub(crate) async fn run(
    vat: Arc<VatInner>,
    handle: SessionHandle,
    rx: mpsc::UnboundedReceiver<Command>,
    stream: TlsStream,
) {
    let limits = vat.limits.clone();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut d = Driver {
        core: Session::new(limits.clone(), Instant::now().into_std()),
        cbor: limits.cbor(),
        handle: handle.clone(),
        vat: vat.clone(),
        rx,
        calls: FuturesUnordered::new(),
        one_way_running: 0,
        promises: HashMap::new(),
        syncs: HashMap::new(),
        out: Outbox::default(),
        urgent: false,
        lazy_due: false,
        flush_pending: false,
        traffic: Traffic::default(),
    };
    let mut rbuf = BytesMut::with_capacity(IDLE_BUFFER);
    // A vat that shuts down posts `Command::Shutdown` to every session it has; this
    // catches a shutdown that came before the session was registered.
    if *vat.shutdown.borrow() {
        d.shut_down();
    }
    let started = Instant::now();
    let mut last_rx = started;
    let mut pinged = false;
    let mut rx_open = true;
    // Bookkeeping messages (`finish`, `release`, and our `hello`) wait for the next
    // message that needs an answer, so they ride in its write instead of waking the
    // peer on their own. They wait at most one turn of the scheduler (`lazy_due`), and
    // a listening side's `hello` waits for the peer's first bytes: the connecting side
    // always speaks first, and the `hello` then leaves with the first answer.
    let mut heard = !handle.inbound();
    let mut inline_write = true;
    let period =
        (limits.keepalive_idle.min(limits.handshake_timeout) / 4).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // Commands queued before the connection was up (a fetch and the calls pipelined
    // on it, say) leave with the `hello`.
    d.apply_queued();
    loop {
        d.apply_batch();
        d.pump();
        if d.core.is_closed() {
            break;
        }
        let backlog = d.out.len();
        let write_now = backlog > 0 && (d.urgent || d.lazy_due);
        let lazy_waiting = backlog > 0 && !write_now && heard;
        // Write at once when the socket takes it, without a turn of the select below
        // (which would poll every other branch first); at most once between turns, so
        // a handle that keeps sending cannot starve reads.
        let inline = if write_now && inline_write {
            write_or_flush(&mut wr, &d.out).now_or_never()
        } else {
            None
        };
        if let Some(r) = inline {
            d.wrote(r, &mut wr);
            inline_write = false;
            continue;
        }
        inline_write = true;
        if rbuf.capacity() - rbuf.len() < MIN_READ {
            rbuf.reserve(READ_CHUNK);
        }
        tokio::select! {
            r = rd.read_buf(&mut rbuf),
                if backlog < limits.max_outbound_buffer
                    && d.one_way_running < limits.max_inbound_questions => match r {
                Ok(0) => d.core.handle_connection_lost("the peer closed the connection"),
                Ok(_) => {
                    last_rx = Instant::now();
                    pinged = false;
                    heard = true;
                    d.read_frames(&mut rbuf, limits.max_frame);
                }
                Err(e) => d.core.handle_connection_lost(format!("read failed: {e}")),
            },
            cmd = d.rx.recv(), if rx_open => match cmd {
                Some(cmd) => d.apply(cmd),
                None => rx_open = false,
            },
            r = write_or_flush(&mut wr, &d.out), if write_now || d.flush_pending => {
                d.wrote(r, &mut wr);
            }
            Some((answer, outcome)) = d.calls.next(), if !d.calls.is_empty() => {
                match answer {
                    Some(answer) => d.answer(answer, outcome),
                    None => d.one_way_running -= 1,
                }
            }
            // Only bookkeeping is waiting: give the tasks this session just woke one
            // turn to queue their next calls, then send it all together.
            () = tokio::task::yield_now(), if lazy_waiting => d.lazy_due = true,
            _ = tick.tick() => {
                let now = Instant::now();
                // Quiet since the last tick: give back buffer space a burst left behind.
                if now - last_rx >= period {
                    if rbuf.is_empty() && rbuf.capacity() > IDLE_BUFFER {
                        rbuf = BytesMut::with_capacity(IDLE_BUFFER);
                    }
                    d.out.shrink(IDLE_BUFFER);
                }
                if !d.core.is_established() && now - started >= limits.handshake_timeout {
                    d.core.abort(format!(
                        "no hello within the handshake timeout of {:?}",
                        limits.handshake_timeout
                    ));
                } else if now - last_rx >= limits.keepalive_dead {
                    d.core.handle_connection_lost(format!(
                        "the peer was silent for {:?} (keepalive limit)",
                        now - last_rx
                    ));
                } else if now - last_rx >= limits.keepalive_idle && !pinged {
                    d.core.ping();
                    pinged = true;
                }
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
    let _ = tokio::time::timeout(CLOSE_FLUSH, async {
        for piece in d.out.pieces() {
            if wr.write_all(piece).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    })
    .await;
    vat.forget_session(&handle);
}

/// Writes some of what `out` holds (one vectored write), or flushes when it is empty.
/// Returns the bytes written (0 for a flush).
async fn write_or_flush(wr: &mut WriteHalf<TlsStream>, out: &Outbox) -> std::io::Result<usize> {
    if out.is_empty() {
        wr.flush().await.map(|()| 0)
    } else {
        match wr.write_vectored(&out.slices()).await? {
            0 => Err(std::io::ErrorKind::WriteZero.into()),
            n => Ok(n),
        }
    }
}

/// The session task's state apart from the stream halves.
struct Driver {
    core: Session<ObjectHandle, Resolver>,
    /// Commands from handles (this session's own sends, drops, ...).
    rx: mpsc::UnboundedReceiver<Command>,
    cbor: CborLimits,
    handle: SessionHandle,
    vat: Arc<VatInner>,
    /// Asynchronous methods (and forwarded calls) still running, with the answer each
    /// one owes.
    calls: FuturesUnordered<BoxFuture<'static, (Option<AnswerId>, Outcome)>>,
    /// How many of `calls` owe no answer: one-way sends, which flow control does not
    /// bound, so reading pauses while too many run.
    one_way_running: usize,
    /// Watches for the promises the peer gave us, by import.
    promises: HashMap<ImportId, watch::Sender<Option<Settled>>>,
    /// `Vat::sync` callers, by ping nonce.
    syncs: HashMap<u64, oneshot::Sender<()>>,
    /// What is still to be written.
    out: Outbox,
    /// Whether `out` holds a message the peer is waiting for (see `is_bookkeeping`).
    urgent: bool,
    /// Bookkeeping alone in `out` has waited its turn and goes out now.
    lazy_due: bool,
    /// Everything was written but the flush has not completed.
    flush_pending: bool,
    traffic: Traffic,
}

impl Driver {
    /// Accounts for a write (or, for `Ok(0)`, a flush) of the buffer's unwritten part.
    fn wrote(&mut self, r: std::io::Result<usize>, wr: &mut WriteHalf<TlsStream>) {
        match r {
            Ok(0) => self.flush_pending = false,
            Ok(n) => {
                self.out.advance(n);
                self.traffic.writes += 1;
                if self.out.is_empty() {
                    self.urgent = false;
                    self.lazy_due = false;
                    // Flush now if that can finish at once (it usually can: the TLS
                    // layer already passed the records on); otherwise in the loop.
                    match wr.flush().now_or_never() {
                        Some(Ok(())) => self.flush_pending = false,
                        Some(Err(e)) => {
                            self.core
                                .handle_connection_lost(format!("write failed: {e}"));
                        }
                        None => self.flush_pending = true,
                    }
                }
            }
            Err(e) => self
                .core
                .handle_connection_lost(format!("write failed: {e}")),
        }
    }

    /// Handles every pending event, then encodes every pending message.
    fn pump(&mut self) {
        // A closed session's handles say so before any promise breaks because of it.
        if let Some(reason) = self.core.closed_reason() {
            self.handle.mark_closed(&reason);
        }
        while let Some(event) = self.core.poll_event() {
            self.handle_event(event);
        }
        while let Some(mut msg) = self.core.poll_transmit() {
            // A large payload is written from its own buffer, not copied in.
            let detached = self
                .out
                .append(|buf| msg.encode_frame_detached(buf, DETACH));
            if let (Some(at), Some(data)) = (detached, msg.payload_data_mut()) {
                self.out.insert_at(at, std::mem::take(data));
            }
            self.urgent |= !msg.is_bookkeeping();
            self.traffic.frames += 1;
        }
    }

    fn read_frames(&mut self, rbuf: &mut BytesMut, max_frame: usize) {
        loop {
            match frame::next_frame(rbuf, max_frame) {
                Ok(Some(span)) => {
                    self.core.handle_frame(&rbuf[span.start..span.end]);
                    rbuf.advance(span.end);
                    // Answer what can be answered at once (a fetch, a synchronous method)
                    // before the next frame, so calls pipelined behind it in the same read
                    // go to the result instead of counting against the queue limit.
                    self.pump();
                    if self.core.is_closed() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
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
        self.core.abort("the vat is shutting down");
    }

    /// Applies up to [`COMMAND_BATCH`] queued commands, so one busy handle cannot starve
    /// reads.
    fn apply_batch(&mut self) {
        for _ in 0..COMMAND_BATCH {
            match self.rx.try_recv() {
                Ok(cmd) => self.apply(cmd),
                Err(_) => break,
            }
        }
    }

    /// Applies every command handles have queued so far.
    fn apply_queued(&mut self) {
        while let Ok(cmd) = self.rx.try_recv() {
            self.apply(cmd);
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Send { call, watched } => {
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
            Command::Stats(tx) => {
                let _ = tx.send((self.core.stats(), self.traffic));
            }
            Command::Sync(tx) => {
                if let Some(nonce) = self.core.ping() {
                    self.syncs.insert(nonce, tx);
                }
            }
            // Commands queued before it were applied before it.
            Command::Shutdown => self.core.abort("the vat is shutting down"),
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
                let args = Args::new(payload.data, self.refs(payload.caps), self.cbor);
                let reply = match target {
                    InCap::Local(object) => invoke(&object, &method, args),
                    // An answer of ours resolved to the peer's own reference: the call
                    // goes back to it, in order, and its result answers this one.
                    forward => super::object::forward(&self.in_ref(forward), &method, args),
                };
                match reply {
                    ReplyInner::Ready(outcome) => {
                        if let Some(answer) = answer {
                            self.answer(answer, outcome);
                        }
                    }
                    ReplyInner::Later(future) => {
                        if answer.is_none() {
                            self.one_way_running += 1;
                        }
                        self.calls
                            .push(guard(future).map(move |outcome| (answer, outcome)).boxed());
                    }
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
                let outcome = match self.vat.lookup(&swiss) {
                    Some(object) => Ok(OutPayload::single_cap(OutCap::Local(object))),
                    None => Err(Broken::unknown_object()),
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
            Event::Closed { reason } => {
                tracing::debug!(peer = %self.handle.peer(), %reason, "session closed");
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
        let outcome = outcome
            .and_then(|p| check_limits(&p.data, &self.cbor).map(|()| p))
            .map(|p| {
                let (payload, w) = self.out_payload(p);
                watched = w;
                payload
            });
        self.core.answer(answer, outcome);
        self.watch(watched);
    }

    /// Names an outgoing payload's references for this session.
    fn out_payload(&self, payload: RefPayload) -> (OutPayload<ObjectHandle>, Vec<Watched>) {
        let (caps, watched) = out_caps(&payload.refs, &self.handle);
        (
            OutPayload {
                data: payload.data,
                caps,
            },
            watched,
        )
    }

    /// Watches promise exports: when one settles, the session sends its `resolve`.
    fn watch(&self, watched: Vec<Watched>) {
        for w in watched {
            let handle = self.handle.clone();
            tokio::spawn(async move {
                // A watcher lives until the promise settles or the session ends.
                let closed = handle.when_closed();
                let settled = tokio::select! {
                    s = w.source.settled() => s,
                    _ = closed => return,
                };
                if let Some(proxy) = w.proxy.upgrade() {
                    let proxy = ObjectHandle::from_inner(proxy);
                    let _ = handle.post(Command::ResolveExport(proxy, settled));
                }
            });
        }
    }

    /// An incoming payload, with live references.
    fn payload(&mut self, payload: InPayload<ObjectHandle>) -> RefPayload {
        RefPayload {
            data: payload.data,
            refs: self.refs(payload.caps),
        }
    }

    fn refs(&mut self, caps: Vec<InCap<ObjectHandle>>) -> Vec<Ref> {
        caps.into_iter().map(|cap| self.in_ref(cap)).collect()
    }

    /// A live reference for a descriptor the session resolved (it holds one handle).
    fn in_ref(&mut self, cap: InCap<ObjectHandle>) -> Ref {
        match cap {
            InCap::Import(i) => Ref::remote(self.handle.clone(), LocalTarget::Import(i), None),
            InCap::Promise(i) => {
                if self.promises.len() >= 64 && self.promises.len().is_power_of_two() {
                    self.promises.retain(|_, tx| tx.receiver_count() > 0);
                }
                let watch = self
                    .promises
                    .entry(i)
                    .or_insert_with(|| watch::Sender::new(None))
                    .subscribe();
                Ref::remote(self.handle.clone(), LocalTarget::Import(i), Some(watch))
            }
            InCap::Local(o) => o.to_ref(),
        }
    }
}
