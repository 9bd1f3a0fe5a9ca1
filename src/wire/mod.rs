//! The wire layer: frames, the bounded CBOR check, and the typed messages.
//!
//! Pure functions from bytes to typed messages and back. No I/O, no tokio, no session
//! state: what a message *means* for a session is decided by the session layer above
//! (`proto`). The wire layer is the bottom of the crate: it uses nothing from the
//! modules above it (only the leaf [`crate::broken`], for errors that cross the wire).
//!
//! Every frame from a peer goes through three steps, each bounded: the length prefix is
//! checked against the frame limit before anything is allocated ([`frame`]); the CBOR is
//! walked once without allocation to check nesting depth, item count, definite lengths
//! and trailing bytes ([`scan`]); only then is it decoded into a [`Message`], by a
//! hand-written reader of the fixed layout (serde decodes only application data).
//!
//! [`id`] holds the text form of 32-byte ids and the [`SwissNumber`](id::SwissNumber)
//! that a `bootstrap` carries; its `SwissNumber::generate`, which reads the operating
//! system's random number generator, is the one thing in this layer that is not a pure
//! function.

mod codec;
pub mod frame;
pub mod id;
pub mod message;
pub mod scan;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use message::{CapDescriptor, Hello, Message, Payload, ReturnResult, Target, WireBroken};
pub use scan::{CborLimits, References, ScanError};

/// The CBOR tag that marks a capability reference inside payload data; its content is an
/// index into the payload's capability table. (Unregistered; chosen from the
/// first-come-first-served range: 0x6361 is "ca".)
pub const CAP_TAG: u64 = 0x6361;

/// The smallest frame limit a peer may announce: every error return and abort fits.
pub const MIN_FRAME: usize = 8192;

/// The fewest outstanding questions a peer may announce it accepts. Until the peer's
/// `hello` arrives, a session sends at most this many.
pub const MIN_QUESTIONS: usize = 64;

/// The fewest messages a peer may announce it accepts queued on one unresolved answer
/// (`max_queued`). Until the peer's `hello` arrives, a session pipelines at most this
/// many on one of its questions.
pub const MIN_QUEUED: usize = 16;

/// The fewest references a peer may announce it accepts imported at once
/// (`max_imports`).
pub const MIN_IMPORTS: usize = 64;

/// The fewest capability-table entries a peer may announce it accepts in one message
/// (`max_caps`).
pub const MIN_CAPS: usize = 16;

/// The shallowest CBOR nesting limit a peer may announce (`max_depth`): every message
/// shape (at most 6 levels) fits, with room for small payload data.
pub const MIN_DEPTH: usize = 8;

/// The fewest CBOR items a peer may announce it accepts in one message or payload
/// (`max_items`): a message with [`MIN_CAPS`] references fits.
pub const MIN_ITEMS: usize = 256;

/// The encoding of a payload whose data is exactly one reference: `CAP_TAG(0)`.
///
/// A promise whose result has this shape resolves to that reference, so messages
/// pipelined on it go to the referenced object.
pub const SINGLE_CAP_DATA: [u8; 4] = [0xd9, 0x63, 0x61, 0x00];

/// The [`scan::Shape`] of [`SINGLE_CAP_DATA`]: a tag (depth 1) around an integer (two
/// items in all).
pub const SINGLE_CAP_SHAPE: scan::Shape = scan::Shape { depth: 1, items: 2 };

/// The data `null` (CBOR simple value 22): the result a quiet question's `return` carries
/// when the asker finished it without asking for the result (PROTOCOL.md 9.15).
pub const NULL_DATA: [u8; 1] = [0xf6];

/// Bad bytes: input that is not a well-formed captp frame or message.
///
/// From a peer, any of these is a protocol violation that aborts that peer's session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix announced more than the frame limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The CBOR failed the bounded check (depth, items, lengths, trailing bytes...).
    #[error("bad CBOR: {0}")]
    Cbor(#[from] ScanError),
    /// Well-formed CBOR that is not a captp message of a known kind and shape (or, for
    /// payload data, not the type the receiver asked for).
    #[error("{0}")]
    Schema(String),
    /// The value holds more than the type asked for takes: the type's reading stopped
    /// before the end (for arguments, more arguments than the method takes).
    #[error("{}", match .array_len {
        Some(n) => format!("the value is an array of {n} items, more than the expected type takes"),
        None => "the value holds more than the expected type takes".to_owned(),
    })]
    Unread {
        /// The number of items of the value, when it is an array.
        array_len: Option<u64>,
    },
}

