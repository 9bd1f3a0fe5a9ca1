//! [`Ref`] and [`Promise`]: the handles a program sends through.
//!
//! A `Ref` is cheap to clone and thread-safe. Sending never blocks and never touches the
//! network directly: it posts a command to the task that owns the session. Dropping the
//! last clone of a remote `Ref` posts a release the same way (no I/O in `Drop`).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::local::{LocalCall, LocalQueue};
use super::object::{Args, ObjectHandle};
use super::session::{Command, SessionHandle};
use crate::broken::{Broken, BrokenKind};
use crate::proto::{Call, LocalTarget, OutPayload};
use crate::wire::{self, CborLimits};

/// A result as it reaches the caller: CBOR data plus the references it carries.
pub(crate) struct Resolved {
    pub(crate) data: Vec<u8>,
    /// The references in the result, released when the result is dropped.
    #[allow(
        dead_code,
        reason = "held for their release on drop; read by typed decoding later"
    )]
    pub(crate) refs: Vec<Ref>,
}

/// Where a question's result is delivered.
pub(crate) type Resolver = oneshot::Sender<Result<Resolved, Broken>>;

/// A live reference: to an object in another vat, to the eventual result of a call
/// (a promise you can pipeline on), to a local object, or broken.
///
/// Sends on one `Ref` are delivered in the order they were made (E-order).
///
/// # Examples
///
/// ```no_run
/// # async fn demo(vat: captp::Vat, uri: captp::SturdyRef) -> Result<(), captp::Broken> {
/// let log = vat.enliven(&uri);          // usable at once: no await
/// log.send_only("log", ("foot",));       // one-way
/// let hits: Vec<(u64, String)> = log.send("search", ("foo",)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Ref {
    inner: Arc<RefInner>,
}

enum RefInner {
    Remote(RemoteRef),
    Local(ObjectHandle, LocalQueue),
    Broken(Broken),
}

struct RemoteRef {
    session: SessionHandle,
    target: LocalTarget,
}

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
    pub(crate) fn remote(session: SessionHandle, target: LocalTarget) -> Ref {
        Ref {
            inner: Arc::new(RefInner::Remote(RemoteRef { session, target })),
        }
    }

    pub(crate) fn local(object: ObjectHandle, queue: LocalQueue) -> Ref {
        Ref {
            inner: Arc::new(RefInner::Local(object, queue)),
        }
    }

    /// A reference that is broken from the start; every send on it breaks the same way.
    pub fn broken(broken: Broken) -> Ref {
        Ref {
            inner: Arc::new(RefInner::Broken(broken)),
        }
    }

    /// Why this reference is broken, if it is known to be broken already.
    ///
    /// A remote reference whose session has ended reports that; a promise whose answer
    /// broke reports it once a send on it has been refused. `None` does not promise that
    /// the next send succeeds.
    pub fn broken_reason(&self) -> Option<Broken> {
        match &*self.inner {
            RefInner::Broken(b) => Some(b.clone()),
            RefInner::Remote(r) => r.session.closed_reason(),
            RefInner::Local(..) => None,
        }
    }

    /// Sends `method` with `args` and returns a promise for the result.
    ///
    /// Returns at once; the call goes out in order with every other send on this
    /// reference. Await the promise for the result, decoded as `T`. Arguments are any
    /// serde value: a tuple for several (`("a", 1)`), `()` for none.
    pub fn send<T: DeserializeOwned>(&self, method: &str, args: impl Serialize) -> Promise<T> {
        let (tx, rx) = oneshot::channel();
        let cbor = self.cbor();
        match self.dispatch(method, &args, Some(tx), 0) {
            Ok(()) => Promise::waiting(rx, cbor),
            Err(b) => Promise::broken(b),
        }
    }

    /// Sends `method` with `args` and wants no answer: no question is allocated, and
    /// failures are not reported.
    pub fn send_only(&self, method: &str, args: impl Serialize) {
        if let Err(b) = self.dispatch(method, &args, None, 0) {
            tracing::debug!(method, broken = %b, "send_only dropped");
        }
    }

    /// Sends `method` and returns a reference to its eventual result, to send to at once
    /// (promise pipelining): the result must be an object.
    ///
    /// Messages sent to the returned reference go out immediately, aimed at the answer
    /// at the other vat, so a chain of dependent calls costs one round trip. If the call
    /// breaks, everything sent to its result breaks with the same reason.
    pub fn send_ref(&self, method: &str, args: impl Serialize) -> Ref {
        match &*self.inner {
            RefInner::Remote(r) => {
                let q = r.session.next_question();
                let payload = match encode_args(&args, &r.session.cbor()) {
                    Ok(p) => p,
                    Err(b) => return Ref::broken(b),
                };
                let call = Call {
                    target: r.target,
                    method: method.to_owned(),
                    payload,
                    question: Some(q),
                    resolver: None,
                    pipeline_refs: 1,
                };
                match r.session.post(Command::Send(call)) {
                    Ok(()) => Ref::remote(r.session.clone(), LocalTarget::Answer(q)),
                    Err(b) => Ref::broken(b),
                }
            }
            RefInner::Local(..) => Ref::broken(Broken::new(
                BrokenKind::Other,
                "pipelining on a local object is not supported by this version",
            )),
            RefInner::Broken(b) => Ref::broken(b.clone()),
        }
    }

    fn cbor(&self) -> CborLimits {
        match &*self.inner {
            RefInner::Remote(r) => r.session.cbor(),
            RefInner::Local(_, q) => q.cbor(),
            RefInner::Broken(_) => CborLimits::default(),
        }
    }

    fn dispatch(
        &self,
        method: &str,
        args: &impl Serialize,
        resolver: Option<Resolver>,
        pipeline_refs: u32,
    ) -> Result<(), Broken> {
        match &*self.inner {
            RefInner::Remote(r) => {
                let payload = encode_args(args, &r.session.cbor())?;
                let question = resolver.as_ref().map(|_| r.session.next_question());
                r.session.post(Command::Send(Call {
                    target: r.target,
                    method: method.to_owned(),
                    payload,
                    question,
                    resolver,
                    pipeline_refs,
                }))
            }
            RefInner::Local(object, queue) => {
                let payload: OutPayload<ObjectHandle> = encode_args(args, &queue.cbor())?;
                queue.post(LocalCall {
                    object: object.clone(),
                    method: method.to_owned(),
                    args: Args::new(payload.data, Vec::new(), queue.cbor()),
                    resolver,
                })
            }
            RefInner::Broken(b) => Err(b.clone()),
        }
    }
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
                a.session.id() == b.session.id() && a.target == b.target
            }
            (RefInner::Local(a, _), RefInner::Local(b, _)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Debug for Ref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.inner {
            RefInner::Remote(r) => write!(f, "Ref(vat {} {:?})", r.session.peer(), r.target),
            RefInner::Local(o, _) => write!(f, "Ref(local {o:?})"),
            RefInner::Broken(b) => write!(f, "Ref(broken: {b})"),
        }
    }
}

