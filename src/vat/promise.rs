//! Promises as the runtime carries them: what a question settles to ([`Settled`]), who
//! hears of it ([`Resolver`], [`Watch`]), and [`Promise`], the awaitable a program
//! gets from [`Ref::send`](super::Ref::send).
//!
//! These are plain one-shot and watch channels: nothing here sends on the network or
//! spawns a task. A remote promise knows its question only through an [`Asker`] (the
//! session handle, `handle.rs`), to cancel it when dropped unsettled or give it a
//! deadline. Sending on a promise (a promise [`Ref`](super::Ref)) lives in
//! `reference.rs`.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::{oneshot, watch};

use super::codec::{self, RefPayload};
use super::stream::StreamAck;
use crate::broken::{Broken, BrokenKind};
use crate::proto::{Deadline, QuestionId};
use crate::wire::CborLimits;

/// What a promise settles to.
pub(crate) type Settled = Result<RefPayload, Broken>;

/// A promise's settlement as its holders watch it (`None` while pending).
pub(crate) type Watch = watch::Receiver<Option<Settled>>;

/// Where a question's result goes.
pub(crate) enum Resolver {
    /// One awaiting [`Promise`].
    Once(oneshot::Sender<Settled>),
    /// Every holder of a promise [`Ref`](super::Ref).
    Watch(watch::Sender<Option<Settled>>),
    /// A streaming send's window ([`Ref::send_streaming`](super::Ref::send_streaming)):
    /// the answer acknowledges the call, and only its failure is kept.
    Stream(StreamAck),
}

impl Resolver {
    /// Hands `settled` to whoever waits; nobody waiting is not an error.
    pub(crate) fn resolve(self, settled: Settled) {
        match self {
            Resolver::Once(tx) => {
                let _ = tx.send(settled);
            }
            Resolver::Watch(tx) => {
                tx.send_replace(Some(settled));
            }
            Resolver::Stream(ack) => ack.done(settled.err()),
        }
    }
}

/// The session a remote question was asked on, as a promise sees it: what dropping
/// the promise unsettled, or giving it a deadline, posts to. Implemented by the session
/// handle (`handle.rs`), so that this file needs no session.
pub(crate) trait Asker: Send + Sync {
    /// The asker no longer wants `question`'s answer (an early `finish` at the peer).
    fn cancel(&self, question: QuestionId);
    /// `question` stops waiting at `deadline`.
    fn set_deadline(&self, question: QuestionId, deadline: Deadline);
}

/// A question asked on a session, as the promise waiting for it holds it.
pub(crate) struct Asked {
    pub(crate) asker: Arc<dyn Asker>,
    pub(crate) question: QuestionId,
}

/// Cancels a question when dropped before [`CancelOnDrop::disarm`]: how dropping a
/// [`Promise`], or a proxy's forwarding future, reaches the callee. A post, never I/O.
pub(crate) struct CancelOnDrop(Option<Asked>);

impl CancelOnDrop {
    pub(crate) fn new(asked: Option<Asked>) -> CancelOnDrop {
        CancelOnDrop(asked)
    }

    /// The answer came: there is nothing left to cancel.
    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.asker.cancel(a.question);
        }
    }
}

/// Waits for a promise watch to settle. A watch whose sender went away unresolved
/// settles as broken ([`BrokenKind::Disconnected`]), so no waiter hangs.
pub(crate) async fn settled(mut w: Watch) -> Settled {
    match w.wait_for(Option::is_some).await {
        Ok(v) => v
            .clone()
            .unwrap_or_else(|| Err(Broken::disconnected("the promise was dropped unresolved"))),
        Err(_) => Err(Broken::disconnected(
            "the session ended before the promise settled",
        )),
    }
}

/// The eventual result of [`Ref::send`](super::Ref::send): await it for the value,
/// decoded as `T`.
///
/// # Cancellation
///
/// Dropping a promise before it settles cancels the call: for a remote call, the vat
/// sends an early `finish` (PROTOCOL.md 9.7), the callee drops the method's future (see
/// [`Reply::later`](super::Reply::later)), and both sides free the question; for a call
/// to a local object, the method's future is dropped the same way. Wrapping the
/// promise in `tokio::time::timeout` and letting it expire therefore cancels the call
/// too. What the method did before it was stopped stays done. A send on a local
/// promise (a [`Ref`](super::Ref) from `send_ref` on a local object) is not cancelled
/// once it has been passed on: its result is discarded when it comes.
///
/// # Deadlines
///
/// [`Promise::timeout`] gives one call a deadline; [`Limits::call_timeout`](crate::Limits::call_timeout)
/// gives every remote call of a vat one. Past it the promise breaks with
/// [`BrokenKind::Timeout`] and the call is cancelled as above.
#[must_use = "a promise does nothing unless awaited, and dropping it cancels the call; use send_only for one-way sends"]
pub struct Promise<T> {
    state: PromiseState,
    cbor: CborLimits,
    /// The remote question behind the promise, cancelled if the promise is dropped
    /// unsettled.
    asked: CancelOnDrop,
    /// A local call's deadline: the timer, and the timeout it was set for.
    timer: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
    _marker: PhantomData<fn() -> T>,
}

