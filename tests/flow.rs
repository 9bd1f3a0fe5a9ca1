//! Flow control end to end, over real mutual TLS on 127.0.0.1: a program cannot kill
//! its own session by pipelining past the peer's queue limit, and one-way producers
//! stay bounded against a slow consumer (`Ref::send_streaming`, `Limits::max_unsent`).
//!
//! Each bound is asserted as a number. Rates are set with tokio intervals on paused
//! time, so the tests do not sleep.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use captp::{Args, BrokenKind, Limits, Object, Ref, Reply, SessionInfo, Vat};
use common::{Fixture, limits, lock, within};
use serde_bytes::ByteBuf;
use tokio::sync::Semaphore;

/// Calls pipelined on one unanswered promise (before flow control, 300 aborted the
/// session: "more than 256 messages queued on one unresolved promise").
const PIPELINED: u64 = 10_000;

/// Bytes a call is counted for against the window and `max_unsent`: a fixed 64, the
/// method name, and the encoded arguments.
fn call_bytes(method: &str, args_len: usize) -> usize {
    64 + method.len() + args_len
}

/// Encoded size of `(seq, 1 KiB of bytes)`: array head, a u64 of up to 5 bytes here,
/// byte-string head (3) and the bytes.
const KIB_ARGS: usize = 1 + 5 + 3 + 1024;

/// The one session of `vat`.
async fn only_session(vat: &Vat) -> SessionInfo {
    let stats = vat.stats().await;
    assert_eq!(stats.sessions.len(), 1, "{stats:?}");
    stats.sessions[0].clone()
}

/// Records the numbers pushed to it, in arrival order.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<u64>>>);

impl Object for Recorder {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "push" => match args.decode::<(u64,)>() {
                Ok((n,)) => {
                    lock(&self.0).push(n);
                    Reply::ok(())
                }
                Err(e) => Reply::err(e),
            },
            "all" => Reply::ok(lock(&self.0).clone()),
            _ => Reply::unknown_method(method),
        }
    }
}

/// Answers `later` with a [`Recorder`] once the test opens the gate.
struct Slow {
    gate: Arc<Semaphore>,
    recorder: Recorder,
}

