//! Serde for data that carries references.
//!
//! A [`Ref`] inside a value is encoded as the CBOR tag [`CAP_TAG`] around an index into
//! the payload's capability table, and decoded back into a live `Ref` from that table.
//! The table is threaded through serde with a thread-local that is set only for the
//! duration of one `encode` or `decode` call (and restored after, so nesting is safe).
//! No I/O and no session state here: which descriptor each `Ref` becomes on the wire is
//! decided by the session that sends it.

use std::cell::{Cell, RefCell};

use bytes::Bytes;
use ciborium::tag::Required;
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::reference::Ref;
use crate::wire::scan::Shape;
use crate::wire::{self, CAP_TAG, CborLimits, DecodeError, References, scan};

/// Data plus the references its capability tags index, as the runtime carries it.
/// The data is shared, not copied, on its way between the connection and the objects.
#[derive(Clone, Debug, Default)]
pub(crate) struct RefPayload {
    pub(crate) data: Bytes,
    pub(crate) refs: Vec<Ref>,
    /// The data's depth and item count, when this vat encoded it (see
    /// [`OutPayload::shape`](crate::proto::OutPayload::shape)).
    pub(crate) shape: Option<Shape>,
}

impl RefPayload {
    /// A payload that is exactly one reference (how a promise resolves to an object).
    pub(crate) fn single(r: Ref) -> RefPayload {
        RefPayload {
            data: Bytes::from_static(&crate::wire::SINGLE_CAP_DATA),
            refs: vec![r],
            shape: Some(crate::wire::SINGLE_CAP_SHAPE),
        }
    }

    /// The reference this payload is, if it is exactly one.
    pub(crate) fn as_single(&self) -> Option<&Ref> {
        match &self.refs[..] {
            [r] if self.data[..] == crate::wire::SINGLE_CAP_DATA => Some(r),
            _ => None,
        }
    }
}

/// The capability table of the value being decoded, and how many of its tags became
/// `Ref`s so far.
struct Decoding {
    refs: Vec<Ref>,
    taken: usize,
}

thread_local! {
    static ENCODING: RefCell<Option<Vec<Ref>>> = const { RefCell::new(None) };
    static DECODING: RefCell<Option<Decoding>> = const { RefCell::new(None) };
}

/// Encodes `value`, collecting the references in it into the capability table.
///
/// Every reference tag in the result must be one this encoding wrote from a `Ref`: a
/// tag kept as plain data (in a `ciborium::Value`, say) would name an unrelated entry of
/// the table at the receiver, handing it a capability nobody meant to pass (PROTOCOL.md
/// 8.1). Such data fails to encode.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<RefPayload, String> {
    let outer = ENCODING.with(|t| t.replace(Some(Vec::new())));
    let data = encode_data(value);
    let refs = ENCODING.with(|t| t.replace(outer)).unwrap_or_default();
    let data = data?;
    // One walk: the tags are the ones written, and the shape is kept for the limits
    // this data meets on its way out.
    let shape = scan::measure_data(&data, References::Canonical(refs.len())).map_err(|e| {
        format!(
            "{e}; the value holds a reference tag (25441) that was not written from a live \
             reference (a reference cannot be kept as plain data: keep the Ref itself)"
        )
    })?;
    Ok(RefPayload {
        data,
        refs,
        shape: Some(shape),
    })
}

/// Encoded data up to this many bytes is copied out of the thread's encoding buffer;
/// larger data keeps the buffer it was written in.
const SMALL_DATA: usize = 4096;

/// The largest encoding buffer a thread keeps for reuse: room for a payload of the
/// default frame limit (1 MiB) with its framing.
const MAX_KEPT: usize = 2 << 20;

thread_local! {
    /// Where values are encoded, reused across calls on a thread (at most
    /// [`MAX_KEPT`] bytes of capacity; see [`encode_data`]).
    static ENCODED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// A large encoding buffer that came back here when its payload was dropped (see
    /// [`Recycled`]), for the next large value encoded on this thread.
    static KEPT: Cell<Option<Vec<u8>>> = const { Cell::new(None) };
}

/// Encodes `value` as CBOR into a buffer of its own, with no spare bytes to copy.
///
/// A small value is written into the thread's reused buffer and copied into an
/// allocation of its exact size: one allocation, as cheap as any, where a fresh vector
/// would grow in steps and then be shrunk (or be wrapped with a second allocation). A
/// large one leaves in the buffer it was written in, uncopied, and that buffer comes
/// back for reuse when the payload is dropped ([`Recycled`]).
fn encode_data<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, String> {
    ENCODED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            if let Some(kept) = KEPT.with(Cell::take) {
                if kept.capacity() > buffer.capacity() {
                    *buffer = kept;
                }
            }
            buffer.clear();
            let written = ciborium::into_writer(value, &mut *buffer).map_err(|e| e.to_string());
            let data = if buffer.len() <= SMALL_DATA {
                Bytes::copy_from_slice(&buffer)
            } else {
                Bytes::from_owner(Recycled(std::mem::take(&mut *buffer)))
            };
            if buffer.capacity() > MAX_KEPT {
                *buffer = Vec::new();
            }
            written.map(|()| data)
        }
        // A value encoded while another is (from inside a `Serialize` impl).
        Err(_) => wire::encode_value(value).map(|v| Bytes::from(v.into_boxed_slice())),
    })
}

