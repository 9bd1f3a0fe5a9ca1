//! [`VatInner`]: the state a vat's handles and tasks share, and the one way a vat
//! spawns tasks ([`VatInner::spawn`]).
//!
//! Every lock here is held for a map lookup or insert only, never across an await or a
//! call out. This module must not start sessions itself (that is `driver.rs` and
//! `listener.rs`), so that it depends on no task code.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::admission::Admission;
use super::handle::{Command, SessionHandle};
use super::object::ObjectHandle;
use crate::identity::{Identity, VatId};
use crate::limits::Limits;
use crate::sturdy::{Host, Registry, SwissNumber};
use crate::transport::{self, TransportError};

/// The shared state of a vat.
pub(crate) struct VatInner {
    pub(crate) identity: Identity,
    /// Normalized limits, applied to every session.
    pub(crate) limits: Limits,
    /// Where the vat listens, if it does.
    pub(crate) local_addr: Option<SocketAddr>,
    /// The host put in sturdy refs instead of the listen address.
    pub(crate) advertise: Option<Host>,
    /// Objects exported by sturdy ref, keyed by the hash of their swiss numbers.
    pub(crate) registry: Mutex<Registry<ObjectHandle>>,
    /// Outbound sessions by peer, reused by `enliven`.
    pub(crate) outbound: Mutex<HashMap<VatId, SessionHandle>>,
    /// Every live session, inbound and outbound, by session id.
    pub(crate) sessions: Mutex<HashMap<u64, SessionHandle>>,
    next_session: AtomicU64,
    client_configs: Mutex<HashMap<VatId, Arc<rustls::ClientConfig>>>,
    /// Set once when the vat shuts down; the listener and new sessions watch it.
    pub(crate) shutdown: watch::Sender<bool>,
    /// Every task the vat started; shutdown drains it.
    pub(crate) tasks: Mutex<JoinSet<()>>,
    runtime: tokio::runtime::Handle,
    /// Bytes of answers queued for peers and not yet written, over every session: what
    /// [`Limits::max_outbound_total`] bounds. Each session task adds and removes its
    /// own, and removes what is left when it ends.
    pub(crate) queued_answers: AtomicUsize,
    /// Connection admission (part: connection budgets): the handshake and established
    /// budgets the listener and `Vat::stats` share.
    pub(crate) admission: Arc<Admission>,
}

impl VatInner {
    /// Shared state for a vat on `runtime`, with no sessions or tasks yet.
    pub(crate) fn new(
        identity: Identity,
        limits: Limits,
        local_addr: Option<SocketAddr>,
        advertise: Option<Host>,
        runtime: tokio::runtime::Handle,
    ) -> VatInner {
        let limits = limits.normalized();
        VatInner {
            identity,
            admission: Arc::new(Admission::new(&limits)),
            limits,
            local_addr,
            advertise,
            registry: Mutex::new(Registry::new()),
            outbound: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            client_configs: Mutex::new(HashMap::new()),
            shutdown: watch::Sender::new(false),
            tasks: Mutex::new(JoinSet::new()),
            runtime,
            queued_answers: AtomicUsize::new(0),
        }
    }

    /// Spawns a task of this vat on the vat's runtime. Every task the vat owns (the
    /// listener, sessions, promise watchers) starts here, so that
    /// [`Vat::shutdown`](super::Vat::shutdown) can wait for them all and stop the ones
    /// that outlast its grace period.
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::AbortHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut tasks = lock(&self.tasks);
        // Reap finished tasks so a long-running vat does not accumulate them.
        while tasks.try_join_next().is_some() {}
        tasks.spawn_on(task, &self.runtime)
    }

    /// Starts shutting the vat down: new sessions see the flag when they start, the
    /// listener stops, and every live session is told to abort. Returns the vat's tasks
    /// for the caller to wait for (see [`drain`]).
    pub(crate) fn begin_shutdown(&self) -> JoinSet<()> {
        self.shutdown.send_replace(true);
        for handle in self.session_handles() {
            let _ = handle.post(Command::Shutdown);
        }
        std::mem::take(&mut *lock(&self.tasks))
    }

    /// The runtime the vat's tasks run on.
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Registers a new session with `peer`; returns its handle and the command
    /// receiver for its task.
    pub(crate) fn new_session(
        &self,
        peer: VatId,
        inbound: bool,
    ) -> (SessionHandle, mpsc::UnboundedReceiver<Command>) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (handle, rx) = SessionHandle::new(id, peer, inbound, &self.limits);
        lock(&self.sessions).insert(id, handle.clone());
        (handle, rx)
    }

    /// Unregisters an ended session (and, if it is the outbound one for its peer, lets
    /// the next `enliven` connect afresh).
    pub(crate) fn forget_session(&self, handle: &SessionHandle) {
        lock(&self.sessions).remove(&handle.id());
        let mut outbound = lock(&self.outbound);
        if outbound.get(&handle.peer()).map(SessionHandle::id) == Some(handle.id()) {
            outbound.remove(&handle.peer());
        }
    }

    /// The object exported under `swiss`, if it is still exported.
    pub(crate) fn lookup(&self, swiss: &SwissNumber) -> Option<ObjectHandle> {
        lock(&self.registry).get(swiss).cloned()
    }

    /// The TLS client configuration pinned to `peer`, built once per peer.
    pub(crate) fn client_config(
        &self,
        peer: VatId,
    ) -> Result<Arc<rustls::ClientConfig>, TransportError> {
        let mut configs = lock(&self.client_configs);
        if let Some(config) = configs.get(&peer) {
            return Ok(config.clone());
        }
        let config = transport::client_config(&self.identity, peer)?;
        configs.insert(peer, config.clone());
        Ok(config)
    }

    /// Live handles to every session, taken without holding the lock after.
    pub(crate) fn session_handles(&self) -> Vec<SessionHandle> {
        lock(&self.sessions).values().cloned().collect()
    }
}

/// Waits for `tasks` to finish, for at most `grace`; then stops the ones left.
pub(crate) async fn drain(mut tasks: JoinSet<()>, grace: std::time::Duration) {
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tasks.shutdown().await;
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data
/// consistent, so a panic elsewhere must not wedge the vat.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
