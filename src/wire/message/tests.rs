//! Tests of `message` (kept apart from `message.rs` for length): round trips, the
//! worked examples of PROTOCOL.md 16, and the refusals.

use super::*;

fn round_trip(msg: Message) {
    let mut out = Vec::new();
    let len = msg.encode_frame(&mut out).unwrap();
    assert_eq!(len + 4, out.len());
    let back = Message::decode(&out[4..], &CborLimits::default()).unwrap();
    assert_eq!(back, msg);
}

/// The hello of a vat with default limits.
fn default_hello() -> Message {
    Message::Hello(Hello::from_values(
        PROTOCOL_VERSION,
        [1 << 20, 1024, 256, 65_536, 256, 32, 65_536],
    ))
}

/// The worked example of PROTOCOL.md 16.1, byte for byte.
#[test]
fn hello_encodes_as_protocol_md_16_1_shows() {
    let hello = default_hello();
    let mut out = Vec::new();
    hello.encode_frame(&mut out).unwrap();
    let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "00000077a16568656c6c6fa86776657273696f6e04696d61785f6672616d651a001000006d6d61785f7175657374696f6e731904006a6d61785f7175657565641901006b6d61785f696d706f7274731a00010000686d61785f63617073190100696d61785f64657074681820696d61785f6974656d731a00010000"
    );
}

#[test]
fn every_message_round_trips() {
    let payload = Payload {
        data: crate::wire::encode_value(&("foot", 3u8)).unwrap().into(),
        caps: vec![
            CapDescriptor::SenderHosted(4),
            CapDescriptor::ReceiverHosted(9),
            CapDescriptor::SenderPromise(2),
        ],
    };
    round_trip(default_hello());
    round_trip(Message::Bootstrap {
        question: 1,
        swiss: SwissNumber::from_bytes([7; 32]),
    });
    round_trip(Message::Deliver {
        quiet: false,
        target: Target::Export(3),
        method: "log".into(),
        payload: payload.clone(),
        question: None,
    });
    round_trip(Message::Deliver {
        quiet: false,
        target: Target::Answer(u64::MAX),
        method: String::new(),
        payload: Payload::default(),
        question: Some(2),
    });
    round_trip(Message::Deliver {
        quiet: true,
        target: Target::Answer(4),
        method: "next".into(),
        payload: Payload::default(),
        question: Some(5),
    });
    round_trip(Message::WantReturn { question: 5 });
    round_trip(Message::Return {
        question: 2,
        result: ReturnResult::Ok(payload),
    });
    round_trip(Message::Return {
        question: 2,
        result: ReturnResult::Err(WireBroken::from(&Broken::failed("no"))),
    });
    round_trip(Message::Finish { question: 5 });
    round_trip(Message::Resolve {
        export: 2,
        result: ReturnResult::Err(WireBroken::from(&Broken::failed("gone"))),
    });
    round_trip(Message::Release {
        export: 5,
        count: 2,
    });
    round_trip(Message::Abort {
        reason: "bye".into(),
    });
    round_trip(Message::Ping { nonce: 1 });
    round_trip(Message::Pong { nonce: 1 });
}

#[test]
fn a_detached_payload_frames_like_an_inline_one() {
    let mut msg = Message::Return {
        question: 7,
        result: ReturnResult::Ok(Payload {
            data: (0..=255).collect::<Vec<u8>>().into(),
            caps: vec![CapDescriptor::SenderHosted(1)],
        }),
    };
    let mut whole = vec![9];
    msg.encode_frame(&mut whole).unwrap();
    let mut parts = vec![9];
    let at = msg
        .encode_frame_detached(&mut parts, 256)
        .expect("detached");
    let data = std::mem::take(msg.payload_data_mut().unwrap());
    let rest = parts.split_off(at);
    parts.extend_from_slice(&data);
    parts.extend_from_slice(&rest);
    assert_eq!(parts, whole);
    // Below the threshold nothing is detached.
    let mut small = Vec::new();
    assert_eq!(msg.encode_frame_detached(&mut small, 1024), None);
}