/// A large encoding on its way out. Dropped (its bytes written or the call given up),
/// it leaves its buffer to the thread it is dropped on, for that thread's next large
/// encoding: a new buffer would be memory the allocator may have given back to the
/// system, costing a page fault every 4 KiB as it is written again (a tenth of the
/// time of a 1 MiB echo, measured). A thread keeps at most one such buffer, and one
/// in [`ENCODED`], each of at most [`MAX_KEPT`] bytes.
struct Recycled(Vec<u8>);

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.0);
        if buffer.capacity() > MAX_KEPT {
            return;
        }
        // The larger of the two stays; a thread being torn down keeps nothing.
        let _ = KEPT.try_with(|kept| {
            let other = kept.take();
            kept.set(match other {
                Some(other) if other.capacity() >= buffer.capacity() => Some(other),
                _ => Some(buffer),
            });
        });
    }
}

/// Decodes `data` as a `T`, resolving capability tags against `refs`.
///
/// The data must follow the payload rules (PROTOCOL.md 8.1: only big-integer and
/// reference tags, each reference naming an entry of `refs`, each entry named), and `T`
/// must take every reference as a `Ref`: a type that cannot hold one (a generic
/// `ciborium::Value`, a field that ignores it) fails to decode rather than silently
/// dropping the capability or keeping a dead tag.
pub(crate) fn decode<T: DeserializeOwned>(
    data: &[u8],
    refs: &[Ref],
    cbor: &CborLimits,
) -> Result<T, DecodeError> {
    let outer = DECODING.with(|t| {
        t.replace(Some(Decoding {
            refs: refs.to_vec(),
            taken: 0,
        }))
    });
    let decoded = wire::decode_data(data, cbor, refs.len());
    let taken = DECODING.with(|t| t.replace(outer)).map_or(0, |d| d.taken);
    let (value, tags) = decoded?;
    if taken < tags {
        return Err(DecodeError::Schema(format!(
            "the value holds {tags} reference(s), but only {taken} were taken as references \
             (a reference is received only where one is expected, not as generic data)"
        )));
    }
    Ok(value)
}

impl Serialize for Ref {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let index = ENCODING.with(|t| {
            t.borrow_mut().as_mut().map(|refs| {
                refs.push(self.clone());
                refs.len() as u64 - 1
            })
        });
        match index {
            Some(index) => Required::<u64, CAP_TAG>(index).serialize(serializer),
            None => Err(S::Error::custom(
                "a captp Ref can only be serialized as part of a captp call or result",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Ref {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Ref, D::Error> {
        let Required(index) = Required::<u64, CAP_TAG>::deserialize(deserializer)?;
        DECODING
            .with(|t| {
                let mut t = t.borrow_mut();
                let decoding = t.as_mut()?;
                let r = decoding.refs.get(usize::try_from(index).ok()?).cloned()?;
                decoding.taken += 1;
                Some(r)
            })
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "reference #{index} is not in the message's capability table"
                ))
            })
    }
}

/// Decodes with a table, for types that hold references.
pub(crate) fn decode_payload<T: DeserializeOwned>(
    payload: &RefPayload,
    cbor: &CborLimits,
) -> Result<T, DecodeError> {
    decode(&payload.data, &payload.refs, cbor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small or large, an encoding is what `encode_value` writes and reads back; the reused
    /// buffer stays within its bound.
    #[test]
    fn encodings_read_back_and_the_buffer_stays_bounded() {
        for n in [0, 10, SMALL_DATA - 3, SMALL_DATA, 100_000] {
            let value = serde_bytes::ByteBuf::from(vec![9u8; n]);
            let data = encode_data(&value).unwrap();
            assert_eq!(data, wire::encode_value(&value).unwrap());
            let back: serde_bytes::ByteBuf =
                wire::decode_value(&data, &CborLimits::DEFAULT).unwrap();
            assert_eq!(back, value);
            let kept = ENCODED.with(|b| b.borrow().capacity());
            assert!(kept <= MAX_KEPT, "{kept} bytes kept after {n}");
        }
    }

    /// A large encoding's buffer is reused by the next large encoding on the thread
    /// once the first is dropped, and never one that is still held.
    #[test]
    fn large_encoding_buffers_come_back() {
        let value = serde_bytes::ByteBuf::from(vec![3u8; 100_000]);
        let first = encode_data(&value).unwrap();
        let at = first.as_ptr();
        let held = encode_data(&value).unwrap();
        assert_ne!(held.as_ptr(), at, "the first is still held");
        drop(first);
        let again = encode_data(&value).unwrap();
        assert_eq!(again.as_ptr(), at, "the first one's buffer, reused");
        assert_eq!(again, held);
        drop((held, again));
        let kept = KEPT.with(|k| {
            let v = k.take();
            let capacity = v.as_ref().map_or(0, Vec::capacity);
            k.set(v);
            capacity
        });
        assert!((100_000..=MAX_KEPT).contains(&kept), "{kept}");
    }

    /// A value whose `Serialize` encodes another value meanwhile gets both right.
    #[test]
    fn nested_encodings_do_not_share_the_buffer() {
        struct Outer;
        impl Serialize for Outer {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let inner = encode_data("inner").map_err(S::Error::custom)?;
                s.serialize_bytes(&inner)
            }
        }
        let data = encode_data(&Outer).unwrap();
        let inner = wire::encode_value("inner").unwrap();
        let back: serde_bytes::ByteBuf = wire::decode_value(&data, &CborLimits::DEFAULT).unwrap();
        assert_eq!(back.into_vec(), inner);
    }
}
