//! Local objects: the [`Object`] trait, the [`Args`] a call brings and the [`Reply`] it
//! gives.
//!
//! An object is anything that answers `call(method, args)`. Synchronous methods answer
//! with a ready [`Reply`]; asynchronous ones return [`Reply::later`] with a future. This
//! module runs no network code; the runtime decides where and when `call` runs.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::{self, RefPayload};
use super::promise::{CancelOnDrop, Resolver};
use super::reference::Ref;
use crate::broken::Broken;
use crate::identity::VatId;
use crate::wire::{CborLimits, DecodeError};

/// An object that can be called with eventual sends, locally or from other vats.
///
/// `call` runs on the runtime's task for the connection the call came in on: keep it
/// short, and return [`Reply::later`] for anything that waits. Calls on one object from
/// one reference arrive in the order they were sent (E-order); calls from different
/// sessions may run concurrently, hence `Send + Sync`.
///
/// # Examples
///
/// A counter with one synchronous and one asynchronous method:
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use captp::{Args, Object, Reply};
///
/// #[derive(Default)]
/// struct Counter(AtomicU64);
///
/// impl Object for Counter {
///     fn call(&self, method: &str, args: Args) -> Reply {
///         match method {
///             "add" => {
///                 let (n,): (u64,) = match args.decode() {
///                     Ok(n) => n,
///                     Err(e) => return Reply::err(e),
///                 };
///                 Reply::ok(self.0.fetch_add(n, Ordering::SeqCst) + n)
///             }
///             "slow_zero" => Reply::later(async { Ok(0u64) }),
///             _ => Reply::unknown_method(method),
///         }
///     }
/// }
/// ```
///
/// A closure is an object too:
///
/// ```
/// use captp::{Args, Reply};
///
/// let echo = |_method: &str, args: Args| match args.decode::<String>() {
///     Ok(s) => Reply::ok(s),
///     Err(e) => Reply::err(e),
/// };
/// # fn takes(_: impl captp::Object) {}
/// takes(echo);
/// ```
pub trait Object: Send + Sync + 'static {
    /// Handles one call. Unknown methods should answer [`Reply::unknown_method`].
    fn call(&self, method: &str, args: Args) -> Reply;

    /// Called when a session that held a reference to this object ends (the client
    /// went away, was cut off, or was aborted), once per such session: E's "react to
    /// lost client". `peer` is that session's vat ID (identity, not authority). The
    /// default does nothing. Keep it short: it runs on the session's task.
    fn lost_client(&self, peer: VatId) {
        let _ = peer;
    }
}

impl<F> Object for F
where
    F: Fn(&str, Args) -> Reply + Send + Sync + 'static,
{
    fn call(&self, method: &str, args: Args) -> Reply {
        self(method, args)
    }
}

/// A shared handle to a local object, compared and hashed by identity (so the same
/// object exported twice gets the same export id).
#[derive(Clone)]
pub(crate) struct ObjectHandle(Arc<HandleInner>);

/// The object behind a handle, and, for a proxy, the reference it stands for.
pub(crate) struct HandleInner {
    object: Arc<dyn Object>,
    proxy_of: Option<Ref>,
}

impl ObjectHandle {
    pub(crate) fn new(object: impl Object) -> ObjectHandle {
        ObjectHandle(Arc::new(HandleInner {
            object: Arc::new(object),
            proxy_of: None,
        }))
    }

    /// A local object that forwards every call to `target` (a reference to a third
    /// vat, or a promise), so that `target` can be passed to a peer.
    pub(crate) fn proxy(target: Ref) -> ObjectHandle {
        ObjectHandle(Arc::new(HandleInner {
            object: Arc::new(Proxy(target.clone())),
            proxy_of: Some(target),
        }))
    }

    pub(crate) fn from_inner(inner: Arc<HandleInner>) -> ObjectHandle {
        ObjectHandle(inner)
    }

    /// The reference this object forwards to, if it is a proxy.
    pub(crate) fn proxied(&self) -> Option<&Ref> {
        self.0.proxy_of.as_ref()
    }

    pub(crate) fn downgrade(&self) -> Weak<HandleInner> {
        Arc::downgrade(&self.0)
    }

    pub(crate) fn object(&self) -> &dyn Object {
        &*self.0.object
    }

    /// The reference a peer means when it hands this object back: the proxied
    /// reference for a proxy, else a local reference to the object itself.
    pub(crate) fn to_ref(&self) -> Ref {
        match &self.0.proxy_of {
            Some(target) => target.clone(),
            None => Ref::local(self.clone()),
        }
    }

    fn addr(&self) -> usize {
        Arc::as_ptr(&self.0).cast::<()>() as usize
    }
}

/// Forwards calls to a reference, in order: what passing a third party's object or a
/// promise to a peer exports.
struct Proxy(Ref);

impl Object for Proxy {
    fn call(&self, method: &str, args: Args) -> Reply {
        Reply(forward(&self.0, method, args))
    }
}

