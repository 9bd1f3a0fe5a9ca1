//! The runtime: [`Vat`], its builder, and the handles programs use.
//!
//! A vat owns an identity, optionally a TLS listener, a registry of objects exported by
//! sturdy ref, and one task per session. Everything a program holds ([`Vat`], [`Ref`],
//! [`Promise`]) is a cheap, thread-safe handle that talks to those tasks through
//! channels; no lock is held across an await, and nothing here parses peer bytes (the
//! session tasks hand those to [`crate::proto`]).
//!
//! # Files, in dependency order
//!
//! Each file uses (`use super::..`) only files listed above it, with two exceptions,
//! both back edges into `reference.rs` that the types make unavoidable: a payload holds
//! `Ref`s (`codec.rs`), and an object handle can be a proxy for a `Ref` (`object.rs`).
//! So what a `Ref` does on a send or a drop can be read without the session task
//! (`driver/`), which only `listener.rs` and this file use.
//!
//! | file | what it holds | uses |
//! |---|---|---|
//! | `codec.rs` | `RefPayload`; serde for data carrying `Ref`s | (`reference`: the `Ref` type) |
//! | `stream.rs` | a session's streaming window and its count of unsent bytes | |
//! | `promise.rs` | `Settled`, `Resolver`, `Watch`, [`Promise`] | codec, stream |
//! | `object.rs` | [`Object`], [`Args`], [`Reply`], `ObjectHandle`, proxies' forwarding | codec, promise, (`reference`) |
//! | `export.rs` | per-session proxy table, promise exports to watch | object, promise |
//! | `mailbox.rs` | `Mailbox`, `Inbox`: the command queue from handles to a session task | |
//! | `handle.rs` | `SessionHandle`, `Command`: what a `Ref` posts to a session | export, mailbox, object, promise, stream |
//! | `admission.rs` | `Admission`, `Ticket`: the connection budgets | handle |
//! | `persist.rs` | [`Restorer`]; `Export`, what the registry holds per swiss number | object, (`reference`: the `Ref` type) |
//! | `shared.rs` | `VatInner`: the vat's shared state; its one `spawn`; lookups, restores included | admission, handle, object, persist, (`reference`: a restored `Ref`) |
//! | `local.rs` | the FIFO queue behind a local `Ref` | object, promise |
//! | `reference.rs` | [`Ref`]: send, pipeline, drop; `reference/naming.rs`: naming refs for a session | codec, export, handle, handoff, local, object, promise |
//! | `gifts.rs` | the host's gift table (three-party handoff): deposits by introducers, bounded, expiring | object |
//! | `handoff.rs` | three-party handoff's introducer side (`introduce`) and recipient side (`Switch`, `receive`), [`Handoff`] | codec, driver, gifts, handle, promise, reference, shared |
//! | `driver/` | the session task: `run`, `connect_and_run`, `Driver`; `host.rs`: a host's deposits, fences and withdrawals | all of the above |
//! | `listener.rs` | the accept loop; admits and cuts connections | admission, driver, shared |
//! | `typed.rs` | what `#[captp::interface]` code calls: [`Interface`], [`CallError`], typed error data | codec, object, promise, reference |
//! | `reconnect.rs` | [`ReconnectingRef`], [`Reconnect`]: re-enliven a sturdy ref after a break | promise, reference, shared, (`mod`: `enliven`) |
//! | `stats.rs` | [`VatStats`] and what it holds, gathered from every session | handle, persist, shared |
//! | `mod.rs` | [`Vat`], [`VatBuilder`] | all |
//!
//! # Tasks
//!
//! Every task a vat owns starts through one spawn (`VatInner::spawn`), which
//! [`Vat::shutdown`] drains: the listener, each handshake and session, and the watchers
//! of promises a session exported. Two kinds of task are not a vat's, because they work
//! without one: the queue serving a local object's `Ref` and the forwarder behind a
//! local promise (both run on the current tokio runtime, and end when their last handle
//! is gone).

mod admission;
mod codec;
mod driver;
mod export;
mod gifts;
mod handle;
mod handoff;
mod listener;
mod local;
mod mailbox;
mod object;
mod persist;
mod promise;
mod reconnect;
mod reference;
mod shared;
mod stats;
mod stream;
mod typed;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