/// Encodes arguments and checks them against the limits the receiver will apply, so a
/// call the peer would refuse breaks here instead of aborting the session.
fn encode_args<O>(args: &impl Serialize, cbor: &CborLimits) -> Result<OutPayload<O>, Broken> {
    let data = wire::encode_value(args)
        .map_err(|e| Broken::bad_arguments(format_args!("could not encode the arguments: {e}")))?;
    wire::scan::check(&data, cbor).map_err(|e| {
        Broken::new(
            BrokenKind::TooLarge,
            format!("the arguments exceed the CBOR limits: {e}"),
        )
    })?;
    Ok(OutPayload::data(data))
}

/// The eventual result of [`Ref::send`]: await it for the value, decoded as `T`.
///
/// Dropping a promise does not cancel the call; its result is discarded when it comes.
#[must_use = "a promise does nothing unless awaited; use send_only for one-way sends"]
pub struct Promise<T> {
    state: PromiseState,
    cbor: CborLimits,
    _marker: PhantomData<fn() -> T>,
}

enum PromiseState {
    Waiting(oneshot::Receiver<Result<Resolved, Broken>>),
    Broken(Option<Broken>),
}

impl<T> Promise<T> {
    fn waiting(rx: oneshot::Receiver<Result<Resolved, Broken>>, cbor: CborLimits) -> Promise<T> {
        Promise {
            state: PromiseState::Waiting(rx),
            cbor,
            _marker: PhantomData,
        }
    }

    fn broken(b: Broken) -> Promise<T> {
        Promise {
            state: PromiseState::Broken(Some(b)),
            cbor: CborLimits::default(),
            _marker: PhantomData,
        }
    }
}

impl<T: DeserializeOwned> Future for Promise<T> {
    type Output = Result<T, Broken>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            PromiseState::Broken(b) => Poll::Ready(Err(b.take().unwrap_or_else(|| {
                Broken::new(BrokenKind::Other, "promise polled after it settled")
            }))),
            PromiseState::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(Ok(resolved))) => {
                    Poll::Ready(wire::decode_value(&resolved.data, &this.cbor).map_err(|e| {
                        Broken::new(
                            BrokenKind::Decode,
                            format!(
                                "the result does not decode as {}: {e}",
                                std::any::type_name::<T>()
                            ),
                        )
                    }))
                }
                Poll::Ready(Ok(Err(b))) => Poll::Ready(Err(b)),
                Poll::Ready(Err(_)) => Poll::Ready(Err(Broken::disconnected(
                    "the session ended before the call was answered",
                ))),
            },
        }
    }
}

impl<T> std::fmt::Debug for Promise<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Promise")
    }
}