impl Object for Slow {
    fn call(&self, method: &str, _args: Args) -> Reply {
        match method {
            "later" => {
                let gate = self.gate.clone();
                let recorder = self.recorder.clone();
                Reply::later(async move {
                    gate.acquire().await.expect("the gate stays open").forget();
                    Ok(Ref::from_object(recorder))
                })
            }
            _ => Reply::unknown_method(method),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_ten_thousand_calls_on_one_promise_works_and_ends_in_order() {
    within(async {
        let gate = Arc::new(Semaphore::new(0));
        let recorder = Recorder::default();
        let c = Fixture::new()
            .object(Slow {
                gate: gate.clone(),
                recorder: recorder.clone(),
            })
            .connect()
            .await;
        let queue_limit = Limits::default().max_queued_per_promise;
        // After a round trip the server's `hello` (version 3) is in, so `later` is asked
        // quiet (PROTOCOL.md 9.15): the sends held past the server's queue limit wait
        // for its `return`, which flow control then asks for (`want_return`).
        c.client.sync().await;
        let promise = c.obj.send_ref("later", ());
        for n in 0..PIPELINED {
            promise.send_only("push", (n,)).unwrap();
        }
        // A round trip: the peer has everything sent so far, and has not aborted.
        c.client.sync().await;
        let session = only_session(&c.client).await;
        assert_eq!(
            session.tables.held,
            PIPELINED as usize - queue_limit,
            "exactly the server's 256 went out; the rest wait, in order"
        );
        gate.add_permits(1);
        let all: Vec<u64> = promise.send("all", ()).await.unwrap();
        assert_eq!(all, (0..PIPELINED).collect::<Vec<_>>());
        assert_eq!(only_session(&c.client).await.tables.held, 0);
        assert!(c.obj.broken_reason().is_none());
        c.stop().await;
    })
    .await;
}

/// A consumer that takes one-way data at a bounded rate: each `take` answers on the
/// next tick of a shared 1 ms interval (1,000 a second), and records the most calls it
/// had waiting at once and whether they came in order.
#[derive(Clone)]
struct Consumer {
    ticks: Arc<Semaphore>,
    running: Arc<AtomicUsize>,
    most_running: Arc<AtomicUsize>,
    next: Arc<AtomicU64>,
    in_order: Arc<AtomicBool>,
}

impl Consumer {
    fn new() -> Consumer {
        let ticks = Arc::new(Semaphore::new(0));
        let feeder = ticks.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(1));
            // Bounded: the test ends long before, and with it the runtime.
            for _ in 0..10_000_000u64 {
                interval.tick().await;
                if feeder.available_permits() < 1 {
                    feeder.add_permits(1);
                }
            }
        });
        Consumer {
            ticks,
            running: Arc::default(),
            most_running: Arc::default(),
            next: Arc::default(),
            in_order: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl Object for Consumer {
    fn call(&self, method: &str, args: Args) -> Reply {
        let Ok((seq, data)) = args.decode::<(u64, ByteBuf)>() else {
            return Reply::unknown_method(method);
        };
        if self.next.fetch_add(1, Ordering::SeqCst) != seq || data.len() != 1024 {
            self.in_order.store(false, Ordering::SeqCst);
        }
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        let this = self.clone();
        Reply::later(async move {
            this.ticks.acquire().await.expect("never closed").forget();
            this.running.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

/// Streaming sends to a consumer taking 1,000 a second. The count is 20,000 rather than
/// 100,000 to keep a debug build's run short (100,000 take 13 s there, 20,000 under
/// 3 s): the bounds checked do not depend on it (they are reached after the first ~240
/// calls and held from then on).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn streaming_sends_to_a_slow_consumer_stay_within_the_window() {
    const SENDS: u64 = 20_000;
    let consumer = Consumer::new();
    let c = Fixture::new().object(consumer.clone()).connect().await;
    let window = Limits::default().stream_window;
    let one = call_bytes("take", KIB_ARGS);
    let chunk = ByteBuf::from(vec![7u8; 1024]);
    let started = tokio::time::Instant::now();
    for seq in 0..SENDS {
        c.obj.send_streaming("take", (seq, &chunk)).await.unwrap();
    }
    c.client.sync().await;
    let elapsed = started.elapsed();
    let session = only_session(&c.client).await;
    // The sender never held more than the window and one call for the slow peer...
    assert!(
        session.peak_unsent_bytes <= window + one,
        "{} > {window} + {one}",
        session.peak_unsent_bytes
    );
    // ...and the consumer never had more than a window's worth of calls waiting.
    let most = consumer.most_running.load(Ordering::SeqCst);
    assert!(most <= window / one + 1, "{most} calls waiting at once");
    assert!(consumer.in_order.load(Ordering::SeqCst));
    assert_eq!(consumer.next.load(Ordering::SeqCst), SENDS);
    // Paced by the consumer: about one call per tick (1 ms), less the window's head
    // start.
    let paced = Duration::from_millis(SENDS - (window / one) as u64 - 1);
    assert!(elapsed >= paced, "{elapsed:?} < {paced:?}");
    c.stop().await;
}

/// One-way sends without flow control, faster than they can be written: past
/// `max_unsent` they break with `too_large`, and nothing grows without end.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn send_only_past_max_unsent_breaks_with_too_large() {
    const MAX_UNSENT: usize = 64 << 10;
    let consumer = Consumer::new();
    let c = Fixture::new()
        .object(consumer.clone())
        .client_limits(limits(|l| l.max_unsent = MAX_UNSENT))
        .connect()
        .await;
    let chunk = ByteBuf::from(vec![7u8; 1024]);
    let one = call_bytes("take", KIB_ARGS);
    // No await in the loop: on this single-threaded runtime the session task cannot
    // write anything meanwhile, so every byte stays unsent.
    let mut sent = 0u64;
    let mut refused = None;
    for seq in 0..100_000u64 {
        match c.obj.send_only("take", (sent, &chunk)) {
            Ok(()) => sent += 1,
            Err(b) => {
                refused = Some((seq, b));
                break;
            }
        }
    }
    let (seq, b) = refused.expect("refused before 100,000 sends");
    assert_eq!(b.kind(), BrokenKind::TooLarge);
    assert!(b.message().contains("send_streaming"), "{b}");
    assert_eq!(seq, sent);
    assert!(
        sent as usize <= MAX_UNSENT / one && sent > 0,
        "{sent} calls of {one} bytes got through a bound of {MAX_UNSENT}"
    );
    // Once written, there is room again, and the session is fine.
    c.client.sync().await;
    let session = only_session(&c.client).await;
    assert!(session.peak_unsent_bytes <= MAX_UNSENT, "{session:?}");
    assert_eq!(session.unsent_bytes, 0, "{session:?}");
    c.obj.send_only("take", (sent, &chunk)).unwrap();
    c.client.sync().await;
    assert_eq!(consumer.next.load(Ordering::SeqCst), sent + 1);
    assert!(consumer.in_order.load(Ordering::SeqCst));
    c.stop().await;
}

/// The first failure of a streaming send is reported by the next one, and by every one
/// after it, without sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_streaming_send_is_reported_by_the_next() {
    within(async {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let failing = move |method: &str, _args: Args| {
            seen.fetch_add(1, Ordering::SeqCst);
            match method {
                "fail" => Reply::err(captp::Broken::failed("disk full")),
                _ => Reply::ok(()),
            }
        };
        let c = Fixture::new().object(failing).connect().await;
        c.obj.send_streaming("ok", ()).await.unwrap();
        c.obj.send_streaming("fail", ()).await.unwrap();
        c.client.sync().await;
        for _ in 0..2 {
            let b = c.obj.send_streaming("ok", ()).await.unwrap_err();
            assert_eq!((b.kind(), b.message()), (BrokenKind::Failed, "disk full"));
        }
        c.client.sync().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Other sends on the reference are not affected.
        c.obj.send::<()>("ok", ()).await.unwrap();
        c.stop().await;
    })
    .await;
}
