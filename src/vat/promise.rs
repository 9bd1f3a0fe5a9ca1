//! Promises as the runtime carries them: what a question settles to ([`Settled`]), who
//! hears of it ([`Resolver`], [`Watch`]), and [`Promise`], the awaitable a program
//! gets from [`Ref::send`](super::Ref::send).
//!
//! These are plain one-shot and watch channels: nothing here sends on the network,
//! spawns a task or knows which session a promise came from. Sending on a promise (a
//! promise [`Ref`](super::Ref)) lives in `reference.rs`.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;
use tokio::sync::{oneshot, watch};

use super::codec::{self, RefPayload};
use super::stream::StreamAck;
use crate::broken::{Broken, BrokenKind};
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
/// Dropping a promise does not cancel the call; its result is discarded (and any
/// references in it released) when it comes.
#[must_use = "a promise does nothing unless awaited; use send_only for one-way sends"]
pub struct Promise<T> {
    state: PromiseState,
    cbor: CborLimits,
    _marker: PhantomData<fn() -> T>,
}

enum PromiseState {
    Waiting(oneshot::Receiver<Settled>),
    Broken(Option<Broken>),
}

impl<T> Promise<T> {
    /// A promise for what `rx` receives, decoded under `cbor` (the limits the result
    /// was checked against when it arrived).
    pub(crate) fn waiting(rx: oneshot::Receiver<Settled>, cbor: CborLimits) -> Promise<T> {
        Promise {
            state: PromiseState::Waiting(rx),
            cbor,
            _marker: PhantomData,
        }
    }

    /// A promise that is broken from the start (the send could not be made).
    pub(crate) fn broken(b: Broken) -> Promise<T> {
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
