//! Deadlines and cancellation over real TLS on 127.0.0.1: a call to a frozen peer fails
//! at its deadline (per call, or the vat-wide default), not at the keepalive limit; a
//! dropped promise stops the callee's method (its drop guard runs) and both vats'
//! tables drain; a pipelined reference dropped before its answer cancels the same way;
//! a local call is cancelled too.
//!
//! The deadline tests run on paused tokio time, so the elapsed time they assert is the
//! virtual clock's, exact, and no test waits for real.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use captp::internal::wire::Message;
use captp::{Args, BrokenKind, Host, Object, Ref, Reply, SturdyRef, SwissNumber, Tables, Vat};
use common::{
    Fixture, IO_TIMEOUT, drained, limits, silent_server, start_client, start_client_with, within,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A slack on the virtual clock for the TLS handshake's own timers; far below any
/// deadline here.
const SLACK: Duration = Duration::from_millis(10);

/// The question ids of the calls a silent server saw, and those it saw finished.
fn asked_and_finished(seen: &[Message]) -> (Vec<u64>, Vec<u64>) {
    let asked = seen
        .iter()
        .filter_map(|m| match m {
            Message::Deliver {
                question: Some(q), ..
            } => Some(*q),
            _ => None,
        })
        .collect();
    let finished = seen
        .iter()
        .filter_map(|m| match m {
            Message::Finish { question } => Some(*question),
            _ => None,
        })
        .collect();
    (asked, finished)
}

/// A sturdy ref to a silent server (any swiss number: it never answers anyway).
fn silent_uri(silent: &common::SilentServer) -> SturdyRef {
    SturdyRef::new(
        silent.vat_id,
        Host::Ipv4(Ipv4Addr::LOCALHOST),
        silent.port,
        SwissNumber::generate(),
    )
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_call_to_a_frozen_peer_fails_at_its_deadline_not_at_the_keepalive_limit() {
    within(async {
        let silent = silent_server().await;
        let client = start_client().await;
        let obj = client.enliven(&silent_uri(&silent));
        let deadline = Duration::from_secs(3);
        let started = Instant::now();
        let err = obj
            .send::<i64>("add", (1, 2))
            .timeout(deadline)
            .await
            .expect_err("the server never answers");
        let elapsed = started.elapsed();
        assert_eq!(err.kind(), BrokenKind::Timeout, "{err}");
        assert!(err.message().contains("3s"), "{err}");
        // At the deadline, not at the keepalive's 90 s.
        assert!(
            elapsed >= deadline && elapsed < deadline + SLACK,
            "failed after {elapsed:?}, not at the 3 s deadline"
        );
        // The reference itself is fine: only the call gave up.
        assert!(obj.broken_reason().is_none());
        drop(obj);
        client.shutdown().await;
        // The call was finished early: the server was told to stop it.
        let seen = tokio::time::timeout(IO_TIMEOUT, silent.task)
            .await
            .expect("the silent server ends when the client leaves")
            .expect("the silent server did not panic");
        let (asked, finished) = asked_and_finished(&seen);
        assert_eq!(asked.len(), 1, "{seen:?}");
        assert!(finished.contains(&asked[0]), "{seen:?}");
    })
    .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_vat_wide_call_timeout_applies_when_a_call_sets_none() {
    within(async {
        let silent = silent_server().await;
        let client = start_client_with(limits(|l| {
            l.call_timeout = Some(Duration::from_secs(2));
        }))
        .await;
        let obj = client.enliven(&silent_uri(&silent));

        let started = Instant::now();
        let err = obj
            .send::<i64>("add", (1, 2))
            .await
            .expect_err("the server never answers");
        let elapsed = started.elapsed();
        assert_eq!(err.kind(), BrokenKind::Timeout, "{err}");
        assert!(err.message().contains("2s"), "{err}");
        assert!(
            elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(2) + SLACK,
            "failed after {elapsed:?}, not at the vat's 2 s default"
        );

        // A per-call deadline replaces the default, later as well as earlier.
        let started = Instant::now();
        let err = obj
            .send::<i64>("add", (3, 4))
            .timeout(Duration::from_secs(5))
            .await
            .expect_err("the server never answers");
        let elapsed = started.elapsed();
        assert_eq!(err.kind(), BrokenKind::Timeout, "{err}");
        assert!(
            elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(5) + SLACK,
            "failed after {elapsed:?}, not at the call's own 5 s"
        );
        drop(obj);
        client.shutdown().await;
        let seen = tokio::time::timeout(IO_TIMEOUT, silent.task)
            .await
            .expect("the silent server ends when the client leaves")
            .expect("the silent server did not panic");
        // The fetch (a bootstrap, with no deadline) and both calls: both calls finished.
        let (asked, finished) = asked_and_finished(&seen);
        assert_eq!(asked.len(), 2, "{seen:?}");
        assert!(asked.iter().all(|q| finished.contains(q)), "{seen:?}");
    })
    .await;
}

/// An object whose `wait` method never answers and reports, through `dropped`, when its
/// future is dropped (a drop guard made as the call arrives, so it exists even if the
/// future is never polled); `started` hears of each call.
struct Waiter {
    started: mpsc::UnboundedSender<()>,
    dropped: mpsc::UnboundedSender<()>,
}

/// Sends on its channel when dropped: how a cancelled method's future shows it is gone.
struct DropGuard(mpsc::UnboundedSender<()>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl Object for Waiter {
    fn call(&self, method: &str, _args: Args) -> Reply {
        match method {
            "wait" => {
                let _ = self.started.send(());
                let guard = DropGuard(self.dropped.clone());
                Reply::later(async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Ok(())
                })
            }
            _ => Reply::unknown_method(method),
        }
    }
}

/// A waiter, and the receivers for its `started` and `dropped` reports.
fn waiter() -> (
    Waiter,
    mpsc::UnboundedReceiver<()>,
    mpsc::UnboundedReceiver<()>,
) {
    let (started, started_rx) = mpsc::unbounded_channel();
    let (dropped, dropped_rx) = mpsc::unbounded_channel();
    (Waiter { started, dropped }, started_rx, dropped_rx)
}

/// Waits (bounded) for one report on `rx`.
async fn next(rx: &mut mpsc::UnboundedReceiver<()>, what: &str) {
    tokio::time::timeout(IO_TIMEOUT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} within 10 s"))
        .expect("the object is alive");
}

/// The one session of `vat`'s tables, after a round trip on it.
async fn tables(vat: &Vat) -> Tables {
    vat.sync().await;
    let stats = vat.stats().await;
    assert_eq!(stats.sessions.len(), 1, "{stats:?}");
    stats.sessions[0].tables
}

/// Both vats' tables once the client's reference to the root has settled: the fetch's
/// question (kept by the reference that pipelines on it) and the root's import at the
/// client, its export at the server.
async fn settled_tables(c: &common::Connected) -> (Tables, Tables) {
    let _root: Ref = tokio::time::timeout(IO_TIMEOUT, c.obj.when_settled())
        .await
        .expect("the root within 10 s")
        .expect("the root");
    (tables(&c.client).await, tables(&c.server.vat).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_promise_stops_the_remote_method_and_frees_both_tables() {
    within(async {
        let (object, mut started, mut dropped) = waiter();
        let c = Fixture::new().object(object).connect().await;
        let before = settled_tables(&c).await;
        // The caller gives up after 200 ms, as a program wrapping a call in
        // `tokio::time::timeout` does: the promise is dropped unsettled.
        let gave_up =
            tokio::time::timeout(Duration::from_millis(200), c.obj.send::<()>("wait", ())).await;
        assert!(gave_up.is_err(), "the method never answers");
        next(&mut started, "the method was called").await;
        next(&mut dropped, "the method's future was dropped").await;
        // The question and the answer are gone: the tables are as before the call.
        assert_eq!(
            (tables(&c.client).await, tables(&c.server.vat).await),
            before
        );
        assert_eq!((before.0.questions, before.1.answers), (1, 0), "{before:?}");
        drop(c.obj);
        drained(&[&c.client, &c.server.vat]).await;
        c.client.shutdown().await;
        c.server.vat.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_pipelined_reference_before_its_answer_cancels_the_call() {
    within(async {
        let (object, mut started, mut dropped) = waiter();
        let c = Fixture::new().object(object).connect().await;
        let before = settled_tables(&c).await;
        let pending = c.obj.send_ref("wait", ());
        next(&mut started, "the method was called").await;
        // Nothing was sent on it and nobody can see its result: dropping it cancels.
        drop(pending);
        next(&mut dropped, "the method's future was dropped").await;
        // The question and the answer are gone: the tables are as before the call.
        assert_eq!(
            (tables(&c.client).await, tables(&c.server.vat).await),
            before
        );
        assert_eq!((before.0.questions, before.1.answers), (1, 0), "{before:?}");
        drop(c.obj);
        drained(&[&c.client, &c.server.vat]).await;
        c.client.shutdown().await;
        c.server.vat.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_local_call_is_cancelled_by_dropping_its_promise_or_by_its_deadline() {
    within(async {
        let (object, mut started, mut dropped) = waiter();
        let local = Ref::from_object(object);
        let promise = local.send::<()>("wait", ());
        next(&mut started, "the method was called").await;
        drop(promise);
        next(&mut dropped, "the method's future was dropped").await;

        let started_at = Instant::now();
        let err = local
            .send::<()>("wait", ())
            .timeout(Duration::from_secs(4))
            .await
            .expect_err("the method never answers");
        assert_eq!(err.kind(), BrokenKind::Timeout, "{err}");
        assert_eq!(started_at.elapsed(), Duration::from_secs(4));
        next(&mut dropped, "the timed-out method's future was dropped").await;
    })
    .await;
}
