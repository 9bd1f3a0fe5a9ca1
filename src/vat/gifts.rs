//! The gift table of a host vat (three-party handoff, PROTOCOL.md 9.16): objects that
//! introducers deposited here for a named recipient, until the recipient withdraws them
//! or they expire.
//!
//! A gift is keyed by its *gift key*, the SHA-256 of a fixed label, the depositor's vat
//! ID and the gift id: the depositor is the vat at the other end of the session the
//! deposit came on (mutual TLS says who it is), so no vat can deposit, fence or withdraw
//! in another's name. Plain bookkeeping under one lock: this module must not post to a
//! session, await, run user code, or read a clock (times are passed in).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::object::ObjectHandle;
use crate::broken::{Broken, BrokenKind};
use crate::identity::VatId;

/// What the gift key hashes first, so that a gift key is never a swiss number some
/// other computation could produce.
const GIFT_KEY_LABEL: &[u8] = b"captp-gift-v1";

/// The key a gift is deposited, fenced and withdrawn under (PROTOCOL.md 9.16):
/// SHA-256(`"captp-gift-v1"` || depositor vat ID || gift id). A recipient withdraws it
/// by sending it as a `bootstrap`'s swiss number.
pub(crate) fn gift_key(depositor: &VatId, gift: &[u8; 32]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(GIFT_KEY_LABEL);
    ctx.update(depositor.as_bytes());
    ctx.update(gift);
    let digest = ctx.finish();
    let mut key = [0; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// One deposited object, waiting for its recipient.
struct Gift {
    depositor: VatId,
    recipient: VatId,
    object: ObjectHandle,
    expires: Instant,
}

/// The gifts deposited at this vat, bounded per depositor and in all.
pub(crate) struct Gifts {
    table: Mutex<Table>,
    max_per_depositor: usize,
    max_total: usize,
    ttl: Duration,
}

#[derive(Default)]
struct Table {
    gifts: HashMap<[u8; 32], Gift>,
    /// The gifts by expiry, for the sweep: the first entries are the next to expire.
    expiry: BTreeSet<(Instant, [u8; 32])>,
    per_depositor: HashMap<VatId, usize>,
    /// Counters for [`GiftStats`].
    deposited: u64,
    refused: u64,
    withdrawn: u64,
    expired: u64,
}

/// What [`Gifts`] has seen, for `Vat::stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct GiftStats {
    pub(crate) held: usize,
    pub(crate) deposited: u64,
    pub(crate) refused: u64,
    pub(crate) withdrawn: u64,
    pub(crate) expired: u64,
}

/// Why a deposit was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The depositor has `max_gifts` gifts here already.
    Full(usize),
    /// This vat holds `max_gifts_total` gifts already, from all depositors.
    AllFull(usize),
    /// A gift with that key is here already (a replayed deposit).
    Duplicate,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Full(n) => write!(f, "the depositor has {n} gifts here already"),
            Refused::AllFull(n) => write!(f, "this vat holds {n} gifts already"),
            Refused::Duplicate => f.write_str("a gift with that id is here already"),
        }
    }
}

impl Gifts {
    /// An empty table: at most `max_per_depositor` gifts from one depositor and
    /// `max_total` from all, each kept `ttl`.
    pub(crate) fn new(max_per_depositor: usize, max_total: usize, ttl: Duration) -> Gifts {
        Gifts {
            table: Mutex::new(Table::default()),
            max_per_depositor,
            max_total,
            ttl,
        }
    }

