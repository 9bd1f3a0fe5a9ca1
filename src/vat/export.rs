//! What a session exports on behalf of references that are not its own objects: the
//! proxies that stand for them ([`Proxies`], one table per session) and the promise
//! exports whose settlement must be watched ([`Watched`]).
//!
//! Which descriptor each [`Ref`](super::Ref) becomes is decided in `reference.rs`
//! (`out_caps`), which looks inside references; this module only keeps the records.
//! It must not post commands, spawn tasks or hold a lock while calling out.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError, Weak};

use super::object::{HandleInner, ObjectHandle};
use super::promise::{Settled, Watch, settled};
use crate::proto::LocalTarget;

/// The reference a proxy stands for, as a key in [`Proxies`].
///
/// The keys are allocation addresses. An address can be reused once its allocation is
/// freed, so a key is only trusted while its entry's proxy is alive: a live proxy holds
/// a clone of the reference it stands for, and that clone keeps the keyed allocation
/// (the remote reference's session, or the reference itself) alive, so no other live
/// reference can have the same address. An entry whose proxy is gone is never used,
/// only replaced.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ProxyKey {
    /// An import or answer: the address of its session's handle, and the target there.
    /// Every `Ref` to the same target shares this key.
    Remote(usize, LocalTarget),
    /// A local promise or a broken reference: the address of the reference itself.
    Other(usize),
}

/// The proxies one session has exported, by the reference each stands for, so that the
/// same reference passed twice to the peer is one export (and compares equal there).
///
/// Held by the session's handle, so the table goes when the session does. Entries hold
/// the proxies weakly: the session's export table keeps a proxy alive while the peer
/// holds it.
#[derive(Default)]
pub(crate) struct Proxies(Mutex<HashMap<ProxyKey, Weak<HandleInner>>>);

impl Proxies {
    /// The live proxy for `key`, or the one `make` builds, recorded for next time.
    pub(crate) fn get_or_make(
        &self,
        key: ProxyKey,
        make: impl FnOnce() -> ObjectHandle,
    ) -> (ObjectHandle, bool) {
        let mut proxies = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = proxies.get(&key).and_then(Weak::upgrade) {
            return (ObjectHandle::from_inner(existing), false);
        }
        // Sweep dead entries when the table doubles, so it stays near its live size.
        if proxies.len() >= 64 && proxies.len().is_power_of_two() {
            proxies.retain(|_, w| w.strong_count() > 0);
        }
        let proxy = make();
        proxies.insert(key, proxy.downgrade());
        (proxy, true)
    }
}

/// A promise export to watch: when `source` settles, the session sends `resolve` for
/// `proxy` (unless the proxy is gone by then, and with it the export).
pub(crate) struct Watched {
    /// The exported proxy standing for the promise.
    pub(crate) proxy: Weak<HandleInner>,
    /// Where its settlement comes from.
    pub(crate) source: Source,
}

/// Where a promise export's settlement comes from.
pub(crate) enum Source {
    /// A promise still to settle.
    Watch(Watch),
    /// Known already (a broken reference, or an object passed as a promise).
    Ready(Settled),
}

impl Source {
    /// Waits for the settlement.
    pub(crate) async fn settled(self) -> Settled {
        match self {
            Source::Ready(s) => s,
            Source::Watch(w) => settled(w).await,
        }
    }
}
