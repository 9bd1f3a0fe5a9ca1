//! Property tests: random operations on one simulated world of three vats and four
//! sessions (`world`), checked after every step and once everything has settled.
//!
//! After every step:
//!
//! - **no abort, bounded tables**: no session between these well-behaved vats closes,
//!   and no table passes its limit. Every session accepts only `MIN_QUESTIONS`
//!   questions (bursts pass it: flow control), and half the cases allow only four
//!   exports (results past that break with `too_large`).
//! - **E-order**: the calls sent on one reference (one import or answer of one
//!   session, whichever handle they went through) reach their object in the order
//!   sent, through pipelining, forwarding, proxies and promises.
//! - **no call reaches a freed export**: a call to an export leaves only while the
//!   caller holds it, and every call reaches the object its reference designates: the
//!   one its export id names, or what the answer it was pipelined on resolved to.
//! - **no unexpected breakage**: a call breaks only with an error a program gave, on
//!   data where an object was wanted, on an unknown bootstrap object (and a call there
//!   always does), or past the small export limit.
//! - references come home to the vat that made them; a runtime hears of a settlement
//!   only for a reference it was given, and once.
//!
//! Once every call is answered and every promise settled (`World::finish`):
//!
//! - **settling**: every question came back exactly once, and every promise a runtime
//!   holds settled;
//! - every call sent to an export was delivered;
//! - **clean-up**: with every reference dropped, every table of every session is empty
//!   and, as the wire tells, no peer holds an export.
//!
//! Every frame goes through the codec and the framing, within the frame limit.
//!
//! # Running
//!
//! `cargo test --lib proto::tests::props` runs 128 cases of each property; for a soak,
//! `PROPTEST_CASES=20000 cargo test --release --lib proto::tests::props`.
//! `PROPTEST_RNG_SEED=<n>` fixes the seed. A failure prints the shrunk operations: paste
//! them into a fixed test like `send_then_drop_while_held_settles`, which is one.
//!
//! What this must not do: depend on anything but the operations (no clock, no
//! `HashMap` order deciding what is sent), or shrinking and seeds stop reproducing a
//! failure.

mod wire;
mod world;

use proptest::prelude::*;
use proptest::test_runner::Config;

use world::{How, VA, VB, VC, World};

/// One thing the world does next. Indices pick among what exists, modulo its count.
#[derive(Debug, Clone)]
enum Op {
    /// A (or C) bootstraps B's object (`known`) or one B does not know, keeping `refs`
    /// pipelined handles, and waits for the answer if `resolver`.
    Bootstrap {
        c: bool,
        known: bool,
        refs: u32,
        resolver: bool,
    },
    /// `vat` calls one of its references. `mode` 0: one-way; 1: a question; 2, 3: a
    /// question with a pipelined ref; 4: a question whose result nobody waits for; 5: a
    /// quiet question with a pipelined ref whose result nobody asks for; 6: a quiet
    /// question with a pipelined ref whose result is then asked for (`want_return`).
    /// `cap` 1, 2: a new object of the sender's in the arguments; 3: a reference of the
    /// receiver's, going home; 4: a new promise of the sender's.
    Send {
        vat: usize,
        r: usize,
        mode: u8,
        cap: u8,
    },
    /// 33 questions on one reference: two bursts pass the peer's question limit.
    Burst { c: bool, r: usize },
    /// Answers one of the four calls delivered last.
    Answer { k: usize, how: How },
    /// Settles a promise: to a new object, a new promise, data or an error.
    Resolve { k: usize, how: u8 },
    /// Drops a reference.
    Drop { r: usize },
    /// Moves up to `n` frames out of session `s`, one at a time.
    Pump { s: usize, n: usize },
    /// Moves every frame until the world is quiet.
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    let how = prop_oneof![
        1 => Just(How::Data),
        1 => Just(How::Error),
        2 => Just(How::Object),
        4 => any::<usize>().prop_map(How::Held),
        2 => Just(How::Promise),
    ];
    prop_oneof![
        1 => (any::<bool>(), prop::bool::weighted(0.9), 0..3u32, prop::bool::weighted(0.9))
            .prop_map(|(c, known, refs, resolver)| Op::Bootstrap { c, known, refs, resolver }),
        8 => (prop_oneof![Just(VA), Just(VB), Just(VC)], any::<usize>(), 0..7u8, 0..5u8)
            .prop_map(|(vat, r, mode, cap)| Op::Send { vat, r, mode, cap }),
        2 => (any::<bool>(), any::<usize>()).prop_map(|(c, r)| Op::Burst { c, r }),
        8 => (any::<usize>(), how).prop_map(|(k, how)| Op::Answer { k, how }),
        2 => (any::<usize>(), 0..4u8).prop_map(|(k, how)| Op::Resolve { k, how }),
        2 => any::<usize>().prop_map(|r| Op::Drop { r }),
        8 => (0..4usize, 1..6usize).prop_map(|(s, n)| Op::Pump { s, n }),
        2 => Just(Op::Flush),
    ]
}