    /// Keeps `object` for `recipient` under the gift `depositor` named `gift`.
    pub(crate) fn deposit(
        &self,
        depositor: VatId,
        gift: &[u8; 32],
        recipient: VatId,
        object: ObjectHandle,
        now: Instant,
    ) -> Result<(), Refused> {
        let mut t = self.lock(now);
        let count = t.per_depositor.get(&depositor).copied().unwrap_or(0);
        let key = gift_key(&depositor, gift);
        let refused = if count >= self.max_per_depositor {
            Some(Refused::Full(count))
        } else if t.gifts.len() >= self.max_total {
            Some(Refused::AllFull(t.gifts.len()))
        } else if t.gifts.contains_key(&key) {
            Some(Refused::Duplicate)
        } else {
            None
        };
        if let Some(r) = refused {
            t.refused += 1;
            return Err(r);
        }
        let expires = now + self.ttl;
        t.gifts.insert(
            key,
            Gift {
                depositor,
                recipient,
                object,
                expires,
            },
        );
        t.expiry.insert((expires, key));
        *t.per_depositor.entry(depositor).or_insert(0) += 1;
        t.deposited += 1;
        Ok(())
    }

    /// Whether `depositor` deposited `gift` here for the object `target` and it waits
    /// still: what a fence asks (PROTOCOL.md 9.16). `None` when there is no such gift,
    /// so that the fence goes on to the object (this vat is not its host).
    pub(crate) fn fence(
        &self,
        depositor: VatId,
        gift: &[u8; 32],
        target: &ObjectHandle,
        now: Instant,
    ) -> Option<Result<(), Broken>> {
        let t = self.lock(now);
        let g = t.gifts.get(&gift_key(&depositor, gift))?;
        Some(if &g.object == target {
            Ok(())
        } else {
            Err(Broken::bad_arguments(
                "this gift is not for the object fenced",
            ))
        })
    }

    /// Takes the gift under `key` for `withdrawer`: `None` if there is no such gift
    /// (the key may be a swiss number); a gift for another vat stays and is refused.
    pub(crate) fn withdraw(
        &self,
        key: &[u8; 32],
        withdrawer: VatId,
        now: Instant,
    ) -> Option<Result<ObjectHandle, Broken>> {
        let mut t = self.lock(now);
        let g = t.gifts.get(key)?;
        if g.recipient != withdrawer {
            return Some(Err(Broken::new(
                BrokenKind::UnknownObject,
                format!("this gift is for another vat, not {withdrawer}"),
            )));
        }
        let g = t.remove(key)?;
        t.withdrawn += 1;
        Some(Ok(g.object))
    }

    /// The table's counters, after dropping expired gifts.
    pub(crate) fn stats(&self, now: Instant) -> GiftStats {
        let t = self.lock(now);
        GiftStats {
            held: t.gifts.len(),
            deposited: t.deposited,
            refused: t.refused,
            withdrawn: t.withdrawn,
            expired: t.expired,
        }
    }

    /// The table, with gifts expired by `now` dropped first. Expiry is swept here, on
    /// every use, so no timer task is needed: the table is bounded by its limits
    /// between sweeps, and a sweep looks only at the gifts it drops (in expiry order).
    fn lock(&self, now: Instant) -> MutexGuard<'_, Table> {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(&(expires, key)) = t.expiry.first() {
            if expires > now {
                break;
            }
            t.remove(&key);
            t.expired += 1;
        }
        t
    }
}

