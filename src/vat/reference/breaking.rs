//! [`Ref::when_broken`]: what a reference's end depends on (its session, its promise's
//! settlement, or the path an introduced reference settles on), watched without
//! holding the reference. It must not keep a reference, or what it designates, alive.

use std::future::Future;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::{Ref, RefInner, resolved_target};
use crate::broken::Broken;
use crate::vat::handoff::{Handoff, Switch};
use crate::vat::promise::{Watch, settled};

/// What [`Ref::when_broken`] waits on, taken from a reference without holding it.
enum BreakWatch {
    /// Broken already.
    Broken(Broken),
    /// A local object: never breaks.
    Never,
    /// A remote object: breaks when its session ends.
    Session(BoxFuture<'static, Broken>),
    /// A promise: breaks when its session ends (if remote) or it settles to something
    /// that is not an object; settled to an object, that object is watched next.
    Promise(Option<BoxFuture<'static, Broken>>, Watch),
    /// A reference a third vat introduced, while it switches: once the switch has
    /// ended, the path it settled on is watched.
    Switching(BoxFuture<'static, Handoff>, std::sync::Weak<Switch>),
}

impl Ref {
    /// Waits until this reference breaks, and says why: its session ended (the vat it
    /// points to went away or became unreachable), or the promise it is broke (or
    /// resolved to plain data, which cannot be called). A reference to a local object
    /// never breaks, so for one this waits forever.
    ///
    /// The future holds only what it watches (the session's end and, for a promise, its
    /// settlement), never the reference: a watcher task does not keep the reference,
    /// nor the object at the other vat, alive. Once every clone of a promise reference
    /// is dropped and the promise can no longer settle, the future keeps waiting for
    /// the session to end, and reports that.
    pub fn when_broken(&self) -> impl Future<Output = Broken> + Send + 'static {
        let first = self.break_watch();
        async move {
            let mut watching = first;
            loop {
                let settled = match watching {
                    BreakWatch::Broken(b) => return b,
                    BreakWatch::Never => return std::future::pending::<Broken>().await,
                    BreakWatch::Session(closed) => return closed.await,
                    BreakWatch::Promise(None, w) => settled(w).await,
                    BreakWatch::Switching(done, switch) => {
                        done.await;
                        watching = match switch.upgrade() {
                            Some(s) => s.current().break_watch(),
                            None => {
                                return Broken::disconnected(
                                    "every handle to the reference was dropped before its handoff ended",
                                );
                            }
                        };
                        continue;
                    }
                    BreakWatch::Promise(Some(mut closed), mut w) => {
                        let settled = tokio::select! {
                            biased;
                            b = &mut closed => return b,
                            s = w.wait_for(Option::is_some) => s.ok().and_then(|v| v.clone()),
                        };
                        match settled {
                            Some(s) => s,
                            // Nobody can settle it any more: what is left to watch is
                            // the session.
                            None => return closed.await,
                        }
                    }
                };
                // Watch what the promise became; the reference itself is dropped here.
                watching = match settled.and_then(|payload| resolved_target(&payload)) {
                    Ok(r) => r.break_watch(),
                    Err(b) => return b,
                };
            }
        }
    }

    /// What to watch to learn when this reference breaks, without holding it.
    fn break_watch(&self) -> BreakWatch {
        self.wanted();
        match &*self.inner {
            RefInner::Broken(b) => BreakWatch::Broken(b.clone()),
            RefInner::Local(..) => BreakWatch::Never,
            RefInner::Pending(p) => BreakWatch::Promise(None, p.settled.clone()),
            RefInner::Handoff(s) => match s.direct() {
                Some(d) => d.break_watch(),
                None => BreakWatch::Switching(s.when_done().boxed(), Arc::downgrade(s)),
            },
            RefInner::Remote(r) => {
                let closed = r.session.when_closed().boxed();
                match &r.promise {
                    None => BreakWatch::Session(closed),
                    Some(w) => BreakWatch::Promise(Some(closed), w.clone()),
                }
            }
        }
    }
}
