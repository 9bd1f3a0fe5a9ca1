//! Connection admission under floods of connections that never authenticate: idle TCP
//! sockets, reopened as soon as the vat drops them, from one or several source addresses
//! in 127.0.0.0/8, while a well-behaved client connects afresh and calls, again and
//! again. Every bound is read back through `Vat::stats().connections` as a number.
//!
//! The attacks run in real time (paused time would jump to the handshake deadlines
//! while the sockets churn); every loop is bounded by a count, and the whole of each
//! test by a timeout. A flood opens 1,100 sockets, and the vat holds at most one per
//! socket (128 in the handshake, up to 1,024 waiting for a slot) plus its own: about
//! 2,300 descriptors, and 4,600 when both floods run at once, within the 20,000 allowed
//! here (the floods check that `ulimit -n` is at least 6,000 first, and say so if not).

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use captp::{ConnectionStats, Vat};
use common::{Fixture, IO_TIMEOUT, RawConn, Server, limits, within};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Attacker sockets in a flood.
const ATTACKERS: usize = 1_100;
/// Times one attacker socket is reopened at most (the flood stops earlier, when the
/// good client is done).
const MAX_ROUNDS: usize = 100_000;
/// Fresh good clients, one after another, during a flood.
const GOOD_ROUNDS: i64 = 100;
/// The share of them that must connect and get their answer.
const MIN_SERVED_PERCENT: i64 = 95;
/// The bound on one good client's connect and call.
const GOOD_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The server's handshake timeout in the floods: short, so that waits for a slot (a
/// quarter: 1 s) and deadlines under pressure (1 s) run out, and sockets are reopened,
/// while the good clients connect.
const FLOOD_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(4);
/// The bound on one flood test.
const FLOOD_TIMEOUT: Duration = Duration::from_secs(180);
/// Polls of `Vat::stats` while waiting for the vat to catch up with sockets already
/// connected (a backstop: the wait is bounded by [`IO_TIMEOUT`] first).
const MAX_POLLS: usize = 10_000_000;

