//! Eventual sends to objects in this vat.
//!
//! A send on a local [`Ref`](super::Ref) must not run the method inside the sender's
//! call (that would not be an eventual send, and could deadlock on the sender's locks).
//! It goes into one FIFO queue per vat, served by one task, which keeps E-order for
//! every local reference. No network code here.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use super::object::{Args, ObjectHandle, Outcome, Reply, ReplyInner};
use super::reference::{Ref, Resolved, Resolver};
use crate::broken::{Broken, BrokenKind};
use crate::proto::OutCap;
use crate::wire::CborLimits;

/// One queued local call.
pub(crate) struct LocalCall {
    pub(crate) object: ObjectHandle,
    pub(crate) method: String,
    pub(crate) args: Args,
    pub(crate) resolver: Option<Resolver>,
}

/// The sending side of a vat's local queue.
#[derive(Clone)]
pub(crate) struct LocalQueue {
    tx: mpsc::UnboundedSender<LocalCall>,
    cbor: CborLimits,
}

impl LocalQueue {
    /// A queue and the future that serves it (spawn it on the vat's runtime).
    pub(crate) fn new(cbor: CborLimits) -> (LocalQueue, impl Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = LocalQueue { tx, cbor };
        let server = serve(rx, queue.clone());
        (queue, server)
    }

    pub(crate) fn post(&self, call: LocalCall) -> Result<(), Broken> {
        self.tx
            .send(call)
            .map_err(|_| Broken::disconnected("the local vat has shut down"))
    }

    pub(crate) fn cbor(&self) -> CborLimits {
        self.cbor
    }
}

async fn serve(mut rx: mpsc::UnboundedReceiver<LocalCall>, queue: LocalQueue) {
    // The queue holds a sender to itself (for references in results), so `rx` never
    // closes: the vat aborts this task when it shuts down.
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            call = rx.recv() => {
                let Some(call) = call else { break };
                match invoke(&call.object, &call.method, call.args) {
                    ReplyInner::Ready(outcome) => settle(call.resolver, outcome, &queue),
                    ReplyInner::Later(future) => {
                        let resolver = call.resolver;
                        running.push(guard(future).map(move |outcome| (resolver, outcome)));
                    }
                }
            }
            Some((resolver, outcome)) = running.next(), if !running.is_empty() => {
                settle(resolver, outcome, &queue);
            }
        }
    }
}

fn settle(resolver: Option<Resolver>, outcome: Outcome, queue: &LocalQueue) {
    let Some(resolver) = resolver else { return };
    let resolved = outcome.map(|p| Resolved {
        data: p.data,
        refs: p
            .caps
            .into_iter()
            .map(|cap| match cap {
                OutCap::Local(o) => Ref::local(o, queue.clone()),
                OutCap::Import(_) => Ref::broken(Broken::new(
                    BrokenKind::Other,
                    "a remote reference in a local result is not supported by this version",
                )),
            })
            .collect(),
    });
    let _ = resolver.send(resolved);
}

/// Runs `object.call`, turning a panic in user code into a broken result.
pub(crate) fn invoke(object: &ObjectHandle, method: &str, args: Args) -> ReplyInner {
    match std::panic::catch_unwind(AssertUnwindSafe(|| object.0.call(method, args))) {
        Ok(Reply(inner)) => inner,
        Err(_) => ReplyInner::Ready(Err(panicked(method))),
    }
}

/// Wraps a method's future so a panic in it becomes a broken result.
pub(crate) async fn guard(future: super::object::LaterOutcome) -> Outcome {
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(_) => Err(panicked("(async method)")),
    }
}

fn panicked(method: &str) -> Broken {
    tracing::error!(method, "a local object's method panicked");
    Broken::failed(format!("the method {method:?} panicked in the callee"))
}
