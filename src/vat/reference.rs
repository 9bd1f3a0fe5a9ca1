//! [`Ref`]: the handle a program sends through, and how a `Ref` is named when it
//! travels to a session's peer (`out_caps`).
//!
//! A `Ref` is cheap to clone and thread-safe. Sending never blocks and never touches the
//! network directly: it posts a [`Command`] to the task that owns the session (or to the
//! queue of a local object). Dropping the last clone of a remote `Ref` posts a release
//! the same way: there is no I/O in `Drop`. This module must not use the session task
//! (`driver/`): everything a `Ref` does is here and in `handle.rs`.
//!
//! Sends on one `Ref` are delivered in the order they were made (E-order). A promise
//! never shortens its path: messages sent on it keep following it after it resolves, so
//! they cannot overtake each other. The resolved reference itself (what awaiting the
//! promise gives) is the direct one.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch};

use super::codec::{self, RefPayload};
use super::handle::{Command, SessionHandle};
use super::handoff::{Handoff, Route, Switch};
use super::local::{LocalCall, LocalQueue};
use super::object::{Args, Object, ObjectHandle};
use super::promise::{Asked, Promise, Resolver, Watch, settled};
use super::stream::{Window, call_bytes};
use crate::broken::{Broken, BrokenKind};
use crate::proto::{Call, LocalTarget, OutPayload, QuestionId};
use crate::wire::CborLimits;

/// A live reference: to an object in another vat, to the eventual result of a call
/// (a promise you can pipeline on), to a local object, or broken.
///
/// References can travel inside arguments and results: put a `Ref` anywhere in a serde
/// value (a struct field, a `Vec`, a map) and the other side gets a live `Ref`.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(vat: captp::Vat, uri: captp::SturdyRef) -> Result<(), captp::Broken> {
/// let log = vat.enliven(&uri);          // usable at once: no await
/// log.send_only("log", ("foot",))?;      // one-way
/// let hits: Vec<(u64, String)> = log.send("search", ("foo",)).await?;
/// # Ok(()) }
/// ```
///
/// # Authority
///
/// Holding a `Ref` is the authority to call it; passing it in a message gives that
/// authority to the receiver.
#[derive(Clone)]
pub struct Ref {
    inner: Arc<RefInner>,
}

enum RefInner {
    Remote(RemoteRef),
    Local(ObjectHandle, OnceLock<Result<LocalQueue, Broken>>),
    Pending(PendingRef),
    Broken(Broken),
    /// Introduced by a third party: calls go through the introducer until the object is
    /// picked up at its host, then there directly (`handoff.rs`).
    Handoff(Arc<Switch>),
}

struct RemoteRef {
    session: SessionHandle,
    target: LocalTarget,
    /// For promises (answers and promise imports): how they settle.
    promise: Option<Watch>,
    /// The first failure of a streaming send on this reference, reported by every later
    /// one ([`Ref::send_streaming`]).
    stream_failure: Arc<OnceLock<Broken>>,
    /// The answer to a quiet question whose result nobody here has asked for yet: the
    /// first use that needs the settlement asks the peer for it ([`Ref::wanted`]).
    quiet: AtomicBool,
}

/// A local promise: the result of a call on a local object, or of a send on a promise.
struct PendingRef {
    sends: mpsc::UnboundedSender<Forward>,
    settled: Watch,
}

/// A send waiting: for a local promise to settle, or for a handoff's switch.
pub(crate) struct Forward {
    pub(crate) method: String,
    pub(crate) payload: RefPayload,
    pub(crate) resolver: Option<Resolver>,
}

mod breaking;
mod naming;

pub(crate) use naming::out_caps;

impl Drop for RemoteRef {
    fn drop(&mut self) {
        // Enqueue only: the session task does the rest. A closed session needs nothing.
        let cmd = match self.target {
            LocalTarget::Import(i) => Command::DropImport(i),
            LocalTarget::Answer(q) => Command::DropQuestionRef(q),
        };
        let _ = self.session.post(cmd);
    }
}

impl Ref {
    pub(crate) fn remote(
        session: SessionHandle,
        target: LocalTarget,
        promise: Option<Watch>,
    ) -> Ref {
        Ref::wrap(RefInner::Remote(RemoteRef {
            session,
            target,
            promise,
            stream_failure: Arc::new(OnceLock::new()),
            quiet: AtomicBool::new(false),
        }))
    }

