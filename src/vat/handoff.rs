//! Three-party handoff in the runtime (PROTOCOL.md 9.16): the introducer's side
//! ([`introduce`]: deposit a gift at the host, name the reference `third_party`) and the
//! recipient's ([`Switch`] and [`receive`]: a reference that calls through the
//! introducer's vine until it has picked the object up at the host, then calls the host
//! directly, in E-order).
//!
//! The ordering rule: the recipient posts a `captp.fence` question on the vine, after
//! every call it sent there, and holds new calls; the host answers the fence when it
//! reaches the object, so every vine call has been delivered by then; only then does the
//! recipient withdraw the gift and send the held calls directly. Anything that fails on
//! the way leaves the reference on the vine for good, losing nothing.
//!
//! This module must not hold a lock across an await, nor the vine's lock while posting
//! (a reference can travel in its own arguments); the host's side of a deposit, a fence
//! and a withdrawal is the session task's (`driver/`), over `gifts.rs`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use serde_bytes::ByteBuf;
use tokio::sync::oneshot;

use super::codec;
use super::driver;
use super::gifts::gift_key;
use super::handle::{Command, SessionHandle};
use super::object::ObjectHandle;
use super::promise::Resolver;
use super::reference::{Forward, Ref};
use super::shared::VatInner;
use super::stream::call_bytes;
use crate::broken::{Broken, BrokenKind, Escaped};
use crate::identity::VatId;
use crate::proto::{Introduction, LocalTarget};
use crate::sturdy::SwissNumber;
use crate::wire::message::MAX_HINTS;

/// The method of a deposit: a one-way call on the host's object, by the introducer,
/// with `[gift id, recipient vat ID]`.
pub(crate) const DEPOSIT: &str = "captp.deposit";

/// The method of a fence: a question on the vine, by the recipient, with `[gift id]`;
/// answered by the host with `null` once it reaches the object.
pub(crate) const FENCE: &str = "captp.fence";

/// What became of a reference a third vat introduced (PROTOCOL.md 9.16), as
/// [`Ref::when_handed_off`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Handoff {
    /// The reference was not introduced by a third vat: it points where it always did
    /// (a local object, an object of the vat it came from, a promise, or a proxy
    /// passed by a vat that does not hand references off).
    NotIntroduced,
    /// Calls go to the object's own vat directly; the introducer is out of the path.
    Direct,
    /// The handoff failed, and calls keep going through the introducer for good.
    ThroughIntroducer {
        /// Why (also logged at `INFO` under the target `captp::handoff`).
        reason: String,
    },
}

/// A vat's handoffs as the recipient, for `Vat::stats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Introduced references now called directly at their host.
    pub(crate) direct: AtomicU64,
    /// Introduced references that stayed on the vine (the handoff failed).
    pub(crate) fallback: AtomicU64,
    /// Handoffs under way (`Limits::max_handoffs`).
    in_progress: AtomicUsize,
}

/// The introducer's side, naming: if a settled import from `host_session` may be
/// handed off to `dest`'s peer, a fresh gift id and where the host is. The gift is
/// deposited only once the descriptor is written ([`deposit`]).
pub(crate) fn introduce(
    host_session: &SessionHandle,
    target: LocalTarget,
    dest: &SessionHandle,
) -> Option<Introduction> {
    if !matches!(target, LocalTarget::Import(_)) || !dest.hands_off() || !host_session.hands_off() {
        return None;
    }
    Some(Introduction {
        host: *host_session.peer().as_bytes(),
        gift: rand::random(),
        hints: host_session.hints(),
    })
}

/// The introducer's side, depositing: `vine` (the proxy just named `third_party` to
/// `recipient`) forwards to the host's object; the gift goes there as a one-way call,
/// in order with every other send on that reference, so before any fence the
/// recipient can send through the vine. A refused deposit shows at the recipient,
/// whose fence then fails.
pub(crate) fn deposit(vine: &ObjectHandle, gift: &[u8; 32], recipient: VatId) {
    let Some(host_ref) = vine.proxied() else {
        return;
    };
    let args = (
        serde_bytes::Bytes::new(gift),
        serde_bytes::Bytes::new(recipient.as_bytes()),
    );
    let sent = codec::encode(&args)
        .map_err(Broken::failed)
        .and_then(|payload| host_ref.forward(DEPOSIT.to_owned(), payload, None));
    if let Err(b) = sent {
        tracing::debug!(target: "captp::handoff", broken = %b, "deposit not sent");
    }
}