#[test]
fn shared_decoding_keeps_payload_data_in_the_body() {
    let msg = Message::Deliver {
        quiet: false,
        target: Target::Export(1),
        method: "put".into(),
        payload: Payload {
            data: crate::wire::encode_value(&serde_bytes::Bytes::new(&[7; 300]))
                .unwrap()
                .into(),
            caps: Vec::new(),
        },
        question: Some(1),
    };
    let mut out = Vec::new();
    msg.encode_frame(&mut out).unwrap();
    let body = Bytes::from(out).slice(4..);
    let shared = Message::decode_shared(&body, &CborLimits::default()).unwrap();
    let copied = Message::decode(&body, &CborLimits::default()).unwrap();
    assert_eq!(shared, msg);
    assert_eq!(copied, msg);
    let within = body.as_ptr_range();
    let data = shared.payload_data().unwrap();
    assert!(within.contains(&data.as_ptr()), "a view of the body");
    assert!(!within.contains(&copied.payload_data().unwrap().as_ptr()));
}

#[test]
fn unknown_kind_is_a_schema_error() {
    let body = crate::wire::encode_value(&std::collections::BTreeMap::from([(
        "teleport",
        std::collections::BTreeMap::from([("to", 1)]),
    )]))
    .unwrap();
    let err = Message::decode(&body, &CborLimits::default()).unwrap_err();
    assert!(
        matches!(err, DecodeError::Schema(ref s) if s.contains("not a captp message")),
        "{err}"
    );
}

#[test]
fn short_swiss_is_refused() {
    #[derive(Serialize)]
    struct Fake<'a> {
        question: u64,
        #[serde(with = "serde_bytes")]
        swiss: &'a [u8],
    }
    let body = crate::wire::encode_value(&std::collections::BTreeMap::from([(
        "bootstrap",
        Fake {
            question: 1,
            swiss: &[1, 2, 3],
        },
    )]))
    .unwrap();
    let err = Message::decode(&body, &CborLimits::default()).unwrap_err();
    assert!(err.to_string().contains("32 bytes"), "{err}");
}

#[test]
fn each_kind_has_one_wire_name() {
    let names: Vec<&str> = Kind::ALL.iter().map(|kind| kind.as_str()).collect();
    for (i, kind) in Kind::ALL.into_iter().enumerate() {
        assert_eq!(Kind::from_bytes(kind.as_str().as_bytes()), Some(kind));
        assert!(!names[..i].contains(&kind.as_str()), "{kind:?}");
    }
    assert_eq!(Kind::from_bytes(b"Hello"), None);
    assert_eq!(Kind::from_bytes(b"hello "), None);
    assert_eq!(Kind::from_bytes(b""), None);
    assert_eq!(Message::Finish { question: 1 }.kind(), "finish");
    assert_eq!(Message::Pong { nonce: 1 }.kind(), "pong");
}

#[test]
fn long_error_messages_are_cut_at_a_character_boundary() {
    assert_eq!(truncate_at_char_boundary("abc", 5), "abc");
    assert_eq!(truncate_at_char_boundary("abc", 2), "ab");
    // "é" is two bytes: a cut inside it keeps the character out.
    assert_eq!(truncate_at_char_boundary("aé", 2), "a");
    assert_eq!(truncate_at_char_boundary("é", 0), "");
    let long = format!("x{}", "é".repeat(MAX_ERROR_MESSAGE));
    let wire = WireBroken::from(&Broken::failed(long.clone()));
    assert_eq!(wire.message.len(), MAX_ERROR_MESSAGE - 1);
    assert!(long.starts_with(&wire.message));
    let short = WireBroken::from(&Broken::failed("short"));
    assert_eq!(short.message, "short");
    assert_eq!(short.kind, crate::BrokenKind::Failed.as_str());
}

#[test]
fn debug_never_shows_the_swiss() {
    let msg = Message::Bootstrap {
        question: 1,
        swiss: SwissNumber::from_bytes([0xab; 32]),
    };
    let text = format!("{msg:?}");
    assert!(!text.contains("171"), "{text}");
    assert!(!text.contains("q6ur"), "{text}");
}
