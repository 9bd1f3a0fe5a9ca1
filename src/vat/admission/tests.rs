//! Tests of `admission` (kept apart from `admission.rs` for length).

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use super::*;

fn admission(f: impl FnOnce(&mut Limits)) -> Arc<Admission> {
    let mut limits = Limits::default();
    f(&mut limits);
    Arc::new(Admission::new(&limits))
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

#[test]
fn ipv6_counts_by_slash_64_and_mapped_v4_as_v4() {
    let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(Source::of(a), Source::of(b));
    assert_ne!(Source::of(a), Source::of(c));
    assert_eq!(Source::of(a).to_string(), "2001:db8:1:2::/64");
    let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
    assert_eq!(Source::of(mapped), Source::of(v4(2)));
}

/// The ticket of a connection admitted at once.
fn at_once(admitted: Result<Admitted, Refusal>) -> Ticket {
    match admitted {
        Ok(Admitted::Now(ticket)) => ticket,
        Ok(Admitted::Wait(_)) => panic!("the connection waits"),
        Err(refusal) => panic!("refused: {refusal}"),
    }
}

/// The place in the queue of a connection that must wait.
fn queued(admitted: Result<Admitted, Refusal>) -> Waiter {
    match admitted {
        Ok(Admitted::Wait(waiter)) => waiter,
        Ok(Admitted::Now(_)) => panic!("the connection was admitted at once"),
        Err(refusal) => panic!("refused: {refusal}"),
    }
}

#[tokio::test(start_paused = true)]
async fn past_its_cap_a_source_waits_and_is_served_as_its_slots_free() {
    let adm = admission(|l| l.max_handshaking_per_address = 3);
    let t0 = Instant::now();
    let mut held: Vec<_> = (0..3).map(|_| at_once(adm.admit(v4(2), t0))).collect();
    let waiter = queued(adm.admit(v4(2), t0));
    // Another source is not held back.
    let other = at_once(adm.admit(v4(3), t0));
    let stats = adm.stats();
    assert_eq!(
        (
            stats.handshaking,
            stats.handshaking_from_busiest_source,
            stats.waiting
        ),
        (4, 3, 1)
    );
    // One of the source's handshakes ends: the waiting one gets its slot.
    drop(held.remove(0));
    let ticket = waiter.admitted().await.expect("a slot");
    let stats = adm.stats();
    assert_eq!((stats.handshaking, stats.waiting, stats.refused), (4, 0, 0));
    // A waiter that gets no slot within a quarter of the timeout (2.5 s) is closed.
    let late = queued(adm.admit(v4(2), Instant::now()));
    let started = Instant::now();
    assert!(late.admitted().await.is_none());
    assert_eq!(started.elapsed(), Duration::from_millis(2_500));
    assert_eq!(adm.stats().refused, 1);
    assert_eq!(adm.stats().waiting, 0);
    drop((held, other, ticket));
    assert_eq!(adm.stats().handshaking, 0);
}

#[tokio::test(start_paused = true)]
async fn a_freed_slot_goes_to_the_source_with_fewest_handshakes() {
    let adm = admission(|l| {
        l.max_handshaking = 3;
        l.max_handshaking_per_address = 3;
    });
    let t0 = Instant::now();
    let mut heavy: Vec<_> = (0..2).map(|_| at_once(adm.admit(v4(2), t0))).collect();
    let _light = at_once(adm.admit(v4(3), t0));
    // Full, 2 and 1: nobody holds two more than a newcomer from either source.
    let heavy_waits = queued(adm.admit(v4(2), t0));
    let light_waits = queued(adm.admit(v4(3), t0));
    assert_eq!(adm.stats().waiting, 2);
    drop(heavy.remove(0));
    // 1 and 1 now; the longest waiting of the two ties goes first.
    let _first = heavy_waits.admitted().await.expect("a slot");
    drop(heavy);
    // 1 (heavy's new one) and 1 (light): light's waiter takes the freed slot.
    let _second = light_waits.admitted().await.expect("a slot");
    assert_eq!(adm.stats().waiting, 0);
    assert_eq!(adm.stats().handshaking, 3);
}

#[tokio::test(start_paused = true)]
async fn a_full_budget_cuts_the_busiest_source_towards_an_equal_share() {
    let adm = admission(|l| {
        l.max_handshaking = 4;
        l.max_handshaking_per_address = 4;
    });
    let t0 = Instant::now();
    let mut heavy: Vec<_> = (0..3).map(|_| at_once(adm.admit(v4(2), t0))).collect();
    let light = at_once(adm.admit(v4(3), t0));
    // Full. A newcomer from a fresh source cuts the heavy source's oldest.
    let newcomer = at_once(adm.admit(v4(4), t0));
    assert_eq!(adm.stats().cut, 1);
    assert_eq!(adm.stats().handshaking, 4);
    assert!(heavy[0].cut.as_mut().unwrap().try_recv().is_ok());
    assert!(heavy[1].cut.as_mut().unwrap().try_recv().is_err());
    // Now 2, 1, 1: a newcomer from a source with one would not leave the busiest
    // with more than its own, so it waits.
    let waiter = queued(adm.admit(v4(3), t0));
    // A fresh source (0 held) still cuts the one holding 2.
    let fresh = at_once(adm.admit(v4(5), t0));
    assert_eq!(adm.stats().cut, 2);
    assert_eq!(adm.stats().handshaking_from_busiest_source, 1);
    drop(waiter);
    assert_eq!(adm.stats().refused, 1);
    drop((heavy.drain(..), light, newcomer, fresh));
    assert_eq!(adm.stats().handshaking, 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_the_longest_waiting_of_the_busiest_source() {
    let adm = admission(|l| {
        l.max_handshaking = 1;
        l.max_handshaking_per_address = 1;
        l.max_handshake_queue = 3;
    });
    let t0 = Instant::now();
    let _held = at_once(adm.admit(v4(2), t0));
    let first = queued(adm.admit(v4(2), t0));
    let _second = queued(adm.admit(v4(2), t0));
    let _third = queued(adm.admit(v4(3), t0));
    // Full: 2 from .2, 1 from .3. A newcomer from .4 (0 waiting) drops .2's oldest.
    let _fourth = queued(adm.admit(v4(4), t0));
    assert_eq!((adm.stats().waiting, adm.stats().refused), (3, 1));
    assert!(
        first.admitted().await.is_none(),
        "the dropped one gets no slot"
    );
    // 1, 1, 1: a newcomer from .3 would not leave anyone with more than its own.
    assert_eq!(
        adm.admit(v4(3), t0).err(),
        Some(Refusal::Queue { limit: 3 })
    );
    assert_eq!(adm.stats().refused, 2);
}

#[tokio::test(start_paused = true)]
async fn promotion_moves_a_connection_between_budgets() {
    let adm = admission(|l| {
        l.max_connections = 1;
        l.max_handshaking = 4;
    });
    let t0 = Instant::now();
    let first = at_once(adm.admit(v4(2), t0));
    let second = at_once(adm.admit(v4(2), t0));
    assert_eq!(first.promotion()(), Ok(()));
    let stats = adm.stats();
    assert_eq!((stats.established, stats.handshaking), (1, 1));
    // The established slot is taken: the second is refused at its hello, and new
    // connections at accept.
    let refused = second.promotion()().unwrap_err();
    assert!(
        refused.contains("already serves 1 connections"),
        "{refused}"
    );
    assert!(matches!(
        adm.admit(v4(3), t0),
        Err(Refusal::Connections { limit: 1 })
    ));
    drop(second);
    drop(first);
    let stats = adm.stats();
    assert_eq!((stats.established, stats.handshaking), (0, 0));
    let _ = at_once(adm.admit(v4(3), t0));
}

#[tokio::test(start_paused = true)]
async fn past_half_the_budget_the_deadline_is_a_quarter() {
    let adm = admission(|l| {
        l.max_handshaking = 4;
        l.handshake_timeout = Duration::from_secs(8);
    });
    let now = Instant::now();
    let calm: Vec<_> = (0..2).map(|_| at_once(adm.admit(v4(2), now))).collect();
    assert!(calm.iter().all(|t| t.deadline.is_none()));
    assert_eq!(calm[0].tls_timeout(now), Duration::from_secs(8));
    let mut pressed = at_once(adm.admit(v4(3), now));
    assert_eq!(pressed.tls_timeout(now), Duration::from_secs(2));
    let started = Instant::now();
    let why = pressed.cut().await;
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert!(why.contains("shortened handshake deadline"), "{why}");
    assert_eq!(adm.stats().cut, 1);
    assert_eq!(adm.stats().handshaking, 2);
    drop(pressed);
    assert_eq!(adm.stats().handshaking, 2);
}

#[tokio::test(start_paused = true)]
async fn an_established_connection_is_never_cut() {
    let adm = admission(|l| {
        l.max_handshaking = 2;
        l.handshake_timeout = Duration::from_secs(8);
    });
    let now = Instant::now();
    let _other = at_once(adm.admit(v4(2), now));
    let mut ticket = at_once(adm.admit(v4(2), now));
    assert!(ticket.deadline.is_some());
    assert_eq!(ticket.promotion()(), Ok(()));
    let cut = tokio::time::timeout(Duration::from_secs(60), ticket.cut()).await;
    assert!(cut.is_err(), "an established connection was cut: {cut:?}");
    assert_eq!(adm.stats().cut, 0);
}
