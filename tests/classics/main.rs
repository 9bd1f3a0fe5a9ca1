//! The classic distributed-programming tasks (Rosetta Code's "Distributed programming"
//! and its neighbours), done with captp: one test per task, each over real mutual TLS on
//! 127.0.0.1 with a separate vat per party, asserting exact results. `calls` holds the
//! tasks of one service and its callers; `parties` those where several vats cooperate.
//!
//! The pattern is always the same: the service is an object; the authority to use it is
//! a reference (a sturdy ref URI to start with, then references passed in arguments and
//! results); nothing ships code. examples/README.md maps each task to its test here and
//! to the example that runs it.
//!
//! Every test body is bounded by a timeout, and no test sleeps to synchronise: it waits
//! for the message it expects, or settles the network with `Vat::sync` (a round trip on
//! every session) before checking that nothing more arrived. Every loop is bounded.

#[path = "../common/mod.rs"]
mod common;

mod calls;
mod parties;

use captp::{Broken, BrokenKind};

/// An application error code carried by a `failed` error: the stable code before the
/// first `": "` of the message. `None` for any other kind of failure.
fn error_code(broken: &Broken) -> Option<&str> {
    (broken.kind() == BrokenKind::Failed)
        .then(|| broken.message().split_once(": ").map(|(code, _)| code))
        .flatten()
}
