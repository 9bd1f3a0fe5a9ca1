//! Serde for data that carries references.
//!
//! A [`Ref`] inside a value is encoded as the CBOR tag [`CAP_TAG`] around an index into
//! the payload's capability table, and decoded back into a live `Ref` from that table.
//! The table is threaded through serde with a thread-local that is set only for the
//! duration of one `encode` or `decode` call (and restored after, so nesting is safe).
//! No I/O and no session state here: which descriptor each `Ref` becomes on the wire is
//! decided by the session that sends it.

use std::cell::RefCell;

use ciborium::tag::Required;
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::reference::Ref;
use crate::wire::{self, CAP_TAG, CborLimits, DecodeError};

/// Data plus the references its capability tags index, as the runtime carries it.
#[derive(Clone, Debug, Default)]
pub(crate) struct RefPayload {
    pub(crate) data: Vec<u8>,
    pub(crate) refs: Vec<Ref>,
}

impl RefPayload {
    /// A payload that is exactly one reference (how a promise resolves to an object).
    pub(crate) fn single(r: Ref) -> RefPayload {
        RefPayload {
            data: crate::wire::SINGLE_CAP_DATA.to_vec(),
            refs: vec![r],
        }
    }

    /// The reference this payload is, if it is exactly one.
    pub(crate) fn as_single(&self) -> Option<&Ref> {
        match &self.refs[..] {
            [r] if self.data == crate::wire::SINGLE_CAP_DATA => Some(r),
            _ => None,
        }
    }
}

thread_local! {
    static ENCODING: RefCell<Option<Vec<Ref>>> = const { RefCell::new(None) };
    static DECODING: RefCell<Option<Vec<Ref>>> = const { RefCell::new(None) };
}

/// Encodes `value`, collecting the references in it into the capability table.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<RefPayload, String> {
    let outer = ENCODING.with(|t| t.replace(Some(Vec::new())));
    let data = wire::encode_value(value);
    let refs = ENCODING.with(|t| t.replace(outer)).unwrap_or_default();
    Ok(RefPayload { data: data?, refs })
}

/// Decodes `data` as a `T`, resolving capability tags against `refs`.
pub(crate) fn decode<T: DeserializeOwned>(
    data: &[u8],
    refs: &[Ref],
    cbor: &CborLimits,
) -> Result<T, DecodeError> {
    let outer = DECODING.with(|t| t.replace(Some(refs.to_vec())));
    let value = wire::decode_value(data, cbor);
    DECODING.with(|t| t.replace(outer));
    value
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
                t.borrow()
                    .as_ref()
                    .and_then(|refs| refs.get(usize::try_from(index).ok()?).cloned())
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