/// A reference received as `third_party`: calls go to the vine, are held while the
/// switch is made, and then go to the host directly.
pub(crate) struct Switch {
    /// How the switch ended, once it has (`Ref::when_handed_off`).
    outcome: tokio::sync::watch::Sender<Option<Handoff>>,
    /// The vine; taken (and so released at the introducer) once the switch is made.
    vine: Mutex<Option<Ref>>,
    /// The host's reference, once the switch is made: read without a lock.
    direct: OnceLock<Ref>,
    /// Calls made while the switch is made (`Some` only then), in order.
    held: Mutex<Option<Held>>,
    /// The most bytes of calls held at once (`Limits::max_unsent`).
    limit: usize,
}

/// The calls a reference holds while it switches, and their size.
#[derive(Default)]
pub(crate) struct Held {
    calls: Vec<Forward>,
    bytes: usize,
}

impl Held {
    /// Holds `call` until the switch is made, unless the calls held would then pass
    /// `limit` bytes (counted as unsent bytes are, `Limits::max_unsent`).
    pub(crate) fn hold(&mut self, call: Forward, limit: usize) -> Result<(), Broken> {
        let bytes = call_bytes(&call.method, &call.payload.data);
        if self.bytes > 0 && self.bytes.saturating_add(bytes) > limit {
            return Err(Broken::new(
                BrokenKind::TooLarge,
                format!(
                    "{} bytes of calls already wait for this reference to reach its host, and \
                     {bytes} more would pass the limit of {limit} (Limits::max_unsent)",
                    self.bytes
                ),
            ));
        }
        self.bytes += bytes;
        self.calls.push(call);
        Ok(())
    }
}

