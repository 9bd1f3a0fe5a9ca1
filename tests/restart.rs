//! Sturdy refs across a server vat's restart, in one process over real TLS on loopback:
//! named exports keep their URI when a new vat starts on the same identity directory
//! and port, revocation of a named export, and [`captp::ReconnectingRef`] carrying on
//! after the restart, giving up within its attempt bound when nobody comes back, and
//! stopping at once on an answer no reconnection can change.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use captp::{Args, BrokenKind, Reconnect, Reply, SwissNumber, Vat};
use common::within;
use tokio::sync::mpsc;

/// A fresh identity directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let tag = SwissNumber::generate().expose_base64();
        TempDir(std::env::temp_dir().join(format!(
            "captp-restart-test-{}-{}",
            std::process::id(),
            &tag[..10]
        )))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A counter object whose count starts at `start`: `add(n)` answers the new count.
fn counter(start: u64) -> impl Fn(&str, Args) -> Reply + Send + Sync + 'static {
    let count = Arc::new(AtomicU64::new(start));
    move |method: &str, args: Args| match method {
        "add" => match args.decode::<(u64,)>() {
            Ok((n,)) => Reply::ok(count.fetch_add(n, Ordering::SeqCst) + n),
            Err(e) => Reply::err(e),
        },
        _ => Reply::unknown_method(method),
    }
}

/// A server vat on `dir`, listening on `listen`.
async fn server(dir: &TempDir, listen: &str) -> Vat {
    Vat::builder()
        .identity_dir(&dir.0)
        .listen(listen)
        .start()
        .await
        .expect("the server vat starts")
}

