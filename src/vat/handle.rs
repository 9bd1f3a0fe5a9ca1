//! What a [`Ref`](super::Ref) or the [`Vat`](super::Vat) posts to a session:
//! [`SessionHandle`], the cheap handle to a session task, and the [`Command`]s it
//! carries.
//!
//! Reading this file is enough to know what a send, a drop or a `Vat` call does to a
//! session: it queues a command, and the session task (`driver/`) applies it in order.
//! This module must not import the driver, do I/O, or block: posting never waits.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::export::{Proxies, Watched};
use super::mailbox::{Inbox, Mailbox, mailbox};
use super::object::ObjectHandle;
use super::promise::{Asked, Asker, Resolver, Settled};
use super::stream::{Unsent, Window};
use crate::broken::Broken;
use crate::identity::VatId;
use crate::limits::Limits;
use crate::proto::{Call, Deadline, ImportId, QuestionId, SessionStats};
use crate::sturdy::SwissNumber;
use crate::wire::CborLimits;
use crate::wire::message::{HANDOFF_VERSION, MAX_HINTS};

/// A request from a handle to the session task.
pub(crate) enum Command {
    /// A call, and the promise exports in its arguments whose settlement to watch.
    Send {
        /// The call, its references already named for this session.
        call: Call<ObjectHandle, Resolver>,
        /// Promise exports among those references.
        watched: Vec<Watched>,
    },
    /// Fetches the object a sturdy ref's swiss number names (what `enliven` starts).
    Bootstrap {
        /// The question the fetch's answer goes to.
        question: QuestionId,
        /// The secret naming the object at the peer.
        swiss: SwissNumber,
        /// Who hears the result.
        resolver: Resolver,
    },
    /// A promise this session exported settled.
    ResolveExport(ObjectHandle, Settled),
    /// The last `Ref` to an import was dropped: release it.
    DropImport(ImportId),
    /// The last `Ref` to an answer (a pipelined promise) was dropped.
    DropQuestionRef(QuestionId),
    /// A `Promise` was dropped before it settled: cancel its question.
    Cancel(QuestionId),
    /// A promise from `send_ref` needs its result after all (its question was quiet).
    WantReturn(QuestionId),
    /// A `Promise` was given a deadline ([`super::Promise::timeout`]).
    SetDeadline(QuestionId, Deadline),
    /// Reports the session's table sizes and traffic.
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
    /// Bytes queued and not yet written.
    pub(crate) queued: usize,
    /// The part of `queued` that answers the peer (what the outbound budget counts).
    pub(crate) queued_answers: usize,
}

/// A cheap, thread-safe handle to a session task. Clones share one session; the
/// session's commands go through an unbounded channel, so posting never waits.
#[derive(Clone)]
pub(crate) struct SessionHandle(Arc<Shared>);

/// What every handle to one session shares.
struct Shared {
    id: u64,
    peer: VatId,
    inbound: bool,
    tx: Arc<Mailbox<Command>>,
    next_question: AtomicU64,
    cbor: CborLimits,
    /// The vat-wide deadline for calls ([`crate::Limits::call_timeout`]).
    call_timeout: Option<Duration>,
    closed: OnceLock<Broken>,
    /// Mirrors `closed` for those who wait on it; made by the first of them (most
    /// sessions never have one, and a watch channel is 400 bytes).
    closed_watch: Mutex<Option<watch::Sender<Option<Broken>>>>,
    /// The proxies exported to this session's peer.
    proxies: Proxies,
    /// Bytes of calls posted and not yet written (`Limits::max_unsent`).
    unsent: Unsent,
    /// The streaming window (`Limits::stream_window`).
    window: Arc<Window>,
    /// Run once when the peer's `hello` arrives (the listener's admission); see
    /// [`SessionHandle::established`].
    on_established: Mutex<Option<Promotion>>,
    /// The protocol version spoken, once both `hello`s are known (0 until then).
    version: AtomicU32,
    /// Whether this vat hands references off (`Limits::handoff_timeout` is not zero).
    handoff: bool,
    /// Where the peer can be reached, for introductions: the address this vat dialed,
    /// then the peer's own `listen` hints (at most `wire::MAX_HINTS`, unchecked).
    hints: Mutex<Vec<String>>,
}

/// What the listener runs when an inbound session's peer has sent `hello`: it moves the
/// connection from the handshake budget to the established one, or says why the vat will
/// not serve it.
pub(crate) type Promotion = Box<dyn FnOnce() -> Result<(), String> + Send>;

impl SessionHandle {
    /// A handle for a new session with `peer`, and the receiving end of its commands
    /// for the session task. `limits` are this vat's: its CBOR limits are checked
    /// before sending and when decoding results, its flow-control limits bound what
    /// handles may post, and its `call_timeout` is the deadline of every question asked
    /// through it, unless a call sets its own.
    pub(crate) fn new(
        id: u64,
        peer: VatId,
        inbound: bool,
        limits: &Limits,
    ) -> (SessionHandle, Inbox<Command>) {
        let (tx, rx) = mailbox();
        let handle = SessionHandle(Arc::new(Shared {
            id,
            peer,
            inbound,
            tx,
            next_question: AtomicU64::new(1),
            cbor: limits.cbor(),
            call_timeout: limits.call_timeout,
            closed: OnceLock::new(),
            closed_watch: Mutex::new(None),
            proxies: Proxies::default(),
            unsent: Unsent::new(limits.max_unsent),
            window: Window::new(limits.stream_window),
            on_established: Mutex::new(None),
            version: AtomicU32::new(0),
            handoff: !limits.handoff_timeout.is_zero(),
            hints: Mutex::new(Vec::new()),
        }));
        (handle, rx)
    }

