//! 32-byte ids: the [`SwissNumber`] a `bootstrap` carries, and the one text form that
//! vat IDs and swiss numbers share (43 characters of unpadded base64url).
//!
//! `parse_id` and `encode_id` are the only base64url code for ids in the crate: the
//! identity module prints and parses vat IDs with them, the sturdy-ref parser swiss
//! numbers. A leaf: this module uses nothing else from the crate, so the message types
//! can carry a swiss number without the wire layer depending on keys or URIs.
//!
//! This module must not reveal a swiss number by accident: [`SwissNumber`] has no
//! `Display` and a redacted `Debug`, and an [`IdTextError`] never holds any of the text
//! it refused (only a length or a position). Apart from [`SwissNumber::generate`], which
//! reads the operating system's random number generator, everything here is a pure
//! function.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;

/// Length of a 32-byte id written as unpadded base64url: 32 bytes are 256 bits, and 43
/// characters of 6 bits carry 258, so the last character's two low bits are zero.
pub const ID_TEXT_LEN: usize = 43;

/// Which id a text was meant to be; an [`IdTextError`] names it in its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdKind {
    /// A vat ID (`VatId`), as in a sturdy ref before the `@`.
    VatId,
    /// A swiss number ([`SwissNumber`]), as in a sturdy ref after the port.
    SwissNumber,
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdKind::VatId => "vat ID",
            IdKind::SwissNumber => "swiss number",
        })
    }
}

/// Why a text is not the canonical 43-character base64url form of a 32-byte id.
///
/// The messages never echo the input, which may be a real swiss number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdTextError {
    /// The text does not have exactly 43 characters.
    #[error("the {id} must be 43 base64url characters, got {len}")]
    Length {
        /// Which id the text was meant to be.
        id: IdKind,
        /// Number of characters in the text.
        len: usize,
    },
    /// A character is outside the URL-safe base64 alphabet (padding `=` included).
    #[error("character {position} of the {id} is not in the base64url alphabet (A-Z a-z 0-9 - _)")]
    Alphabet {
        /// Which id the text was meant to be.
        id: IdKind,
        /// Zero-based character position of the first bad character.
        position: usize,
    },
    /// The last character carries stray low bits, so the text is not the canonical
    /// encoding of any 32 bytes (decoding and encoding again would give other text).
    #[error("the {id} is not canonical base64url (its last character has stray low bits)")]
    NonCanonical {
        /// Which id the text was meant to be.
        id: IdKind,
    },
}

/// Parses the text form of a 32-byte id: exactly [`ID_TEXT_LEN`] characters of
/// unpadded base64url that are the canonical encoding of the bytes.
///
/// # Errors
///
/// An [`IdTextError`] naming `id`: the first of a wrong length (in characters), a
/// character outside the alphabet, stray low bits in the last character.
pub(crate) fn parse_id(text: &str, id: IdKind) -> Result<[u8; 32], IdTextError> {
    let len = text.chars().count();
    if len != ID_TEXT_LEN {
        return Err(IdTextError::Length { id, len });
    }
    if let Some(position) = text
        .chars()
        .position(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        return Err(IdTextError::Alphabet { id, position });
    }
    let non_canonical = IdTextError::NonCanonical { id };
    let decoded = URL_SAFE_NO_PAD.decode(text).map_err(|_| non_canonical)?;
    let bytes: [u8; 32] = decoded.try_into().map_err(|_| non_canonical)?;
    if encode_id(&bytes) != text {
        return Err(non_canonical);
    }
    Ok(bytes)
}

/// The text form of a 32-byte id: [`ID_TEXT_LEN`] characters of unpadded base64url,
/// which [`parse_id`] reads back.
pub(crate) fn encode_id(bytes: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An unguessable 256-bit secret designating one object within a vat.
///
/// Equality is constant time. There is deliberately no `Display`; `Debug`
/// is redacted. Use [`SwissNumber::expose_base64`] to put it in a sturdy
/// ref.
#[derive(Clone)]
pub struct SwissNumber([u8; 32]);

impl SwissNumber {
    /// Generates a fresh swiss number from the operating system's RNG.
    ///
    /// # Panics
    ///
    /// Panics if the operating system's random number generator fails. That
    /// is a broken environment in which no secret can be made safely, so
    /// there is nothing sensible to continue with.
    pub fn generate() -> SwissNumber {
        let mut bytes = [0u8; 32];
        if let Err(e) = rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes) {
            panic!("the operating system's random number generator failed: {e}");
        }
        SwissNumber(bytes)
    }

    /// A swiss number from raw bytes (for example read from storage).
    pub fn from_bytes(bytes: [u8; 32]) -> SwissNumber {
        SwissNumber(bytes)
    }

    /// The raw secret bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The secret as 43 characters of unpadded base64url, for putting in a
    /// sturdy ref only.
    ///
    /// # Authority
    ///
    /// Whoever sees the returned text holds the capability. Do not log it.
    pub fn expose_base64(&self) -> String {
        encode_id(&self.0)
    }

    /// The SHA-256 of this swiss number, under which a registry of exports (the
    /// sturdy module's `Registry`) stores it, so that a lookup never compares the
    /// secret's bytes.
    pub fn hash(&self) -> SwissHash {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.0);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        SwissHash(bytes)
    }
}

