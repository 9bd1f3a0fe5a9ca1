//! Payload data between vats over real TLS on 127.0.0.1 (PROTOCOL.md 8.1): reference tags
//! that did not come from a `Ref` never leave a vat, tags a peer puts in data are
//! checked before any decoding, a generic value cannot silently swallow a capability,
//! arity is exact, and `bad_arguments` speaks the protocol's terms, not Rust's.

mod common;

use captp::internal::wire::{Message, Target};
use captp::{Args, Broken, BrokenKind, Ref, Reply};
use captp::{Tables, Vat};
use ciborium::Value;
use common::{Connected, Fixture, cbor, connected, deliver, encode, within};

/// Lets releases travel both ways (each `sync` is a round trip on every session).
async fn settle(c: &Connected) {
    for _ in 0..3 {
        c.client.sync().await;
        c.server.vat.sync().await;
    }
}

/// The tables of `vat`'s one session.
async fn tables(vat: &Vat) -> Tables {
    let stats = vat.stats().await;
    assert_eq!(stats.sessions.len(), 1, "{stats:?}");
    stats.sessions[0].tables
}

/// A `ciborium::Value` holding a reference tag around index 0, as a service that stored
/// a call's arguments as generic data would have kept it.
fn stored_tag() -> Value {
    Value::Tag(0x6361, Box::new(Value::Integer(0.into())))
}

/// Asserts a `bad_arguments` message is in the protocol's terms: no Rust type paths.
fn assert_no_rust_paths(b: &Broken) {
    assert_eq!(b.kind(), BrokenKind::BadArguments, "{b}");
    for rust in ["::", "alloc", "captp", "std"] {
        assert!(!b.message().contains(rust), "{rust:?} in {b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_tag_kept_as_data_is_never_sent() {
    within(async {
        let c = connected().await;
        // Alone, and beside a real reference (where, at the receiver, it would name that
        // reference's entry and pass a capability nobody meant to pass).
        let alone = c.obj.send::<()>("echo_str", (stored_tag(),)).await;
        let callback = Ref::from_object(|_: &str, _: Args| Reply::ok(()));
        let beside = c
            .obj
            .send::<()>("echo_str", (stored_tag(), callback.clone()))
            .await;
        let after = c.obj.send::<()>("echo_str", (callback, stored_tag())).await;
        for result in [alone, beside, after] {
            let b = result.expect_err("the send must break before it leaves");
            assert_eq!(b.kind(), BrokenKind::BadArguments, "{b}");
            assert!(
                b.message().contains("not written from a live reference"),
                "{b}"
            );
        }
        // Nothing reached the server (it imported nothing), and the session is fine.
        c.assert_served(1).await;
        settle(&c).await;
        assert_eq!(tables(&c.server.vat).await.imports, 0);
        assert_eq!(tables(&c.client).await.exports, 0);
        c.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_holding_a_stored_reference_tag_is_refused_by_the_callee() {
    within(async {
        let c = Fixture::new()
            .object(|method: &str, _: Args| match method {
                "get" => Reply::ok(vec![stored_tag()]),
                _ => Reply::unknown_method(method),
            })
            .connect()
            .await;
        let b = c
            .obj
            .send::<Value>("get", ())
            .await
            .expect_err("a stored tag must not be answered");
        assert_eq!(b.kind(), BrokenKind::Failed, "{b}");
        assert!(
            b.message().contains("not written from a live reference"),
            "{b}"
        );
        c.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_value_cannot_take_a_reference_and_the_reference_is_released() {
    within(async {
        // The topic store's shape: it keeps whatever it is given as generic data.
        let c = Fixture::new()
            .object(|method: &str, args: Args| match method {
                "set" => match args.decode::<(String, Value)>() {
                    Ok(_) => Reply::ok(()),
                    Err(e) => Reply::err(e),
                },
                _ => Reply::unknown_method(method),
            })
            .connect()
            .await;
        let callback = Ref::from_object(|_: &str, _: Args| Reply::ok(()));
        let b = c
            .obj
            .send::<()>("set", ("r", callback))
            .await
            .expect_err("a generic value cannot hold a live reference");
        assert_no_rust_paths(&b);
        assert!(b.message().contains("1 reference(s)"), "{b}");
        // The server released the callback it could not use: the client exports nothing.
        settle(&c).await;
        assert_eq!(tables(&c.server.vat).await.imports, 0);
        assert_eq!(tables(&c.client).await.exports, 0);
        c.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_a_peer_puts_in_data_are_checked_before_decoding() {
    within(async {
        let c = connected().await;
        let mut raw = c.raw().await;
        let export = raw.hello_and_fetch(c.server.uri.swiss()).await;
        // As CBOR diagnostic notation, each the single argument of `echo_str`:
        let cases: [(&str, Vec<u8>); 4] = [
            // 25441(0) with an empty capability table: names nothing.
            ("reference to no entry", vec![0x81, 0xd9, 0x63, 0x61, 0x00]),
            // 25441("foo"): not an index.
            (
                "reference around text",
                vec![0x81, 0xd9, 0x63, 0x61, 0x63, b'f', b'o', b'o'],
            ),
            // 1234("foo"): an application tag.
            (
                "tag 1234",
                vec![0x81, 0xd9, 0x04, 0xd2, 0x63, b'f', b'o', b'o'],
            ),
            // 55799("foo"): the self-describe tag.
            (
                "tag 55799",
                vec![0x81, 0xd9, 0xd9, 0xf7, 0x63, b'f', b'o', b'o'],
            ),
        ];
        for (q, (case, data)) in (2u64..).zip(cases) {
            let mut msg = deliver(Target::Export(export), "echo_str", &("x",), Some(q));
            if let Message::Deliver { payload, .. } = &mut msg {
                payload.data = data.into();
            }
            raw.write_raw(&encode(&msg)).await;
            let broken = raw.expect_broken(q).await;
            assert_eq!(broken.kind, "bad_arguments", "{case}: {broken:?}");
        }
        // Still a working session: a good call on the same connection is answered.
        raw.write_raw(&encode(&deliver(
            Target::Export(export),
            "echo_str",
            &("fine",),
            Some(10),
        )))
        .await;
        let payload = raw.expect_return(10).await;
        assert_eq!(payload.data, cbor("fine"));
        c.assert_served(2).await;
        c.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arity_is_exact_and_bad_arguments_speak_the_protocol() {
    within(async {
        let c = connected().await;
        let extra = c
            .obj
            .send::<i64>("add", (1, 2, 3))
            .await
            .expect_err("three arguments to a method of two");
        assert_no_rust_paths(&extra);
        assert!(
            extra
                .message()
                .contains("3 arguments were sent, more than the method takes"),
            "{extra}"
        );
        let fewer = c
            .obj
            .send::<i64>("add", (1,))
            .await
            .expect_err("one argument to a method of two");
        assert_no_rust_paths(&fewer);
        let wrong = c
            .obj
            .send::<i64>("add", ("one", 2))
            .await
            .expect_err("text where an integer goes");
        assert_no_rust_paths(&wrong);
        assert_eq!(c.obj.send::<i64>("add", (1, 2)).await.expect("exact"), 3);
        c.stop().await;
    })
    .await;
}
