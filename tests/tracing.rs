//! What the library logs: a full session captured at `TRACE` never shows a swiss number,
//! calls and refusals show up with their documented fields, and an orderly shutdown is
//! logged as a close, not an abort.
//!
//! Every test here shares one global subscriber writing into one buffer (worker threads
//! of a multi-threaded runtime do not see a thread-local default); each test looks only
//! for what its own vats log, told apart by their vat IDs.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use captp::internal::wire::Message;
use captp::{Args, Broken, BrokenKind, Reply, SturdyRef, SwissNumber, Vat};
use common::{RawConn, within};

/// Everything logged by every test in this file, as text without colours.
fn captured() -> Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER
        .get_or_init(|| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let writer = buffer.clone();
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || Capture(writer.clone()))
                .try_init()
                .expect("no other subscriber in this test process");
            buffer
        })
        .clone()
}

/// The log so far, as text.
fn log_text() -> String {
    let buffer = captured();
    let bytes = buffer.lock().expect("log buffer").clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A writer appending to the shared buffer.
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every form a swiss number could take in a log: base64url text, hex (lower and upper),
/// and Rust's `Debug` of the byte array.
fn forms(swiss: &SwissNumber) -> Vec<String> {
    let bytes = swiss.as_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        swiss.expose_base64(),
        hex.clone(),
        hex.to_uppercase(),
        format!("{bytes:?}"),
        format!("{:?}", &bytes[..]),
    ]
}

