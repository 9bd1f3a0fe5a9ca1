//! Writes the seed inputs of the `frame`, `message` and `sturdy` fuzz targets into
//! `fuzz/seeds/<target>/` (committed; `smoke.sh` and the long runs copy them into the
//! corpus). Run from anywhere: `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.
//!
//! The `session` target's input is a sequence of operations decoded with `arbitrary`,
//! so it starts from an empty corpus and finds its own seeds.

use std::fs;
use std::path::{Path, PathBuf};

use captp::internal::proto::announce;
use captp::internal::wire::message::ThirdParty;
use captp::internal::wire::{
    CAP_TAG, CapDescriptor, Message, Payload, ReturnResult, Target, WireBroken, encode_value,
};
use captp::{Broken, Limits, SturdyRef, SwissNumber};

fn body(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    msg.encode_frame(&mut out).expect("encodes");
    out.split_off(4)
}

fn messages() -> Vec<(&'static str, Message)> {
    let data = encode_value(&("seed", 7u8, -1i32)).expect("encodes");
    // `CAP_TAG(0)`: a payload that is exactly one reference.
    let single = {
        let tag = u16::try_from(CAP_TAG)
            .expect("the tag fits 16 bits")
            .to_be_bytes();
        vec![0xd9, tag[0], tag[1], 0x00]
    };
    let single_cap = single.clone();
    let payload = Payload {
        data: data.clone().into(),
        caps: vec![
            CapDescriptor::SenderHosted(1),
            CapDescriptor::SenderPromise(3),
            CapDescriptor::ReceiverHosted(2),
        ],
    };
    vec![
        ("hello", Message::Hello(announce(&Limits::default()))),
        (
            "bootstrap",
            Message::Bootstrap {
                question: 1,
                swiss: SwissNumber::from_bytes([0x5a; 32]),
            },
        ),
        (
            "deliver_export",
            Message::Deliver {
                quiet: false,
                target: Target::Export(1),
                method: "echo".into(),
                payload: payload.clone(),
                question: Some(2),
            },
        ),
        (
            "deliver_answer_one_way",
            Message::Deliver {
                quiet: false,
                target: Target::Answer(1),
                method: "p".into(),
                payload: Payload {
                    data: data.clone().into(),
                    caps: Vec::new(),
                },
                question: None,
            },
        ),
        (
            "return_ok_cap",
            Message::Return {
                question: 1,
                result: ReturnResult::Ok(Payload {
                    data: single.into(),
                    caps: vec![CapDescriptor::SenderHosted(1)],
                }),
            },
        ),
        (
            "return_ok_data",
            Message::Return {
                question: 3,
                result: ReturnResult::Ok(payload),
            },
        ),
        (
            "return_err",
            Message::Return {
                question: 4,
                result: ReturnResult::Err(WireBroken::from(&Broken::failed("no"))),
            },
        ),
        ("finish", Message::Finish { question: 1 }),
        (
            "resolve",
            Message::Resolve {
                export: 3,
                result: ReturnResult::Err(WireBroken::from(&Broken::failed("gone"))),
            },
        ),
        (
            "release",
            Message::Release {
                export: 1,
                count: 2,
            },
        ),
        (
            "abort",
            Message::Abort {
                reason: "bye".into(),
            },
        ),
        ("ping", Message::Ping { nonce: u64::MAX }),
        ("pong", Message::Pong { nonce: 0 }),
        (
            "listen",
            Message::Listen {
                hints: vec!["127.0.0.1:4433".into(), "[::1]:4433".into()],
            },
        ),
        (
            "return_third_party",
            Message::Return {
                question: 5,
                result: ReturnResult::Ok(Payload {
                    data: single_cap.into(),
                    caps: vec![CapDescriptor::ThirdParty(Box::new(ThirdParty {
                        host: [0x11; 32],
                        gift: [0x22; 32],
                        vine: 5,
                        hints: vec!["127.0.0.1:4433".into()],
                    }))],
                }),
            },
        ),
    ]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).expect("write a seed");
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let dirs = ["frame", "message", "sturdy"].map(|t| {
        let dir = root.join(t);
        fs::create_dir_all(&dir).expect("create the seed directory");
        dir
    });
    let [frame_dir, message_dir, sturdy_dir] = &dirs;

    // message: one frame body per message kind, and a few well-known bad bodies.
    let mut stream = Vec::new();
    for (name, msg) in messages() {
        let b = body(&msg);
        write(message_dir, name, &b);
        stream.extend_from_slice(&(u32::try_from(b.len()).expect("small")).to_be_bytes());
        stream.extend_from_slice(&b);
    }
    write(
        message_dir,
        "huge_array",
        &[0x9b, 0x10, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    write(
        message_dir,
        "indefinite_map",
        &[0xbf, 0x61, 0x61, 0x00, 0xff],
    );
    let mut trailing = body(&Message::Ping { nonce: 1 });
    trailing.push(0x00);
    write(message_dir, "trailing_byte", &trailing);

    // frame: a limit selector byte, then a stream of frames (the last one cut short).
    for (pick, name) in [(3u8, "stream_8k"), (4, "stream_1m"), (6, "stream_max")] {
        let mut input = vec![pick];
        input.extend_from_slice(&stream);
        input.extend_from_slice(&[0, 0, 0, 9, 0xa1]);
        write(frame_dir, name, &input);
    }
    write(frame_dir, "over_limit", &[3, 0xff, 0xff, 0xff, 0xff]);

    // sturdy: valid refs of each host kind, and a near miss.
    let vat = "C1v9xZ2k0Ggd6oQGQv2N9F3i5tX-4mRcMPKu8NyqJ_s";
    let vat_id = vat.parse().expect("a canonical vat ID");
    let swiss = SwissNumber::from_bytes([0x3c; 32]);
    for (name, host, port) in [
        ("ipv4", "127.0.0.1", 4433),
        ("ipv6", "[::1]", 1),
        ("domain", "vat.example.org", 65535),
    ] {
        let uri = format!("captp://{vat}@{host}:{port}/{}", swiss.expose_base64());
        let parsed: SturdyRef = uri.parse().expect("a valid seed URI");
        assert_eq!(parsed.vat_id(), vat_id);
        write(sturdy_dir, name, uri.as_bytes());
    }
    let bad = format!("captp://{vat}@127.0.0.1:0443/{}?x", swiss.expose_base64());
    write(sturdy_dir, "bad_port_and_query", bad.as_bytes());
    println!("seeds written under {}", root.display());
}