pub use admission::ConnectionStats;
pub use handoff::Handoff;
pub use object::{Args, Object, Reply};
pub use persist::Restorer;
pub use promise::Promise;
pub use reconnect::{Reconnect, ReconnectingRef};
pub use reference::Ref;
pub use stats::{HandoffStats, SessionInfo, Tables, VatStats};
#[doc(hidden)]
pub use typed::private;
pub use typed::{
    CallContext, CallError, DESCRIBE_METHOD, Interface, InterfaceInfo, MethodInfo, ParamInfo,
    ResultPromise,
};

use self::handle::Command;
use self::object::ObjectHandle;
use self::persist::{Export, SharedRestorer};
use self::shared::{VatInner, lock};
use crate::error::Error;
use crate::identity::{Identity, VatId};
use crate::limits::Limits;
use crate::store::{self, Store};

use crate::sturdy::{Host, SturdyRef, SwissNumber};
use crate::transport;

/// How long [`Vat::shutdown`] waits for sessions to close before it stops them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A captp vat: an identity, the objects it exports, and its sessions with other vats.
///
/// `Vat` is a cheap handle (`Clone + Send + Sync`); clones share one vat.
///
/// # Dropping
///
/// Dropping the last clone shuts the vat down in the background, as
/// [`shutdown`](Vat::shutdown) does: it stops listening, aborts every session (the
/// peers' references and promises break with [`crate::BrokenKind::Disconnected`], and
/// so do this vat's) and stops its tasks after a grace period of about two seconds.
/// Call `shutdown` instead to wait for that. [`Ref`]s, promises and sessions do not keep
/// a vat running; only clones of `Vat` do, so keep one for as long as the vat should
/// serve. An exported object that holds a clone of its own `Vat` keeps it running until
/// `shutdown` is called.
///
/// # Examples
///
/// A server and a client in one process, over real TLS on loopback:
///
/// ```
/// use captp::{Args, Reply, Vat};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Vat::builder().listen("127.0.0.1:0").start().await?;
/// let uri = server.export(|method: &str, args: Args| match method {
///     "greet" => match args.decode::<(String,)>() {
///         Ok((name,)) => Reply::ok(format!("hello, {name}")),
///         Err(e) => Reply::err(e),
///     },
///     _ => Reply::unknown_method(method),
/// })?;
///
/// let client = Vat::builder().start().await?;
/// let greeter = client.enliven(&uri);
/// let text: String = greeter.send("greet", ("ada",)).await?;
/// assert_eq!(text, "hello, ada");
///
/// client.shutdown().await;
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Vat {
    inner: Arc<VatInner>,
    /// Counts the program's clones (session tasks hold `inner` only).
    _last: Arc<LastHandle>,
}

/// Builds a [`Vat`]: identity, listen address, limits.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), captp::Error> {
/// let vat = captp::Vat::builder()
///     .identity_dir("certs/log")
///     .listen("127.0.0.1:4433")
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct VatBuilder {
    identity: Option<IdentitySource>,
    listen: Option<String>,
    advertise: Option<String>,
    limits: Limits,
    store: Option<Store>,
    restorer: Option<SharedRestorer>,
}

#[derive(Debug)]
enum IdentitySource {
    Dir(PathBuf),
    Given(Identity),
}

impl VatBuilder {
    /// Loads the vat's identity from `dir`, creating it there on first use (the private
    /// key `vat.key` and the export secret `swiss.key` are written with mode 0600). The
    /// same directory always gives the same vat ID, and the same URI for each name
    /// given to [`Vat::export_named`], so those sturdy refs stay valid across restarts
    /// (on the same port). Without this (or [`identity`](Self::identity)) the vat gets
    /// a fresh ephemeral identity and export secret.
    pub fn identity_dir(mut self, dir: impl Into<PathBuf>) -> VatBuilder {
        self.identity = Some(IdentitySource::Dir(dir.into()));
        self
    }

    /// Uses an identity the program already holds.
    pub fn identity(mut self, identity: Identity) -> VatBuilder {
        self.identity = Some(IdentitySource::Given(identity));
        self
    }

    /// Listens for other vats on `address` (`"127.0.0.1:0"` picks a free port). A vat
    /// that does not listen can still call others, but cannot export sturdy refs.
    pub fn listen(mut self, address: impl Into<String>) -> VatBuilder {
        self.listen = Some(address.into());
        self
    }