    /// The promise for the answer to quiet question `q` (see `pipeline`): its
    /// settlement is asked for only when something needs it.
    fn quiet_answer(session: SessionHandle, q: QuestionId, settled: Watch) -> Ref {
        Ref::wrap(RefInner::Remote(RemoteRef {
            session,
            target: LocalTarget::Answer(q),
            promise: Some(settled),
            stream_failure: Arc::new(OnceLock::new()),
            quiet: AtomicBool::new(true),
        }))
    }

    /// Asks the peer for this promise's result, if it is the answer to a quiet question
    /// not asked for yet: what every use that looks at the settlement does first
    /// (waiting for it, watching for a break, passing the promise on). Sends on the
    /// promise need no result, and a promise only sent to never asks.
    fn wanted(&self) {
        if let RefInner::Remote(r) = &*self.inner {
            if r.quiet.swap(false, Ordering::Relaxed) {
                if let LocalTarget::Answer(q) = r.target {
                    let _ = r.session.post(Command::WantReturn(q));
                }
            }
        }
    }

    /// A reference introduced by a third party, switching as `switch` decides.
    pub(crate) fn handoff(switch: Arc<Switch>) -> Ref {
        Ref::wrap(RefInner::Handoff(switch))
    }

    /// The switch of a reference a third party introduced.
    pub(crate) fn switch(&self) -> Option<std::sync::Weak<Switch>> {
        match &*self.inner {
            RefInner::Handoff(s) => Some(Arc::downgrade(s)),
            _ => None,
        }
    }

    /// Whether this is a remote reference on `session`.
    fn on_session(&self, session: &SessionHandle) -> bool {
        matches!(&*self.inner, RefInner::Remote(r) if r.session.same(session))
    }

    pub(crate) fn local(object: ObjectHandle) -> Ref {
        Ref::wrap(RefInner::Local(object, OnceLock::new()))
    }

    fn wrap(inner: RefInner) -> Ref {
        Ref {
            inner: Arc::new(inner),
        }
    }

    /// A reference to a local object, to pass to other vats (as a callback, say) or to
    /// send to locally. Sends on it run the object's methods on the tokio runtime, one
    /// at a time in the order sent.
    ///
    /// # Authority
    ///
    /// Whoever receives the reference can call `object`.
    pub fn from_object(object: impl Object) -> Ref {
        Ref::local(ObjectHandle::new(object))
    }

    /// The object to export for this reference under a swiss number: a local object
    /// itself, anything else through a forwarding proxy; a broken reference is its
    /// reason.
    pub(crate) fn export_handle(&self) -> Result<ObjectHandle, Broken> {
        match &*self.inner {
            RefInner::Local(object, _) => Ok(object.clone()),
            RefInner::Broken(b) => Err(b.clone()),
            RefInner::Remote(_) | RefInner::Pending(_) | RefInner::Handoff(_) => {
                Ok(ObjectHandle::proxy(self.clone()))
            }
        }
    }

    /// A reference that is broken from the start; every send on it breaks the same way.
    pub fn broken(broken: Broken) -> Ref {
        Ref::wrap(RefInner::Broken(broken))
    }

    /// Why this reference is broken, if that is known already.
    ///
    /// A remote reference whose session has ended reports that; a promise that broke
    /// reports its reason. `None` does not promise that the next send succeeds. On a
    /// reference from [`Ref::send_ref`] the first call asks the peer for the result
    /// (see its "Cost"): a failure shows here once that answer has come.
    pub fn broken_reason(&self) -> Option<Broken> {
        self.wanted();
        match &*self.inner {
            RefInner::Broken(b) => Some(b.clone()),
            RefInner::Remote(r) => r.session.closed_reason().or_else(|| {
                r.promise
                    .as_ref()
                    .and_then(|w| w.borrow().as_ref().and_then(|s| s.as_ref().err().cloned()))
            }),
            RefInner::Pending(p) => p
                .settled
                .borrow()
                .as_ref()
                .and_then(|s| s.as_ref().err().cloned()),
            RefInner::Local(..) => None,
            RefInner::Handoff(s) => s.current().broken_reason(),
        }
    }