impl PartialEq for SwissNumber {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SwissNumber {}

impl fmt::Debug for SwissNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SwissNumber(<redacted>)")
    }
}

/// The SHA-256 of a [`SwissNumber`]. Not itself a secret that grants
/// authority: a registry key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SwissHash([u8; 32]);

impl SwissHash {
    /// The raw 32 bytes of the hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SwissHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SwissHash(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…)")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ids_round_trip_in_43_characters() {
        for bytes in [[0; 32], [0xff; 32], std::array::from_fn(|i| i as u8)] {
            let text = encode_id(&bytes);
            assert_eq!(text.len(), ID_TEXT_LEN);
            assert_eq!(parse_id(&text, IdKind::VatId), Ok(bytes));
        }
        assert_eq!(
            encode_id(&std::array::from_fn(|i| i as u8)),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
        );
    }

    #[test]
    fn bad_id_texts_are_refused_precisely() {
        let good = encode_id(&[7; 32]);
        let id = IdKind::SwissNumber;
        assert_eq!(parse_id("", id), Err(IdTextError::Length { id, len: 0 }));
        assert_eq!(
            parse_id(&good[..42], id),
            Err(IdTextError::Length { id, len: 42 })
        );
        // Length counts characters, not bytes.
        let accented = format!("é{}", &good[2..]);
        assert_eq!(
            parse_id(&accented, id),
            Err(IdTextError::Length { id, len: 42 })
        );
        let accented = format!("é{}", &good[1..]);
        assert_eq!(
            parse_id(&accented, id),
            Err(IdTextError::Alphabet { id, position: 0 })
        );
        let padded = format!("{}=", &good[..42]);
        assert_eq!(
            parse_id(&padded, id),
            Err(IdTextError::Alphabet { id, position: 42 })
        );
        let standard_alphabet = format!("+{}", &good[1..]);
        assert_eq!(
            parse_id(&standard_alphabet, id),
            Err(IdTextError::Alphabet { id, position: 0 })
        );
        // 43 characters carry 258 bits: the last one's two low bits must be zero.
        let stray_bits = format!("{}B", "A".repeat(42));
        assert_eq!(
            parse_id(&stray_bits, id),
            Err(IdTextError::NonCanonical { id })
        );
    }

    #[test]
    fn errors_name_the_id_and_never_echo_the_text() {
        let secret = SwissNumber::generate().expose_base64();
        for (text, id, name) in [
            (&secret[..42], IdKind::SwissNumber, "swiss number"),
            (&secret[..42], IdKind::VatId, "vat ID"),
        ] {
            let err = parse_id(text, id).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(name), "{msg}");
            assert!(msg.contains("43 base64url characters"), "{msg}");
            assert!(!msg.contains(&secret[..8]), "{msg}");
            assert!(!format!("{err:?}").contains(&secret[..8]));
        }
        let padded = format!("{}=", &secret[..42]);
        let msg = parse_id(&padded, IdKind::VatId).unwrap_err().to_string();
        assert!(msg.contains("character 42 of the vat ID"), "{msg}");
    }

    #[test]
    fn swiss_numbers_differ_and_compare() {
        let a = SwissNumber::generate();
        let b = SwissNumber::generate();
        assert_ne!(a, b);
        assert_eq!(a, a.clone());
        assert_eq!(a, SwissNumber::from_bytes(*a.as_bytes()));
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), a.clone().hash());
        assert_eq!(a.expose_base64().len(), 43);
    }

    #[test]
    fn swiss_debug_is_redacted() {
        let sw = SwissNumber::from_bytes([0xab; 32]);
        assert_eq!(format!("{sw:?}"), "SwissNumber(<redacted>)");
        let hash = format!("{:?}", sw.hash());
        assert!(!hash.contains(&sw.expose_base64()), "{hash}");
        assert!(
            hash.starts_with("SwissHash(") && hash.ends_with("…)"),
            "{hash}"
        );
    }
}