    /// The host name or address to put in sturdy refs, when the listen address is not
    /// what peers should dial (a wildcard address, or a machine behind NAT). By default
    /// the listen address is used, with a wildcard replaced by loopback.
    pub fn advertise(mut self, host: impl Into<String>) -> VatBuilder {
        self.advertise = Some(host.into());
        self
    }

    /// Replaces the default [`Limits`].
    pub fn limits(mut self, limits: Limits) -> VatBuilder {
        self.limits = limits;
        self
    }

    /// Keeps persistent sturdy refs ([`Vat::export_persistent`]) in `store`, so that
    /// they survive restarts. With a [`restorer`](Self::restorer) too, a fetch of a
    /// stored ref after a restart rebuilds its object. Conventionally the store lives
    /// beside the identity, at `<identity dir>/refs.redb`; a store goes with one
    /// identity (its refs name that vat).
    ///
    /// The vat holds the store until it shuts down.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use captp::{Broken, Ref, Store, Vat};
    ///
    /// let vat = Vat::builder()
    ///     .identity_dir("certs/rooms")
    ///     .listen("127.0.0.1:4433")
    ///     .store(Store::open("certs/rooms/refs.redb")?)
    ///     .restorer(|record: &[u8]| -> Result<Ref, Broken> {
    ///         Err(Broken::failed(format!("no room for {} bytes", record.len())))
    ///     })
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn store(mut self, store: Store) -> VatBuilder {
        self.store = Some(store);
        self
    }

    /// Rebuilds the objects of persistent sturdy refs from their records after a
    /// restart (see [`Restorer`]). Without one, stored refs are refused as unknown
    /// until this run exports them again.
    pub fn restorer(mut self, restorer: impl Restorer) -> VatBuilder {
        self.restorer = Some(SharedRestorer(Arc::new(restorer)));
        self
    }

    /// Starts the vat on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Identity`] when the identity directory cannot be read or created,
    /// [`Error::Listen`] when the address cannot be bound, [`Error::BadAdvertise`] for an
    /// advertised host that is not a valid host.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn start(self) -> Result<Vat, Error> {
        let identity = match self.identity {
            None => Identity::generate()?,
            Some(IdentitySource::Dir(dir)) => Identity::load_or_create(dir)?,
            Some(IdentitySource::Given(identity)) => identity,
        };
        let advertise = match self.advertise {
            Some(host) => Some(
                host.parse::<Host>()
                    .map_err(|e| Error::BadAdvertise(e.to_string()))?,
            ),
            None => None,
        };
        let listener = match self.listen {
            Some(address) => {
                Some(
                    TcpListener::bind(&address)
                        .await
                        .map_err(|source| Error::Listen {
                            address: address.clone(),
                            source,
                        })?,
                )
            }
            None => None,
        };
        let local_addr = match &listener {
            Some(l) => Some(l.local_addr().map_err(|source| Error::Listen {
                address: "the bound socket".to_owned(),
                source,
            })?),
            None => None,
        };
        // Only a listening vat needs a server configuration (parsing the key is not free).
        let acceptor = match listener {
            Some(_) => Some(TlsAcceptor::from(transport::server_config(&identity)?)),
            None => None,
        };
        let inner = Arc::new(VatInner::new(
            identity,
            self.limits,
            local_addr,
            advertise,
            (self.store, self.restorer),
            tokio::runtime::Handle::current(),
        ));
        if let (Some(listener), Some(acceptor)) = (listener, acceptor) {
            inner.spawn(listener::listen(inner.clone(), listener, acceptor));
        }
        tracing::info!(vat = %inner.identity.vat_id(), addr = ?local_addr, "vat started");
        Ok(Vat {
            _last: Arc::new(LastHandle(inner.clone())),
            inner,
        })
    }
}

impl Vat {
    /// A builder with an ephemeral identity, no listener and default limits.
    pub fn builder() -> VatBuilder {
        VatBuilder::default()
    }

    /// This vat's ID: the SHA-256 of its public key, as in its sturdy refs.
    pub fn vat_id(&self) -> VatId {
        self.inner.identity.vat_id()
    }

