//! Eventual sends to objects in this vat.
//!
//! A send on a local [`Ref`](super::Ref) must not run the method inside the sender's
//! call (that would not be an eventual send, and could deadlock on the sender's locks).
//! Each local reference gets a FIFO queue served by one task, started on its first
//! send, which keeps E-order for that reference. A running method whose caller dropped
//! its promise is dropped too (cancellation, as for remote calls). No network code here.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use super::object::{Args, LaterOutcome, ObjectHandle, Outcome, Reply, ReplyInner};
use super::promise::Resolver;
use crate::broken::{Broken, BrokenKind};

/// One queued local call.
pub(crate) struct LocalCall {
    pub(crate) object: ObjectHandle,
    pub(crate) method: String,
    pub(crate) args: Args,
    pub(crate) resolver: Option<Resolver>,
}

/// The sending side of a local reference's queue.
pub(crate) struct LocalQueue {
    tx: mpsc::UnboundedSender<LocalCall>,
}

impl LocalQueue {
    /// Starts a queue on the current tokio runtime. The task ends once every sender is
    /// gone and the calls it started have finished.
    ///
    /// This is not a vat task (one a vat's shutdown waits for): a local reference works
    /// without any vat (`Ref::from_object`), and one object may be called from several.
    pub(crate) fn spawn() -> Result<LocalQueue, Broken> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Broken::new(
                BrokenKind::Other,
                "sends to local objects need a tokio runtime on the current thread",
            )
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        runtime.spawn(serve(rx));
        Ok(LocalQueue { tx })
    }

    pub(crate) fn post(&self, call: LocalCall) -> Result<(), Broken> {
        self.tx
            .send(call)
            .map_err(|_| Broken::disconnected("the local object's queue has stopped"))
    }
}

async fn serve(mut rx: mpsc::UnboundedReceiver<LocalCall>) {
    let mut running = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            call = rx.recv(), if open => match call {
                Some(call) => match invoke(&call.object, &call.method, call.args) {
                    ReplyInner::Ready(outcome) => settle(call.resolver, outcome),
                    ReplyInner::Later(future) => running.push(run_later(future, call.resolver)),
                },
                None => open = false,
            },
            Some(()) = running.next(), if !running.is_empty() => {}
            else => break,
        }
    }
}

/// Runs a method's future and settles its promise; if the caller drops the promise
/// first, drops the future instead (its drop guards run: see `Reply::later`).
async fn run_later(future: LaterOutcome, resolver: Option<Resolver>) {
    match resolver {
        Some(Resolver::Once(mut tx)) => {
            tokio::select! {
                outcome = guard(future) => {
                    let _ = tx.send(outcome);
                }
                () = tx.closed() => {}
            }
        }
        // A promise `Ref` may be watched by anyone it was cloned to, and one-way sends
        // have no one to notice: they run to the end.
        resolver => settle(resolver, guard(future).await),
    }
}

fn settle(resolver: Option<Resolver>, outcome: Outcome) {
    if let Some(resolver) = resolver {
        resolver.resolve(outcome);
    }
}

/// Runs `object.call`, turning a panic in user code into a broken result.
pub(crate) fn invoke(object: &ObjectHandle, method: &str, args: Args) -> ReplyInner {
    match std::panic::catch_unwind(AssertUnwindSafe(|| object.object().call(method, args))) {
        Ok(Reply(inner)) => inner,
        Err(_) => ReplyInner::Ready(Err(panicked(method))),
    }
}

/// Wraps a method's future so a panic in it becomes a broken result.
pub(crate) async fn guard(future: LaterOutcome) -> Outcome {
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(_) => Err(panicked("(async method)")),
    }
}

fn panicked(method: &str) -> Broken {
    // The method name may come from a peer: recorded escaped.
    tracing::error!(?method, "a local object's method panicked");
    Broken::failed(format!("the method {method:?} panicked in the callee"))
}
