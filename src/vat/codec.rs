//! Serde for data that carries references.
//!
//! A [`Ref`] inside a value is encoded as the CBOR tag [`CAP_TAG`] around an index into
//! the payload's capability table, and decoded back into a live `Ref` from that table.
//! The table is threaded through serde with a thread-local that is set only for the
//! duration of one `encode` or `decode` call (and restored after, so nesting is safe).
//! No I/O and no session state here: which descriptor each `Ref` becomes on the wire is
//! decided by the session that sends it.

use std::cell::RefCell;

use bytes::Bytes;
use ciborium::tag::Required;
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::reference::Ref;
use crate::wire::{self, CAP_TAG, CborLimits, DecodeError, References, scan};

/// Data plus the references its capability tags index, as the runtime carries it.
/// The data is shared, not copied, on its way between the connection and the objects.
#[derive(Clone, Debug, Default)]
pub(crate) struct RefPayload {
    pub(crate) data: Bytes,
    pub(crate) refs: Vec<Ref>,
}

impl RefPayload {
    /// A payload that is exactly one reference (how a promise resolves to an object).
    pub(crate) fn single(r: Ref) -> RefPayload {
        RefPayload {
            data: Bytes::from_static(&crate::wire::SINGLE_CAP_DATA),
            refs: vec![r],
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

/// No bound on our own encoder's output when checking its references: limits are the
/// receiver's, checked where a payload leaves for a session.
const UNBOUNDED: CborLimits = CborLimits {
    max_depth: usize::MAX,
    max_items: usize::MAX,
};

/// Encodes `value`, collecting the references in it into the capability table.
///
/// Every reference tag in the result must be one this encoding wrote from a `Ref`: a
/// tag kept as plain data (in a `ciborium::Value`, say) would name an unrelated entry of
/// the table at the receiver, handing it a capability nobody meant to pass (PROTOCOL.md
/// 8.1). Such data fails to encode.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<RefPayload, String> {
    let outer = ENCODING.with(|t| t.replace(Some(Vec::new())));
    let data = wire::encode_value(value);
    let refs = ENCODING.with(|t| t.replace(outer)).unwrap_or_default();
    let data = data?;
    scan::check_data(&data, &UNBOUNDED, References::Canonical(refs.len())).map_err(|e| {
        format!(
            "{e}; the value holds a reference tag (25441) that was not written from a live \
             reference (a reference cannot be kept as plain data: keep the Ref itself)"
        )
    })?;
    Ok(RefPayload {
        data: owned(data),
        refs,
    })
}

/// `data` as [`Bytes`] without copying it, and without the second allocation
/// `Bytes::from` makes for a vector with spare capacity (the spare is given back
/// instead, which glibc does in place).
fn owned(data: Vec<u8>) -> Bytes {
    Bytes::from(data.into_boxed_slice())
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