    /// The address the vat listens on, if it listens.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr
    }

    /// Exports `object` under a fresh swiss number and returns its sturdy ref. The ref
    /// lasts as long as this vat runs; [`export_persistent`](Self::export_persistent)
    /// makes one that survives restarts.
    ///
    /// The URI dies with the process; for one that a restarted program serves again, use
    /// [`Vat::export_named`].
    ///
    /// # Authority
    ///
    /// Whoever holds the returned sturdy ref (its URI) can call the object. Share it on
    /// purpose; revoke it with [`Vat::revoke`].
    ///
    /// # Errors
    ///
    /// [`Error::NotListening`] when the vat has no listen address.
    pub fn export(&self, object: impl Object) -> Result<SturdyRef, Error> {
        let (host, port) = self.sturdy_address()?;
        let swiss = SwissNumber::generate();
        let export = Export::Live {
            object: ObjectHandle::new(object),
            expiry: None,
        };
        lock(&self.inner.registry).insert(&swiss, export);
        Ok(SturdyRef::new(self.vat_id(), host, port, swiss))
    }

    /// Exports `object` under `name` and returns its sturdy ref, whose swiss number is
    /// derived from the name and the vat's export secret (HMAC-SHA256). The same name
    /// gives the same URI every time, also after a restart, as long as the vat keeps its
    /// identity directory ([`VatBuilder::identity_dir`]), its listen port and its
    /// advertised host. Exporting a name again replaces the object behind that URI.
    ///
    /// With an ephemeral identity ([`Vat::builder`] without `identity_dir`, or
    /// [`Identity::generate`]) the export secret is ephemeral too: the URI is stable
    /// only for the life of the process.
    ///
    /// # Authority
    ///
    /// The name is not a secret and grants nothing: the URI can only be computed with
    /// the export secret in `swiss.key`, which never leaves the vat. Whoever holds the
    /// returned URI can call the object; whoever holds the identity directory can derive
    /// the URI of every named export, so guard it like the private key.
    /// [`Vat::revoke`] removes a named export until the name is exported again (in
    /// memory: a restarted program that exports the name again serves it again).
    ///
    /// # Errors
    ///
    /// [`Error::NotListening`] when the vat has no listen address.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = std::env::temp_dir().join(format!("captp-doc-named-{}", std::process::id()));
    /// let first = captp::Vat::builder().identity_dir(&dir).listen("127.0.0.1:0").start().await?;
    /// let port = first.local_addr().map(|a| a.port()).unwrap_or_default();
    /// let uri = first.export_named("log", |m: &str, _: captp::Args| captp::Reply::unknown_method(m))?;
    /// first.shutdown().await;
    ///
    /// // A "restart": same identity directory, same port, same name, same URI.
    /// let second = captp::Vat::builder()
    ///     .identity_dir(&dir)
    ///     .listen(format!("127.0.0.1:{port}"))
    ///     .start()
    ///     .await?;
    /// let again = second.export_named("log", |m: &str, _: captp::Args| captp::Reply::unknown_method(m))?;
    /// assert_eq!(uri.to_string(), again.to_string());
    /// second.shutdown().await;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn export_named(&self, name: &str, object: impl Object) -> Result<SturdyRef, Error> {
        let (host, port) = self.sturdy_address()?;
        let swiss = self.inner.identity.named_swiss(name);
        let export = Export::Live {
            object: ObjectHandle::new(object),
            expiry: None,
        };
        lock(&self.inner.registry).insert(&swiss, export);
        Ok(SturdyRef::new(self.vat_id(), host, port, swiss))
    }

    /// Exports `object` under a fresh swiss number that survives restarts, and returns
    /// its sturdy ref.
    ///
    /// The vat's [`Store`] keeps the SHA-256 of the swiss number with `record` (the
    /// application's description of the object: an id, a path, a serialized state) and
    /// `expiry`; the write is committed and synced to disk before this returns, so a
    /// URI once returned survives a crash. This run serves `object` itself; after a
    /// restart with the same identity, address and store, the first fetch of the URI
    /// calls the vat's [`Restorer`] with `record`.
    ///
    /// Past `expiry` (whole unix seconds; checked by the system clock at each fetch,
    /// before and after restarts), the ref answers exactly what an unknown swiss number
    /// answers: `unknown_object`. References already enlivened keep working, as after
    /// [`revoke`](Self::revoke). [`Store::purge_expired`] frees the space.
    ///
    /// This blocks for the disk sync (milliseconds); a program minting many refs from
    /// async code can call it inside `tokio::task::spawn_blocking`.
    ///
    /// # Authority
    ///
    /// As for [`export`](Self::export): the URI is the authority to call the object,
    /// now across restarts too. The store holds no swiss number, so neither it nor
    /// `record` gives that authority to whoever reads them.
    ///
    /// # Errors
    ///
    /// [`Error::NotListening`] when the vat has no listen address, [`Error::NoStore`]
    /// when it was built without a store, [`Error::Store`] when the write fails
    /// (nothing is exported then).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    ///
    /// use captp::{Reply, Store, Vat};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = std::env::temp_dir().join(format!("captp-persist-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let store = Store::open(dir.join("refs.redb"))?;
    /// let vat = Vat::builder()
    ///     .listen("127.0.0.1:0")
    ///     .store(store.clone())
    ///     .start()
    ///     .await?;
    /// let a_day = SystemTime::now() + Duration::from_secs(86_400);
    /// let uri = vat.export_persistent(
    ///     |_method: &str, _args: captp::Args| Reply::ok("hello"),
    ///     b"greeter v1",
    ///     Some(a_day),
    /// )?;
    /// assert_eq!(store.get(uri.swiss())?.map(|s| s.record().to_vec()), Some(b"greeter v1".to_vec()));
    ///
    /// assert!(vat.try_revoke(&uri)?); // durable: gone from the store too
    /// assert_eq!(store.get(uri.swiss())?, None);
    /// # vat.shutdown().await;
    /// # drop(store);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn export_persistent(
        &self,
        object: impl Object,
        record: &[u8],
        expiry: Option<SystemTime>,
    ) -> Result<SturdyRef, Error> {
        let (host, port) = self.sturdy_address()?;
        let store = self.inner.store().ok_or(Error::NoStore)?;
        let swiss = SwissNumber::generate();
        store.insert(&swiss, record, expiry)?;
        let export = Export::Live {
            object: ObjectHandle::new(object),
            expiry: expiry.map(store::expiry_secs),
        };
        lock(&self.inner.registry).insert(&swiss, export);
        Ok(SturdyRef::new(self.vat_id(), host, port, swiss))
    }

    /// The host and port to put in this vat's sturdy refs.
    fn sturdy_address(&self) -> Result<(Host, u16), Error> {
        self.inner.address().ok_or(Error::NotListening)
    }

    /// Revokes a sturdy ref this vat exported: later fetches fail with
    /// [`crate::BrokenKind::UnknownObject`], exactly as for a swiss number never issued.
    /// References already enlivened keep working. Returns whether it was exported.
    ///
    /// A persistent ref is also deleted from the store, durably, before this returns.
    /// If the store cannot be written, the failure is logged and the ref is still
    /// refused for the rest of this run, but it would come back after a restart:
    /// [`try_revoke`](Self::try_revoke) reports that failure instead.
    pub fn revoke(&self, sturdy: &SturdyRef) -> bool {
        match self.try_revoke(sturdy) {
            Ok(revoked) => revoked,
            Err(e) => {
                tracing::error!(error = %e, "could not revoke a sturdy ref durably; refused until restart");
                lock(&self.inner.registry).insert(sturdy.swiss(), Export::Revoked);
                true
            }
        }
    }

    /// Revokes a sturdy ref as [`revoke`](Self::revoke) does, and says whether the
    /// store recorded it: `Ok(true)` when it was exported (in memory or in the store)
    /// and is now revoked durably, `Ok(false)` when this vat never exported it.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the store cannot be written: the ref is then still
    /// exported, in memory and in the store.
    pub fn try_revoke(&self, sturdy: &SturdyRef) -> Result<bool, Error> {
        if sturdy.vat_id() != self.vat_id() {
            return Ok(false);
        }
        // No restore may run between the store delete and the registry removal.
        let _restoring = lock(&self.inner.restoring);
        let stored = match self.inner.store() {
            Some(store) => store.remove(sturdy.swiss())?,
            None => false,
        };
        let live = matches!(
            lock(&self.inner.registry).remove(sturdy.swiss()),
            Some(Export::Live { .. })
        );
        Ok(stored || live)
    }

    /// Turns a sturdy ref into a live reference, usable at once.
    ///
    /// Connects to the vat the URI names (or reuses the session to it), checks that the
    /// server's key matches the vat ID, and fetches the object. None of that is awaited
    /// here: sends on the returned reference are pipelined behind the fetch. If any step
    /// fails, the reference and every promise from it break with the reason
    /// ([`crate::BrokenKind::Unreachable`], [`crate::BrokenKind::VatIdMismatch`],
    /// [`crate::BrokenKind::UnknownObject`]).
    ///
    /// # Panics
    ///
    /// Never; the vat's own runtime runs the connection.
    pub fn enliven(&self, sturdy: &SturdyRef) -> Ref {
        enliven(&self.inner, sturdy)
    }

    /// Turns a sturdy ref into a reference that reconnects: after its connection
    /// breaks, its next send enlivens `sturdy` again, with the default [`Reconnect`]
    /// policy. Calls in flight when the connection breaks still break (live references
    /// are fail-stop); see [`ReconnectingRef`].
    ///
    /// Nothing is connected until the first send.
    pub fn enliven_reconnecting(&self, sturdy: &SturdyRef) -> ReconnectingRef {
        self.enliven_reconnecting_with(sturdy, Reconnect::default())
    }

    /// [`Vat::enliven_reconnecting`] with a policy of the caller's.
    pub fn enliven_reconnecting_with(
        &self,
        sturdy: &SturdyRef,
        policy: Reconnect,
    ) -> ReconnectingRef {
        ReconnectingRef::new(self.inner.clone(), sturdy.clone(), policy)
    }

    /// The sizes of every session's tables, for monitoring and for checking that
    /// everything is released; and the vat's connection and handoff counters.
    pub async fn stats(&self) -> VatStats {
        stats::collect(&self.inner).await
    }

    /// Waits for one round trip on every session: when it returns, every peer has
    /// handled everything this vat sent before the call, and this vat has handled
    /// everything those peers sent before answering. Releases of dropped references
    /// included, so after dropping references, a few `sync`s on each vat concerned let
    /// the network settle (each drop can cause a release in turn at the next vat).
    pub async fn sync(&self) {
        let handles = self.inner.session_handles();
        let mut waits = Vec::with_capacity(handles.len());
        for handle in handles {
            let (tx, rx) = oneshot::channel();
            if handle.post(Command::Sync(tx)).is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            // A session that ends meanwhile has nothing left to settle.
            let _ = rx.await;
        }
    }

    /// Shuts the vat down: stops listening, aborts every session (their pending
    /// promises break with [`crate::BrokenKind::Disconnected`]) and waits for the tasks
    /// to finish (at most about two seconds before they are stopped).
    pub async fn shutdown(&self) {
        shared::drain(self.inner.begin_shutdown(), SHUTDOWN_GRACE).await;
    }
}

