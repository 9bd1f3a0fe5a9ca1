//! Three-party handoff in the session task (PROTOCOL.md 9.16). The host's side: a
//! deposit or a fence arriving as a call, and a withdrawal arriving as a `bootstrap`,
//! each decided here at the point where calls reach their target, so a fence is
//! answered exactly after every call delivered before it on this session. The
//! introducer's side: the gift of each `third_party` descriptor the session wrote,
//! deposited before the message carrying it is queued for the peer.
//!
//! It must not run the target's methods for these calls, nor decide who the depositor or
//! recipient is from anything but the session's authenticated peer.

use serde_bytes::ByteBuf;

use super::*;
use crate::vat::handoff::{self, DEPOSIT, FENCE, no_gift};

impl Driver {
    /// Deposits the gifts of the `third_party` descriptors the session has written
    /// since the last call, at their hosts: before the messages carrying them are
    /// queued for this session's peer (the recipient), so every fence the recipient
    /// sends through a vine finds its gift deposited ahead of it.
    pub(super) fn deposit_introduced(&mut self) {
        if !self.core.has_introduced() {
            return;
        }
        let recipient = self.handle.peer();
        for (vine, gift) in self.core.take_introduced() {
            handoff::deposit(&vine, &gift, recipient);
        }
    }

    /// A protocol call (`captp.deposit`, `captp.fence`) for the local object `target`,
    /// handled here: its outcome, or `None` to deliver the call as usual (any other
    /// method; a fence for a gift this vat does not hold, to a proxy, which forwards
    /// it to the host).
    pub(super) fn protocol_call(
        &self,
        method: &str,
        target: &ObjectHandle,
        args: &Args,
    ) -> Option<Outcome> {
        if !method.starts_with("captp.") || self.core.version() < HANDOFF_VERSION {
            return None;
        }
        let peer = self.handle.peer();
        let now = Instant::now();
        match method {
            DEPOSIT => Some(self.deposit(peer, target, args, now)),
            FENCE => {
                let found = args
                    .decode::<(ByteBuf,)>()
                    .ok()
                    .and_then(|(gift,)| id32(&gift))
                    .and_then(|gift| self.vat.gifts.fence(peer, &gift, target, now));
                match found {
                    Some(outcome) => Some(outcome.map(|()| null())),
                    // Not a gift of this vat's: a proxy passes the fence on, in order
                    // with the calls before it (this vat is the introducer).
                    None if target.proxied().is_some() => None,
                    None => Some(Err(no_gift())),
                }
            }
            _ => None,
        }
    }

    /// A deposit by the session's peer of `target` for a recipient: kept in the gift
    /// table, or refused with the reason.
    fn deposit(&self, peer: VatId, target: &ObjectHandle, args: &Args, now: Instant) -> Outcome {
        let (gift, recipient) = args.decode::<(ByteBuf, ByteBuf)>()?;
        let (Some(gift), Some(recipient)) = (id32(&gift), id32(&recipient)) else {
            return Err(Broken::bad_arguments(
                "a deposit takes a gift id and a recipient vat ID of 32 bytes each",
            ));
        };
        let recipient = VatId::from_bytes(recipient);
        match self
            .vat
            .gifts
            .deposit(peer, &gift, recipient, target.clone(), now)
        {
            Ok(()) => Ok(null()),
            Err(refused) => {
                tracing::info!(
                    target: "captp::handoff",
                    depositor = %peer,
                    %refused,
                    "deposit refused"
                );
                Err(Broken::new(
                    BrokenKind::TooLarge,
                    format!("deposit refused: {refused}"),
                ))
            }
        }
    }

    /// A `bootstrap` whose swiss number is a gift key for this session's peer: the
    /// withdrawal's answer (the gift's object itself), or `None` if it is no gift key.
    pub(super) fn withdraw(
        &self,
        key: &[u8; 32],
    ) -> Option<Result<OutPayload<ObjectHandle>, Broken>> {
        let taken = self
            .vat
            .gifts
            .withdraw(key, self.handle.peer(), Instant::now())?;
        tracing::debug!(target: "captp::handoff", ok = taken.is_ok(), "withdrawal");
        Some(taken.map(|object| OutPayload::single_cap(OutCap::Local(object))))
    }
}

/// The `null` a protocol call answers with.
fn null() -> RefPayload {
    RefPayload {
        data: bytes::Bytes::from_static(&crate::wire::NULL_DATA),
        refs: Vec::new(),
        shape: None,
    }
}

/// A 32-byte id from a byte string of the arguments; `None` if it has another length.
fn id32(b: &ByteBuf) -> Option<[u8; 32]> {
    <[u8; 32]>::try_from(&b[..]).ok()
}
