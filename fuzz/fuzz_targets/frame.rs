//! The frame reader over arbitrary receive buffers.
//!
//! The first byte picks the frame limit; the rest is a receive buffer that is consumed
//! frame by frame, as the session task does. Checks: every span lies inside the buffer,
//! starts after the 4-byte prefix and is no longer than the limit; a refusal names the
//! prefix's own length, which is over the limit; "need more bytes" only when the buffer
//! really holds less than one frame; and each body framed again with `begin`/`finish`
//! reads back as the same span.
#![no_main]

use captp::internal::wire::DecodeError;
use captp::internal::wire::frame::{self, FrameSpan, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&pick, mut buf)) = input.split_first() else {
        return;
    };
    let max_frame: usize = match pick % 8 {
        0 => 0,
        1 => 1,
        2 => 16,
        3 => 8192,
        4 => 1 << 20,
        5 => u32::MAX as usize,
        6 => usize::MAX,
        _ => usize::from(pick),
    };
    // Each frame consumes at least HEADER_LEN bytes, so this loop is bounded by the
    // input length; the explicit bound guards against a bug that consumes nothing.
    for _ in 0..=input.len() {
        match frame::next_frame(buf, max_frame) {
            Ok(Some(FrameSpan { start, end })) => {
                assert_eq!(start, HEADER_LEN);
                assert!(
                    end >= start && end <= buf.len(),
                    "{start}..{end} of {}",
                    buf.len()
                );
                let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                assert_eq!(end - start, len);
                assert!(len <= max_frame);
                // Framing the body again gives the same bytes and the same span.
                let mut out = Vec::new();
                let at = frame::begin(&mut out);
                out.extend_from_slice(&buf[start..end]);
                assert_eq!(frame::finish(&mut out, at), len);
                assert_eq!(out[..], buf[..end]);
                assert_eq!(
                    frame::next_frame(&out, max_frame),
                    Ok(Some(FrameSpan { start, end }))
                );
                buf = &buf[end..];
            }
            Ok(None) => {
                // Only when less than one whole frame is buffered.
                if let Some(header) = buf.first_chunk::<4>() {
                    let len = u32::from_be_bytes(*header) as usize;
                    assert!(len <= max_frame);
                    assert!(buf.len() < HEADER_LEN + len);
                } else {
                    assert!(buf.len() < HEADER_LEN);
                }
                return;
            }
            Err(DecodeError::FrameTooLarge { len, max }) => {
                let header = buf.first_chunk::<4>().expect("refused without a prefix");
                assert_eq!(len, u64::from(u32::from_be_bytes(*header)));
                assert_eq!(max, max_frame);
                assert!(len > max_frame as u64);
                // Refused from the prefix alone: the body's bytes make no difference.
                assert!(frame::next_frame(&header[..], max_frame).is_err());
                return;
            }
            Err(other) => panic!("the frame reader returned {other:?}"),
        }
    }
    panic!("the frame loop did not end");
});
