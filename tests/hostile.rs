//! Hostile peers over real TLS: each case connects with a fresh identity, misbehaves
//! on purpose, and checks that the vat aborts that session with a clear reason while a
//! well-behaved client on another connection keeps getting correct answers.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use captp::internal::wire::message::PROTOCOL_VERSION;
use captp::internal::wire::{Hello, Message, Payload, ReturnResult, Target};
use captp::{Limits, SwissNumber};
use common::{
    Fixture, RawConn, Server, cbor, connected, decode_data, deliver, encode, hello, limits, within,
};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// Runs one attack: the well-behaved client is served before, the attack's session
/// is aborted with a reason containing every one of `words`, and the client is served
/// after.
async fn aborted_with(
    limits: Limits,
    words: &[&str],
    attack: impl AsyncFnOnce(&mut RawConn, &Server),
) {
    let arena = Fixture::new().server_limits(limits).connect().await;
    arena.assert_served(1).await;
    let mut raw = arena.raw().await;
    attack(&mut raw, &arena.server).await;
    let reason = raw.expect_abort().await;
    for word in words {
        assert!(
            reason.contains(word),
            "abort reason {reason:?} lacks {word:?}"
        );
    }
    arena.assert_only_client_left().await;
    arena.stop().await;
}

/// An attack of one message right after a proper hello, with default limits.
async fn message_after_hello_aborts(words: &[&str], msg: Message) {
    aborted_with(Limits::default(), words, async |raw, _| {
        raw.handshake().await;
        raw.send(&msg).await;
    })
    .await;
}

/// An attack of one frame `body` right after a proper hello, with default limits.
async fn frame_after_hello_aborts(words: &[&str], body: &[u8]) {
    aborted_with(Limits::default(), words, async |raw, _| {
        raw.handshake().await;
        raw.send_frame(body).await;
    })
    .await;
}

fn small_frames() -> Limits {
    limits(|l| l.max_frame = 64 * 1024)
}

