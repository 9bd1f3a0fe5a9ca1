//! End-to-end tests of the vat runtime: vats talking over real mutual TLS on 127.0.0.1.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use captp::Host;
use captp::internal::wire::Message;
use captp::{Broken, BrokenKind, Identity, Ref, SturdyRef, SwissNumber};
use common::{
    Connected, Fixture, Note, Sample, Shape, TestObject, connected, limits, sample, silent_server,
    start_client, start_client_with, start_server, within,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_bytes::ByteBuf;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

// ---- calls and their failures ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serde_types_round_trip_through_echo() {
    within(async {
        let c = connected().await;
        let obj = &c.obj;

        let s = sample();
        let back: Sample = obj.send("echo", (s.clone(),)).await.expect("echo");
        assert_eq!(back, s);

        for text in ["", "plain", "héllo, 世界 🦀", "\u{0}\u{7f}\u{10ffff}"] {
            let back: String = obj.send("echo_str", (text,)).await.expect("echo_str");
            assert_eq!(back, text);
        }
        let long = "x".repeat(50_000);
        let back: String = obj.send("echo_str", (&long,)).await.expect("long");
        assert_eq!(back, long);

        for bytes in [vec![], vec![0u8], (0..=255).collect::<Vec<u8>>()] {
            let back: ByteBuf = obj
                .send("echo_bytes", (ByteBuf::from(bytes.clone()),))
                .await
                .expect("echo_bytes");
            assert_eq!(back.into_vec(), bytes);
        }

        for opt in [None, Some(0i64), Some(i64::MAX), Some(i64::MIN)] {
            let back: Option<i64> = obj.send("echo_opt", (opt,)).await.expect("echo_opt");
            assert_eq!(back, opt);
        }

        let tuple = (-128i8, "t".to_owned(), false, 1.5f32);
        let back: (i8, String, bool, f32) = obj
            .send("echo_tuple", (tuple.clone(),))
            .await
            .expect("echo_tuple");
        assert_eq!(back, tuple);

        let list = vec![Some(1u64), None, Some(u64::MAX)];
        let back: Vec<Option<u64>> = obj
            .send("echo_list", (list.clone(),))
            .await
            .expect("echo_list");
        assert_eq!(back, list);

        let map: HashMap<String, i64> = (0..50).map(|i| (format!("key{i}"), -i)).collect();
        let back: HashMap<String, i64> = obj
            .send("echo_map", (map.clone(),))
            .await
            .expect("echo_map");
        assert_eq!(back, map);

        for shape in [
            Shape::Point,
            Shape::Circle(2.0),
            Shape::Pair(1, -1),
            Shape::Rect { w: 1, h: 2 },
        ] {
            let back: Shape = obj
                .send("echo_shape", (shape.clone(),))
                .await
                .expect("echo_shape");
            assert_eq!(back, shape);
        }

        let sum: i64 = obj.send("add", (40, 2)).await.expect("add");
        assert_eq!(sum, 42);

        c.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_of_the_wrong_type_breaks_with_decode() {
    within(async {
        let c = connected().await;
        let obj = &c.obj;

        let err = obj
            .send::<i64>("echo_str", ("not a number",))
            .await
            .expect_err("a string is not an i64");
        assert_eq!(err.kind(), BrokenKind::Decode, "{err}");
        assert!(err.message().contains("i64"), "{err}");

        let err = obj
            .send::<Vec<String>>("echo", (sample(),))
            .await
            .expect_err("a struct is not a list");
        assert_eq!(err.kind(), BrokenKind::Decode, "{err}");

        let err = obj
            .send::<Sample>("add", (1, 2))
            .await
            .expect_err("an integer is not a struct");
        assert_eq!(err.kind(), BrokenKind::Decode, "{err}");

        // Only that promise broke: the reference and the session carry on.
        let sum: i64 = obj
            .send("add", (1, 2))
            .await
            .expect("add after decode errors");
        assert_eq!(sum, 3);

        c.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_break_with_bad_arguments() {
    within(async {
        let c = connected().await;
        let obj = &c.obj;

        let err = obj
            .send::<i64>("add", ("one", "two"))
            .await
            .expect_err("strings are not integers");
        assert_eq!(err.kind(), BrokenKind::BadArguments, "{err}");
        assert!(
            err.message()
                .contains("arguments do not match the method's parameters"),
            "{err}"
        );

        let err = obj
            .send::<i64>("add", (1,))
            .await
            .expect_err("one argument is not two");
        assert_eq!(err.kind(), BrokenKind::BadArguments, "{err}");

        let err = obj
            .send::<Sample>("echo", ("not a sample",))
            .await
            .expect_err("a string is not a Sample");
        assert_eq!(err.kind(), BrokenKind::BadArguments, "{err}");

        let sum: i64 = obj.send("add", (2, 2)).await.expect("add");
        assert_eq!(sum, 4);

        c.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_revoked_swiss_numbers_break_identically() {
    within(async {
        let server = start_server().await;
        let client = start_client().await;

        let unknown = client
            .enliven(&server.unknown_ref())
            .send::<i64>("add", (1, 2))
            .await
            .expect_err("no object under a fresh swiss number");
        assert_eq!(unknown.kind(), BrokenKind::UnknownObject, "{unknown}");
        assert_eq!(unknown, Broken::unknown_object());

        let (other, _notes) = TestObject::new("other");
        let uri = server.vat.export(other).expect("export");
        let early = client.enliven(&uri);
        let name: String = early.send("whoami", ()).await.expect("whoami");
        assert_eq!(name, "other");

        assert!(server.vat.revoke(&uri));
        assert!(!server.vat.revoke(&uri), "revoked twice");

        let revoked = client
            .enliven(&uri)
            .send::<String>("whoami", ())
            .await
            .expect_err("a revoked swiss number");
        assert_eq!(revoked.kind(), BrokenKind::UnknownObject, "{revoked}");
        // Indistinguishable from a swiss number never issued: same kind, same message.
        assert_eq!(revoked, unknown);
        assert_eq!(revoked.message(), unknown.message());

        // A reference enlivened before the revocation keeps working.
        let name: String = early.send("whoami", ()).await.expect("whoami after revoke");
        assert_eq!(name, "other");

        // Another vat's sturdy ref is not this vat's to revoke.
        let foreign = SturdyRef::new(
            Identity::generate().expect("id").vat_id(),
            Host::Ipv4(Ipv4Addr::LOCALHOST),
            server.addr().port(),
            server.uri.swiss().clone(),
        );
        assert!(!server.vat.revoke(&foreign));
        let name: String = client
            .enliven(&server.uri)
            .send("whoami", ())
            .await
            .expect("root still exported");
        assert_eq!(name, "root");

        client.shutdown().await;
        server.vat.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_error_breaks_with_failed_and_its_message() {
    within(async {
        let c = connected().await;
        let obj = &c.obj;

        let err = obj
            .send::<()>("fail", ("insufficient funds",))
            .await
            .expect_err("fail fails");
        assert_eq!(err.kind(), BrokenKind::Failed);
        assert_eq!(err, Broken::failed("insufficient funds"));

        let err = obj
            .send::<i64>("add", (i64::MAX, 1))
            .await
            .expect_err("overflow");
        assert_eq!(err, Broken::failed("overflow"));

        c.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_breaks_with_unknown_method() {
    within(async {
        let c = connected().await;

        let err = c
            .obj
            .send::<()>("frobnicate", (1, 2, 3))
            .await
            .expect_err("no such method");
        assert_eq!(err.kind(), BrokenKind::UnknownMethod);
        assert!(err.message().contains("frobnicate"), "{err}");
        assert_eq!(err, Broken::unknown_method("frobnicate"));

        c.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_past_the_peers_frame_limit_break_locally() {
    within(async {
        let c = Fixture::new()
            .server_limits(limits(|l| l.max_frame = 64 * 1024))
            .connect()
            .await;
        let obj = &c.obj;
        // One round trip first, so the client has the server's hello (its frame limit).
        let sum: i64 = obj.send("add", (1, 1)).await.expect("add");
        assert_eq!(sum, 2);

        let big = ByteBuf::from(vec![7u8; 100 * 1024]);
        let err = obj
            .send::<ByteBuf>("echo_bytes", (big,))
            .await
            .expect_err("100 KiB over a 64 KiB limit");
        assert_eq!(err.kind(), BrokenKind::TooLarge, "{err}");

        // Nothing was sent, so the session is intact.
        let sum: i64 = obj.send("add", (2, 2)).await.expect("add after too_large");
        assert_eq!(sum, 4);
        let stats = c.client.stats().await;
        assert_eq!(stats.sessions.len(), 1);

        c.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_past_the_callers_frame_limit_breaks_with_too_large() {
    within(async {
        let c = Fixture::new()
            .client_limits(limits(|l| l.max_frame = 64 * 1024))
            .connect()
            .await;
        let obj = &c.obj;
        // Arguments are checked against the server's limit (1 MiB), so this goes out;
        // the echo would be 100 KiB, past the 64 KiB the client announced.
        let big = ByteBuf::from(vec![7u8; 100 * 1024]);
        let err = obj
            .send::<ByteBuf>("echo_bytes", (big,))
            .await
            .expect_err("the result is too large for the caller");
        assert_eq!(err.kind(), BrokenKind::TooLarge, "{err}");

        let small = ByteBuf::from(vec![7u8; 1024]);
        let back: ByteBuf = obj
            .send("echo_bytes", (small.clone(),))
            .await
            .expect("a small echo");
        assert_eq!(back, small);

        c.stop().await;
    })
    .await;
}

// ---- connecting ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_vat_id_for_the_address_breaks_with_vat_id_mismatch() {
    within(async {
        let server = start_server().await;
        let client = start_client().await;
        let impostor = Identity::generate().expect("id").vat_id();
        let pinned_wrong = SturdyRef::new(
            impostor,
            Host::Ipv4(Ipv4Addr::LOCALHOST),
            server.addr().port(),
            server.uri.swiss().clone(),
        );
        let r = client.enliven(&pinned_wrong);
        let err = r
            .send::<i64>("add", (1, 2))
            .await
            .expect_err("the server is not the pinned vat");
        assert_eq!(err.kind(), BrokenKind::VatIdMismatch, "{err}");
        assert!(err.message().contains(&impostor.to_string()), "{err}");
        assert!(
            err.message().contains(&server.vat.vat_id().to_string()),
            "{err}"
        );
        // No session was made on either side.
        assert!(server.vat.stats().await.sessions.is_empty());

        // The right pin still works from the same client.
        let sum: i64 = client
            .enliven(&server.uri)
            .send("add", (1, 2))
            .await
            .expect("add");
        assert_eq!(sum, 3);
        let stats = server.vat.stats().await;
        assert_eq!(stats.sessions.len(), 1);
        assert_eq!(stats.sessions[0].peer, client.vat_id());

        client.shutdown().await;
        server.vat.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_breaks_with_unreachable() {
    within(async {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let client = start_client().await;
        let uri = SturdyRef::new(
            Identity::generate().expect("id").vat_id(),
            Host::Ipv4(Ipv4Addr::LOCALHOST),
            port,
            SwissNumber::generate(),
        );
        let r = client.enliven(&uri);
        let err = r
            .send::<i64>("add", (1, 2))
            .await
            .expect_err("nobody listens there");
        assert_eq!(err.kind(), BrokenKind::Unreachable, "{err}");
        assert!(
            err.message().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        // The reference is now known to be broken, and later sends break the same way.
        assert_eq!(r.broken_reason(), Some(err.clone()));
        let again = r
            .send::<i64>("add", (1, 2))
            .await
            .expect_err("still unreachable");
        assert_eq!(again, err);
        assert!(client.stats().await.sessions.is_empty());

        client.shutdown().await;
    })
    .await;
}

/// Accepts any server certificate: the test client below checks nothing, it only
/// wants to get through the handshake without a client certificate.
#[derive(Debug)]
struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_is_never_served() {
    within(async {
        let server = start_server().await;
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_no_client_auth();
        config.alpn_protocols = vec![captp::internal::transport::ALPN.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(server.addr())
            .await
            .expect("TCP connects");
        let name = ServerName::IpAddress(std::net::IpAddr::from(Ipv4Addr::LOCALHOST).into());
        // In TLS 1.3 the client may consider the handshake done before the server has
        // checked its (missing) certificate; either way not one byte of captp arrives.
        if let Ok(mut tls) = connector.connect(name, tcp).await {
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(common::IO_TIMEOUT, tls.read(&mut buf))
                .await
                .expect("the server neither closed nor refused within 10 s");
            match read {
                Ok(0) | Err(_) => {}
                Ok(n) => panic!("a client without a certificate got {n} bytes"),
            }
        }
        assert!(server.vat.stats().await.sessions.is_empty());

        // A normal client keeps working, and is the only session the server has.
        let client = start_client().await;
        let sum: i64 = client
            .enliven(&server.uri)
            .send("add", (20, 22))
            .await
            .expect("add");
        assert_eq!(sum, 42);
        let stats = server.vat.stats().await;
        assert_eq!(stats.sessions.len(), 1);
        assert_eq!(stats.sessions[0].peer, client.vat_id());
        assert!(stats.sessions[0].inbound);

        client.shutdown().await;
        server.vat.shutdown().await;
    })
    .await;
}

// ---- pipelining ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_pipeline_before_anything_resolves() {
    within(async {
        // None of this awaits: the fetch, the calls on the fetched object, a call on the
        // result of `sub`, and a call on the result of a call on that result.
        let c = connected().await;
        let obj = &c.obj;
        let sum = obj.send::<i64>("add", (1, 2));
        let echoed = obj.send::<String>("echo_str", ("pipelined",));
        let kid = obj.send_ref("sub", ("kid",));
        let kid_name = kid.send::<String>("name", ());
        let grandchild = kid.send_ref("child", ("grandchild",));
        let grandchild_name = grandchild.send::<String>("name", ());

        assert_eq!(sum.await.expect("add"), 3);
        assert_eq!(echoed.await.expect("echo"), "pipelined");
        assert_eq!(kid_name.await.expect("kid name"), "kid");
        assert_eq!(
            grandchild_name.await.expect("grandchild name"),
            "grandchild"
        );

        // The same references work once resolved.
        let again: String = kid.send("name", ()).await.expect("kid name again");
        assert_eq!(again, "kid");
        let sum: i64 = obj.send("add", (5, 5)).await.expect("add again");
        assert_eq!(sum, 10);

        c.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_on_an_unknown_swiss_breaks_like_the_fetch() {
    within(async {
        let server = start_server().await;
        let client = start_client().await;

        let missing = client.enliven(&server.unknown_ref());
        let first = missing.send::<i64>("add", (1, 2));
        let second = missing.send::<String>("echo_str", ("x",));
        let deeper = missing.send_ref("sub", ("x",)).send::<String>("name", ());

        let first = first.await.expect_err("no object");
        let second = second.await.expect_err("no object");
        let deeper = deeper.await.expect_err("no object");
        assert_eq!(first, Broken::unknown_object());
        assert_eq!(second, first);
        assert_eq!(deeper, first);

        // Once the fetch is known to have failed, later sends break the same way.
        let later = missing
            .send::<i64>("add", (3, 4))
            .await
            .expect_err("no object");
        assert_eq!(later, first);

        // The session itself is fine.
        let sum: i64 = client
            .enliven(&server.uri)
            .send("add", (3, 4))
            .await
            .expect("add");
        assert_eq!(sum, 7);

        client.shutdown().await;
        server.vat.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_on_a_failed_call_breaks_with_its_error() {
    within(async {
        let c = connected().await;
        let obj = &c.obj;

        let failed = obj.send_ref("fail", ("no sub for you",));
        let name = failed.send::<String>("name", ());
        let deeper = failed.send_ref("child", ("x",)).send::<String>("name", ());
        let expected = Broken::failed("no sub for you");
        assert_eq!(name.await.expect_err("pipelined on a failure"), expected);
        assert_eq!(deeper.await.expect_err("two levels deep"), expected);
        let later = failed
            .send::<String>("name", ())
            .await
            .expect_err("still failed");
        assert_eq!(later, expected);

        // A promise that resolved to plain data is not an object.
        let number = obj.send_ref("add", (1, 2));
        let err = number
            .send::<String>("name", ())
            .await
            .expect_err("3 has no methods");
        assert_eq!(err.kind(), BrokenKind::NotAnObject, "{err}");

        c.stop().await;
    })
    .await;
}

// ---- ordering ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_on_one_reference_arrive_in_order() {
    within(async {
        let c = connected().await;
        let obj = &c.obj;

        // Before the fetch resolves: all of these are pipelined on the fetch.
        for i in 0..200u32 {
            obj.send_only("counter_push", (i,)).unwrap();
        }
        let got: Vec<u32> = obj.send("counter_get", ()).await.expect("counter_get");
        assert_eq!(got, (0..200).collect::<Vec<_>>());

        // After it resolved: sent straight to the export.
        for i in 200..400u32 {
            obj.send_only("counter_push", (i,)).unwrap();
        }
        let got: Vec<u32> = obj.send("counter_get", ()).await.expect("counter_get");
        assert_eq!(got, (0..400).collect::<Vec<_>>());

        // Answered calls keep their order too.
        let promises: Vec<_> = (0..50)
            .map(|_| obj.send::<u64>("counter_next", ()))
            .collect();
        for (i, p) in promises.into_iter().enumerate() {
            assert_eq!(p.await.expect("counter_next"), i as u64 + 1);
        }

        c.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_sends_than_the_queue_limit_pipelined_on_a_fetch_are_served() {
    // Regression: the server answered a fetch only after handling every frame of the
    // read it came in, so more than `max_queued_per_promise` (256) sends pipelined
    // behind it could abort this well-behaved client's session, depending on how the
    // bytes were split.
    within(async {
        let c = connected().await;
        let obj = &c.obj;
        for i in 0..1_000u32 {
            obj.send_only("p", (i,)).unwrap();
        }
        let got: Vec<u32> = obj.send("counter_get", ()).await.expect("counter_get");
        assert_eq!(got, (0..1_000).collect::<Vec<_>>());

        let kid = obj.send_ref("sub", ("kid",));
        let names: Vec<_> = (0..600).map(|_| kid.send::<String>("name", ())).collect();
        for name in names {
            assert_eq!(name.await.expect("name"), "kid");
        }

        c.stop().await;
    })
    .await;
}

// ---- writes ----

/// One call after another: each call's `finish` rides in the next call's write, and a
/// listening vat's `hello` in its first answer, so each side makes about one write per
/// call although the caller sends two messages per call. (A single-threaded runtime
/// makes the order of tasks fixed: the caller runs before the session sends alone.)
#[tokio::test(flavor = "current_thread")]
async fn sequential_calls_make_one_write_per_call_each_way() {
    within(async {
        let c = connected().await;
        let obj = &c.obj;
        let sum: i64 = obj.send("add", (1, 2)).await.expect("add");
        assert_eq!(sum, 3);
        let traffic = |stats: captp::VatStats| {
            let [session] = &stats.sessions[..] else {
                panic!("expected one session, got {stats:?}");
            };
            (session.frames_sent, session.writes)
        };
        let (c_frames, c_writes) = traffic(c.client.stats().await);
        let (s_frames, s_writes) = traffic(c.server.vat.stats().await);
        // Setup: the client's hello, fetch and call left in one write (their two
        // finishes wait for the next one), and the server's hello, its `listen` (its
        // address, for introductions) and two answers in one.
        assert_eq!((c_frames, c_writes), (5, 1), "client during setup");
        assert_eq!((s_frames, s_writes), (4, 1), "server during setup");

        const CALLS: u64 = 100;
        for i in 0..CALLS {
            let i = i64::try_from(i).expect("small");
            let sum: i64 = obj.send("add", (i, 1)).await.expect("add");
            assert_eq!(sum, i + 1);
        }
        let (c_frames2, c_writes2) = traffic(c.client.stats().await);
        let (s_frames2, s_writes2) = traffic(c.server.vat.stats().await);
        // The client sent a deliver and a finish per call, the server a return.
        assert_eq!(c_frames2 - c_frames, 2 * CALLS, "client frames");
        assert_eq!(s_frames2 - s_frames, CALLS, "server frames");
        // One write per call, plus at most one for the last finish.
        assert!(
            c_writes2 - c_writes <= CALLS + 1,
            "client made {} writes for {CALLS} calls",
            c_writes2 - c_writes
        );
        assert_eq!(s_writes2 - s_writes, CALLS, "server writes");
    })
    .await;
}

/// Large payloads are written from their own buffers between the bytes of their frames;
/// sizes around that threshold (16 KiB), several in flight at once, arrive intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_in_flight_together_arrive_intact() {
    within(async {
        let c = connected().await;
        let obj = &c.obj;
        let sizes = [0, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 100, 300_000];
        let payloads: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| ((i * 31 + j) % 251) as u8).collect())
            .collect();
        let pending: Vec<_> = payloads
            .iter()
            .map(|p| obj.send::<ByteBuf>("echo_bytes", (ByteBuf::from(p.clone()),)))
            .collect();
        for (promise, sent) in pending.into_iter().zip(&payloads) {
            let back = promise.await.expect("echo_bytes");
            assert_eq!(back.len(), sent.len());
            assert!(
                back.into_vec() == *sent,
                "payload of {} bytes changed",
                sent.len()
            );
        }
    })
    .await;
}

/// `Args::bytes` reads one byte string, sent alone or as a tuple of one, small or
/// large (a view of the frame it came in), and refuses anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_are_read_without_decoding() {
    within(async {
        let c = connected().await;
        let obj = &c.obj;
        for n in [0, 5, 16 * 1024, 300_000] {
            let sent: Vec<u8> = (0..n).map(|j| (j % 251) as u8).collect();
            let alone: ByteBuf = obj
                .send("echo_raw", ByteBuf::from(sent.clone()))
                .await
                .expect("a lone byte string");
            assert!(alone.into_vec() == sent, "{n} bytes, alone");
            let in_tuple: ByteBuf = obj
                .send("echo_raw", (ByteBuf::from(sent.clone()),))
                .await
                .expect("a tuple of one byte string");
            assert!(in_tuple.into_vec() == sent, "{n} bytes, in a tuple");
        }
        for wrong in [
            obj.send::<ByteBuf>("echo_raw", "text"),
            obj.send::<ByteBuf>("echo_raw", (ByteBuf::new(), ByteBuf::new())),
            obj.send::<ByteBuf>("echo_raw", ()),
        ] {
            let broken = wrong.await.expect_err("not one byte string");
            assert_eq!(broken.kind(), BrokenKind::BadArguments, "{broken}");
        }
    })
    .await;
}

// ---- losing the peer ----

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn dropping_the_last_vat_handle_shuts_the_vat_down() {
    within(async {
        let c = connected().await;
        c.assert_served(1).await;
        let Connected {
            server,
            client,
            obj,
        } = c;
        let addr = server.addr();
        let server_id = server.vat.vat_id();
        // Dropping a clone changes nothing; the references and the session the server
        // holds do not keep it running either.
        drop(server.vat.clone());
        let sum: i64 = obj.send("add", (1, 2)).await.expect("still served");
        assert_eq!(sum, 3);
        let pending = obj.send::<()>("slow", ());
        drop(server);

        let broken = tokio::time::timeout(common::IO_TIMEOUT, obj.when_broken())
            .await
            .expect("the reference breaks once the server's last handle is gone");
        assert_eq!(broken.kind(), BrokenKind::Disconnected, "{broken}");
        assert!(broken.message().contains("shutting down"), "{broken}");
        let err = pending.await.expect_err("the server went away");
        assert_eq!(err.kind(), BrokenKind::Disconnected, "{err}");
        // The listener is gone too (it stops at the same signal as the sessions; a
        // few turns of the runtime let it see it).
        let mut refused = false;
        for _ in 0..100 {
            if common::RawConn::try_connect_to(addr, server_id)
                .await
                .is_err()
            {
                refused = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(refused, "the dropped vat still accepts connections");
        client.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_breaks_pending_promises_with_disconnected() {
    within(async {
        let mut c = connected().await;
        let obj = &c.obj;
        let sum: i64 = obj.send("add", (1, 2)).await.expect("add");
        assert_eq!(sum, 3);

        let pending = obj.send::<()>("slow", ());
        assert_eq!(c.server.next_note().await, Note::Slow);
        c.server.vat.shutdown().await;

        let err = pending.await.expect_err("the server went away");
        assert_eq!(err.kind(), BrokenKind::Disconnected, "{err}");
        assert!(err.message().contains("shutting down"), "{err}");

        // Later sends on the same reference break at once instead of hanging.
        let later = obj
            .send::<i64>("add", (1, 2))
            .await
            .expect_err("no session any more");
        assert_eq!(later.kind(), BrokenKind::Disconnected, "{later}");
        let reason = obj
            .broken_reason()
            .expect("the reference knows it is broken");
        assert_eq!(reason.kind(), BrokenKind::Disconnected);
        let piped = obj
            .send_ref("sub", ("x",))
            .send::<String>("name", ())
            .await
            .expect_err("no session any more");
        assert_eq!(piped.kind(), BrokenKind::Disconnected, "{piped}");

        // A fresh enliven tries again and finds nobody listening.
        let err = c
            .client
            .enliven(&c.server.uri)
            .send::<i64>("add", (1, 2))
            .await
            .expect_err("the server is gone");
        assert_eq!(err.kind(), BrokenKind::Unreachable, "{err}");

        c.client.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_shutdown_breaks_its_own_pending_promises() {
    within(async {
        let mut c = connected().await;
        let obj = &c.obj;
        let pending = obj.send::<()>("slow", ());
        assert_eq!(c.server.next_note().await, Note::Slow);

        c.client.shutdown().await;
        let err = pending.await.expect_err("the client shut down");
        assert_eq!(err.kind(), BrokenKind::Disconnected, "{err}");
        let later = obj
            .send::<i64>("add", (1, 2))
            .await
            .expect_err("the client shut down");
        assert_eq!(later.kind(), BrokenKind::Disconnected, "{later}");

        // A shut-down client hands out broken references; the server serves others.
        assert!(c.client.enliven(&c.server.uri).broken_reason().is_some());
        let other = start_client().await;
        let sum: i64 = other
            .enliven(&c.server.uri)
            .send("add", (1, 2))
            .await
            .expect("add");
        assert_eq!(sum, 3);

        other.shutdown().await;
        c.server.vat.shutdown().await;
    })
    .await;
}

// Paused time: the clock jumps to the next timer whenever every task waits, so the
// keepalive is tested on the tokio clock, exactly, without waiting for it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn silent_peer_is_dropped_by_the_keepalive() {
    within(async {
        let silent = silent_server().await;
        let client = start_client_with(limits(|l| {
            l.keepalive_idle = Duration::from_secs(3);
            l.keepalive_dead = Duration::from_secs(9);
        }))
        .await;
        let uri = SturdyRef::new(
            silent.vat_id,
            Host::Ipv4(Ipv4Addr::LOCALHOST),
            silent.port,
            SwissNumber::generate(),
        );
        let started = Instant::now();
        let obj = client.enliven(&uri);
        let err = obj
            .send::<i64>("add", (1, 2))
            .await
            .expect_err("the server never answers");
        let elapsed = started.elapsed();
        assert_eq!(err.kind(), BrokenKind::Disconnected, "{err}");
        assert!(err.message().contains("silent"), "{err}");
        assert!(err.message().contains("keepalive"), "{err}");
        assert!(
            elapsed >= Duration::from_secs(9) && elapsed < Duration::from_millis(9_010),
            "declared dead after {elapsed:?}, not at the keepalive limit"
        );
        assert!(err.message().contains("silent for 9s"), "{err}");

        // The client closed the connection, after having pinged the silent server.
        let seen = tokio::time::timeout(common::IO_TIMEOUT, silent.task)
            .await
            .expect("the client did not close the connection")
            .expect("the silent server task");
        assert!(
            matches!(seen.first(), Some(Message::Hello { .. })),
            "{seen:?}"
        );
        assert!(
            seen.iter().any(|m| matches!(m, Message::Bootstrap { .. })),
            "{seen:?}"
        );
        assert!(
            seen.iter()
                .any(|m| matches!(m, Message::Deliver { method, .. } if method == "add")),
            "{seen:?}"
        );
        assert!(
            seen.iter().any(|m| matches!(m, Message::Ping { .. })),
            "{seen:?}"
        );

        client.shutdown().await;
    })
    .await;
}

// ---- sessions and tables ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_per_peer() {
    within(async {
        let c = connected().await;
        let a = &c.obj;
        let (second, _notes) = TestObject::new("second");
        let second_uri = c.server.vat.export(second).expect("export");
        let b = c.client.enliven(&second_uri);
        let (name_a, name_b) = tokio::join!(
            a.send::<String>("whoami", ()),
            b.send::<String>("whoami", ())
        );
        assert_eq!(name_a.expect("a"), "root");
        assert_eq!(name_b.expect("b"), "second");

        let stats = c.client.stats().await;
        assert_eq!(stats.sessions.len(), 1, "{stats:?}");
        assert_eq!(stats.sessions[0].peer, c.server.vat.vat_id());
        assert!(!stats.sessions[0].inbound);
        assert_eq!(stats.sessions[0].tables.imports, 2, "{stats:?}");
        let stats = c.server.vat.stats().await;
        assert_eq!(stats.sessions.len(), 1, "{stats:?}");
        assert_eq!(stats.sessions[0].tables.exports, 2, "{stats:?}");
        assert_eq!(stats.sturdy_refs, 2);

        c.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_references_releases_the_exports() {
    within(async {
        let Connected {
            server,
            client,
            obj: root,
        } = connected().await;
        let (second, _notes) = TestObject::new("second");
        let second_uri = server.vat.export(second).expect("export");
        // Awaited, not pipelined: a pipelined result is exported only if the server's
        // `hello` has not arrived when the call leaves (a quiet question, PROTOCOL.md
        // 9.15, exports nothing), which would make the count below a race.
        let kid: Ref = root.send("sub", ("kid",)).await.expect("sub");
        let name: String = kid.send("name", ()).await.expect("kid");
        assert_eq!(name, "kid");
        let stats = server.vat.stats().await;
        assert_eq!(stats.sessions[0].tables.exports, 2, "{stats:?}");

        drop(kid);
        drop(root);
        // The releases go out before the fetch below on the same connection, so once it
        // is answered the server has processed them.
        let second = client.enliven(&second_uri);
        let name: String = second.send("whoami", ()).await.expect("second");
        assert_eq!(name, "second");
        let stats = server.vat.stats().await;
        assert_eq!(stats.sessions.len(), 1);
        assert_eq!(stats.sessions[0].tables.exports, 1, "{stats:?}");
        let stats = client.stats().await;
        assert_eq!(stats.sessions[0].tables.imports, 1, "{stats:?}");

        client.shutdown().await;
        server.vat.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_hundred_calls_each_and_tables_drain() {
    within(async {
        const CLIENTS: u64 = 100;
        const CALLS: i64 = 100;
        let mut server = start_server().await;
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..CLIENTS {
            let uri = server.uri.clone();
            tasks.spawn(async move {
                let client = start_client().await;
                let obj = client.enliven(&uri);
                let base = i64::try_from(k).expect("small") * 1_000;
                let promises: Vec<_> = (0..CALLS)
                    .map(|j| obj.send::<i64>("add", (base, j)))
                    .collect();
                for (j, p) in (0..CALLS).zip(promises) {
                    assert_eq!(p.await.expect("add"), base + j);
                }
                // Ordered after every `finish` for the calls above.
                obj.send_only("notify", (k,)).unwrap();
                (client, obj)
            });
        }
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let joined = tasks.join_next().await.expect("a client task");
            clients.push(joined.expect("the client task succeeded"));
        }

        let mut notified = BTreeSet::new();
        for _ in 0..CLIENTS {
            match server.next_note().await {
                Note::Notify(k) => assert!(notified.insert(k), "client {k} notified twice"),
                other => panic!("unexpected note {other:?}"),
            }
        }
        assert_eq!(notified, (0..CLIENTS).collect::<BTreeSet<_>>());

        let stats = server.vat.stats().await;
        assert_eq!(stats.sessions.len(), CLIENTS as usize);
        for s in &stats.sessions {
            assert!(s.inbound);
            assert_eq!(s.tables.answers, 0, "{s:?}");
            assert_eq!(s.tables.questions, 0, "{s:?}");
            assert_eq!(s.tables.exports, 1, "{s:?}");
        }
        let peers: BTreeSet<_> = stats.sessions.iter().map(|s| s.peer).collect();
        assert_eq!(peers.len(), CLIENTS as usize);

        for (client, _obj) in &clients {
            let stats = client.stats().await;
            assert_eq!(stats.sessions.len(), 1);
            // Only the fetch, held by the live reference, is still a question.
            assert_eq!(stats.sessions[0].tables.questions, 1, "{stats:?}");
            assert_eq!(stats.sessions[0].tables.answers, 0, "{stats:?}");
        }
        for (client, obj) in clients {
            drop(obj);
            client.shutdown().await;
        }
        server.vat.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_shutdown_closes_the_port_and_breaks_new_references() {
    within(async {
        let server = start_server().await;
        let client = start_client().await;
        let sum: i64 = client
            .enliven(&server.uri)
            .send("add", (1, 2))
            .await
            .expect("add");
        assert_eq!(sum, 3);

        client.shutdown().await;
        server.vat.shutdown().await;
        assert!(server.vat.stats().await.sessions.is_empty());
        assert!(client.stats().await.sessions.is_empty());

        // The port refuses connections, or closes them without a byte.
        if let Ok(Ok(mut tcp)) = tokio::time::timeout(
            common::IO_TIMEOUT,
            tokio::net::TcpStream::connect(server.addr()),
        )
        .await
        {
            let mut buf = [0u8; 16];
            let read = tokio::time::timeout(common::IO_TIMEOUT, tcp.read(&mut buf))
                .await
                .expect("a connection to a shut-down vat stayed open");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        }

        // A shut-down vat hands out broken references.
        let r = client.enliven(&server.uri);
        let reason = r.broken_reason().expect("broken at once");
        assert_eq!(reason.kind(), BrokenKind::Disconnected, "{reason}");
        let err = r.send::<i64>("add", (1, 2)).await.expect_err("shut down");
        assert_eq!(err, reason);
    })
    .await;
}

/// A caller never passes the peer's question limit: calls beyond it wait at the caller
/// (in order) instead of getting its session aborted. Regression: 3,000 calls in flight
/// on one reference used to abort with "more than 1024 outstanding questions".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_calls_in_flight_than_the_peers_question_limit_all_succeed() {
    within(async {
        let c = Fixture::new()
            .server_limits(limits(|l| l.max_inbound_questions = 64))
            .connect()
            .await;
        let obj = &c.obj;
        let promises: Vec<_> = (0..3_000i64)
            .map(|j| obj.send::<i64>("add", (j, 1)))
            .collect();
        for (j, p) in (0..3_000i64).zip(promises) {
            assert_eq!(p.await.expect("add"), j + 1);
        }
        let stats = c.client.stats().await;
        assert_eq!(stats.sessions.len(), 1);
        assert_eq!(stats.sessions[0].tables.held, 0);
        // The same session served everything: nobody was aborted.
        assert_eq!(obj.send::<i64>("add", (2, 2)).await.expect("add"), 4);
    })
    .await;
}

/// Shutting a vat down still sends what its handles queued before (one-way sends
/// included), then aborts. Regression: `send_only` then `shutdown()` lost the send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_what_was_queued_first() {
    within(async {
        let mut c = connected().await;
        let obj = &c.obj;
        obj.send_only("notify", (7u64,)).unwrap();
        obj.send_only("notify", (8u64,)).unwrap();
        c.client.shutdown().await;
        assert_eq!(c.server.next_note().await, Note::Notify(7));
        assert_eq!(c.server.next_note().await, Note::Notify(8));
        c.server.vat.shutdown().await;
    })
    .await;
}