/// Sends a call on to `target` and answers with its result. The send is posted now,
/// not when the reply future is first polled: that keeps E-order. Dropping the future
/// before the answer comes (the call was cancelled here) cancels the forwarded call
/// too, so cancellation travels along a chain of proxies.
pub(crate) fn forward(target: &Ref, method: &str, args: Args) -> ReplyInner {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let payload = RefPayload {
        data: args.data,
        refs: args.refs,
        shape: None,
    };
    let mut asked = match target.forward(method.to_owned(), payload, Some(Resolver::Once(tx))) {
        Ok(asked) => CancelOnDrop::new(asked),
        Err(b) => return ReplyInner::Ready(Err(b)),
    };
    ReplyInner::Later(Box::pin(async move {
        let outcome = rx
            .await
            .unwrap_or_else(|_| Err(Broken::disconnected("the forwarded call was dropped")));
        asked.disarm();
        outcome
    }))
}

/// Sends a one-way call on to `target`. Nobody wants an answer, so none is asked for
/// upstream either (PROTOCOL.md 9.5, 9.14): the call stays one-way all the way.
pub(crate) fn forward_one_way(target: &Ref, method: &str, args: Args) -> ReplyInner {
    let payload = RefPayload {
        data: args.data,
        refs: args.refs,
        shape: None,
    };
    let sent = target.forward(method.to_owned(), payload, None);
    ReplyInner::Ready(sent.map(|_| RefPayload::default()))
}

impl PartialEq for ObjectHandle {
    fn eq(&self, other: &ObjectHandle) -> bool {
        self.addr() == other.addr()
    }
}

impl Eq for ObjectHandle {}

impl Hash for ObjectHandle {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.addr().hash(state);
    }
}

impl std::fmt::Debug for HandleInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.proxy_of.is_some() {
            "Proxy"
        } else {
            "Object"
        })
    }
}

impl std::fmt::Debug for ObjectHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Object@{:x}", self.addr())
    }
}

/// The arguments of a call: CBOR data, decoded on demand into the type the method wants.
pub struct Args {
    data: Bytes,
    refs: Vec<Ref>,
    cbor: CborLimits,
    caller: Option<VatId>,
}

impl Args {
    pub(crate) fn new(data: Bytes, refs: Vec<Ref>, cbor: CborLimits) -> Args {
        Args {
            data,
            refs,
            cbor,
            caller: None,
        }
    }

    /// These arguments as delivered by the session to `peer`.
    pub(crate) fn with_caller(mut self, peer: VatId) -> Args {
        self.caller = Some(peer);
        self
    }

    /// The vat whose session delivered this call, or `None` for a call made in this
    /// vat (a send on a local reference).
    ///
    /// This is the *immediate* sender: a call forwarded by a proxy in another vat names
    /// that vat, not the one that first sent it. It is identity, never authority: use
    /// it to label, count or log, not to decide who may call (whoever holds the
    /// reference may, by design).
    pub fn caller(&self) -> Option<VatId> {
        self.caller
    }

    /// Decodes the arguments. Senders pass a tuple for several arguments (`("foo", 3)`)
    /// and `()` for none. The arity must match exactly: a tuple of two does not take the
    /// first two of three arguments. References must be taken as [`Ref`]s (a generic
    /// value cannot hold one).
    ///
    /// # Errors
    ///
    /// A [`Broken`] of kind [`crate::BrokenKind::BadArguments`] when the data is not a `T`;
    /// return it to the caller with [`Reply::err`]. Its message says what did not match
    /// in the protocol's terms (how many arguments, which CBOR type where), never in
    /// Rust's: it goes to the caller, who may not be written in Rust.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Broken> {
        codec::decode(&self.data, &self.refs, &self.cbor).map_err(|e| {
            tracing::debug!(expected = std::any::type_name::<T>(), error = %e, "arguments did not decode");
            match e {
                DecodeError::Unread {
                    array_len: Some(n),
                } => Broken::bad_arguments(format_args!(
                    "{n} arguments were sent, more than the method takes"
                )),
                e => Broken::bad_arguments(e),
            }
        })
    }

    /// The arguments as bytes, when they are one byte string (sent alone, as
    /// `serde_bytes::ByteBuf` or `&serde_bytes::Bytes`, or as the only element of a
    /// tuple), without copying them: the result shares the buffer the call arrived in.
    /// The way to read bulk data; [`Args::decode`] into a `ByteBuf` copies it.
    ///
    /// Holding the result holds that buffer's memory: for a large call, the frame it
    /// came in. Copy it out (`Vec::from`) to keep a small part for long.
    ///
    /// # Errors
    ///
    /// A [`Broken`] of kind [`crate::BrokenKind::BadArguments`] when the arguments are
    /// anything else, or come with references.
    ///
    /// # Examples
    ///
    /// ```
    /// use captp::{Args, Reply};
    ///
    /// // Answers with the length of the bytes it was sent.
    /// let measure = |_method: &str, args: Args| match args.bytes() {
    ///     Ok(data) => Reply::ok(data.len() as u64),
    ///     Err(e) => Reply::err(e),
    /// };
    /// # fn takes(_: impl captp::Object) {}
    /// # takes(measure);
    /// ```
    pub fn bytes(&self) -> Result<Bytes, Broken> {
        if !self.refs.is_empty() {
            return Err(Broken::bad_arguments(format_args!(
                "{} reference(s) were sent where only bytes were expected",
                self.refs.len()
            )));
        }
        match crate::wire::byte_string_span(&self.data) {
            Some(span) => Ok(self.data.slice(span)),
            None => Err(Broken::bad_arguments(
                "expected one byte string (alone, or as the only element of an array)",
            )),
        }
    }

    /// The references that came with the arguments, in capability-table order.
    pub fn refs(&self) -> &[Ref] {
        &self.refs
    }
}

impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Args")
            .field("bytes", &self.data.len())
            .field("refs", &self.refs.len())
            .field("caller", &self.caller)
            .finish()
    }
}

/// The result of a method, as it leaves the object.
pub(crate) type Outcome = Result<RefPayload, Broken>;

/// A future result.
pub(crate) type LaterOutcome = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// What a method answers: a value now, an error, a new object, or a future of those.
pub struct Reply(pub(crate) ReplyInner);

pub(crate) enum ReplyInner {
    Ready(Outcome),
    Later(LaterOutcome),
}

impl Reply {
    /// Answers with a value (any serde type).
    pub fn ok<T: Serialize>(value: T) -> Reply {
        Reply(ReplyInner::Ready(encode_outcome(&value)))
    }

    /// Answers with an error; the caller's promise breaks with it.
    pub fn err(broken: Broken) -> Reply {
        Reply(ReplyInner::Ready(Err(broken)))
    }

    /// Answers with [`Broken::unknown_method`].
    pub fn unknown_method(method: &str) -> Reply {
        Reply::err(Broken::unknown_method(method))
    }

    /// Answers with a reference to a new local object. Callers can pipeline on it.
    ///
    /// # Authority
    ///
    /// The caller gains the authority to call `object`.
    pub fn object(object: impl Object) -> Reply {
        Reply::reference(Ref::from_object(object))
    }

    /// Answers with an existing reference (local, remote, or a promise). Callers can
    /// pipeline on it. Same as `Reply::ok(reference)`.
    pub fn reference(reference: Ref) -> Reply {
        Reply(ReplyInner::Ready(Ok(RefPayload::single(reference))))
    }

    /// Answers later, with what `future` yields. The future runs on the runtime; calls
    /// that arrive meanwhile are not held up by it.
    ///
    /// # Cancellation
    ///
    /// If the caller cancels the call before the future finishes (it dropped its
    /// [`Promise`](super::Promise), or the call's deadline passed), the future is
    /// dropped where it is waiting: the code after that `.await` never runs, and the
    /// values it holds are dropped, so their `Drop` impls (guards, permits, open
    /// transactions) run. That is how a method observes cancellation. Work that must
    /// finish regardless goes in a task of its own (`tokio::spawn`), whose handle the
    /// future awaits: dropping a `JoinHandle` does not stop the task.
    ///
    /// ```
    /// use captp::{Args, Reply};
    ///
    /// struct Logged;
    /// impl Drop for Logged {
    ///     fn drop(&mut self) {
    ///         println!("the method ended, finished or cancelled");
    ///     }
    /// }
    ///
    /// let slow = |_method: &str, _args: Args| {
    ///     Reply::later(async {
    ///         let _guard = Logged;
    ///         tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    ///         Ok("done")
    ///     })
    /// };
    /// # fn takes(_: impl captp::Object) {}
    /// # takes(slow);
    /// ```
    pub fn later<F, T>(future: F) -> Reply
    where
        F: Future<Output = Result<T, Broken>> + Send + 'static,
        T: Serialize,
    {
        Reply(ReplyInner::Later(Box::pin(async move {
            encode_outcome(&future.await?)
        })))
    }
}

impl<T: Serialize> From<Result<T, Broken>> for Reply {
    fn from(result: Result<T, Broken>) -> Reply {
        match result {
            Ok(v) => Reply::ok(v),
            Err(b) => Reply::err(b),
        }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            ReplyInner::Ready(Ok(_)) => f.write_str("Reply::Ready(Ok)"),
            ReplyInner::Ready(Err(b)) => write!(f, "Reply::Ready(Err({b}))"),
            ReplyInner::Later(_) => f.write_str("Reply::Later"),
        }
    }
}

fn encode_outcome<T: Serialize + ?Sized>(value: &T) -> Outcome {
    codec::encode(value).map_err(|e| Broken::failed(format!("could not encode the result: {e}")))
}