/// Where [`Switch::route`] sends a call.
pub(crate) enum Route<'a> {
    /// To this reference, now.
    Go(&'a Ref),
    /// Into the queue of held calls, within the byte limit given.
    Hold(&'a mut Held, usize),
}

impl Switch {
    fn new(vine: Ref, limit: usize) -> Switch {
        Switch {
            limit,
            outcome: tokio::sync::watch::Sender::new(None),
            vine: Mutex::new(Some(vine)),
            direct: OnceLock::new(),
            held: Mutex::new(None),
        }
    }

    /// The host's reference, once the switch is made.
    pub(crate) fn direct(&self) -> Option<&Ref> {
        self.direct.get()
    }

    /// The reference calls go to now (the vine, or the host's once switched): what
    /// this reference reports and watches as its own.
    pub(crate) fn current(&self) -> Ref {
        if let Some(d) = self.direct.get() {
            return d.clone();
        }
        // The vine is taken only after `direct` is set: one of the two is there.
        let vine = lock(&self.vine).clone();
        vine.or_else(|| self.direct.get().cloned())
            .unwrap_or_else(|| Ref::broken(Broken::disconnected("the reference was dropped")))
    }

    /// Decides where a call goes and runs `f` with that, under the lock that the
    /// switch takes, so that no switch comes between choosing the path and posting.
    pub(crate) fn route<T>(&self, f: impl FnOnce(Route<'_>) -> T) -> T {
        if let Some(d) = self.direct.get() {
            return f(Route::Go(d));
        }
        let mut held = lock(&self.held);
        if let Some(d) = self.direct.get() {
            return f(Route::Go(d));
        }
        if let Some(queue) = held.as_mut() {
            return f(Route::Hold(queue, self.limit));
        }
        let vine = self.current();
        f(Route::Go(&vine))
    }

    /// Starts holding calls and posts the fence on the vine (by `fence`), after every
    /// call sent there so far. `None` if the switch was started already.
    fn begin<T>(&self, fence: impl FnOnce(&Ref) -> T) -> Option<T> {
        let mut held = lock(&self.held);
        if held.is_some() || self.direct.get().is_some() {
            return None;
        }
        let vine = self.current();
        *held = Some(Held::default());
        Some(fence(&vine))
    }

    /// The switch is made: the held calls go to `direct` in order, then every later
    /// call; the vine is dropped.
    fn complete(&self, direct: Ref) {
        let mut held = lock(&self.held);
        for f in held.take().unwrap_or_default().calls {
            if let Err(b) = direct.forward(f.method, f.payload, f.resolver) {
                tracing::debug!(broken = %b, "a held call failed on the direct reference");
            }
        }
        let _ = self.direct.set(direct);
        drop(held);
        drop(lock(&self.vine).take());
        self.outcome.send_replace(Some(Handoff::Direct));
    }

    /// The switch failed: the held calls go to the vine in order, and so does every
    /// later call.
    fn fall_back(&self, reason: String) {
        let mut held = lock(&self.held);
        let vine = self.current();
        for f in held.take().unwrap_or_default().calls {
            if let Err(b) = vine.forward(f.method, f.payload, f.resolver) {
                tracing::debug!(broken = %b, "a held call failed on the vine");
            }
        }
        drop(held);
        self.outcome
            .send_replace(Some(Handoff::ThroughIntroducer { reason }));
    }

    /// Waits until the switch has ended, and says how.
    pub(crate) fn when_done(&self) -> impl std::future::Future<Output = Handoff> + Send + 'static {
        let mut rx = self.outcome.subscribe();
        async move {
            match rx.wait_for(Option::is_some).await {
                Ok(done) => done.clone().unwrap_or(Handoff::Direct),
                // The switch is gone: so is every reference to it, and nothing waits.
                Err(_) => Handoff::ThroughIntroducer {
                    reason: "the reference was dropped".to_owned(),
                },
            }
        }
    }

    /// The vine, until the switch is made (then the reference is named as the host's
    /// is; see `reference/naming.rs`).
    pub(crate) fn vine(&self) -> Option<Ref> {
        lock(&self.vine).clone()
    }
}

/// The recipient's side: the reference for a `third_party` descriptor whose vine is
/// `vine`, introduced by `introducer`. Starts the switch in a task of the vat; with
/// handoff off, the vine itself.
pub(crate) fn receive(
    vat: &Arc<VatInner>,
    vine: Ref,
    intro: Introduction,
    introducer: VatId,
) -> Ref {
    if vat.limits.handoff_timeout.is_zero() {
        return vine;
    }
    let taken = vat
        .handoffs
        .in_progress
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < vat.limits.max_handoffs).then_some(n + 1)
        });
    let switch = Arc::new(Switch::new(vine, vat.limits.max_unsent));
    if taken.is_err() {
        let reason = "too many handoffs under way (Limits::max_handoffs)";
        vat.handoffs.fallback.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            target: "captp::handoff",
            %introducer,
            host = %VatId::from_bytes(intro.host),
            reason,
            "handoff failed: calls keep going through the introducer"
        );
        switch.fall_back(reason.to_owned());
        return Ref::handoff(switch);
    }
    let reference = Ref::handoff(switch.clone());
    let task_vat = vat.clone();
    vat.spawn(async move {
        let vat = task_vat;
        let host = VatId::from_bytes(intro.host);
        let timeout = vat.limits.handoff_timeout;
        let outcome = tokio::time::timeout(timeout, attempt(&vat, &switch, &intro, introducer))
            .await
            .unwrap_or_else(|_| Err(format!("gave up after {timeout:?}")));
        vat.handoffs.in_progress.fetch_sub(1, Ordering::AcqRel);
        // Counted and logged first, so that whoever learns the outcome finds both.
        match outcome {
            Ok(direct) => {
                vat.handoffs.direct.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    target: "captp::handoff",
                    %introducer,
                    %host,
                    "handed off: calls go to the host directly"
                );
                switch.complete(direct);
            }
            Err(reason) => {
                vat.handoffs.fallback.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    target: "captp::handoff",
                    %introducer,
                    %host,
                    reason = %Escaped(&reason),
                    "handoff failed: calls keep going through the introducer"
                );
                switch.fall_back(reason);
            }
        }
    });
    reference
}