enum PromiseState {
    Waiting(oneshot::Receiver<Settled>),
    Broken(Option<Broken>),
}

impl<T> Promise<T> {
    /// A promise for what `rx` receives, decoded under `cbor` (the limits the result
    /// was checked against when it arrived).
    /// `asked` is the remote question it waits for (`None` for a local call).
    pub(crate) fn waiting(
        rx: oneshot::Receiver<Settled>,
        cbor: CborLimits,
        asked: Option<Asked>,
    ) -> Promise<T> {
        Promise {
            state: PromiseState::Waiting(rx),
            cbor,
            asked: CancelOnDrop::new(asked),
            timer: None,
            _marker: PhantomData,
        }
    }

    /// A promise that is broken from the start (the send could not be made).
    pub(crate) fn broken(b: Broken) -> Promise<T> {
        Promise {
            state: PromiseState::Broken(Some(b)),
            cbor: CborLimits::default(),
            asked: CancelOnDrop::new(None),
            timer: None,
            _marker: PhantomData,
        }
    }

    /// Gives up waiting `timeout` from now: the promise then breaks with
    /// [`BrokenKind::Timeout`] and the call is cancelled at the callee, as if the promise
    /// had been dropped. For a remote call this replaces the vat-wide
    /// [`Limits::call_timeout`](crate::Limits::call_timeout), later or earlier, and the
    /// session decides the deadline (it wakes exactly then, even if the peer is
    /// frozen); for a local call a timer in the promise does.
    ///
    /// Set it right after sending: the deadline counts from this call, not from the
    /// send. A promise already settled or broken is unchanged.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(slow: captp::Ref) {
    /// use std::time::Duration;
    /// use captp::BrokenKind;
    ///
    /// match slow.send::<u64>("compute", (7,)).timeout(Duration::from_secs(2)).await {
    ///     Ok(n) => println!("got {n}"),
    ///     Err(b) if b.kind() == BrokenKind::Timeout => println!("gave up: {b}"),
    ///     Err(b) => println!("failed: {b}"),
    /// }
    /// # }
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Promise<T> {
        if !matches!(self.state, PromiseState::Waiting(_)) {
            return self;
        }
        let now = tokio::time::Instant::now();
        if let Some(asked) = &self.asked.0 {
            if let Some(deadline) = Deadline::after(now.into_std(), timeout) {
                asked.asker.set_deadline(asked.question, deadline);
            }
            return self;
        }
        // A local call: the promise keeps the time itself. A timer needs a runtime; a
        // deadline past what an `Instant` holds never comes.
        if tokio::runtime::Handle::try_current().is_err() {
            self.state = PromiseState::Broken(Some(Broken::new(
                BrokenKind::Other,
                "Promise::timeout on a local call needs a tokio runtime on the current thread",
            )));
        } else if let Some(at) = now.checked_add(timeout) {
            self.timer = Some((Box::pin(tokio::time::sleep_until(at)), timeout));
        }
        self
    }
}

impl<T: DeserializeOwned> Future for Promise<T> {
    type Output = Result<T, Broken>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let settled = this.poll_settled(cx);
        if settled.is_ready() {
            // Settled: nothing left to cancel or to time.
            this.asked.disarm();
            this.timer = None;
        }
        settled
    }
}

impl<T: DeserializeOwned> Promise<T> {
    fn poll_settled(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, Broken>> {
        let this = self;
        if let Some((timer, timeout)) = &mut this.timer {
            if timer.as_mut().poll(cx).is_ready() {
                // Dropping the receiver tells the local queue to drop the method.
                let b = Broken::timeout(*timeout);
                this.state = PromiseState::Broken(None);
                return Poll::Ready(Err(b));
            }
        }
        match &mut this.state {
            PromiseState::Broken(b) => Poll::Ready(Err(b.take().unwrap_or_else(|| {
                Broken::new(BrokenKind::Other, "promise polled after it settled")
            }))),
            PromiseState::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(Ok(payload))) => {
                    Poll::Ready(codec::decode_payload(&payload, &this.cbor).map_err(|e| {
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