/// The test object: `add` sums two integers, `fail` fails; anything else is unknown.
fn adder(method: &str, args: Args) -> Reply {
    match method {
        "add" => match args.decode::<(i64, i64)>() {
            Ok((a, b)) => Reply::ok(a + b),
            Err(e) => Reply::err(e),
        },
        "fail" => Reply::err(Broken::failed("as asked")),
        _ => Reply::unknown_method(method),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_session_at_trace_never_logs_a_swiss_number() {
    captured();
    let server = Vat::builder()
        .listen("127.0.0.1:0")
        .start()
        .await
        .expect("server");
    let uri = server.export(adder).expect("export");
    let client = Vat::builder().start().await.expect("client");

    // Enliven from the URI's text, as a user would.
    let adder = client.enliven(&uri.to_string().parse::<SturdyRef>().expect("uri"));
    let sum: i64 = adder.send("add", (2, 40)).await.expect("add");
    assert_eq!(sum, 42);
    let failed = adder.send::<i64>("fail", ()).await.expect_err("fail");
    assert_eq!(failed.kind(), BrokenKind::Failed);
    let unknown = adder.send::<i64>("nope", ()).await.expect_err("unknown");
    assert_eq!(unknown.kind(), BrokenKind::UnknownMethod);
    let bad = adder.send::<i64>("add", ("two",)).await.expect_err("bad");
    assert_eq!(bad.kind(), BrokenKind::BadArguments);

    // A bootstrap of a swiss number the server does not know.
    let wrong_swiss = SwissNumber::generate();
    let addr = server.local_addr().expect("listening");
    let wrong = SturdyRef::from_socket_addr(server.vat_id(), addr, wrong_swiss.clone());
    let missing = client.enliven(&wrong);
    let refused = missing
        .send::<i64>("add", (1, 1))
        .await
        .expect_err("unknown object");
    assert_eq!(refused.kind(), BrokenKind::UnknownObject);

    client.shutdown().await;
    // The server sees the close; wait for its log line, boundedly.
    let server_id = server.vat_id().to_string();
    let client_id = client.vat_id().to_string();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let text = log_text();
            if text
                .lines()
                .any(|l| l.contains(&client_id) && l.contains("the peer closed the session"))
            {
                return;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    server.shutdown().await;
    let text = log_text();
    assert!(
        closed.is_ok(),
        "no orderly close logged for {client_id}:\n{text}"
    );

    // The secrets, in every form, are nowhere.
    for swiss in [uri.swiss(), &wrong_swiss] {
        for form in forms(swiss) {
            assert!(
                !text.contains(&form),
                "a swiss number leaked into the log as {form}"
            );
        }
    }
    assert!(
        !text.contains(&uri.to_string()),
        "the sturdy ref URI leaked into the log"
    );

    // What was logged, with the documented fields.
    let mine: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&server_id) || l.contains(&client_id))
        .collect();
    let count = |needle: &str| mine.iter().filter(|l| l.contains(needle)).count();
    assert!(count("direction=\"inbound\"") > 0, "{text}");
    assert!(count("direction=\"outbound\"") > 0, "{text}");
    assert_eq!(count(" call method=add"), 1, "one successful add:\n{text}");
    assert_eq!(count("outcome=\"failed\""), 1, "{text}");
    assert_eq!(count("call refused method=nope"), 1, "{text}");
    assert_eq!(
        count("call refused method=add"),
        1,
        "bad arguments:\n{text}"
    );
    assert_eq!(
        count("bootstrap refused: no object under that swiss number"),
        1,
        "{text}"
    );
    assert!(count("message in kind=") >= 6, "{text}");
    assert!(count("message out kind=") >= 6, "{text}");
    // The inbound side logs its handshake before it knows the peer's vat ID.
    assert!(count("TLS handshake complete") >= 1, "{text}");
    assert!(
        text.matches("TLS handshake complete").count() >= 2,
        "{text}"
    );
    // An orderly shutdown is not an abort.
    assert_eq!(count("the peer aborted the session"), 0, "{text}");
    // rustls's own records, through the `log` bridge.
    assert!(
        text.contains("rustls::"),
        "no rustls record bridged:\n{text}"
    );
}

/// Waits (boundedly) until the log holds `needle`; returns the log then.
async fn wait_for_log(needle: &str) -> String {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let text = log_text();
            if text.contains(needle) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("never logged {needle:?}:\n{}", log_text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_aborts_are_warnings_with_the_peers_reason_escaped() {
    captured();
    let server = Vat::builder()
        .listen("127.0.0.1:0")
        .start()
        .await
        .expect("server");
    let uri = server.export(adder).expect("export");

    // A peer that aborts with words of its own, a terminal escape among them.
    let mut raw = RawConn::connect(&server).await;
    raw.hello_and_fetch(uri.swiss()).await;
    raw.send(&Message::Abort {
        reason: "tracing test bye \u{1b}[31m red".to_owned(),
    })
    .await;
    let text = wait_for_log("tracing test bye").await;
    let line = text
        .lines()
        .find(|l| l.contains("tracing test bye"))
        .expect("the abort line");
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains("the peer aborted the session"), "{line}");
    assert!(
        line.contains("tracing test bye \\u{1b}[31m red"),
        "escaped: {line}"
    );
    assert!(!text.contains('\u{1b}'), "a raw escape reached the log");

    // A peer that breaks the protocol: a frame that is not CBOR.
    let mut raw = RawConn::connect(&server).await;
    raw.handshake().await;
    raw.send_frame(&[0xff, 0xff, 0xff]).await;
    let reason = within(raw.expect_abort()).await;
    assert!(!reason.is_empty());
    let text = wait_for_log("the peer broke the protocol").await;
    let line = text
        .lines()
        .find(|l| l.contains("the peer broke the protocol"))
        .expect("the violation line");
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains("ending=\"violation\""), "{line}");
    server.shutdown().await;
    for form in forms(uri.swiss()) {
        assert!(
            !log_text().contains(&form),
            "a swiss number leaked into the log as {form}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_logs_its_outcome_under_captp_handoff() {
    captured();
    within(async {
        // A registry (A) hands out B's object to C, twice: once with B listening (the
        // handoff completes), once with B unreachable (it falls back to A).
        let a = Vat::builder().listen("127.0.0.1:0").start().await.unwrap();
        let kept = Arc::new(Mutex::new(Vec::<captp::Ref>::new()));
        let held = kept.clone();
        let registry = a
            .export(move |method: &str, args: Args| match method {
                "put" => match args.decode::<(captp::Ref,)>() {
                    Ok((r,)) => {
                        held.lock().unwrap().push(r);
                        Reply::ok(())
                    }
                    Err(e) => Reply::err(e),
                },
                "get" => match args.decode::<(usize,)>() {
                    Ok((i,)) => Reply::reference(held.lock().unwrap()[i].clone()),
                    Err(e) => Reply::err(e),
                },
                _ => Reply::unknown_method(method),
            })
            .unwrap();
        let listening = Vat::builder().listen("127.0.0.1:0").start().await.unwrap();
        let hidden = Vat::builder().start().await.unwrap();
        for b in [&listening, &hidden] {
            b.enliven(&registry)
                .send::<()>("put", (captp::Ref::from_object(adder),))
                .await
                .unwrap();
        }
        let c = Vat::builder().start().await.unwrap();
        let registry_ref = c.enliven(&registry);
        for (i, b) in [&listening, &hidden].into_iter().enumerate() {
            let r: captp::Ref = registry_ref.send("get", (i,)).await.unwrap();
            let outcome = r.when_handed_off().await;
            let sum: i64 = r.send("add", (i as i64, 1)).await.unwrap();
            assert_eq!(sum, i as i64 + 1);
            let host = b.vat_id().to_string();
            let text = log_text();
            let line = text
                .lines()
                .find(|l| l.contains("captp::handoff") && l.contains(&host))
                .unwrap_or_else(|| panic!("no handoff line for {host}:\n{text}"));
            assert!(
                line.contains(&format!("introducer={}", a.vat_id())),
                "{line}"
            );
            if i == 0 {
                assert_eq!(outcome, captp::Handoff::Direct);
                assert!(
                    line.contains("DEBUG") && line.contains("handed off"),
                    "{line}"
                );
            } else {
                assert!(matches!(outcome, captp::Handoff::ThroughIntroducer { .. }));
                assert!(
                    line.contains(" INFO ") && line.contains("handoff failed"),
                    "{line}"
                );
                assert!(line.contains("no address hint"), "{line}");
            }
        }
        for form in forms(registry.swiss()) {
            assert!(
                !log_text().contains(&form),
                "a swiss number leaked as {form}"
            );
        }
        for vat in [a, listening, hidden, c] {
            vat.shutdown().await;
        }
    })
    .await;
}