// ---- framing ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_one_byte_over_the_limit_is_refused_before_its_body() {
    within(aborted_with(
        small_frames(),
        &["frame of 65537 bytes exceeds the limit of 65536 bytes"],
        async |raw, server| {
            assert_eq!(raw.handshake().await, 64 * 1024);
            let export = raw.bootstrap(1, server.uri.swiss()).await;

            // A frame of exactly the limit is accepted: pad a call to 65,536 bytes.
            let at_limit = |pad: usize| {
                deliver(
                    Target::Export(export),
                    "echo_bytes",
                    &(serde_bytes::ByteBuf::from(vec![0x5a; pad]),),
                    Some(2),
                )
            };
            let mut pad = 65_000;
            for _ in 0..4 {
                let body_len = encode(&at_limit(pad)).len() - 4;
                if body_len == 65_536 {
                    break;
                }
                pad = pad + 65_536 - body_len;
            }
            let call = at_limit(pad);
            assert_eq!(encode(&call).len(), 4 + 65_536);
            raw.send(&call).await;
            let back: serde_bytes::ByteBuf = decode_data(&raw.expect_return(2).await);
            assert_eq!(back.len(), pad);

            // One byte more is refused from the length prefix alone: no body follows.
            raw.write_raw(&(64 * 1024 + 1u32).to_be_bytes()).await;
        },
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_length_u32_max_is_refused() {
    within(aborted_with(
        small_frames(),
        &["4294967295", "exceeds the limit"],
        async |raw, _| {
            raw.handshake().await;
            raw.write_raw(&[0xff; 4]).await;
        },
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_over_the_limit_before_hello_is_refused_too() {
    within(aborted_with(
        small_frames(),
        &["exceeds the limit"],
        async |raw, _| {
            raw.write_raw(&(1u32 << 24).to_be_bytes()).await;
        },
    ))
    .await;
}

// ---- bad bytes ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_cbor_is_refused() {
    let mut body = vec![0x81; 100];
    body.push(0x00);
    within(frame_after_hello_aborts(&["nested", "32"], &body)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_are_refused() {
    within(frame_after_hello_aborts(
        &["undecodable message", "malformed CBOR"],
        &[0x1c, 0xde, 0xad, 0xbe, 0xef],
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_frame_is_refused() {
    within(frame_after_hello_aborts(
        &["undecodable message", "truncated"],
        &[],
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_kind_is_refused() {
    let body = cbor(&BTreeMap::from([(
        "teleport",
        BTreeMap::from([("to", 1u8)]),
    )]));
    within(frame_after_hello_aborts(&["not a captp message"], &body)).await;
}

// ---- bad ids ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_to_an_answer_never_allocated_is_refused() {
    within(message_after_hello_aborts(
        &["no answer with id", "77"],
        deliver(Target::Answer(77), "add", &(1, 2), Some(1)),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_to_an_export_never_made_is_refused() {
    within(message_after_hello_aborts(
        &["no export with id", "5"],
        deliver(Target::Export(5), "add", &(1, 2), None),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_for_a_question_never_asked_is_refused() {
    within(message_after_hello_aborts(
        &["return for question", "42", "never asked"],
        Message::Return {
            question: 42,
            result: ReturnResult::Ok(Payload {
                data: cbor(&7).into(),
                caps: Vec::new(),
            }),
        },
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_for_an_unknown_answer_is_refused() {
    within(message_after_hello_aborts(
        &["no answer with id", "9"],
        Message::Finish { question: 9 },
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_of_an_unknown_export_is_refused() {
    within(message_after_hello_aborts(
        &["no export with id", "99"],
        Message::Release {
            export: 99,
            count: 1,
        },
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_of_more_than_was_given_is_refused() {
    within(aborted_with(
        Limits::default(),
        &["release of export", "count 2", "holds 1"],
        async |raw, server| {
            let export = raw.hello_and_fetch(server.uri.swiss()).await;
            raw.send(&Message::Release { export, count: 2 }).await;
        },
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_question_id_is_refused() {
    within(aborted_with(
        Limits::default(),
        &["question id", "already in use"],
        async |raw, server| {
            let export = raw.hello_and_fetch(server.uri.swiss()).await;
            raw.send(&deliver(Target::Export(export), "slow", &(), Some(2)))
                .await;
            raw.send(&deliver(Target::Export(export), "slow", &(), Some(2)))
                .await;
        },
    ))
    .await;
}

// ---- the hello ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_message_other_than_hello_is_refused() {
    within(aborted_with(
        Limits::default(),
        &["expected hello", "bootstrap"],
        async |raw, server| {
            raw.send(&Message::Bootstrap {
                question: 1,
                swiss: server.uri.swiss().clone(),
            })
            .await;
        },
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_hello_is_refused() {
    within(message_after_hello_aborts(&["hello sent twice"], hello())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_client_is_answered_in_version_2_and_served() {
    within(async {
        // A peer written against version 2 refuses any other version in the vat's
        // `hello`: the listening vat answers in the lower of the two (PROTOCOL.md 9.1).
        let server = Fixture::new().serve().await;
        let mut raw = RawConn::connect(&server.vat).await;
        raw.send(&Message::Hello(Hello {
            version: 2,
            ..Hello::MINIMUM
        }))
        .await;
        match raw.recv().await {
            Some(Message::Hello(Hello { version, .. })) => assert_eq!(version, 2),
            other => panic!("expected the vat's hello first, got {other:?}"),
        }
        let export = raw.bootstrap(1, server.uri.swiss()).await;
        raw.add(export, 2, 7).await;
        server.vat.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_version_is_refused() {
    within(aborted_with(
        Limits::default(),
        &["unsupported protocol version 999"],
        async |raw, _| {
            raw.send(&Message::Hello(Hello {
                version: 999,
                ..Hello::MINIMUM
            }))
            .await;
        },
    ))
    .await;
}

// ---- limits ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_outstanding_questions_than_the_limit_is_refused() {
    within(aborted_with(
        limits(|l| l.max_inbound_questions = 64),
        &["more than 64 outstanding questions"],
        async |raw, server| {
            let export = raw.hello_and_fetch(server.uri.swiss()).await;
            // 63 calls that never answer: under the limit, the session carries on.
            for q in 2..=64 {
                raw.send(&deliver(Target::Export(export), "slow", &(), Some(q)))
                    .await;
            }
            raw.ping(77).await;
            // The 64th reaches the limit and the 65th is one too many. Both go in one
            // write: a vat may stop reading once the limit's worth of calls is running.
            let mut both = encode(&deliver(Target::Export(export), "slow", &(), Some(65)));
            both.extend(encode(&deliver(
                Target::Export(export),
                "slow",
                &(),
                Some(66),
            )));
            raw.write_raw(&both).await;
        },
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_messages_queued_on_one_promise_is_refused() {
    // The protocol minimum (16): smaller values are raised to it.
    within(aborted_with(
        limits(|l| l.max_queued_per_promise = 16),
        &["more than 16 messages queued on one unresolved promise"],
        async |raw, server| {
            let export = raw.hello_and_fetch(server.uri.swiss()).await;
            raw.send(&deliver(Target::Export(export), "slow", &(), Some(2)))
                .await;
            for _ in 0..17 {
                raw.send(&deliver(Target::Answer(2), "name", &(), None))
                    .await;
            }
        },
    ))
    .await;
}

// ---- slow and fragmented peers ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_writes_still_make_a_valid_session() {
    within(async {
        let arena = connected().await;
        arena.assert_served(1).await;
        let mut raw = arena.raw().await;

        // hello, a fetch, and a call pipelined on the fetch, one byte per TLS record.
        let mut bytes = encode(&hello());
        bytes.extend(encode(&Message::Bootstrap {
            question: 1,
            swiss: arena.server.uri.swiss().clone(),
        }));
        bytes.extend(encode(&deliver(
            Target::Answer(1),
            "add",
            &(20i64, 22i64),
            Some(2),
        )));
        for byte in &bytes {
            raw.write_raw(std::slice::from_ref(byte)).await;
        }

        assert!(matches!(
            raw.expect_message().await,
            Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                ..
            })
        ));
        let fetched = raw.expect_return(1).await;
        assert_eq!(fetched.caps.len(), 1, "{fetched:?}");
        assert_eq!(decode_data::<i64>(&raw.expect_return(2).await), 42);

        // Still a healthy session: finish both, and it answers a ping.
        for byte in encode(&Message::Finish { question: 1 })
            .iter()
            .chain(&encode(&Message::Finish { question: 2 }))
            .chain(&encode(&Message::Ping { nonce: 5 }))
        {
            raw.write_raw(std::slice::from_ref(byte)).await;
        }
        match raw.expect_message().await {
            Message::Pong { nonce: 5 } => {}
            other => panic!("expected the pong, got {other:?}"),
        }
        // The pong came after both finishes: the raw session holds no answers, only the
        // export of the fetched object.
        let stats = arena.server.vat.stats().await;
        assert_eq!(stats.sessions.len(), 2, "{stats:?}");
        let raw_session = stats
            .sessions
            .iter()
            .find(|s| s.peer != arena.client.vat_id())
            .expect("the raw session");
        assert_eq!(raw_session.tables.answers, 0, "{raw_session:?}");
        assert_eq!(raw_session.tables.exports, 1, "{raw_session:?}");
        arena.assert_served(2).await;
        arena.stop().await;
    })
    .await;
}

// Paused time: the clock jumps to the next timer whenever every task waits, so the
// timeout is met on the tokio clock, exactly, without waiting for it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn peer_silent_after_tls_is_dropped_at_the_handshake_timeout() {
    within(async {
        let timeout = Duration::from_secs(5);
        let arena = Fixture::new()
            .server_limits(limits(|l| l.handshake_timeout = timeout))
            .connect()
            .await;
        arena.assert_served(1).await;

        let started = Instant::now();
        let mut raw = arena.raw().await;
        // We say nothing, and so does the vat: its `hello` answers ours (PROTOCOL.md
        // 9.1). At the timeout the abort is the first and only message.
        let reason = match raw.expect_message().await {
            Message::Abort { reason } => reason,
            other => panic!("expected only an abort, got {other:?}"),
        };
        raw.expect_closed().await;
        let elapsed = started.elapsed();
        assert!(
            reason.contains("no hello within the handshake timeout of 5s"),
            "{reason}"
        );
        assert!(
            elapsed >= timeout && elapsed < timeout + Duration::from_millis(10),
            "dropped after {elapsed:?}, not at the timeout"
        );

        arena.assert_only_client_left().await;
        arena.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn peer_silent_before_tls_is_dropped_at_the_handshake_timeout() {
    within(async {
        let timeout = Duration::from_secs(5);
        let arena = Fixture::new()
            .server_limits(limits(|l| l.handshake_timeout = timeout))
            .connect()
            .await;
        arena.assert_served(1).await;

        let started = Instant::now();
        let mut tcp = tokio::net::TcpStream::connect(arena.server.addr())
            .await
            .expect("TCP connects");
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(common::IO_TIMEOUT, tcp.read(&mut buf))
            .await
            .expect("the vat kept a silent TCP connection open");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let elapsed = started.elapsed();
        assert!(
            elapsed >= timeout && elapsed < timeout + Duration::from_millis(10),
            "dropped after {elapsed:?}, not at the timeout"
        );

        arena.assert_only_client_left().await;
        arena.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_swiss_over_raw_tls_is_an_error_not_an_abort() {
    within(async {
        let arena = connected().await;
        let mut raw = arena.raw().await;
        raw.handshake().await;
        raw.send(&Message::Bootstrap {
            question: 1,
            swiss: SwissNumber::generate(),
        })
        .await;
        assert_eq!(raw.expect_broken(1).await.kind, "unknown_object");
        raw.ping(1).await;
        arena.assert_served(1).await;
        arena.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_pipelined_on_a_fetch_in_one_write_are_served() {
    // Regression: the vat answered a fetch only after handling every frame of the read
    // it arrived in, so calls pipelined behind it in the same read were counted as
    // queued on an unresolved answer, and more than `max_queued_per_promise` of them
    // aborted a well-behaved peer's session.
    within(async {
        let arena = connected().await;
        arena.assert_served(1).await;
        let mut raw = arena.raw().await;
        raw.handshake().await;

        // More calls than `max_queued_per_promise` (256), all in one TLS record, so the
        // vat reads them together with the fetch.
        let calls = 270u32;
        let mut burst = encode(&Message::Bootstrap {
            question: 1,
            swiss: arena.server.uri.swiss().clone(),
        });
        for i in 0..calls {
            burst.extend(encode(&deliver(Target::Answer(1), "p", &(i,), None)));
        }
        burst.extend(encode(&deliver(
            Target::Answer(1),
            "counter_get",
            &(),
            Some(2),
        )));
        assert!(burst.len() < 16 * 1024, "{} bytes", burst.len());
        raw.write_raw(&burst).await;

        for _ in 0..2 {
            match raw.expect_message().await {
                Message::Return {
                    question: 1,
                    result: ReturnResult::Ok(_),
                } => {}
                Message::Return {
                    question: 2,
                    result: ReturnResult::Ok(payload),
                } => assert_eq!(
                    decode_data::<Vec<u32>>(&payload),
                    (0..calls).collect::<Vec<_>>()
                ),
                other => panic!("expected the two returns, got {other:?}"),
            }
        }
        arena.assert_served(2).await;
        arena.stop().await;
    })
    .await;
}

// ---- bad bytes inside a frame: claimed sizes, indefinite lengths, trailing bytes ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_cbor_array_header_is_refused_without_allocating() {
    // An array claiming 2^60 elements in a 9-byte frame: refused from the header, as
    // more items than the bytes could hold, before anything is sized by the count.
    within(frame_after_hello_aborts(
        &["undecodable message", "truncated"],
        &[0x9b, 0x10, 0, 0, 0, 0, 0, 0, 0],
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_cbor_map_inside_a_valid_message_is_refused() {
    // The same claim one level down: a map of 2^60 pairs as the fields of a `ping`.
    let mut body = vec![0xa1, 0x64];
    body.extend_from_slice(b"ping");
    body.extend_from_slice(&[0xbb, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    within(frame_after_hello_aborts(
        &["undecodable message", "truncated"],
        &body,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indefinite_length_item_is_refused() {
    // {_ "ping": {_ "nonce": 1}}: the encoding of a valid ping, with indefinite-length
    // maps.
    let mut body = vec![0xbf, 0x64];
    body.extend_from_slice(b"ping");
    body.extend_from_slice(&[0xbf, 0x65]);
    body.extend_from_slice(b"nonce");
    body.extend_from_slice(&[0x01, 0xff, 0xff]);
    let words = [
        "undecodable message",
        "indefinite-length",
        "definite lengths",
    ];
    within(frame_after_hello_aborts(&words, &body)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_bytes_after_a_valid_message_are_refused() {
    within(aborted_with(
        Limits::default(),
        &[
            "undecodable message",
            "1 unexpected byte(s) after the CBOR item",
        ],
        async |raw, _| {
            raw.handshake().await;
            // A valid ping first: the session works.
            raw.ping(1).await;
            let mut body = encode(&Message::Ping { nonce: 2 })[4..].to_vec();
            body.push(0x00);
            raw.send_frame(&body).await;
        },
    ))
    .await;
}

// ---- ids already freed ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_to_an_answer_after_its_finish_is_refused() {
    within(aborted_with(
        Limits::default(),
        &["no answer with id", "a1"],
        async |raw, server| {
            raw.handshake().await;
            // Bootstrap as question 1, then finish it (the helper does both).
            let export = raw.bootstrap(1, server.uri.swiss()).await;
            // The export itself still works; the finished answer is gone.
            raw.add(export, 2, 5).await;
            raw.send(&deliver(Target::Answer(1), "add", &(1, 2), Some(3)))
                .await;
        },
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_of_an_export_already_fully_released_is_refused() {
    within(aborted_with(
        Limits::default(),
        &["no export with id", "e1"],
        async |raw, server| {
            let export = raw.hello_and_fetch(server.uri.swiss()).await;
            assert_eq!(export, 1);
            // The one reference given, given back: valid, and the export is freed.
            raw.send(&Message::Release { export, count: 1 }).await;
            raw.ping(1).await;
            raw.send(&Message::Release { export, count: 1 }).await;
        },
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_to_a_released_export_is_refused() {
    within(aborted_with(
        Limits::default(),
        &["no export with id", "e1"],
        async |raw, server| {
            let export = raw.hello_and_fetch(server.uri.swiss()).await;
            raw.send(&Message::Release { export, count: 1 }).await;
            raw.ping(1).await;
            raw.send(&deliver(Target::Export(export), "add", &(1, 2), Some(2)))
                .await;
        },
    ))
    .await;
}

// ---- pipelining floods ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_calls_pipelined_on_an_unresolved_promise_are_refused() {
    // 3,000 one-way calls queued on a `slow` answer that never resolves: the vat keeps
    // at most `max_queued_per_promise` (256) of them and aborts the session at the
    // 257th, so the memory a peer can pin on one promise is bounded. The session and
    // everything it held are gone afterwards (`assert_only_client_left` checks).
    within(async {
        let arena = connected().await;
        arena.assert_served(1).await;
        let mut raw = arena.raw().await;
        let export = raw.hello_and_fetch(arena.server.uri.swiss()).await;
        raw.send(&deliver(Target::Export(export), "slow", &(), Some(2)))
            .await;
        let mut flood = Vec::new();
        for i in 0..3_000u32 {
            flood.extend(encode(&deliver(Target::Answer(2), "p", &(i,), None)));
        }
        // The vat aborts part-way through, so the end of the write may fail.
        let _ = raw.try_write_raw(&flood).await;
        let reason = raw.expect_abort().await;
        assert!(
            reason.contains("more than 256 messages queued on one unresolved promise"),
            "{reason}"
        );
        arena.assert_only_client_left().await;
        arena.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_pipelined_chain_on_a_promise_that_resolves_to_data_is_answered() {
    // Regression: each call pipelined on the answer of the one before it (1,023 deep,
    // the most the default question limit allows), all waiting on a `gated` call. When
    // the gate opens, the first answer is data, so every call in the chain breaks with
    // `not_an_object`. Breaking them was a recursion as deep as the chain, which
    // overflowed a 2 MiB worker stack in a debug build and aborted the whole process.
    within(async {
        let arena = connected().await;
        arena.assert_served(1).await;
        let mut raw = arena.raw().await;
        let export = raw.hello_and_fetch(arena.server.uri.swiss()).await;
        let last = 1_025u64;
        let mut chain = encode(&deliver(Target::Export(export), "gated", &(), Some(2)));
        for q in 3..=last {
            chain.extend(encode(&deliver(
                Target::Answer(q - 1),
                "add",
                &(1, 2),
                Some(q),
            )));
        }
        raw.write_raw(&chain).await;
        // The pong says the vat has read (and queued) the whole chain.
        raw.ping(1).await;
        arena.server.open_gate(1);
        assert_eq!(decode_data::<String>(&raw.expect_return(2).await), "opened");
        for q in 3..=last {
            assert_eq!(raw.expect_broken(q).await.kind, "not_an_object");
        }
        // The session is healthy: finish everything, and it still answers.
        let mut finishes = Vec::new();
        for q in 2..=last {
            finishes.extend(encode(&Message::Finish { question: q }));
        }
        raw.write_raw(&finishes).await;
        raw.add(export, last + 1, 7).await;
        arena.assert_served(2).await;
        arena.stop().await;
    })
    .await;
}

// ---- connection floods ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_before_tls() {
    within(async {
        let server = Fixture::new()
            .server_limits(limits(|l| l.max_connections = 4))
            .serve()
            .await;
        let addr = server.addr();
        let id = server.vat.vat_id();
        // The first of four raw sessions is the well-behaved client: it fetches the
        // root and calls it before, during and after the flood.
        let mut client = RawConn::connect(&server.vat).await;
        let export = client.hello_and_fetch(server.uri.swiss()).await;
        client.add(export, 2, 1).await;
        let mut others = Vec::new();
        for _ in 0..3 {
            let mut raw = RawConn::connect_to(addr, id).await;
            raw.handshake().await;
            others.push(raw);
        }
        assert_eq!(server.vat.stats().await.sessions.len(), 4);

        // A fifth connection is closed at once, before any TLS: the first read ends.
        let started = Instant::now();
        let mut tcp = tokio::net::TcpStream::connect(addr)
            .await
            .expect("TCP connects (the kernel accepts before the vat refuses)");
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(common::IO_TIMEOUT, tcp.read(&mut buf))
            .await
            .expect("the refused connection was kept open");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused only after {:?} (the handshake timeout is 10 s)",
            started.elapsed()
        );
        // A TLS client past the limit fails too.
        assert!(RawConn::try_connect_to(addr, id).await.is_err());

        // The four are still served.
        client.add(export, 3, 2).await;
        for (i, raw) in (10..).zip(&mut others) {
            raw.ping(i).await;
        }

        // One leaves; once the vat has let it go, a new connection is accepted.
        drop(others.pop());
        let mut freed = false;
        for _ in 0..10_000 {
            if server.vat.stats().await.sessions.len() == 3 {
                freed = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(freed, "the closed session was never let go");
        // Its slot is given back right after its session leaves the stats; retry a
        // few times in case the new connection arrives in between.
        let mut newcomer = None;
        for _ in 0..50 {
            if let Ok(raw) = RawConn::try_connect_to(addr, id).await {
                newcomer = Some(raw);
                break;
            }
        }
        let mut newcomer = newcomer.expect("a connection under the limit is accepted");
        newcomer.handshake().await;
        newcomer.ping(99).await;
        client.add(export, 4, 3).await;
        assert_eq!(server.vat.stats().await.sessions.len(), 4);
        server.vat.shutdown().await;
    })
    .await;
}

// ---- a peer that stops reading ----

// Paused time: the keepalive is met on the tokio clock, which each round below moves
// on by a tenth of a second once every task waits.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn peer_that_never_reads_is_not_buffered_without_bound_and_is_dropped() {
    // The raw peer sends 500 calls whose results are 60 KiB each (30 MB of replies)
    // and never reads. The vat stops reading from it once 256 KiB of replies wait to
    // be sent, so it answers only as many calls as the socket buffers and that backlog
    // hold; then the peer is silent (the vat no longer reads it) and the keepalive
    // drops it after `keepalive_dead`. The well-behaved client is served throughout.
    const CALLS: u64 = 500;
    within(async {
        let arena = Fixture::new()
            .server_limits(limits(|l| {
                l.max_outbound_buffer = 256 * 1024;
                l.keepalive_idle = Duration::from_millis(300);
                l.keepalive_dead = Duration::from_secs(1);
            }))
            .connect()
            .await;
        arena.assert_served(1).await;
        let mut raw = arena.raw().await;
        let export = raw.hello_and_fetch(arena.server.uri.swiss()).await;
        let call = move |q: u64| {
            encode(&deliver(
                Target::Export(export),
                "echo_bytes",
                &(serde_bytes::ByteBuf::from(vec![0x5a; 60 * 1024]),),
                Some(q),
            ))
        };
        // Write from a task (the writes block once the vat stops reading); count
        // what got through.
        let writer = tokio::spawn(async move {
            let mut written = 0u64;
            for q in 2..2 + CALLS {
                if raw.try_write_raw(&call(q)).await.is_err() {
                    break;
                }
                written += 1;
            }
            (written, raw)
        });

        // Until the vat drops the raw session, keep checking the client and watch how
        // many of the raw peer's calls the vat has taken in (each is an answer it
        // holds, since the peer never finishes).
        let client_id = arena.client.vat_id();
        let mut most_answers = 0;
        let mut round = 10;
        let mut dropped = false;
        for _ in 0..1_000 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            round += 1;
            arena.assert_served(round).await;
            let stats = arena.server.vat.stats().await;
            match stats.sessions.iter().find(|s| s.peer != client_id) {
                Some(s) => most_answers = most_answers.max(s.tables.answers),
                None => {
                    dropped = true;
                    break;
                }
            }
        }
        assert!(dropped, "the peer that never reads was never dropped");
        assert!(
            most_answers > 0 && (most_answers as u64) < CALLS,
            "the vat took in {most_answers} of {CALLS} calls: it must stop reading once \
             its outbound buffer is full"
        );
        let (written, raw) = tokio::time::timeout(common::IO_TIMEOUT, writer)
            .await
            .expect("the writer ends once the vat drops the connection")
            .expect("the writer task");
        drop(raw);
        assert!(
            written < CALLS,
            "all {written} calls were written: nothing pushed back"
        );
        arena.assert_only_client_left().await;
        arena.stop().await;
    })
    .await;
}

// ---- peers that ask for much and read nothing: the outbound budget ----

/// What one answer frame adds to its data: the length prefix and the `return`
/// message around the bytes (measured at well under this).
const ANSWER_FRAME_OVERHEAD: usize = 64;

/// Connects a raw peer that fetches the root object, then writes `calls` calls of
/// `expand(answer)` in one write (tiny frames, all in the vat's read buffer at once)
/// and never reads again. Returns the connection, to keep it open.
async fn greedy_peer(arena: &common::Connected, calls: u64, answer: u32) -> RawConn {
    let mut raw = arena.raw().await;
    let export = raw.hello_and_fetch(arena.server.uri.swiss()).await;
    let mut bytes = Vec::new();
    for q in 2..2 + calls {
        bytes.extend(encode(&deliver(
            Target::Export(export),
            "expand",
            &(answer,),
            Some(q),
        )));
    }
    raw.write_raw(&bytes).await;
    raw
}

/// The largest queued answer bytes of the sessions that are not `client`'s, and their
/// sum, from one `stats()`.
fn attackers_queued(stats: &captp::VatStats, client: captp::VatId) -> (usize, usize) {
    let queued = stats
        .sessions
        .iter()
        .filter(|s| s.peer != client)
        .map(|s| s.queued_answer_bytes);
    queued.fold((0, 0), |(most, sum), q| (most.max(q), sum + q))
}

#[tokio::test]
async fn peer_that_never_reads_gets_at_most_the_budget_plus_one_answer_queued() {
    // The attack from the issue: a peer holding a capability sends 1,000 small calls
    // (about 30 KB, all in the vat's read buffer after one read) whose answers are
    // 256 KiB each, and never reads. Before, every frame already in the read buffer was
    // handled and answered (up to 1,000 answers, 256 MB). Now the session takes no
    // further frame once 1 MiB of answers wait, so at most 1 MiB + one answer is ever
    // queued.
    const BUDGET: usize = 1 << 20;
    const ANSWER: usize = 256 * 1024;
    const CALLS: u64 = 1_000;
    const BOUND: usize = BUDGET + ANSWER + ANSWER_FRAME_OVERHEAD;
    within(async {
        let arena = Fixture::new()
            .server_limits(limits(|l| l.max_outbound_buffer = BUDGET))
            .connect()
            .await;
        arena.assert_served(1).await;
        let raw = greedy_peer(&arena, CALLS, ANSWER as u32).await;

        // The good client's round trips pace the sampling. The kernel's socket buffers
        // take some megabytes first; then the vat's queue fills up to the budget.
        let client = arena.client.vat_id();
        let mut most = 0;
        let mut rounds_at_budget = 0;
        for round in 0..3_000 {
            arena.assert_served(10 + round).await;
            let stats = arena.server.vat.stats().await;
            let (queued, sum) = attackers_queued(&stats, client);
            assert!(
                queued <= BOUND,
                "{queued} answer bytes queued for a peer that does not read: the bound \
                 is {BOUND} (budget {BUDGET} + one {ANSWER}-byte answer)"
            );
            assert_eq!(
                stats.queued_answer_bytes,
                sum + stats_client(&stats, client)
            );
            most = most.max(queued);
            if most >= BUDGET {
                rounds_at_budget += 1;
                if rounds_at_budget == 20 {
                    break;
                }
            }
        }
        assert!(
            most >= BUDGET,
            "the attack never filled the budget ({most} bytes at most): it tested nothing"
        );
        let stats = arena.server.vat.stats().await;
        let attacker = stats
            .sessions
            .iter()
            .find(|s| s.peer != client)
            .expect("the attacker's session is still there");
        assert!(
            (attacker.tables.answers as u64) < CALLS,
            "the vat took in all {CALLS} calls"
        );

        // The attacker leaves: its session ends on the failed write, and its queued
        // answers leave the vat's total.
        drop(raw);
        let mut gone = false;
        for round in 0..1_000 {
            arena.assert_served(5_000 + round).await;
            let stats = arena.server.vat.stats().await;
            if stats.sessions.len() == 1 {
                assert_eq!(
                    stats.queued_answer_bytes,
                    stats.sessions[0].queued_answer_bytes
                );
                gone = true;
                break;
            }
        }
        assert!(gone, "the attacker's session outlived its connection");
        arena.stop().await;
    })
    .await;
}

/// The good client's own queued answer bytes in `stats`.
fn stats_client(stats: &captp::VatStats, client: captp::VatId) -> usize {
    stats
        .sessions
        .iter()
        .filter(|s| s.peer == client)
        .map(|s| s.queued_answer_bytes)
        .sum()
}

#[tokio::test]
async fn peers_that_never_read_stay_within_the_vat_wide_budget() {
    // Eight such peers, each allowed 1 MiB, against a vat-wide budget of 1 MiB: each
    // session's fair share is 1 MiB / 64 connections = 16 KiB. Without the vat-wide
    // budget they would hold 8 x (1 MiB + one answer); with it, the total stays within
    // the budget + sessions x (share + one answer), and the good client is served.
    const PER_PEER: usize = 1 << 20;
    const TOTAL: usize = 1 << 20;
    const CONNECTIONS: usize = 64;
    const SHARE: usize = TOTAL / CONNECTIONS;
    const ANSWER: usize = 64 * 1024;
    const ATTACKERS: usize = 8;
    const SESSIONS: usize = ATTACKERS + 1;
    const BOUND: usize = TOTAL + SESSIONS * (SHARE + ANSWER + ANSWER_FRAME_OVERHEAD);
    within(async {
        let arena = Fixture::new()
            .server_limits(limits(|l| {
                l.max_outbound_buffer = PER_PEER;
                l.max_outbound_total = TOTAL;
                l.max_connections = CONNECTIONS;
            }))
            .connect()
            .await;
        arena.assert_served(1).await;
        let mut peers = Vec::new();
        for _ in 0..ATTACKERS {
            peers.push(greedy_peer(&arena, 1_000, ANSWER as u32).await);
        }
        let client = arena.client.vat_id();
        let mut most_total = 0;
        let mut rounds_at_budget = 0;
        for round in 0..3_000 {
            arena.assert_served(10 + round).await;
            let stats = arena.server.vat.stats().await;
            assert_eq!(stats.sessions.len(), SESSIONS);
            let (most, sum) = attackers_queued(&stats, client);
            assert!(most <= PER_PEER + ANSWER + ANSWER_FRAME_OVERHEAD);
            let total = stats.queued_answer_bytes;
            assert_eq!(total, sum + stats_client(&stats, client));
            assert!(
                total <= BOUND,
                "{total} answer bytes queued over the vat: the bound is {BOUND} (budget \
                 {TOTAL} + {SESSIONS} sessions x (share {SHARE} + one {ANSWER}-byte answer))"
            );
            most_total = most_total.max(total);
            if most_total >= TOTAL {
                rounds_at_budget += 1;
                if rounds_at_budget == 20 {
                    break;
                }
            }
        }
        assert!(
            most_total >= TOTAL,
            "the attack never filled the vat-wide budget ({most_total} bytes at most)"
        );
        drop(peers);
        arena.stop().await;
    })
    .await;
}