    /// Waits until a reference that a third vat introduced has settled its path, and
    /// says how (PROTOCOL.md 9.16): [`Handoff::Direct`] once calls go to the object's
    /// own vat, [`Handoff::ThroughIntroducer`] if the handoff failed (calls then keep
    /// going through the vat that passed the reference). Any other reference is
    /// [`Handoff::NotIntroduced`] at once.
    ///
    /// Nothing needs this to call the reference: calls made meanwhile are delivered in
    /// order on whichever path they take. It is for programs (and tests) that want to
    /// know that the introducer can go away.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(registry: captp::Ref) -> Result<(), captp::Broken> {
    /// let service: captp::Ref = registry.send("lookup", ("printer",)).await?;
    /// if let captp::Handoff::ThroughIntroducer { reason } = service.when_handed_off().await {
    ///     eprintln!("calls go through the registry: {reason}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn when_handed_off(&self) -> impl Future<Output = Handoff> + Send + 'static {
        let done = match &*self.inner {
            RefInner::Handoff(s) => Some(s.when_done()),
            _ => None,
        };
        async move {
            match done {
                Some(done) => done.await,
                None => Handoff::NotIntroduced,
            }
        }
    }

    /// Waits until this reference settles and gives what it settled to, decoded as `T`:
    /// E's `when`. For a promise (from [`Ref::send_ref`], [`crate::Vat::enliven`], or
    /// received from a peer) that is its result: `T = Ref` for an object, any serde type
    /// for data. A reference that is already an object settles at once to itself.
    ///
    /// # Errors
    ///
    /// The promise's [`Broken`] if it broke (including its session ending first), or
    /// [`BrokenKind::Decode`] if the value is not a `T`.
    pub async fn when_settled<T: DeserializeOwned>(&self) -> Result<T, Broken> {
        self.wanted();
        let payload = match (&*self.inner, self.promise_watch()) {
            (RefInner::Broken(b), _) => return Err(b.clone()),
            (RefInner::Remote(r), Some(w)) => {
                let closed = r.session.when_closed();
                tokio::select! {
                    biased;
                    s = settled(w) => s?,
                    b = closed => return Err(b),
                }
            }
            (_, Some(w)) => settled(w).await?,
            (_, None) => RefPayload::single(self.clone()),
        };
        codec::decode_payload(&payload, &self.cbor()).map_err(|e| {
            Broken::new(
                BrokenKind::Decode,
                format!(
                    "the settled value does not decode as {}: {e}",
                    std::any::type_name::<T>()
                ),
            )
        })
    }

    /// Sends `method` with `args` and returns a promise for the result.
    ///
    /// Returns at once; the call goes out in order with every other send on this
    /// reference. Await the promise for the result, decoded as `T` (which may hold
    /// `Ref`s). Arguments are any serde value, references included: a tuple for several
    /// (`("a", 1)`), `()` for none.
    ///
    /// Dropping the promise before it settles cancels the call, and
    /// [`Promise::timeout`] gives it a deadline (see [`Promise`]).
    pub fn send<T: DeserializeOwned>(&self, method: &str, args: impl Serialize) -> Promise<T> {
        let (tx, rx) = oneshot::channel();
        match self.encode_and_send(method, &args, Some(Resolver::Once(tx))) {
            Ok(asked) => Promise::waiting(rx, self.cbor(), asked),
            Err(b) => Promise::broken(b),
        }
    }

    /// Sends `method` with `args` and wants no answer: no question is allocated, and
    /// failures at the callee are not reported.
    ///
    /// Returns at once, like [`Ref::send`]: nothing waits for the peer. A producer that
    /// sends faster than the peer reads would make the vat queue without end, so the
    /// bytes of calls waiting to be written to one peer are bounded
    /// ([`Limits::max_unsent`](crate::Limits::max_unsent), 16 MiB by default); to keep
    /// sending to a slow consumer, use [`Ref::send_streaming`], which waits for room.
    ///
    /// # Errors
    ///
    /// What is known at once: the arguments do not encode, the reference is broken or
    /// its session has ended, or [`BrokenKind::TooLarge`] when the call would pass
    /// `max_unsent` (the call is not sent). Ignoring the error (`let _ =`) is fine
    /// where a lost one-way send is.
    pub fn send_only(&self, method: &str, args: impl Serialize) -> Result<(), Broken> {
        self.encode_and_send(method, &args, None).map(drop)
    }

    /// Sends `method` with `args` as a flow-controlled one-way stream: waits, if needed,
    /// until the peer has acknowledged enough earlier streaming sends, so that a
    /// producer that awaits each one keeps its memory bounded against a slow consumer.
    ///
    /// The call is made at once, in order with every other send on this reference
    /// (before this returns a future); the future then resolves when the session's
    /// streaming window has room again (not when this call is answered). The window
    /// ([`Limits::stream_window`](crate::Limits::stream_window), 256 KiB by default)
    /// counts the bytes of streaming calls sent and not yet answered on the session;
    /// the callee's answer is the acknowledgement, and its value is dropped. So a
    /// producer that awaits each send has at most the window plus one call in flight.
    /// (Cap'n Proto's streaming calls work the same way.)
    ///
    /// # Errors
    ///
    /// What is known when it is called, as for [`Ref::send_only`]; and the failure of an
    /// earlier streaming send on this reference (a method that returned an error, or
    /// the session ending): once one fails, every later `send_streaming` on the same
    /// reference returns that first failure without sending, as a stream that lost a
    /// piece must not go on. On a local reference there is no window: the call is
    /// queued for the object at once.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(log: captp::Ref) -> Result<(), captp::Broken> {
    /// for line in ["a", "b", "c"] {
    ///     log.send_streaming("log", (line,)).await?;
    /// }
    /// // Every line went out; wait for the last answers with a round trip if needed.
    /// # Ok(()) }
    /// ```
    pub fn send_streaming(
        &self,
        method: &str,
        args: impl Serialize,
    ) -> impl std::future::Future<Output = Result<(), Broken>> + Send + 'static {
        let sent = self.stream_call(method, &args);
        async move {
            match sent? {
                Some(window) => {
                    window.room().await;
                    Ok(())
                }
                None => Ok(()),
            }
        }
    }

    /// Makes a streaming call now; returns the window to wait on (none for a local
    /// reference).
    fn stream_call(
        &self,
        method: &str,
        args: &impl Serialize,
    ) -> Result<Option<Arc<Window>>, Broken> {
        if let RefInner::Handoff(s) = &*self.inner {
            return s.route(|route| match route {
                Route::Go(r) => r.stream_call(method, args),
                Route::Hold(queue, limit) => {
                    let payload = codec::encode(args).map_err(|e| encode_error(&e))?;
                    let call = Forward {
                        method: method.to_owned(),
                        payload,
                        resolver: None,
                    };
                    queue.hold(call, limit).map(|()| None)
                }
            });
        }
        let RefInner::Remote(r) = &*self.inner else {
            self.encode_and_send(method, args, None)?;
            return Ok(None);
        };
        if let Some(b) = r.stream_failure.get() {
            return Err(b.clone());
        }
        let payload = codec::encode(args).map_err(|e| encode_error(&e))?;
        let window = r.session.window().clone();
        let ack = window.open(call_bytes(method, &payload.data), &r.stream_failure);
        self.forward(method.to_owned(), payload, Some(Resolver::Stream(ack)))?;
        Ok(Some(window))
    }

    /// Sends `method` and returns a reference to its eventual result, to send to at once
    /// (promise pipelining): the result should be an object.
    ///
    /// Messages sent to the returned reference go out immediately, aimed at the answer
    /// at the other vat, so a chain of dependent calls costs one round trip. If the call
    /// breaks, everything sent to its result breaks with the same reason.
    ///
    /// A remote call made this way has the vat-wide deadline
    /// ([`crate::Limits::call_timeout`]), if any. Dropping every clone of the returned
    /// reference before the answer comes cancels the call, unless something was sent
    /// to the reference: those sends depend on the answer, so the callee runs it to
    /// its end (and then frees it).
    ///
    /// # Cost
    ///
    /// To a peer speaking protocol version 3, the call is a *quiet question*
    /// (PROTOCOL.md 9.15): the callee keeps the result for the messages sent to it and
    /// sends nothing back for it, so a reference only sent to costs no export, import or
    /// `release`. The result is asked for the first time something here needs it:
    /// [`Ref::when_settled`], [`Ref::when_broken`], [`Ref::broken_reason`], or passing
    /// the reference to another vat. Until then a failure of the call shows only in the
    /// results of what was sent to the reference.
    pub fn send_ref(&self, method: &str, args: impl Serialize) -> Ref {
        let payload = match codec::encode(&args) {
            Ok(p) => p,
            Err(e) => return Ref::broken(encode_error(&e)),
        };
        self.pipeline(method.to_owned(), payload)
    }

    fn encode_and_send(
        &self,
        method: &str,
        args: &impl Serialize,
        resolver: Option<Resolver>,
    ) -> Result<Option<Asked>, Broken> {
        let payload = codec::encode(args).map_err(|e| encode_error(&e))?;
        self.forward(method.to_owned(), payload, resolver)
    }

    /// Sends an already-encoded call; `resolver` gets the result. For a remote call
    /// that asks a question, returns it, so that the caller can cancel it or give it a
    /// deadline; ignoring it is not a cancellation.
    pub(crate) fn forward(
        &self,
        method: String,
        payload: RefPayload,
        resolver: Option<Resolver>,
    ) -> Result<Option<Asked>, Broken> {
        match &*self.inner {
            RefInner::Remote(r) => {
                // The CBOR limits the peer announced are checked by the session, on the
                // way out (one walk of the data; see `Session::send`).
                // Streaming calls are bounded by their window; every other call by
                // `max_unsent`, counted here and released once written.
                let bytes = call_bytes(&method, &payload.data);
                if matches!(resolver, Some(Resolver::Stream(_))) {
                    r.session.unsent().add(bytes);
                } else {
                    r.session.unsent().reserve(bytes)?;
                }
                let (caps, watched) = out_caps(&payload.refs, &r.session);
                let question = resolver.as_ref().map(|_| r.session.next_question());
                r.session
                    .post(Command::Send {
                        call: Call {
                            target: r.target,
                            method,
                            payload: OutPayload {
                                data: payload.data,
                                caps,
                                shape: payload.shape,
                            },
                            question,
                            resolver,
                            pipeline_refs: 0,
                            deadline: question.and_then(|_| r.session.default_deadline()),
                            quiet: false,
                        },
                        watched,
                    })
                    .inspect_err(|_| r.session.unsent().release(bytes))?;
                Ok(question.map(|q| r.session.asked(q)))
            }
            RefInner::Local(object, queue) => {
                let queue = queue
                    .get_or_init(LocalQueue::spawn)
                    .as_ref()
                    .map_err(Clone::clone)?;
                queue.post(LocalCall {
                    object: object.clone(),
                    method,
                    args: Args::new(payload.data, payload.refs, CborLimits::default()),
                    resolver,
                })?;
                Ok(None)
            }
            RefInner::Pending(p) => p
                .sends
                .send(Forward {
                    method,
                    payload,
                    resolver,
                })
                .map(|()| None)
                .map_err(|_| Broken::disconnected("the promise's forwarding task ended")),
            RefInner::Broken(b) => Err(b.clone()),
            RefInner::Handoff(s) => s.route(|route| match route {
                Route::Go(r) => r.forward(method, payload, resolver),
                Route::Hold(queue, limit) => {
                    let call = Forward {
                        method,
                        payload,
                        resolver,
                    };
                    queue.hold(call, limit).map(|()| None)
                }
            }),
        }
    }

    /// Sends a call and returns a reference to its result, pipelined.
    fn pipeline(&self, method: String, payload: RefPayload) -> Ref {
        match &*self.inner {
            RefInner::Remote(r) => {
                let bytes = call_bytes(&method, &payload.data);
                if let Err(b) = r.session.unsent().reserve(bytes) {
                    return Ref::broken(b);
                }
                let q = r.session.next_question();
                let (tx, rx) = watch::channel(None);
                let (caps, watched) = out_caps(&payload.refs, &r.session);
                let call = Call {
                    target: r.target,
                    method,
                    payload: OutPayload {
                        data: payload.data,
                        caps,
                        shape: payload.shape,
                    },
                    question: Some(q),
                    resolver: Some(Resolver::Watch(tx)),
                    pipeline_refs: 1,
                    deadline: r.session.default_deadline(),
                    // Asked quiet: the result comes only if something here wants it
                    // (`Ref::wanted`), so a promise only pipelined on costs no
                    // `return` with an export, and no `release` (PROTOCOL.md 9.15).
                    quiet: true,
                };
                match r.session.post(Command::Send { call, watched }) {
                    Ok(()) => Ref::quiet_answer(r.session.clone(), q, rx),
                    Err(b) => {
                        r.session.unsent().release(bytes);
                        Ref::broken(b)
                    }
                }
            }
            RefInner::Broken(b) => Ref::broken(b.clone()),
            RefInner::Handoff(s) => s.route(|route| match route {
                Route::Go(r) => r.pipeline(method, payload),
                Route::Hold(queue, limit) => {
                    let (tx, rx) = watch::channel(None);
                    let call = Forward {
                        method,
                        payload,
                        resolver: Some(Resolver::Watch(tx)),
                    };
                    match queue.hold(call, limit) {
                        Ok(()) => Ref::pending(rx),
                        Err(b) => Ref::broken(b),
                    }
                }
            }),
            RefInner::Local(..) | RefInner::Pending(_) => {
                let (tx, rx) = watch::channel(None);
                match self.forward(method, payload, Some(Resolver::Watch(tx))) {
                    Ok(_) => Ref::pending(rx),
                    Err(b) => Ref::broken(b),
                }
            }
        }
    }

    /// A local promise that settles through `settled`; sends on it wait for that and
    /// then go, in order, to what it resolved to.
    pub(crate) fn pending(settled: Watch) -> Ref {
        let (tx, mut rx) = mpsc::unbounded_channel::<Forward>();
        let watch = settled.clone();
        // Not a vat task: local promises exist without any vat (`Ref::from_object`), so
        // no vat's shutdown can own them. The task ends when the promise settles and
        // every handle to it is gone.
        let spawned = tokio::runtime::Handle::try_current().map(|rt| {
            rt.spawn(async move {
                let target = match self::settled(watch).await {
                    Ok(payload) => resolved_target(&payload).unwrap_or_else(Ref::broken),
                    Err(b) => Ref::broken(b),
                };
                while let Some(f) = rx.recv().await {
                    if let Err(b) = target.forward(f.method, f.payload, f.resolver) {
                        tracing::debug!(broken = %b, "forward from a promise failed");
                    }
                }
            })
        });
        match spawned {
            Ok(_) => Ref::wrap(RefInner::Pending(PendingRef { sends: tx, settled })),
            Err(_) => Ref::broken(no_runtime()),
        }
    }

    /// The CBOR limits results through this reference were checked against.
    fn cbor(&self) -> CborLimits {
        match &*self.inner {
            RefInner::Remote(r) => r.session.cbor(),
            RefInner::Handoff(s) => s.current().cbor(),
            _ => CborLimits::default(),
        }
    }

    /// What this promise settled to, if it has settled to an object.
    fn settled_target(&self) -> Option<Ref> {
        let watch = self.promise_watch()?;
        let settled = watch.borrow();
        match &*settled {
            Some(Ok(payload)) => payload.as_single().cloned(),
            _ => None,
        }
    }

    /// The watch that tells when this reference, as a promise, settles; `None` for
    /// references that are settled already.
    fn promise_watch(&self) -> Option<Watch> {
        match &*self.inner {
            RefInner::Remote(r) => r.promise.clone(),
            RefInner::Pending(p) => Some(p.settled.clone()),
            RefInner::Local(..) | RefInner::Broken(_) | RefInner::Handoff(_) => None,
        }
    }
}

