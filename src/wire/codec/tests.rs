//! Tests of `codec` (kept apart from `codec.rs` for length).

use proptest::prelude::*;

use super::*;
use crate::wire::CborLimits;

fn serde_bytes_of(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(msg, &mut out).unwrap();
    out
}

fn descriptor() -> impl Strategy<Value = CapDescriptor> {
    prop_oneof![
        any::<u64>().prop_map(CapDescriptor::SenderHosted),
        any::<u64>().prop_map(CapDescriptor::SenderPromise),
        any::<u64>().prop_map(CapDescriptor::ReceiverHosted),
        (any::<[u8; 32]>(), any::<[u8; 32]>(), any::<u64>(), hints()).prop_map(
            |(host, gift, vine, hints)| CapDescriptor::ThirdParty(Box::new(ThirdParty {
                host,
                gift,
                vine,
                hints
            }))
        ),
    ]
}

fn hints() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec("[a-z0-9.:\\[\\]]{0,40}", 0..=4)
}

fn payload() -> impl Strategy<Value = Payload> {
    (
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(descriptor(), 0..4),
    )
        .prop_map(|(data, caps)| Payload {
            data: data.into(),
            caps,
        })
}

fn result() -> impl Strategy<Value = ReturnResult> {
    prop_oneof![
        payload().prop_map(ReturnResult::Ok),
        (
            ".{0,20}",
            ".{0,300}",
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))
        )
            .prop_map(|(kind, message, data)| ReturnResult::Err(WireBroken {
                kind,
                message,
                data
            })),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u32>(), any::<[u64; 7]>())
            .prop_map(|(version, limits)| Message::Hello(Hello::from_values(version, limits))),
        (any::<u64>(), any::<[u8; 32]>()).prop_map(|(question, swiss)| Message::Bootstrap {
            question,
            swiss: SwissNumber::from_bytes(swiss)
        }),
        (
            any::<bool>(),
            any::<u64>(),
            ".{0,30}",
            payload(),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(export, id, method, payload, question)| Message::Deliver {
                quiet: false,
                target: if export {
                    Target::Export(id)
                } else {
                    Target::Answer(id)
                },
                method,
                payload,
                question,
            }),
        (any::<u64>(), result())
            .prop_map(|(question, result)| Message::Return { question, result }),
        any::<u64>().prop_map(|question| Message::Finish { question }),
        (any::<u64>(), result()).prop_map(|(export, result)| Message::Resolve { export, result }),
        (any::<u64>(), any::<u64>()).prop_map(|(export, count)| Message::Release { export, count }),
        ".{0,100}".prop_map(|reason| Message::Abort { reason }),
        any::<u64>().prop_map(|nonce| Message::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Message::Pong { nonce }),
        hints().prop_map(|hints| Message::Listen { hints }),
    ]
}

