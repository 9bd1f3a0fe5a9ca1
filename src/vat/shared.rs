//! [`VatInner`]: the state a vat's handles and tasks share, and the one way a vat
//! spawns tasks ([`VatInner::spawn`]).
//!
//! Every lock here is held for a map lookup or insert only, never across an await or a
//! call out, except `restoring`: it is held across a store read and the application's
//! restorer (never across an await), so that each persistent ref is restored once. This module must not start sessions itself (that is `driver/` and
//! `listener.rs`), so that it depends on no task code.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::admission::Admission;
use super::gifts::Gifts;
use super::handle::{Command, SessionHandle};
use super::handoff::Counters;
use super::mailbox::Inbox;
use super::object::ObjectHandle;
use super::persist::{Export, SharedRestorer};
use crate::broken::Broken;
use crate::identity::{Identity, VatId};
use crate::limits::Limits;
use crate::store::{self, Store, StoredRef};
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
    pub(crate) registry: Mutex<Registry<Export>>,
    /// Where persistent sturdy refs are kept; `None` without one, and after shutdown
    /// (so that the file closes once the program drops its own handles).
    store: Mutex<Option<Store>>,
    /// Rebuilds persistent refs' objects from their records.
    restorer: Option<SharedRestorer>,
    /// Held while a persistent ref is looked up in the store and restored, and while
    /// one is revoked: a ref is restored once, and a revoke never races a restore.
    pub(crate) restoring: Mutex<()>,
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
    /// Gifts introducers deposited here for their recipients (three-party handoff).
    pub(crate) gifts: Gifts,
    /// How the references this vat received from introducers fared.
    pub(crate) handoffs: Counters,
}

impl VatInner {
    /// Shared state for a vat on `runtime`, with no sessions or tasks yet.
    pub(crate) fn new(
        identity: Identity,
        limits: Limits,
        local_addr: Option<SocketAddr>,
        advertise: Option<Host>,
        persistence: (Option<Store>, Option<SharedRestorer>),
        runtime: tokio::runtime::Handle,
    ) -> VatInner {
        let (store, restorer) = persistence;
        let limits = limits.normalized();
        let gifts = Gifts::new(limits.max_gifts, limits.max_gifts_total, limits.gift_ttl);
        VatInner {
            identity,
            admission: Arc::new(Admission::new(&limits)),
            limits,
            local_addr,
            advertise,
            registry: Mutex::new(Registry::new()),
            store: Mutex::new(store),
            restorer,
            restoring: Mutex::new(()),
            outbound: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            client_configs: Mutex::new(HashMap::new()),
            shutdown: watch::Sender::new(false),
            tasks: Mutex::new(JoinSet::new()),
            runtime,
            queued_answers: AtomicUsize::new(0),
            gifts,
            handoffs: Counters::default(),
        }
    }

    /// The host and port this vat is reached at: the advertised host (else the listening
    /// IP, loopback for an unspecified one) and the listening port. `None` when the vat
    /// does not listen.
    pub(crate) fn address(&self) -> Option<(Host, u16)> {
        let addr = self.local_addr?;
        let host = match &self.advertise {
            Some(host) => host.clone(),
            None => match addr.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => Host::Ipv4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(ip) if ip.is_unspecified() => Host::Ipv6(Ipv6Addr::LOCALHOST),
                IpAddr::V4(ip) => Host::Ipv4(ip),
                IpAddr::V6(ip) => Host::Ipv6(ip),
            },
        };
        Some((host, addr.port()))
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
        lock(&self.store).take();
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
    ) -> (SessionHandle, Inbox<Command>) {
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

    /// The vat's store, while it runs with one.
    pub(crate) fn store(&self) -> Option<Store> {
        lock(&self.store).clone()
    }

    /// The object exported under `swiss`, for a peer's fetch (`bootstrap`).
    ///
    /// First the registry; then, for a vat with a store and a restorer, the store: a
    /// stored, unexpired ref is restored through the restorer and kept in the registry.
    /// Unknown, revoked and expired (at this moment, by the system clock) all answer
    /// the same `unknown_object`, so a peer cannot tell which it met.
    pub(crate) fn lookup(&self, swiss: &SwissNumber) -> Result<ObjectHandle, Broken> {
        let now = SystemTime::now();
        if let Some(found) = self.lookup_registry(swiss, now) {
            return found;
        }
        let (Some(store), Some(restorer)) = (self.store(), self.restorer.as_ref()) else {
            return Err(Broken::unknown_object());
        };
        // Read first without the lock, so that fetches of unknown swiss numbers (a peer
        // guessing) never wait behind a restore nor make others wait.
        if self.stored_entry(&store, swiss, now)?.is_none() {
            return Err(Broken::unknown_object());
        }
        let _restoring = lock(&self.restoring);
        // Another session may have restored it meanwhile, or a program revoked it: look
        // again under the lock.
        if let Some(found) = self.lookup_registry(swiss, now) {
            return found;
        }
        let Some(entry) = self.stored_entry(&store, swiss, now)? else {
            return Err(Broken::unknown_object());
        };
        let restore = std::panic::AssertUnwindSafe(|| restorer.0.restore(entry.record()));
        let restored = match std::panic::catch_unwind(restore) {
            Ok(restored) => restored?,
            Err(_) => {
                tracing::error!("the restorer panicked");
                return Err(Broken::failed("the object could not be restored"));
            }
        };
        let object = restored.export_handle()?;
        let expiry = entry.expiry().map(store::expiry_secs);
        lock(&self.registry).insert(
            swiss,
            Export::Live {
                object: object.clone(),
                expiry,
            },
        );
        Ok(object)
    }

    /// The stored entry for `swiss` if it is there and unexpired at `now`.
    fn stored_entry(
        &self,
        store: &Store,
        swiss: &SwissNumber,
        now: SystemTime,
    ) -> Result<Option<StoredRef>, Broken> {
        match store.get(swiss) {
            Ok(entry) => Ok(entry.filter(|entry| !entry.is_expired(now))),
            Err(e) => {
                tracing::error!(error = %e, "could not read the sturdy-ref store");
                Err(Broken::failed(
                    "the vat could not read its sturdy-ref store; try again later",
                ))
            }
        }
    }

    /// What the registry says about `swiss` at `now`: `None` when it holds nothing.
    fn lookup_registry(
        &self,
        swiss: &SwissNumber,
        now: SystemTime,
    ) -> Option<Result<ObjectHandle, Broken>> {
        match lock(&self.registry).get(swiss)? {
            Export::Live { object, expiry } if !store::is_expired(*expiry, now) => {
                Some(Ok(object.clone()))
            }
            Export::Live { .. } | Export::Revoked => Some(Err(Broken::unknown_object())),
        }
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