/// Connects to the host, fences the vine and withdraws the gift; the host's reference,
/// or why not.
async fn attempt(
    vat: &Arc<VatInner>,
    switch: &Switch,
    intro: &Introduction,
    introducer: VatId,
) -> Result<Ref, String> {
    let host = VatId::from_bytes(intro.host);
    let me = vat.identity.vat_id();
    // 1. A session with the host, up and answering (calls keep using the vine).
    let session = if host == me {
        None
    } else {
        Some(reach(vat, host, &intro.hints).await?)
    };
    // 2. The fence, after every call sent on the vine; calls made from now on wait.
    let gift = ByteBuf::from(intro.gift.to_vec());
    let fence = switch
        .begin(|vine| vine.send::<()>(FENCE, (gift,)))
        .ok_or("the switch was started twice")?;
    fence
        .await
        .map_err(|b| format!("the host did not confirm the fence: {b}"))?;
    // 3. The gift: every vine call has reached the object, so direct calls may go.
    let key = gift_key(&introducer, &intro.gift);
    match session {
        None => match vat.gifts.withdraw(&key, me, tokio::time::Instant::now()) {
            Some(Ok(object)) => Ok(object.to_ref()),
            Some(Err(b)) => Err(format!("the gift was refused: {b}")),
            None => Err("the gift is gone (expired or withdrawn)".to_owned()),
        },
        Some(s) => fetch(&s, SwissNumber::from_bytes(key))
            .when_settled::<Ref>()
            .await
            .map_err(|b| format!("the host refused the withdrawal: {b}")),
    }
}

/// A session with `host` that answers a ping: a live one (this vat's outbound one,
/// else any), or a new one to each hint in turn (each pinned to `host`'s vat ID, as a
/// sturdy ref's address is) until one answers. Why none did, otherwise.
async fn reach(
    vat: &Arc<VatInner>,
    host: VatId,
    hints: &[String],
) -> Result<SessionHandle, String> {
    let live = |h: &&SessionHandle| h.peer() == host && !h.is_closed();
    let existing = lock(&vat.outbound)
        .get(&host)
        .filter(live)
        .cloned()
        .or_else(|| lock(&vat.sessions).values().find(live).cloned());
    if let Some(s) = existing {
        answers(&s).await?;
        return Ok(s);
    }
    let mut failures = Vec::new();
    for hint in hints.iter().take(MAX_HINTS) {
        let Ok((h, port)) = crate::sturdy::parse_address(hint) else {
            failures.push(format!("hint {hint:?} is not host:port"));
            continue;
        };
        let s = driver::outbound_session(vat, host, format!("{h}:{port}"));
        match answers(&s).await {
            Ok(()) => return Ok(s),
            Err(e) => failures.push(e),
        }
    }
    if failures.is_empty() {
        Err("no session with the host, and no address hint for it".to_owned())
    } else {
        Err(format!("could not reach the host: {}", failures.join("; ")))
    }
}

/// Waits until `session` has answered a ping (it is connected and its peer is there),
/// or says why it ended.
async fn answers(session: &SessionHandle) -> Result<(), String> {
    let (tx, rx) = oneshot::channel();
    session.post(Command::Sync(tx)).map_err(|b| b.to_string())?;
    tokio::select! {
        r = rx => r.map_err(|_| {
            session
                .closed_reason()
                .map_or_else(|| "the session ended".to_owned(), |b| b.to_string())
        }),
        b = session.when_closed() => Err(b.to_string()),
    }
}

/// Fetches the object under `swiss` from `session`'s peer: what `enliven` and a
/// withdrawal send. The reference is usable at once (sends are pipelined behind it).
pub(crate) fn fetch(session: &SessionHandle, swiss: SwissNumber) -> Ref {
    let question = session.next_question();
    let (tx, rx) = tokio::sync::watch::channel(None);
    let cmd = Command::Bootstrap {
        question,
        swiss,
        resolver: Resolver::Watch(tx),
    };
    match session.post(cmd) {
        Ok(()) => Ref::remote(session.clone(), LocalTarget::Answer(question), Some(rx)),
        Err(b) => Ref::broken(b),
    }
}

/// A broken result for a fence that reached a vat holding no such gift.
pub(crate) fn no_gift() -> Broken {
    Broken::new(
        BrokenKind::UnknownObject,
        "no gift here for this fence (it expired, was withdrawn, or never arrived)",
    )
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