#[tokio::test]
async fn named_export_keeps_its_uri_and_can_be_revoked() {
    within(async {
        let dir = TempDir::new();
        let first = server(&dir, "127.0.0.1:0").await;
        let port = first.local_addr().expect("listening").port();
        let uri = first.export_named("counter", counter(0)).unwrap();
        assert_eq!(first.export_named("counter", counter(0)).unwrap(), uri);
        let other = first.export_named("counter2", counter(0)).unwrap();
        assert_ne!(other.swiss(), uri.swiss());

        // Revoked: unknown, like a number never issued; exported again: back.
        assert!(first.revoke(&uri));
        assert!(!first.revoke(&uri));
        let client = Vat::builder().start().await.unwrap();
        let err = client
            .enliven(&uri)
            .send::<u64>("add", (1,))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), BrokenKind::UnknownObject);
        first.export_named("counter", counter(10)).unwrap();
        let live = client.enliven(&uri);
        let n: u64 = live.send("add", (1,)).await.unwrap();
        assert_eq!(n, 11);
        first.shutdown().await;
        // Wait until the client has seen its session end, so that the next enliven
        // dials anew instead of reusing the dying session.
        assert_eq!(live.when_broken().await.kind(), BrokenKind::Disconnected);

        // A restart on the same directory and port: the same URI, answered by the new
        // object.
        let second = server(&dir, &format!("127.0.0.1:{port}")).await;
        assert_eq!(second.export_named("counter", counter(100)).unwrap(), uri);
        let n: u64 = client.enliven(&uri).send("add", (1,)).await.unwrap();
        assert_eq!(n, 101);

        // Another directory: the same name gives another URI.
        let elsewhere_dir = TempDir::new();
        let elsewhere = server(&elsewhere_dir, "127.0.0.1:0").await;
        let moved = elsewhere.export_named("counter", counter(0)).unwrap();
        assert_ne!(moved.swiss(), uri.swiss());
        assert_ne!(moved.vat_id(), uri.vat_id());

        client.shutdown().await;
        second.shutdown().await;
        elsewhere.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn reconnecting_ref_carries_on_after_the_server_restarts() {
    within(async {
        let dir = TempDir::new();
        let first = server(&dir, "127.0.0.1:0").await;
        let listen = format!("127.0.0.1:{}", first.local_addr().unwrap().port());
        let uri = first.export_named("counter", counter(0)).unwrap();

        let client = Vat::builder().start().await.unwrap();
        let counter_ref = client.enliven_reconnecting(&uri);
        assert_eq!(counter_ref.send::<u64>("add", (1,)).await.unwrap(), 1);
        assert_eq!(counter_ref.send::<u64>("add", (2,)).await.unwrap(), 3);
        assert_eq!(counter_ref.reconnects(), 0);

        // The server goes away; the live reference of that connection breaks for good.
        let live = counter_ref.current().await.unwrap();
        first.shutdown().await;
        let broken = live.when_broken().await;
        assert_eq!(broken.kind(), BrokenKind::Disconnected);
        let on_old = live.send::<u64>("add", (1,)).await.unwrap_err();
        assert_eq!(on_old.kind(), BrokenKind::Disconnected);

        // A new vat on the same identity and port, exporting the same name.
        let second = server(&dir, &listen).await;
        second.export_named("counter", counter(1000)).unwrap();
        assert_eq!(counter_ref.send::<u64>("add", (1,)).await.unwrap(), 1001);
        assert_eq!(counter_ref.send::<u64>("add", (1,)).await.unwrap(), 1002);
        assert_eq!(counter_ref.reconnects(), 1);
        // Clones share the connection.
        let clone = counter_ref.clone();
        assert_eq!(clone.send::<u64>("add", (1,)).await.unwrap(), 1003);
        assert_eq!(clone.reconnects(), 1);

        client.shutdown().await;
        second.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn reconnecting_ref_gives_up_after_its_attempts() {
    within(async {
        // A vat that was there once, and is gone: its port refuses connections.
        let dir = TempDir::new();
        let gone = server(&dir, "127.0.0.1:0").await;
        let uri = gone.export_named("counter", counter(0)).unwrap();
        gone.shutdown().await;
        drop(gone);

        let client = Vat::builder().start().await.unwrap();
        let policy = Reconnect {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            max_attempts: 4,
        };
        let counter_ref = client.enliven_reconnecting_with(&uri, policy);
        let started = Instant::now();
        let err = counter_ref.send::<u64>("add", (1,)).await.unwrap_err();
        let waited = started.elapsed();
        assert_eq!(err.kind(), BrokenKind::Unreachable, "{err}");
        assert!(
            err.message()
                .starts_with("gave up reconnecting after 4 attempts over "),
            "{err}"
        );
        // Three waits between four attempts: 10 + 20 + 40 ms.
        assert!(waited >= Duration::from_millis(70), "{waited:?}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
        // Given up for good: the next send breaks at once, the same way.
        let started = Instant::now();
        let again = counter_ref.send::<u64>("add", (1,)).await.unwrap_err();
        assert_eq!(again.message(), err.message());
        assert!(started.elapsed() < Duration::from_millis(70));
        assert_eq!(counter_ref.reconnects(), 0);
        client.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn reconnecting_ref_does_not_retry_an_unknown_object() {
    within(async {
        let dir = TempDir::new();
        let server = server(&dir, "127.0.0.1:0").await;
        let uri = server.export_named("counter", counter(0)).unwrap();
        assert!(server.revoke(&uri));

        let client = Vat::builder().start().await.unwrap();
        let policy = Reconnect {
            initial_delay: Duration::from_secs(60),
            ..Reconnect::default()
        };
        let counter_ref = client.enliven_reconnecting_with(&uri, policy);
        // One attempt, no 60 s wait: revocation is not an outage.
        let err = counter_ref.send::<u64>("add", (1,)).await.unwrap_err();
        assert_eq!(err.kind(), BrokenKind::UnknownObject);
        let again = counter_ref.send::<u64>("add", (1,)).await.unwrap_err();
        assert_eq!(again.kind(), BrokenKind::UnknownObject);
        client.shutdown().await;
        server.shutdown().await;
    })
    .await;
}

/// An object whose `hang()` never answers and whose `add(n)` answers `n`; it tells
/// `calls` the name of each method called.
fn hanging(
    calls: mpsc::UnboundedSender<String>,
) -> impl Fn(&str, Args) -> Reply + Send + Sync + 'static {
    move |method: &str, args: Args| {
        let _ = calls.send(method.to_owned());
        match method {
            "hang" => Reply::later(std::future::pending::<Result<u64, captp::Broken>>()),
            "add" => match args.decode::<(u64,)>() {
                Ok((n,)) => Reply::ok(n),
                Err(e) => Reply::err(e),
            },
            _ => Reply::unknown_method(method),
        }
    }
}

#[tokio::test]
async fn a_call_in_flight_breaks_and_is_not_sent_again() {
    within(async {
        let dir = TempDir::new();
        let first = server(&dir, "127.0.0.1:0").await;
        let listen = format!("127.0.0.1:{}", first.local_addr().unwrap().port());
        let (tx, mut first_calls) = mpsc::unbounded_channel();
        let uri = first.export_named("h", hanging(tx)).unwrap();

        let client = Vat::builder().start().await.unwrap();
        let h = client.enliven_reconnecting(&uri);
        assert_eq!(h.send::<u64>("add", (5,)).await.unwrap(), 5);
        let in_flight = tokio::spawn({
            let h = h.clone();
            async move { h.send::<u64>("hang", ()).await }
        });
        // Both calls reached the first server before it goes away.
        assert_eq!(first_calls.recv().await.as_deref(), Some("add"));
        assert_eq!(first_calls.recv().await.as_deref(), Some("hang"));
        let live = h.current().await.unwrap();
        first.shutdown().await;
        let broken = in_flight.await.unwrap().unwrap_err();
        assert_eq!(broken.kind(), BrokenKind::Disconnected);
        live.when_broken().await;

        // The restarted server gets the next call only: the hung one is not repeated.
        let second = server(&dir, &listen).await;
        let (tx, mut second_calls) = mpsc::unbounded_channel();
        second.export_named("h", hanging(tx)).unwrap();
        assert_eq!(h.send::<u64>("add", (6,)).await.unwrap(), 6);
        second.shutdown().await;
        assert_eq!(second_calls.recv().await.as_deref(), Some("add"));
        // The object (and so its sender) is gone with the vat: nothing else came.
        drop(second);
        assert_eq!(second_calls.try_recv().ok(), None);
        assert_eq!(h.reconnects(), 1);
        client.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn default_policy_gives_up_after_eight_attempts_on_paused_time() {
    within(async {
        let dir = TempDir::new();
        let gone = server(&dir, "127.0.0.1:0").await;
        let uri = gone.export_named("counter", counter(0)).unwrap();
        gone.shutdown().await;
        drop(gone);

        let client = Vat::builder().start().await.unwrap();
        let counter_ref = client.enliven_reconnecting(&uri);
        let started = tokio::time::Instant::now();
        let err = counter_ref.send::<u64>("add", (1,)).await.unwrap_err();
        let waited = started.elapsed();
        assert_eq!(err.kind(), BrokenKind::Unreachable, "{err}");
        assert!(
            err.message()
                .starts_with("gave up reconnecting after 8 attempts over "),
            "{err}"
        );
        // 100 ms doubling, capped at 5 s: 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2 + 5 s.
        assert!(waited >= Duration::from_millis(11_300), "{waited:?}");
        client.shutdown().await;
    })
    .await;
}