impl Table {
    fn remove(&mut self, key: &[u8; 32]) -> Option<Gift> {
        let g = self.gifts.remove(key)?;
        self.expiry.remove(&(g.expires, *key));
        if let Some(n) = self.per_depositor.get_mut(&g.depositor) {
            *n -= 1;
            if *n == 0 {
                self.per_depositor.remove(&g.depositor);
            }
        }
        Some(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vat(n: u8) -> VatId {
        VatId::from_bytes([n; 32])
    }

    fn object() -> ObjectHandle {
        ObjectHandle::new(|_: &str, _| crate::Reply::ok(()))
    }

    /// The test vector of PROTOCOL.md 16.9.
    #[test]
    fn the_gift_key_is_as_protocol_md_16_9_shows() {
        let key = gift_key(&vat(0x44), &[0x22; 32]);
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "9092882269b08d8c97317cf3ff15f4ffda23c7ecedda84ccdfb4a21ce203cbb1"
        );
    }

    #[test]
    fn a_gift_goes_once_and_only_to_its_recipient() {
        let gifts = Gifts::new(4, 16, Duration::from_secs(60));
        let now = Instant::now();
        let (a, b, c) = (vat(1), vat(2), vat(3));
        let o = object();
        gifts.deposit(a, &[7; 32], c, o.clone(), now).unwrap();
        let key = gift_key(&a, &[7; 32]);
        // The wrong vat is refused and the gift stays.
        assert!(matches!(gifts.withdraw(&key, b, now), Some(Err(_))));
        assert_eq!(gifts.stats(now).held, 1);
        // The recipient takes it, once.
        assert!(matches!(gifts.withdraw(&key, c, now), Some(Ok(h)) if h == o));
        assert!(gifts.withdraw(&key, c, now).is_none());
        // Another depositor's gift with the same id is another key.
        assert_ne!(key, gift_key(&b, &[7; 32]));
        assert_eq!(gifts.stats(now).withdrawn, 1);
    }

    #[test]
    fn deposits_are_bounded_per_depositor_and_expire() {
        let gifts = Gifts::new(2, 16, Duration::from_secs(60));
        let now = Instant::now();
        let (a, b, c) = (vat(1), vat(2), vat(3));
        gifts.deposit(a, &[1; 32], c, object(), now).unwrap();
        assert_eq!(
            gifts.deposit(a, &[1; 32], c, object(), now),
            Err(Refused::Duplicate)
        );
        gifts.deposit(a, &[2; 32], c, object(), now).unwrap();
        assert_eq!(
            gifts.deposit(a, &[3; 32], c, object(), now),
            Err(Refused::Full(2))
        );
        // Another depositor has its own budget.
        gifts.deposit(b, &[3; 32], c, object(), now).unwrap();
        let stats = gifts.stats(now);
        assert_eq!((stats.held, stats.refused), (3, 2));
        // Past the TTL every gift is gone, and the budget is free again.
        let later = now + Duration::from_secs(60);
        assert_eq!(gifts.stats(later).held, 0);
        assert_eq!(gifts.stats(later).expired, 3);
        gifts.deposit(a, &[4; 32], c, object(), later).unwrap();
        assert!(gifts.withdraw(&gift_key(&a, &[1; 32]), c, later).is_none());
    }

    #[test]
    fn deposits_are_bounded_over_all_depositors() {
        // Fresh identities cost nothing: the table is bounded in all, too.
        let gifts = Gifts::new(2, 3, Duration::from_secs(60));
        let now = Instant::now();
        for n in 0..3u8 {
            gifts
                .deposit(vat(n), &[n; 32], vat(9), object(), now)
                .unwrap();
        }
        assert_eq!(
            gifts.deposit(vat(7), &[7; 32], vat(9), object(), now),
            Err(Refused::AllFull(3))
        );
        // Expired ones make room again; a withdrawn one leaves no expiry behind.
        assert!(matches!(
            gifts.withdraw(&gift_key(&vat(0), &[0; 32]), vat(9), now),
            Some(Ok(_))
        ));
        gifts
            .deposit(vat(7), &[7; 32], vat(9), object(), now)
            .unwrap();
        let later = now + Duration::from_secs(60);
        let stats = gifts.stats(later);
        assert_eq!((stats.held, stats.expired, stats.withdrawn), (0, 3, 1));
    }

    #[test]
    fn a_fence_names_the_gift_and_its_object() {
        let gifts = Gifts::new(2, 16, Duration::from_secs(60));
        let now = Instant::now();
        let (a, c) = (vat(1), vat(3));
        let o = object();
        gifts.deposit(a, &[1; 32], c, o.clone(), now).unwrap();
        assert!(matches!(gifts.fence(a, &[1; 32], &o, now), Some(Ok(()))));
        assert!(matches!(
            gifts.fence(a, &[1; 32], &object(), now),
            Some(Err(_))
        ));
        assert!(gifts.fence(c, &[1; 32], &o, now).is_none());
    }
}