/// `127.0.0.n`.
fn local(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// Connects to `server` from `source` (any port).
async fn connect_from(source: Ipv4Addr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
    match tokio::time::timeout(IO_TIMEOUT, socket.connect(server)).await {
        Ok(connected) => connected,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Whether the vat has closed `tcp` (it sends nothing before TLS, so any read that ends
/// is the close).
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Whether `tcp` is still open, without waiting.
fn still_open(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(tcp.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Polls the vat's connection counts until `done` holds; panics with the last counts
/// after [`IO_TIMEOUT`] (or [`MAX_POLLS`], whichever comes first).
async fn wait_for(vat: &Vat, what: &str, done: impl Fn(&ConnectionStats) -> bool) {
    let mut last = ConnectionStats::default();
    let reached = tokio::time::timeout(IO_TIMEOUT, async {
        for _ in 0..MAX_POLLS {
            last = vat.stats().await.connections;
            if done(&last) {
                return true;
            }
            tokio::task::yield_now().await;
        }
        false
    })
    .await;
    assert!(
        matches!(reached, Ok(true)),
        "{what}: never reached; last counts {last:?}"
    );
}

/// One attacker socket: connects from `source`, sends nothing, and reconnects as soon
/// as the vat drops it, until `stop` or [`MAX_ROUNDS`].
async fn attacker(
    source: Ipv4Addr,
    server: SocketAddr,
    mut stop: watch::Receiver<bool>,
    connects: Arc<AtomicU64>,
) {
    for _ in 0..MAX_ROUNDS {
        if *stop.borrow() {
            return;
        }
        let mut tcp = match connect_from(source, server).await {
            Ok(tcp) => tcp,
            Err(_) => {
                // Out of ports or backlog for a moment: try again after the others.
                tokio::task::yield_now().await;
                continue;
            }
        };
        connects.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 64];
        tokio::select! {
            // Whatever the read returns, the vat closed it (or reset it).
            _ = tcp.read(&mut buf) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The highest counts seen while sampling, and how many good clients were served.
#[derive(Debug, Default)]
struct Outcome {
    served: i64,
    failures: Vec<String>,
    most_handshaking: usize,
    most_from_one_source: usize,
    most_established: usize,
    most_waiting: usize,
    last: ConnectionStats,
    attacker_connects: u64,
}

/// Floods `server` with [`ATTACKERS`] idle sockets spread over `sources`, while
/// [`GOOD_ROUNDS`] fresh client vats from 127.0.0.1, one after another, each connect and
/// call `add` once. Samples the server's counts after each good round.
async fn flood(server: &Server, sources: &[Ipv4Addr]) -> Outcome {
    let addr = server.addr();
    let (stop_tx, stop) = watch::channel(false);
    let connects = Arc::new(AtomicU64::new(0));
    let mut attackers = JoinSet::new();
    for i in 0..ATTACKERS {
        attackers.spawn(attacker(
            sources[i % sources.len()],
            addr,
            stop.clone(),
            connects.clone(),
        ));
    }
    // Wait until the flood holds the vat's handshake slots, and the vat has dropped as
    // many attacker connections as there are attacker sockets (each reopened at once),
    // before the first good client.
    let source_count = sources.len();
    wait_for(&server.vat, "the flood fills the handshake slots", |c| {
        c.handshaking >= (16 * source_count).min(128)
    })
    .await;
    wait_for(&server.vat, "the flood turns over once", |c| {
        c.refused + c.cut >= ATTACKERS as u64
    })
    .await;

    let mut outcome = Outcome::default();
    for round in 0..GOOD_ROUNDS {
        let client = Vat::builder().start().await.expect("a client vat starts");
        let obj = client.enliven(&server.uri);
        let result =
            tokio::time::timeout(GOOD_CALL_TIMEOUT, obj.send::<i64>("add", (round, 1_000))).await;
        match result {
            Ok(Ok(sum)) if sum == round + 1_000 => outcome.served += 1,
            Ok(Ok(sum)) => outcome
                .failures
                .push(format!("round {round}: wrong sum {sum}")),
            Ok(Err(broken)) => outcome.failures.push(format!("round {round}: {broken}")),
            Err(_) => outcome.failures.push(format!(
                "round {round}: no answer within {GOOD_CALL_TIMEOUT:?}"
            )),
        }
        drop(obj);
        client.shutdown().await;
        let c = server.vat.stats().await.connections;
        outcome.most_handshaking = outcome.most_handshaking.max(c.handshaking);
        outcome.most_from_one_source = outcome
            .most_from_one_source
            .max(c.handshaking_from_busiest_source);
        outcome.most_established = outcome.most_established.max(c.established);
        outcome.most_waiting = outcome.most_waiting.max(c.waiting);
    }

    stop_tx.send_replace(true);
    let joined = tokio::time::timeout(IO_TIMEOUT, async {
        while attackers.join_next().await.is_some() {}
    })
    .await;
    assert!(
        joined.is_ok(),
        "the attacker tasks did not stop within 10 s"
    );
    outcome.attacker_connects = connects.load(Ordering::Relaxed);
    // The last good client's session may still be closing at the server.
    wait_for(&server.vat, "every good client's session ended", |c| {
        c.established == 0
    })
    .await;
    outcome.last = server.vat.stats().await.connections;
    outcome
}

/// Fails the test early, with the reason, where the flood cannot run.
fn check_descriptor_limit() {
    // `ulimit -n` through the shell: no dependency just to read it.
    let out = std::process::Command::new("sh")
        .args(["-c", "ulimit -n"])
        .output()
        .expect("sh runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let limit = text.trim();
    if limit != "unlimited" {
        let n: u64 = limit.parse().expect("ulimit -n prints a number");
        assert!(
            n >= 6_000,
            "the floods need about 4,600 file descriptors; `ulimit -n` is {n}: raise it to \
             6,000 or more to run these tests"
        );
    }
}

/// Checks what every flood must show: the good client served at least
/// [`MIN_SERVED_PERCENT`] of the time, and the counts within the default limits.
fn assert_flood_outcome(outcome: &Outcome) {
    let served_percent = outcome.served * 100 / GOOD_ROUNDS;
    assert!(
        served_percent >= MIN_SERVED_PERCENT,
        "the good client was served {} times in {GOOD_ROUNDS} ({served_percent}%, at least \
         {MIN_SERVED_PERCENT}% required): {:?}; {outcome:?}",
        outcome.served,
        outcome.failures
    );
    // Defaults: 128 connections in the handshake, 16 from one source, 1,024 waiting.
    assert!(outcome.most_handshaking <= 128, "{outcome:?}");
    assert!(outcome.most_from_one_source <= 16, "{outcome:?}");
    assert!(outcome.most_waiting <= 1_024, "{outcome:?}");
    // Only good clients ever got past hello: with them gone, no session is left.
    assert_eq!(outcome.last.established, 0, "{outcome:?}");
    // The attack really pressed: connections were refused (at accept, or after
    // waiting for a slot in vain) and reopened.
    assert!(outcome.last.refused > 0, "{outcome:?}");
    assert!(
        outcome.attacker_connects > ATTACKERS as u64,
        "the attackers never reconnected: {outcome:?}"
    );
}

// 1,100 idle sockets from one address: the per-source cap keeps them to 16 handshake
// slots; the others wait, unread, for one of those to free, and are closed when none
// comes in time (or at once, when the queue is full).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_holds_16_handshakes_and_good_clients_are_served() {
    check_descriptor_limit();
    let outcome = tokio::time::timeout(FLOOD_TIMEOUT, async {
        let server = Fixture::new()
            .server_limits(limits(|l| l.handshake_timeout = FLOOD_HANDSHAKE_TIMEOUT))
            .serve()
            .await;
        let outcome = flood(&server, &[local(2)]).await;
        server.vat.shutdown().await;
        outcome
    })
    .await
    .expect("the flood test finished within its timeout");
    assert_flood_outcome(&outcome);
    // One source: exactly its cap, and the budget never near full.
    assert_eq!(outcome.most_from_one_source, 16, "{outcome:?}");
    assert!(outcome.most_handshaking <= 16 + 1, "{outcome:?}");
}

// 1,100 idle sockets from 11 addresses (100 each) want 176 handshake slots, more than
// the 128 there are: the budget stays full, each newcomer from a source with fewer
// cuts the oldest handshake of the busiest source, and the good client (one connection
// from its own address) is never the one cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_eleven_addresses_fills_128_handshakes_and_good_clients_are_served() {
    check_descriptor_limit();
    let sources: Vec<Ipv4Addr> = (2..=12).map(local).collect();
    let outcome = tokio::time::timeout(FLOOD_TIMEOUT, async {
        let server = Fixture::new()
            .server_limits(limits(|l| l.handshake_timeout = FLOOD_HANDSHAKE_TIMEOUT))
            .serve()
            .await;
        let outcome = flood(&server, &sources).await;
        server.vat.shutdown().await;
        outcome
    })
    .await
    .expect("the flood test finished within its timeout");
    assert_flood_outcome(&outcome);
    // The budget was full whenever it was looked at, and the good clients got in by
    // cutting attackers' handshakes.
    assert_eq!(outcome.most_handshaking, 128, "{outcome:?}");
    assert!(outcome.last.cut >= GOOD_ROUNDS as u64, "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_at_most_its_cap_of_handshakes_and_the_rest_wait() {
    within(async {
        let server = Fixture::new()
            .server_limits(limits(|l| l.max_handshaking_per_address = 4))
            .serve()
            .await;
        let addr = server.addr();
        let mut sockets = Vec::new();
        for _ in 0..6 {
            sockets.push(connect_from(local(2), addr).await.expect("TCP connects"));
        }
        wait_for(&server.vat, "4 in the handshake and 2 waiting", |c| {
            c.handshaking == 4 && c.waiting == 2
        })
        .await;
        let c = server.vat.stats().await.connections;
        assert_eq!(
            (c.handshaking_from_busiest_source, c.refused),
            (4, 0),
            "{c:?}"
        );
        assert!(sockets.iter().all(still_open));

        // Another address is not held back by the first one's cap.
        let _other = connect_from(local(3), addr).await.expect("TCP connects");
        wait_for(&server.vat, "the other address admitted", |c| {
            c.handshaking == 5
        })
        .await;
        // Nor is a good client.
        let client = Vat::builder().start().await.expect("a client vat");
        let sum: i64 = client
            .enliven(&server.uri)
            .send("add", (1, 1_000))
            .await
            .expect("the good client is served");
        assert_eq!(sum, 1_001);
        let c = server.vat.stats().await.connections;
        assert_eq!(
            (c.established, c.handshaking, c.waiting),
            (1, 5, 2),
            "{c:?}"
        );

        // Closing a socket in the handshake hands its slot to the oldest waiting one.
        drop(sockets.remove(0));
        wait_for(&server.vat, "a waiting socket admitted", |c| {
            c.handshaking == 5 && c.waiting == 1
        })
        .await;
        assert_eq!(server.vat.stats().await.connections.refused, 0);
        client.shutdown().await;
        server.vat.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshaking_sockets_cannot_take_established_slots() {
    within(async {
        // Long timeouts: nothing here may be cut by a deadline while the test runs.
        let server = Fixture::new()
            .server_limits(limits(|l| {
                l.max_connections = 4;
                l.max_handshaking = 8;
                l.max_handshaking_per_address = 8;
                l.handshake_timeout = Duration::from_secs(60);
            }))
            .serve()
            .await;
        let addr = server.addr();
        let id = server.vat.vat_id();
        // Two sessions established.
        let mut first = RawConn::connect_to(addr, id).await;
        let export = first.hello_and_fetch(server.uri.swiss()).await;
        let mut second = RawConn::connect_to(addr, id).await;
        second.handshake().await;
        wait_for(&server.vat, "two established", |c| c.established == 2).await;

        // Twenty idle sockets: eight fill the handshake budget, twelve wait.
        let mut idle = Vec::new();
        for _ in 0..20 {
            idle.push(connect_from(local(2), addr).await.expect("TCP connects"));
        }
        wait_for(&server.vat, "8 admitted and 12 waiting", |c| {
            c.handshaking == 8 && c.waiting == 12
        })
        .await;
        // The established sessions are untouched.
        first.add(export, 2, 1).await;
        second.ping(7).await;

        // A newcomer from another address takes the oldest idle socket's slot.
        let client = Vat::builder().start().await.expect("a client vat");
        let sum: i64 = client
            .enliven(&server.uri)
            .send("add", (3, 1_000))
            .await
            .expect("the newcomer is served");
        assert_eq!(sum, 1_003);
        // Its slot, freed at its hello, went to the next waiting socket.
        let c = server.vat.stats().await.connections;
        assert_eq!(
            (c.established, c.handshaking, c.waiting, c.cut),
            (3, 8, 11, 1),
            "{c:?}"
        );
        assert!(
            closed_within(&mut idle[0], IO_TIMEOUT).await,
            "the oldest was cut"
        );
        assert!(idle[1..].iter().all(still_open));

        client.shutdown().await;
        server.vat.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_past_the_established_limit_is_refused_with_a_reason() {
    within(async {
        let server = Fixture::new()
            .server_limits(limits(|l| l.max_connections = 2))
            .serve()
            .await;
        let addr = server.addr();
        let id = server.vat.vat_id();
        // Admitted while slots were free; says nothing yet.
        let mut late = RawConn::connect_to(addr, id).await;
        let mut a = RawConn::connect_to(addr, id).await;
        a.handshake().await;
        let mut b = RawConn::connect_to(addr, id).await;
        b.handshake().await;
        wait_for(&server.vat, "two established, one waiting", |c| {
            c.established == 2 && c.handshaking == 1
        })
        .await;

        late.handshake().await;
        let reason = late.expect_abort().await;
        assert!(
            reason.contains("already serves 2 connections, its limit"),
            "{reason}"
        );
        wait_for(&server.vat, "the late one gone", |c| {
            c.established == 2 && c.handshaking == 0
        })
        .await;
        a.ping(1).await;
        b.ping(2).await;
        server.vat.shutdown().await;
    })
    .await;
}

// Paused time: the deadlines are met on the tokio clock, exactly.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn past_half_the_handshake_budget_new_connections_get_a_quarter_of_the_timeout() {
    within(async {
        let timeout = Duration::from_secs(8);
        let server = Fixture::new()
            .server_limits(limits(|l| {
                l.max_handshaking = 4;
                l.handshake_timeout = timeout;
            }))
            .serve()
            .await;
        let addr = server.addr();
        let started = Instant::now();
        // Two calm (half the budget), then one under pressure.
        let mut calm = connect_from(local(1), addr).await.expect("TCP connects");
        let _calm2 = connect_from(local(1), addr).await.expect("TCP connects");
        wait_for(&server.vat, "two admitted", |c| c.handshaking == 2).await;
        let mut pressed = connect_from(local(1), addr).await.expect("TCP connects");
        wait_for(&server.vat, "three admitted", |c| c.handshaking == 3).await;

        assert!(closed_within(&mut pressed, IO_TIMEOUT).await);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= timeout / 4 && elapsed < timeout / 4 + Duration::from_millis(10),
            "the pressed connection was dropped after {elapsed:?}, not at 2 s"
        );
        assert!(closed_within(&mut calm, IO_TIMEOUT).await);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= timeout && elapsed < timeout + Duration::from_millis(10),
            "the calm connection was dropped after {elapsed:?}, not at 8 s"
        );
        server.vat.shutdown().await;
    })
    .await;
}