/// Runs `ops` on a fresh world, checking after each, then settles and checks the end.
fn run(small_exports: bool, ops: &[Op]) {
    let mut w = World::new(small_exports);
    for op in ops {
        w.apply(op);
        w.check();
    }
    w.finish();
}

/// 128 cases unless `PROPTEST_CASES` says otherwise; no failure files in the source
/// tree (a failure prints its shrunk input instead).
fn config() -> Config {
    let from_env = Config::default();
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            from_env.cases
        } else {
            128
        },
        failure_persistence: None,
        ..from_env
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn three_vats_keep_e_order_and_drain(ops in prop::collection::vec(op(), 8..60)) {
        run(false, &ops);
    }

    #[test]
    fn three_vats_stay_within_a_small_export_limit(ops in prop::collection::vec(op(), 8..60)) {
        run(true, &ops);
    }
}

/// Found by the session fuzzer, kept as a property-test scenario: a burst fills the
/// peer's question window, then a call on a reference is sent and the reference dropped
/// at once; the call must still arrive (not break with "released").
#[test]
fn send_then_drop_while_held_settles() {
    run(
        false,
        &[
            Op::Bootstrap {
                c: false,
                known: true,
                refs: 0,
                resolver: true,
            },
            Op::Flush,
            // A's only reference is now its import of B's object.
            Op::Burst { c: false, r: 0 },
            Op::Burst { c: false, r: 0 },
            Op::Send {
                vat: VA,
                r: 1,
                mode: 1,
                cap: 0,
            },
            Op::Drop { r: 0 },
        ],
    );
}

/// Found by a long soak: C lets go of a promise of B's (and so releases it) while its
/// `resolve` is on the way; B, its promise settled since, then hands the same export to
/// C as an object, under the same id. C's runtime holds that as an object, not as the
/// promise that never settled here.
#[test]
fn a_promise_released_before_it_settles_can_come_back_as_an_object() {
    run(
        false,
        &[
            Op::Bootstrap {
                c: true,
                known: true,
                refs: 1,
                resolver: false,
            },
            Op::Send {
                vat: 2,
                r: 0,
                mode: 1,
                cap: 0,
            },
            Op::Send {
                vat: 2,
                r: 0,
                mode: 2,
                cap: 1,
            },
            Op::Bootstrap {
                c: false,
                known: true,
                refs: 1,
                resolver: true,
            },
            Op::Send {
                vat: 2,
                r: 314856997294212194,
                mode: 2,
                cap: 0,
            },
            Op::Drop {
                r: 5652642271141282904,
            },
            Op::Flush,
            Op::Resolve { k: 0, how: 0 },
            Op::Answer {
                k: 7390413272128564484,
                how: How::Held(7423814142655733124),
            },
            Op::Answer {
                k: 0,
                how: How::Promise,
            },
            Op::Send {
                vat: 2,
                r: 10998293493815069693,
                mode: 1,
                cap: 0,
            },
            Op::Flush,
            Op::Bootstrap {
                c: false,
                known: false,
                refs: 0,
                resolver: false,
            },
            Op::Resolve { k: 0, how: 0 },
            Op::Answer {
                k: 0,
                how: How::Held(0),
            },
            Op::Drop {
                r: 4368564324919062729,
            },
        ],
    );
}
