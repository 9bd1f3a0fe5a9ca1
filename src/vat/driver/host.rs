//! The host's side of three-party handoff in the session task (PROTOCOL.md 9.16): a
//! deposit or a fence arriving as a call, and a withdrawal arriving as a `bootstrap`.
//! Each is decided here at the point where calls reach their target, so a fence is
//! answered exactly after every call delivered before it on this session.
//!
//! It must not run the target's methods for these calls, nor decide who the depositor or
//! recipient is from anything but the session's authenticated peer.

use serde_bytes::ByteBuf;

use super::*;
use crate::vat::handoff::{DEPOSIT, FENCE, no_gift};
use crate::wire::message::HANDOFF_VERSION;

impl Driver {
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
            DEPOSIT => Some(match args.decode::<(ByteBuf, ByteBuf)>() {
                Ok((gift, recipient)) => {
                    let (gift, recipient) = (id32(&gift)?, id32(&recipient)?);
                    let recipient = VatId::from_bytes(recipient);
                    self.vat
                        .gifts
                        .deposit(peer, &gift, recipient, target.clone(), now)
                        .map(|()| null())
                        .map_err(|refused| {
                            tracing::info!(
                                target: "captp::handoff",
                                depositor = %peer,
                                %refused,
                                "deposit refused"
                            );
                            Broken::new(BrokenKind::TooLarge, format!("deposit refused: {refused}"))
                        })
                }
                Err(b) => Err(b),
            }),
            FENCE => {
                let gift = match args.decode::<(ByteBuf,)>() {
                    Ok((gift,)) => id32(&gift)?,
                    Err(b) => return Some(Err(b)),
                };
                match self.vat.gifts.fence(peer, &gift, target, now) {
                    Some(outcome) => Some(outcome.map(|()| null())),
                    None if target.proxied().is_some() => None,
                    None => Some(Err(no_gift())),
                }
            }
            _ => None,
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

/// A 32-byte id from a byte string of the arguments; `None` (the call then goes on as
/// usual, and fails there) if it has another length.
fn id32(b: &ByteBuf) -> Option<[u8; 32]> {
    <[u8; 32]>::try_from(&b[..]).ok()
}