/// What [`Vat::enliven`] does, for holders of the shared state (a reconnecting
/// reference holds that, not a `Vat`, so as not to keep the vat running).
pub(crate) fn enliven(inner: &Arc<VatInner>, sturdy: &SturdyRef) -> Ref {
    if *inner.shutdown.borrow() {
        return Ref::broken(crate::Broken::disconnected("the local vat has shut down"));
    }
    let session = driver::outbound_session(inner, sturdy.vat_id(), sturdy.address());
    handoff::fetch(&session, sturdy.swiss().clone())
}

/// Held by every clone of a [`Vat`] and by nothing else: when the program drops its
/// last clone, the vat shuts down.
struct LastHandle(Arc<VatInner>);

impl Drop for LastHandle {
    /// Does what [`Vat::shutdown`] does, without waiting: the waiting (and stopping
    /// what outlasts the grace period) runs as a task on the vat's runtime. A runtime
    /// that is itself shutting down drops that task, which stops the vat's tasks.
    fn drop(&mut self) {
        let tasks = self.0.begin_shutdown();
        tracing::debug!(vat = %self.0.identity.vat_id(), "last Vat handle dropped; shutting down");
        drop(self.0.runtime().spawn(shared::drain(tasks, SHUTDOWN_GRACE)));
    }
}

impl std::fmt::Debug for Vat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vat")
            .field("vat_id", &self.vat_id())
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_handle<T: Send + Sync + Clone + 'static>() {}
    fn is_send<T: Send + 'static>() {}

    #[test]
    fn handles_are_send_sync_clone() {
        is_handle::<Vat>();
        is_handle::<Ref>();
        is_send::<Promise<String>>();
        is_send::<Args>();
        is_send::<Reply>();
    }
}