proptest! {
    /// The hand-written encoder writes exactly what the serde derives write, and the
    /// decoder reads it back.
    #[test]
    fn matches_the_serde_layout(msg in message()) {
        let mut ours = Vec::new();
        prop_assert_eq!(encode(&msg, &mut ours, usize::MAX), None);
        prop_assert_eq!(&ours, &serde_bytes_of(&msg));
        let items = decode(&ours, None).map(|(m, _)| m);
        prop_assert_eq!(items, Ok(msg.clone()));
        // Decoded from a shared buffer, the same message, its data a view of the buffer.
        let shared = bytes::Bytes::from(ours);
        let (back, _) = decode(&shared, Some(&shared)).unwrap();
        if let Some(data) = back.payload_data().filter(|d| !d.is_empty()) {
            let within = shared.as_ptr_range();
            prop_assert!(within.contains(&data.as_ptr()));
        }
        prop_assert_eq!(back, msg);
    }

    /// On damaged encodings, the decoder accepts only what the serde derives accept,
    /// and then the same message.
    #[test]
    fn refuses_what_serde_refuses(msg in message(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
        let mut body = serde_bytes_of(&msg);
        let i = at.index(body.len());
        if cut {
            body.truncate(i);
        } else {
            body[i] = byte;
        }
        let scanned = crate::wire::scan::check(&body, &CborLimits::DEFAULT).is_ok();
        if let (true, Ok((ours, _))) = (scanned, decode(&body, None)) {
            let theirs: Message = ciborium::from_reader(&body[..]).unwrap();
            prop_assert_eq!(ours, theirs);
        }
    }
}

#[test]
fn the_one_pass_decode_keeps_the_bounded_checks_errors() {
    use crate::wire::{DecodeError, ScanError};
    let msg = Message::Deliver {
        quiet: false,
        target: Target::Answer(3),
        method: "m".into(),
        payload: Payload {
            data: bytes::Bytes::from_static(&[0xf6]),
            caps: vec![CapDescriptor::SenderHosted(1); 4],
        },
        question: Some(9),
    };
    let mut body = Vec::new();
    encode(&msg, &mut body, usize::MAX);
    let (_, items) = decode(&body, None).unwrap();
    // Every head counts, keys included: 3 for the envelope, 4 for the target, 2 for
    // the method, 6 plus 3 per descriptor for the payload, 2 for the question.
    assert_eq!(items, 29);
    let at = |max_depth, max_items| {
        Message::decode(
            &body,
            &CborLimits {
                max_depth,
                max_items,
            },
        )
    };
    assert_eq!(at(32, 29), Ok(msg.clone()));
    assert_eq!(
        at(32, 28),
        Err(DecodeError::Cbor(ScanError::TooManyItems { max: 28 }))
    );
    // A deliver nests five deep (message, fields, payload, caps, descriptor); below
    // MESSAGE_DEPTH the bounded check runs first and decides.
    assert_eq!(at(5, 29), Ok(msg));
    assert_eq!(
        at(4, 29),
        Err(DecodeError::Cbor(ScanError::TooDeep { max: 4 }))
    );
    // Trailing bytes and indefinite lengths get the bounded check's errors too.
    body.push(0);
    assert_eq!(
        Message::decode(&body, &CborLimits::DEFAULT),
        Err(DecodeError::Cbor(ScanError::TrailingBytes { count: 1 }))
    );
    let indefinite = [0xbf, 0xff];
    assert!(matches!(
        Message::decode(&indefinite, &CborLimits::DEFAULT),
        Err(DecodeError::Cbor(ScanError::IndefiniteLength { .. }))
    ));
}

#[test]
fn field_order_is_free_and_duplicates_unknowns_and_missing_are_refused() {
    use ciborium::Value;
    let t = |s: &str| Value::Text(s.into());
    let u = |n: u64| Value::Integer(n.into());
    let enc = |v: Value| {
        let mut out = Vec::new();
        ciborium::into_writer(&v, &mut out).unwrap();
        out
    };
    let release =
        |fields: Vec<(Value, Value)>| enc(Value::Map(vec![(t("release"), Value::Map(fields))]));
    assert_eq!(
        decode(
            &release(vec![(t("count"), u(2)), (t("export"), u(5))]),
            None
        )
        .map(|(m, _)| m),
        Ok(Message::Release {
            export: 5,
            count: 2
        })
    );
    let dup = decode(
        &release(vec![(t("export"), u(5)), (t("export"), u(5))]),
        None,
    );
    assert!(dup.unwrap_err().contains("duplicate field `export`"));
    let unknown = decode(
        &release(vec![
            (t("export"), u(5)),
            (t("count"), u(2)),
            (t("extra"), u(0)),
        ]),
        None,
    );
    assert!(unknown.unwrap_err().contains("unknown field `extra`"));
    let missing = decode(&release(vec![(t("export"), u(5))]), None);
    assert!(missing.unwrap_err().contains("missing field `count`"));
    let tagged = decode(
        &release(vec![
            (t("export"), Value::Tag(2, Box::new(u(5)))),
            (t("count"), u(2)),
        ]),
        None,
    );
    assert!(tagged.unwrap_err().contains("found a tag"));
}

#[test]
fn error_data_is_an_optional_byte_string() {
    let with = |data: Option<Vec<u8>>| Message::Return {
        question: 3,
        result: ReturnResult::Err(WireBroken {
            kind: "failed".into(),
            message: "no".into(),
            data,
        }),
    };
    let mut body = Vec::new();
    encode(&with(Some(vec![0x18, 0x64])), &mut body, usize::MAX);
    // ... "err": {"kind": "failed", "message": "no", "data": h'1864'}
    let err: Vec<u8> = [
        &[0x63][..],
        b"err",
        &[0xa3, 0x64],
        b"kind",
        &[0x66],
        b"failed",
        &[0x67],
        b"message",
        &[0x62],
        b"no",
        &[0x64],
        b"data",
        &[0x42, 0x18, 0x64],
    ]
    .concat();
    assert!(body.ends_with(&err), "{body:02x?}");
    assert_eq!(
        decode(&body, None).map(|(m, _)| m),
        Ok(with(Some(vec![0x18, 0x64])))
    );
    // Without data the error is the version 1 form, two fields.
    let mut body = Vec::new();
    encode(&with(None), &mut body, usize::MAX);
    assert!(body.windows(4).any(|w| w == [0x63, b'e', b'r', b'r']));
    assert!(!body.windows(4).any(|w| w == *b"data"));
    assert_eq!(decode(&body, None).map(|(m, _)| m), Ok(with(None)));
    // `data` must be a byte string, and `kind` and `message` stay required.
    use ciborium::Value;
    let t = |s: &str| Value::Text(s.into());
    let err_of = |fields: Vec<(Value, Value)>| {
        let v = Value::Map(vec![(
            t("return"),
            Value::Map(vec![
                (t("question"), Value::Integer(3.into())),
                (
                    t("result"),
                    Value::Map(vec![(t("err"), Value::Map(fields))]),
                ),
            ]),
        )]);
        let mut out = Vec::new();
        ciborium::into_writer(&v, &mut out).unwrap();
        decode(&out, None)
    };
    let array = err_of(vec![
        (t("kind"), t("failed")),
        (t("message"), t("no")),
        (t("data"), Value::Array(vec![])),
    ]);
    assert!(array.is_err());
    let missing = err_of(vec![
        (t("kind"), t("failed")),
        (t("data"), Value::Bytes(vec![])),
    ]);
    assert!(missing.unwrap_err().contains("missing field `message`"));
}

/// The frame of `msg`, in hex, its length prefix apart (as PROTOCOL.md 16 prints them).
fn frame_hex(msg: &Message) -> String {
    let mut out = Vec::new();
    msg.encode_frame(&mut out).unwrap();
    let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
    format!("{} {}", &hex[..8], &hex[8..])
}

/// The worked examples of PROTOCOL.md 16.9 (three-party handoff), byte for byte, and
/// back.
#[test]
fn handoff_messages_encode_as_protocol_md_16_9_shows() {
    let single = Bytes::from_static(&crate::wire::SINGLE_CAP_DATA);
    let gift = [0x22; 32];
    let deliver = |export, method: &str, data: Vec<u8>, question| Message::Deliver {
        target: Target::Export(export),
        method: method.to_owned(),
        payload: Payload {
            data: data.into(),
            caps: Vec::new(),
        },
        question,
        quiet: false,
    };
    let mut deposit_data = vec![0x82, 0x58, 0x20];
    deposit_data.extend_from_slice(&gift);
    deposit_data.extend_from_slice(&[0x58, 0x20]);
    deposit_data.extend_from_slice(&[0x33; 32]);
    let mut fence_data = vec![0x81, 0x58, 0x20];
    fence_data.extend_from_slice(&gift);
    let key: [u8; 32] = (0..32)
        .map(|i| {
            u8::from_str_radix(
                &"9092882269b08d8c97317cf3ff15f4ffda23c7ecedda84ccdfb4a21ce203cbb1"
                    [2 * i..2 * i + 2],
                16,
            )
            .unwrap()
        })
        .collect::<Vec<u8>>()
        .try_into()
        .unwrap();
    let cases = [
        (
            Message::Return {
                question: 3,
                result: ReturnResult::Ok(Payload {
                    data: single,
                    caps: vec![CapDescriptor::ThirdParty(Box::new(ThirdParty {
                        host: [0x11; 32],
                        gift,
                        vine: 5,
                        hints: vec!["127.0.0.1:4433".to_owned()],
                    }))],
                }),
            },
            "000000a7 a16672657475726ea2687175657374696f6e0366726573756c74a1626f6ba2646461746144d9636100646361707381a16b74686972645f7061727479a464686f7374582011111111111111111111111111111111111111111111111111111111111111116467696674582022222222222222222222222222222222222222222222222222222222222222226476696e65056568696e7473816e3132372e302e302e313a34343333",
        ),
        (
            Message::Listen {
                hints: vec!["127.0.0.1:4433".to_owned()],
            },
            "0000001f a1666c697374656ea16568696e7473816e3132372e302e302e313a34343333",
        ),
        (
            deliver(2, "captp.deposit", deposit_data, None),
            "00000084 a16764656c69766572a366746172676574a1666578706f727402666d6574686f646d63617074702e6465706f736974677061796c6f6164a164646174615845825820222222222222222222222222222222222222222222222222222222222222222258203333333333333333333333333333333333333333333333333333333333333333",
        ),
        (
            deliver(5, "captp.fence", fence_data, Some(4)),
            "0000006a a16764656c69766572a466746172676574a1666578706f727405666d6574686f646b63617074702e66656e6365677061796c6f6164a1646461746158238158202222222222222222222222222222222222222222222222222222222222222222687175657374696f6e04",
        ),
        (
            Message::Return {
                question: 4,
                result: ReturnResult::Ok(Payload {
                    data: Bytes::from_static(&crate::wire::NULL_DATA),
                    caps: Vec::new(),
                }),
            },
            "00000026 a16672657475726ea2687175657374696f6e0466726573756c74a1626f6ba1646461746141f6",
        ),
        (
            Message::Bootstrap {
                question: 1,
                swiss: SwissNumber::from_bytes(key),
            },
            "0000003e a169626f6f747374726170a2687175657374696f6e0165737769737358209092882269b08d8c97317cf3ff15f4ffda23c7ecedda84ccdfb4a21ce203cbb1",
        ),
    ];
    for (msg, hex) in cases {
        assert_eq!(frame_hex(&msg), hex, "{msg:?}");
        let mut out = Vec::new();
        msg.encode_frame(&mut out).unwrap();
        assert_eq!(
            Message::decode(&out[4..], &CborLimits::default()).unwrap(),
            msg
        );
    }
}
