//! The wire layer: frames, the bounded CBOR check, and the typed messages.
//!
//! Pure functions from bytes to typed messages and back. No I/O, no tokio, no session
//! state: what a message *means* for a session is decided in [`crate::proto`].
//!
//! Every frame from a peer goes through three steps, each bounded: the length prefix is
//! checked against the frame limit before anything is allocated ([`frame`]); the CBOR is
//! walked once without allocation to check nesting depth, item count, definite lengths
//! and trailing bytes ([`scan`]); only then is it decoded into a [`Message`], by a
//! hand-written reader of the fixed layout (serde decodes only application data).

mod codec;
pub mod frame;
pub mod message;
pub mod scan;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use message::{CapDescriptor, Message, Payload, ReturnResult, Target, WireBroken};
pub use scan::{CborLimits, ScanError};

/// The CBOR tag that marks a capability reference inside payload data; its content is an
/// index into the payload's capability table. (Unregistered; chosen from the
/// first-come-first-served range: 0x6361 is "ca".)
pub const CAP_TAG: u64 = 0x6361;

/// The smallest frame limit a peer may announce: every error return and abort fits.
pub const MIN_FRAME: usize = 8192;

/// The fewest outstanding questions a peer may announce it accepts. Until the peer's
/// `hello` arrives, a session sends at most this many.
pub const MIN_QUESTIONS: usize = 64;

/// The encoding of a payload whose data is exactly one reference: `CAP_TAG(0)`.
///
/// A promise whose result has this shape resolves to that reference, so messages
/// pipelined on it go to the referenced object.
pub const SINGLE_CAP_DATA: [u8; 4] = [0xd9, 0x63, 0x61, 0x00];

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
/// when they are CBOR but not a `T`.
pub fn decode_value<T: DeserializeOwned>(
    bytes: &[u8],
    limits: &CborLimits,
) -> Result<T, DecodeError> {
    scan::check(bytes, limits)?;
    // ciborium zeroes a fresh 4 KiB scratch buffer on every call of `from_reader`; one
    // buffer per thread, reused, saves a third of the instructions of a small call.
    // (A nested decode from inside a `Deserialize` impl falls back to a fresh one.)
    let decoded = SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buffer) => ciborium::de::from_reader_with_buffer(bytes, &mut buffer[..]),
        Err(_) => ciborium::from_reader(bytes),
    });
    decoded.map_err(|e| DecodeError::Schema(schema_error(e)))
}

thread_local! {
    /// Scratch space for decoding strings, reused across calls on a thread.
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