/// What a settled promise designates as an object: its single reference, or broken.
fn resolved_target(payload: &RefPayload) -> Result<Ref, Broken> {
    payload
        .as_single()
        .cloned()
        .ok_or_else(|| Broken::not_an_object(None))
}

/// Two references are equal when they designate the same object by the same path: the
/// same import or promise on the same session, or the same local object.
impl PartialEq for Ref {
    fn eq(&self, other: &Ref) -> bool {
        if Arc::ptr_eq(&self.inner, &other.inner) {
            return true;
        }
        match (&*self.inner, &*other.inner) {
            (RefInner::Remote(a), RefInner::Remote(b)) => {
                a.session.same(&b.session) && a.target == b.target
            }
            (RefInner::Local(a, _), RefInner::Local(b, _)) => a == b,
            (RefInner::Handoff(a), RefInner::Handoff(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Ref {}

impl std::fmt::Debug for Ref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.inner {
            RefInner::Remote(r) => write!(f, "Ref(vat {} {:?})", r.session.peer(), r.target),
            RefInner::Local(o, _) => write!(f, "Ref(local {o:?})"),
            RefInner::Pending(_) => f.write_str("Ref(local promise)"),
            RefInner::Broken(b) => write!(f, "Ref(broken: {b})"),
            RefInner::Handoff(s) => write!(f, "Ref(introduced, now {:?})", s.current()),
        }
    }
}

fn encode_error(e: &str) -> Broken {
    Broken::bad_arguments(format_args!("could not encode the arguments: {e}"))
}

fn no_runtime() -> Broken {
    Broken::new(
        BrokenKind::Other,
        "sends to local objects need a tokio runtime on the current thread",
    )
}