/// Encodes any serde value as CBOR.
///
/// # Errors
///
/// Fails when the value's `Serialize` implementation fails.
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64);
    ciborium::into_writer(value, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Decodes one CBOR value of type `T`, after the bounded check.
///
/// # Errors
///
/// [`DecodeError::Cbor`] when the bytes fail the bounded check, [`DecodeError::Schema`]
/// when they are CBOR but not a `T`, [`DecodeError::Unread`] when `T` takes less than
/// the value holds.
pub fn decode_value<T: DeserializeOwned>(
    bytes: &[u8],
    limits: &CborLimits,
) -> Result<T, DecodeError> {
    scan::check(bytes, limits)?;
    decode_checked(bytes)
}

/// Decodes payload data whose capability table has `caps` entries, as a `T`: what
/// [`decode_value`] does, after the payload-data rules of [`scan::check_data`] (only
/// big-integer and reference tags; every reference names an entry, and every entry is
/// named). Returns the value and the number of reference tags in the data, so the
/// caller can tell whether `T` took every reference (a generic value cannot).
///
/// # Errors
///
/// As [`decode_value`]; the payload-data rules fail as [`DecodeError::Cbor`].
pub fn decode_data<T: DeserializeOwned>(
    bytes: &[u8],
    limits: &CborLimits,
    caps: usize,
) -> Result<(T, usize), DecodeError> {
    let tags = scan::check_data(bytes, limits, References::Table(caps))?;
    Ok((decode_checked(bytes)?, tags))
}

/// Decodes bytes that passed the bounded check, all of them.
fn decode_checked<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut reader = bytes;
    // ciborium zeroes a fresh 4 KiB scratch buffer on every call of `from_reader`; one
    // buffer per thread, reused, saves a third of the instructions of a small call.
    // (A nested decode from inside a `Deserialize` impl falls back to a fresh one.)
    // A byte or text string is read through it in pieces of its size: for larger data
    // it grows, up to `MAX_SCRATCH`, so that a large string is copied in one piece
    // instead of thousands (each piece copied twice, into a vector grown step by step).
    let decoded = SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buffer) => {
            let want = bytes.len().min(MAX_SCRATCH);
            if buffer.len() < want {
                buffer.resize(want, 0);
            }
            ciborium::de::from_reader_with_buffer(&mut reader, &mut buffer[..])
        }
        Err(_) => ciborium::from_reader(&mut reader),
    });
    let value = decoded.map_err(|e| DecodeError::Schema(schema_error(e)))?;
    // A type that takes fewer items than an array holds (a tuple of two from three
    // arguments) leaves the rest unread: serde does not say so, the leftover does.
    if reader.is_empty() {
        Ok(value)
    } else {
        Err(DecodeError::Unread {
            array_len: array_len(bytes),
        })
    }
}

/// Where the content of a lone byte string lies in `data`: `data` must be exactly one
/// definite-length byte string, or an array of exactly one (how a single argument is
/// often sent), with nothing after it. `None` for anything else.
pub(crate) fn byte_string_span(data: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = usize::from(data.first() == Some(&0x81));
    let (&initial, rest) = data.get(start..)?.split_first()?;
    if initial >> 5 != 2 {
        return None;
    }
    let (len, head) = match initial & 0x1f {
        ai @ 0..=23 => (u64::from(ai), 1),
        24 => (u64::from(*rest.first()?), 2),
        25 => (u64::from(u16::from_be_bytes(*rest.first_chunk()?)), 3),
        26 => (u64::from(u32::from_be_bytes(*rest.first_chunk()?)), 5),
        27 => (u64::from_be_bytes(*rest.first_chunk()?), 9),
        _ => return None,
    };
    let begin = start + head;
    let end = begin.checked_add(usize::try_from(len).ok()?)?;
    (end == data.len()).then_some(begin..end)
}

/// The item count of `bytes` if they start with a definite-length array header.
fn array_len(bytes: &[u8]) -> Option<u64> {
    let (&initial, rest) = bytes.split_first()?;
    if initial >> 5 != 4 {
        return None;
    }
    let width = match initial & 0x1f {
        ai @ 0..=23 => return Some(u64::from(ai)),
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        _ => return None,
    };
    let arg = rest.get(..width)?;
    Some(arg.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// The most scratch space a thread keeps for decoding strings (see `decode_checked`).
const MAX_SCRATCH: usize = 64 * 1024;

thread_local! {
    /// Scratch space for decoding strings, reused across calls on a thread: 4 KiB, and
    /// up to [`MAX_SCRATCH`] once the thread has decoded data that large.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 4096]);
}
fn schema_error<E: std::fmt::Debug>(e: ciborium::de::Error<E>) -> String {
    match e {
        ciborium::de::Error::Semantic(Some(offset), msg) => format!("{msg} (at byte {offset})"),
        ciborium::de::Error::Semantic(None, msg) => msg,
        ciborium::de::Error::Syntax(offset) => format!("CBOR syntax error at byte {offset}"),
        ciborium::de::Error::RecursionLimitExceeded => "CBOR nested too deeply".to_owned(),
        ciborium::de::Error::Io(e) => format!("truncated CBOR ({e:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_lone_byte_string_and_nothing_else() {
        let bare = encode_value(&serde_bytes::Bytes::new(&[5; 300])).unwrap();
        assert_eq!(byte_string_span(&bare), Some(3..303));
        let one = encode_value(&(serde_bytes::Bytes::new(b"ab"),)).unwrap();
        assert_eq!(one, [0x81, 0x42, b'a', b'b']);
        assert_eq!(byte_string_span(&one), Some(2..4));
        assert_eq!(byte_string_span(&[0x40]), Some(1..1));
        for other in [
            &[][..],
            &[0x81],
            &[0x82, 0x40, 0x40],
            &[0x42, 1],
            &[0x42, 1, 2, 3],
            &[0x5f, 0x40, 0xff],
            &[0x61, b'a'],
            &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x81, 0x81, 0x40],
        ] {
            assert_eq!(byte_string_span(other), None, "{other:x?}");
        }
    }
}
