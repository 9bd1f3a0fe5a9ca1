//! Payloads between the session and the runtime: outgoing references named for this
//! session (and the promise exports whose settlement must be watched), incoming
//! descriptors turned into live `Ref`s. It must not send anything itself: a watcher only
//! posts the settlement to the session.

use super::*;
use crate::vat::handoff;

impl Driver {
    /// Names an outgoing payload's references for this session.
    pub(super) fn out_payload(
        &self,
        payload: RefPayload,
    ) -> (OutPayload<ObjectHandle>, Vec<Watched>) {
        let (caps, watched) = out_caps(&payload.refs, &self.handle);
        (
            OutPayload {
                data: payload.data,
                caps,
                shape: payload.shape,
            },
            watched,
        )
    }

    /// Watches promise exports: when one settles, the session sends its `resolve`.
    /// The watchers are tasks of the vat, so its shutdown waits for them.
    pub(super) fn watch(&self, watched: Vec<Watched>) {
        for w in watched {
            let handle = self.handle.clone();
            self.vat.spawn(async move {
                // A watcher lives until the promise settles or the session ends.
                let closed = handle.when_closed();
                let settled = tokio::select! {
                    s = w.source.settled() => s,
                    _ = closed => return,
                };
                if let Some(proxy) = w.proxy.upgrade() {
                    let proxy = ObjectHandle::from_inner(proxy);
                    let _ = handle.post(Command::ResolveExport(proxy, settled));
                }
            });
        }
    }

    /// An incoming payload, with live references.
    pub(super) fn payload(&mut self, payload: InPayload<ObjectHandle>) -> RefPayload {
        RefPayload {
            shape: None,
            data: payload.data,
            refs: self.refs(payload.caps),
        }
    }

    pub(super) fn refs(&mut self, caps: Vec<InCap<ObjectHandle>>) -> Vec<Ref> {
        caps.into_iter().map(|cap| self.in_ref(cap)).collect()
    }

    /// A live reference for a descriptor the session resolved (it holds one handle).
    pub(super) fn in_ref(&mut self, cap: InCap<ObjectHandle>) -> Ref {
        match cap {
            InCap::Import(i) => {
                let import = Ref::remote(self.handle.clone(), LocalTarget::Import(i), None);
                // A vine the peer introduced before: the same reference (the new
                // reception's handle goes with `import`).
                match self.introduced.get(&i).and_then(Weak::upgrade) {
                    Some(switch) => Ref::handoff(switch),
                    None => import,
                }
            }
            InCap::ThirdParty(i, intro) => {
                if let Some(switch) = self.introduced.get(&i).and_then(Weak::upgrade) {
                    drop(Ref::remote(
                        self.handle.clone(),
                        LocalTarget::Import(i),
                        None,
                    ));
                    return Ref::handoff(switch);
                }
                let vine = Ref::remote(self.handle.clone(), LocalTarget::Import(i), None);
                let r = handoff::receive(&self.vat, vine, *intro, self.handle.peer());
                if self.introduced.len() >= 64 && self.introduced.len().is_power_of_two() {
                    self.introduced.retain(|_, s| s.strong_count() > 0);
                }
                if let Some(switch) = r.switch() {
                    self.introduced.insert(i, switch);
                }
                r
            }
            InCap::Promise(i) => {
                if self.promises.len() >= 64 && self.promises.len().is_power_of_two() {
                    self.promises.retain(|_, tx| tx.receiver_count() > 0);
                }
                let watch = self
                    .promises
                    .entry(i)
                    .or_insert_with(|| watch::Sender::new(None))
                    .subscribe();
                Ref::remote(self.handle.clone(), LocalTarget::Import(i), Some(watch))
            }
            InCap::Local(o) => o.to_ref(),
        }
    }
}
