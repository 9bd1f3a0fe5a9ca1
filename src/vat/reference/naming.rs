//! How a [`Ref`] is named when it travels to a session's peer: as the peer's own
//! reference going home, a local object or promise exported, a proxy, or a third
//! party's object introduced (PROTOCOL.md 9.14, 9.16). It decides names only: it must
//! not post anything but an introduction's deposit, which goes in order with the
//! reference's other sends.

use std::sync::Arc;

use super::{Ref, RefInner};
use crate::proto::{LocalTarget, OutCap};
use crate::vat::codec::RefPayload;
use crate::vat::export::{ProxyKey, Source, Watched};
use crate::vat::handle::SessionHandle;
use crate::vat::handoff;
use crate::vat::object::ObjectHandle;

impl Ref {
    /// How this reference is named in a payload bound for `dest`'s peer. References
    /// that are not the peer's own and not local objects travel as proxies: local
    /// objects that forward calls to them. Promises travel as promise exports, whose
    /// settlement the session must then watch for.
    fn out_cap(&self, dest: &SessionHandle) -> (OutCap<ObjectHandle>, Option<Watched>) {
        // A promise that has settled to an object is passed as that object. (Passing is
        // not sending: messages already sent on the promise keep their path.)
        if let Some(target) = self.settled_target() {
            return target.out_cap(dest);
        }
        match &*self.inner {
            RefInner::Local(o, _) => (OutCap::Local(o.clone()), None),
            RefInner::Remote(r) if r.session.same(dest) => match r.target {
                LocalTarget::Import(i) => (OutCap::Import(i), None),
                LocalTarget::Answer(_) => self.promise_proxy(dest),
            },
            // A settled import from another vat: handed off to a peer that takes it
            // (PROTOCOL.md 9.16), the proxy being the vine; passed as a proxy again
            // while that proxy is exported, and to any other peer.
            RefInner::Remote(r) if r.promise.is_none() => {
                let (proxy, fresh) = self.proxy_and_fresh(dest);
                match fresh
                    .then(|| handoff::introduce(&r.session, r.target, dest))
                    .flatten()
                {
                    Some(intro) => (OutCap::ThirdParty(proxy, Box::new(intro)), None),
                    None => (OutCap::Local(proxy), None),
                }
            }
            // Switched: named as the host's reference is. Not yet: as a proxy of its
            // own (or, to the introducer, as the vine going home).
            RefInner::Handoff(s) => match (s.direct(), s.vine()) {
                (Some(d), _) => d.out_cap(dest),
                (None, Some(vine)) if vine.on_session(dest) => vine.out_cap(dest),
                (None, _) => (OutCap::Local(self.proxy_for(dest)), None),
            },
            RefInner::Remote(_) | RefInner::Pending(_) | RefInner::Broken(_) => {
                self.promise_proxy(dest)
            }
        }
    }

    /// This reference exported to `dest`'s peer as a promise, and the settlement to
    /// watch for it.
    fn promise_proxy(&self, dest: &SessionHandle) -> (OutCap<ObjectHandle>, Option<Watched>) {
        self.wanted();
        let proxy = self.proxy_for(dest);
        let source = match (&*self.inner, self.promise_watch()) {
            (RefInner::Broken(b), _) => Source::Ready(Err(b.clone())),
            (_, Some(w)) => Source::Watch(w),
            (_, None) => Source::Ready(Ok(RefPayload::single(self.clone()))),
        };
        let watched = Watched {
            proxy: proxy.downgrade(),
            source,
        };
        (OutCap::Promise(proxy), Some(watched))
    }

    /// The proxy standing for this reference at `dest`'s peer: the one already exported
    /// there if it is still alive, so that the same reference passed twice is one export
    /// (and compares equal at the receiver).
    fn proxy_for(&self, dest: &SessionHandle) -> ObjectHandle {
        self.proxy_and_fresh(dest).0
    }

    /// [`Ref::proxy_for`], and whether the proxy was made now.
    fn proxy_and_fresh(&self, dest: &SessionHandle) -> (ObjectHandle, bool) {
        dest.proxies()
            .get_or_make(self.proxy_key(), || ObjectHandle::proxy(self.clone()))
    }

    /// The key under which a proxy for this reference is shared (see [`ProxyKey`] for
    /// why an address is a safe key).
    fn proxy_key(&self) -> ProxyKey {
        match &*self.inner {
            RefInner::Remote(r) => ProxyKey::Remote(r.session.addr(), r.target),
            _ => ProxyKey::Other(Arc::as_ptr(&self.inner).cast::<()>() as usize),
        }
    }
}

/// Encodes references for the session `dest`: the capability table of an outgoing
/// payload, and the promise exports whose settlement must be watched.
pub(crate) fn out_caps(
    refs: &[Ref],
    dest: &SessionHandle,
) -> (Vec<OutCap<ObjectHandle>>, Vec<Watched>) {
    let mut watched = Vec::new();
    let caps = refs
        .iter()
        .map(|r| {
            let (cap, w) = r.out_cap(dest);
            watched.extend(w);
            cap
        })
        .collect();
    (caps, watched)
}
