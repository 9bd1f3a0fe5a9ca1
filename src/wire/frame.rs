//! Framing: a 4-byte big-endian length, then that many bytes of one CBOR message.
//!
//! The reader checks the announced length against the limit *before* it waits for or
//! allocates the body, so a peer cannot make the vat reserve memory by announcing a large
//! frame. No I/O here: the caller appends received bytes to a buffer and asks for frames.

use super::DecodeError;

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// Where the next complete frame sits in a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSpan {
    /// Offset of the message body (just past the length prefix).
    pub start: usize,
    /// Offset one past the body's last byte: the bytes to consume.
    pub end: usize,
}

/// Finds the first complete frame in `buf`.
///
/// Returns `Ok(None)` when more bytes are needed. A zero length is allowed by framing
/// and then rejected by the CBOR check (an empty message is truncated CBOR).
///
/// # Errors
///
/// [`DecodeError::FrameTooLarge`] as soon as the prefix announces more than `max_frame`
/// bytes, before the body has arrived.
pub fn next_frame(buf: &[u8], max_frame: usize) -> Result<Option<FrameSpan>, DecodeError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*header);
    if u64::from(len) > max_frame as u64 {
        return Err(DecodeError::FrameTooLarge {
            len: u64::from(len),
            max: max_frame,
        });
    }
    let end = HEADER_LEN + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(FrameSpan {
        start: HEADER_LEN,
        end,
    }))
}

/// Bytes of the frame at the front of `buf` that have not arrived yet: 0 when the frame
/// is complete, when its length prefix is not all in, or when the prefix announces more
/// than `max_frame` (which [`next_frame`] refuses). What a reader may make room for
/// ahead of the bytes; it is only announced, so the reader bounds it by what arrived.
pub fn missing(buf: &[u8], max_frame: usize) -> usize {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return 0;
    };
    let len = u32::from_be_bytes(*header);
    if u64::from(len) > max_frame as u64 {
        return 0;
    }
    (HEADER_LEN + len as usize).saturating_sub(buf.len())
}

/// Reserves a length prefix at the end of `out`; returns its position for [`finish`].
pub fn begin(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    at
}

/// Writes the body length into the prefix reserved at `at`; returns the body length.
pub fn finish(out: &mut [u8], at: usize) -> usize {
    finish_with(out, at, 0)
}

/// As [`finish`], for a body of which `elsewhere` bytes are sent from another buffer
/// (see `Message::encode_frame_detached`).
pub fn finish_with(out: &mut [u8], at: usize, elsewhere: usize) -> usize {
    let len = out.len() - at - HEADER_LEN + elsewhere;
    // Callers check `len` against the peer's frame limit, which is below u32::MAX.
    let prefix = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    out[at..at + HEADER_LEN].copy_from_slice(&prefix);
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_header_and_body() {
        assert_eq!(next_frame(&[], 100), Ok(None));
        assert_eq!(next_frame(&[0, 0, 0], 100), Ok(None));
        assert_eq!(next_frame(&[0, 0, 0, 2, 1], 100), Ok(None));
        assert_eq!(
            next_frame(&[0, 0, 0, 2, 1, 2, 3], 100),
            Ok(Some(FrameSpan { start: 4, end: 6 }))
        );
    }

    #[test]
    fn oversize_length_refused_before_body() {
        let err = next_frame(&[0xff, 0xff, 0xff, 0xff], 1 << 20).unwrap_err();
        assert_eq!(
            err,
            DecodeError::FrameTooLarge {
                len: u64::from(u32::MAX),
                max: 1 << 20
            }
        );
        // One byte over the limit, with no body at all yet.
        let over = ((1u32 << 20) + 1).to_be_bytes();
        assert!(next_frame(&over, 1 << 20).is_err());
        let at = (1u32 << 20).to_be_bytes();
        assert_eq!(next_frame(&at, 1 << 20), Ok(None));
    }

    #[test]
    fn missing_counts_what_the_frame_still_needs() {
        assert_eq!(missing(&[], 100), 0);
        assert_eq!(missing(&[0, 0, 0], 100), 0);
        assert_eq!(missing(&[0, 0, 0, 5], 100), 5);
        assert_eq!(missing(&[0, 0, 0, 5, 1, 2], 100), 3);
        assert_eq!(missing(&[0, 0, 0, 2, 1, 2], 100), 0);
        // A complete frame with the next one behind it: nothing missing.
        assert_eq!(missing(&[0, 0, 0, 1, 1, 0, 0], 100), 0);
        // Over the limit: nothing to make room for (the frame is refused).
        assert_eq!(missing(&[0, 0, 0, 101], 100), 0);
        assert_eq!(missing(&[0, 0, 0, 100], 100), 100);
        assert_eq!(missing(&[0xff; 4], usize::MAX), u32::MAX as usize);
    }

    #[test]
    fn begin_finish_writes_prefix() {
        let mut out = vec![9];
        let at = begin(&mut out);
        out.extend_from_slice(b"abc");
        assert_eq!(finish(&mut out, at), 3);
        assert_eq!(out, [9, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(
            next_frame(&out[1..], 10),
            Ok(Some(FrameSpan { start: 4, end: 7 }))
        );
    }
}
