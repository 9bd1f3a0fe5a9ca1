//! The bounded CBOR pre-scan and message decoding, with an encode/decode round trip.
//!
//! The input is one frame body. Checks: `Message::decode` refuses exactly what
//! `scan::check` refuses, with the same error; whatever decodes encodes as one frame
//! that reads back (framing and decoding) as an equal message, whose encoding is
//! stable and passes the same bounded check; payload data passes through unchanged and
//! the scan of it never panics.
#![no_main]

use captp::internal::wire::frame::{self, FrameSpan, HEADER_LEN};
use captp::internal::wire::{self, CborLimits, DecodeError, Message, ReturnResult, scan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let limits = CborLimits::DEFAULT;
    let scanned = scan::check(body, &limits);
    let decoded = Message::decode(body, &limits);
    let msg = match (scanned, decoded) {
        (Ok(()), Ok(msg)) => msg,
        (Ok(()), Err(DecodeError::Schema(s))) => {
            assert!(s.starts_with("not a captp message"), "{s}");
            return;
        }
        (Err(scan_err), Err(DecodeError::Cbor(e))) => {
            assert_eq!(scan_err, e);
            assert!(!e.to_string().is_empty());
            return;
        }
        (scanned, decoded) => panic!("scan {scanned:?} but decode {decoded:?}"),
    };
    let _ = format!("{msg:?} {}", msg.kind());

    // Encode as one frame, read it back.
    let mut out = Vec::new();
    let len = msg
        .encode_frame(&mut out)
        .expect("a decoded message encodes");
    assert_eq!(out.len(), HEADER_LEN + len);
    let span = frame::next_frame(&out, usize::MAX)
        .expect("framing accepts it")
        .expect("one whole frame");
    assert_eq!(
        span,
        FrameSpan {
            start: HEADER_LEN,
            end: out.len()
        }
    );
    let reencoded = &out[HEADER_LEN..];
    scan::check(reencoded, &limits).expect("the encoding passes the bounded check");
    let back = Message::decode(reencoded, &limits).expect("the encoding decodes");
    assert_eq!(back, msg, "decode(encode(m)) != m");

    // The encoding is canonical: encoding the decoded message again gives the same bytes.
    let mut again = Vec::new();
    back.encode_frame(&mut again).expect("encodes again");
    assert_eq!(again, out);

    // Payload data is carried as opaque bytes; the runtime scans it later with limits.
    let data = match &msg {
        Message::Deliver { payload, .. } => Some(&payload.data),
        Message::Return {
            result: ReturnResult::Ok(payload),
            ..
        } => Some(&payload.data),
        _ => None,
    };
    if let Some(data) = data
        && scan::check(data, &limits).is_ok()
    {
        let _ = wire::decode_value::<(String,)>(data, &limits);
        let _ = wire::decode_value::<(i64, i64)>(data, &limits);
    }
});