    /// Records the protocol version spoken, once both `hello`s are known. Only the
    /// session task calls this.
    pub(crate) fn set_version(&self, version: u32) {
        self.0.version.store(version, Ordering::Release);
    }

    /// Whether references passed to this session's peer may be handed off: the vat
    /// allows it and the peer speaks protocol version 4.
    pub(crate) fn hands_off(&self) -> bool {
        self.0.handoff && self.0.version.load(Ordering::Acquire) >= HANDOFF_VERSION
    }

    /// Adds address hints for the peer (the one this vat dialed, or the peer's own),
    /// keeping the first [`MAX_HINTS`].
    pub(crate) fn add_hints(&self, hints: impl IntoIterator<Item = String>) {
        let mut known = lock(&self.0.hints);
        for h in hints {
            if known.len() < MAX_HINTS && !known.contains(&h) {
                known.push(h);
            }
        }
    }

    /// Where the peer can be reached, as far as this vat knows.
    pub(crate) fn hints(&self) -> Vec<String> {
        lock(&self.0.hints).clone()
    }

    /// Sets what [`established`](Self::established) runs. The listener calls this
    /// before the session task starts.
    pub(crate) fn on_established(&self, hook: Promotion) {
        *lock(&self.0.on_established) = Some(hook);
    }

    /// The peer's `hello` has arrived: runs the hook set by
    /// [`on_established`](Self::on_established), once. An error is the reason to abort
    /// the session with (the vat has no room for it). Only the session task calls this.
    pub(crate) fn established(&self) -> Result<(), String> {
        let hook = lock(&self.0.on_established).take();
        hook.map_or(Ok(()), |hook| hook())
    }

    /// Queues a command; fails with the session's end reason once it has ended.
    pub(crate) fn post(&self, cmd: Command) -> Result<(), Broken> {
        self.0.tx.post(cmd).map_err(|_| {
            self.closed_reason()
                .unwrap_or_else(|| Broken::disconnected("the session task ended"))
        })
    }

    /// A fresh question id (ids are never reused within a session).
    pub(crate) fn next_question(&self) -> QuestionId {
        QuestionId(self.0.next_question.fetch_add(1, Ordering::Relaxed))
    }

    /// The deadline a question asked now gets from the vat-wide
    /// [`crate::Limits::call_timeout`], if there is one.
    pub(crate) fn default_deadline(&self) -> Option<Deadline> {
        let timeout = self.0.call_timeout?;
        Deadline::after(tokio::time::Instant::now().into_std(), timeout)
    }

    /// `question`, as the promise waiting for it holds it (to cancel it, or set its
    /// deadline).
    pub(crate) fn asked(&self, question: QuestionId) -> Asked {
        Asked {
            asker: self.0.clone(),
            question,
        }
    }

    /// The session's number within its vat.
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
        let mut rx = {
            let mut watch = lock(&self.0.closed_watch);
            // Under the lock that `mark_closed` takes after recording the reason: a
            // reason recorded before is seen here, one recorded after is sent.
            watch
                .get_or_insert_with(|| watch::Sender::new(self.closed_reason()))
                .subscribe()
        };
        async move {
            match rx.wait_for(Option::is_some).await {
                Ok(reason) => reason
                    .clone()
                    .unwrap_or_else(|| Broken::disconnected("the session ended")),
                Err(_) => Broken::disconnected("the session ended"),
            }
        }
    }

    /// The peer's vat ID (identity, not authority).
    pub(crate) fn peer(&self) -> VatId {
        self.0.peer
    }

    /// Whether the peer connected to this vat.
    pub(crate) fn inbound(&self) -> bool {
        self.0.inbound
    }

    /// The CBOR limits the peer applies to what this session sends.
    pub(crate) fn cbor(&self) -> CborLimits {
        self.0.cbor
    }

    /// The proxies exported to this session's peer.
    pub(crate) fn proxies(&self) -> &Proxies {
        &self.0.proxies
    }

    /// Bytes of calls posted and not yet written: handles count them before posting,
    /// the session task releases them once written.
    pub(crate) fn unsent(&self) -> &Unsent {
        &self.0.unsent
    }

    /// The session's streaming window.
    pub(crate) fn window(&self) -> &Arc<Window> {
        &self.0.window
    }

    /// Why the session ended, once it has.
    pub(crate) fn closed_reason(&self) -> Option<Broken> {
        self.0.closed.get().cloned()
    }

    /// Whether the session has ended (or its task is gone).
    pub(crate) fn is_closed(&self) -> bool {
        self.0.closed.get().is_some() || self.0.tx.is_closed()
    }

    /// Records why the session ended (the first reason given wins), for
    /// [`closed_reason`](Self::closed_reason) and [`when_closed`](Self::when_closed).
    /// Only the session task calls this.
    pub(crate) fn mark_closed(&self, reason: &Broken) {
        if self.0.closed.set(reason.clone()).is_ok() {
            if let Some(watch) = &*lock(&self.0.closed_watch) {
                watch.send_replace(Some(reason.clone()));
            }
        }
    }

    /// Marks the session ended, drains the commands still queued (breaking their
    /// promises with `reason`) and refuses later ones. Only the session task calls this,
    /// with its own receiver.
    pub(crate) fn close(&self, rx: &mut Inbox<Command>, reason: Broken) {
        self.mark_closed(&reason);
        rx.close();
        while let Some(cmd) = rx.try_recv() {
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

/// Locks `mutex`, whose data no panic can leave half-changed.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a remote promise posts: a closed session needs neither (its questions are gone).
impl Asker for Shared {
    fn cancel(&self, question: QuestionId) {
        let _ = self.tx.post(Command::Cancel(question));
    }

    fn set_deadline(&self, question: QuestionId, deadline: Deadline) {
        let _ = self.tx.post(Command::SetDeadline(question, deadline));
    }
}
