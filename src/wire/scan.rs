//! Pre-decode structural check for CBOR frames received from peers.
//!
//! Every byte a peer sends is attacker-controlled. Before a frame is handed
//! to serde/ciborium, [`check`] walks its encoding once and accepts it only
//! if it is exactly one well-formed, definite-length CBOR data item
//! (RFC 8949) whose nesting depth and item count stay within [`CborLimits`],
//! whose claimed lengths fit in the bytes actually received, and whose text
//! strings are valid UTF-8.
//!
//! What this module must not do:
//! - allocate per item, or ever size an allocation from a length read off
//!   the wire (the only allocation is the pending-count stack, and only once
//!   nesting exceeds 32 levels, so never under [`CborLimits::DEFAULT`]; it
//!   never holds more than `max_depth` entries);
//! - recurse (nesting is tracked on an explicit, bounded stack, so hostile
//!   nesting cannot overflow the thread's stack);
//! - panic, overflow, or truncate a 64-bit wire length into `usize`
//!   (all length arithmetic is checked);
//! - decode or interpret values: it decides accept/refuse and nothing else,
//!   and depends on nothing else in the crate.

use std::fmt;

/// Nesting levels tracked without allocating; deeper input spills to a `Vec`.
///
/// Equal to [`CborLimits::DEFAULT`]'s `max_depth`, so checks under the
/// default limits never allocate.
const INLINE_DEPTH: usize = 32;

/// Limits for one CBOR item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CborLimits {
    /// Greatest nesting depth allowed. Arrays, maps and tags each add one
    /// level (empty ones included); scalars and strings add none. A scalar
    /// at top level has depth 0; an array holding an array has depth 2.
    pub max_depth: usize,
    /// Greatest number of data items allowed, counting the top-level item,
    /// every array element, every map key and every map value, and both each
    /// tag and its content.
    pub max_items: usize,
}

impl CborLimits {
    /// The limits captp applies to peer messages: depth 32, 65,536 items.
    pub const DEFAULT: CborLimits = CborLimits {
        max_depth: 32,
        max_items: 65_536,
    };
}

impl Default for CborLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a CBOR item was refused.
///
/// Offsets are byte offsets, from the start of the checked input, of the
/// first byte of the offending item.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScanError {
    /// The input ended inside the item starting at `offset`, or a length or
    /// element count claimed there is larger than the bytes that remain.
    /// Empty input is `Truncated { offset: 0 }`.
    Truncated {
        /// Byte offset of the item whose bytes are missing.
        offset: usize,
    },
    /// A complete item was followed by `count` more bytes.
    TrailingBytes {
        /// Number of bytes after the item.
        count: usize,
    },
    /// An indefinite-length string, array or map, or a break byte (`0xff`),
    /// starts at `offset`; captp requires definite lengths.
    IndefiniteLength {
        /// Byte offset of the indefinite-length header or break byte.
        offset: usize,
    },
    /// The item at `offset` is not well-formed CBOR.
    Malformed {
        /// Byte offset of the malformed item.
        offset: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The text string starting at `offset` is not valid UTF-8.
    InvalidUtf8 {
        /// Byte offset of the text string's header.
        offset: usize,
    },
    /// Nesting went deeper than `max` levels.
    TooDeep {
        /// The depth limit that was exceeded.
        max: usize,
    },
    /// The item holds (or claims to hold) more than `max` data items.
    TooManyItems {
        /// The item-count limit that was exceeded.
        max: usize,
    },
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanError::Truncated { offset } => write!(
                f,
                "CBOR item at byte {offset} is truncated: it needs more bytes than the message holds"
            ),
            ScanError::TrailingBytes { count } => write!(
                f,
                "{count} unexpected byte(s) after the CBOR item: a message must hold exactly one item"
            ),
            ScanError::IndefiniteLength { offset } => write!(
                f,
                "indefinite-length CBOR item at byte {offset}: captp requires definite lengths"
            ),
            ScanError::Malformed { offset, reason } => {
                write!(f, "malformed CBOR at byte {offset}: {reason}")
            }
            ScanError::InvalidUtf8 { offset } => {
                write!(f, "CBOR text string at byte {offset} is not valid UTF-8")
            }
            ScanError::TooDeep { max } => {
                write!(f, "CBOR nested deeper than {max} levels (limit)")
            }
            ScanError::TooManyItems { max } => {
                write!(f, "CBOR message holds more than {max} data items (limit)")
            }
        }
    }
}

impl std::error::Error for ScanError {}

/// Stack of "items still to read" counts, one per open array, map or tag.
///
/// The first [`INLINE_DEPTH`] levels live in a fixed array; deeper levels go
/// to `spill`, which `check` never lets grow past `max_depth` entries.
struct Pending {
    inline: [usize; INLINE_DEPTH],
    spill: Vec<usize>,
    len: usize,
}

impl Pending {
    fn new() -> Self {
        Pending {
            inline: [0; INLINE_DEPTH],
            spill: Vec::new(),
            len: 0,
        }
    }

    fn push(&mut self, count: usize) {
        if let Some(slot) = self.inline.get_mut(self.len) {
            *slot = count;
        } else {
            self.spill.push(count);
        }
        self.len += 1;
    }

    fn top_mut(&mut self) -> Option<&mut usize> {
        let top = self.len.checked_sub(1)?;
        if top < INLINE_DEPTH {
            self.inline.get_mut(top)
        } else {
            self.spill.last_mut()
        }
    }

    fn pop(&mut self) {
        if self.len > INLINE_DEPTH {
            self.spill.pop();
        }
        self.len = self.len.saturating_sub(1);
    }
}

/// Reads the argument of the header at `start` whose additional information
/// is `ai` (0..=27). Returns the argument and the offset just past the header.
#[inline]
fn read_argument(bytes: &[u8], start: usize, ai: u8) -> Result<(u64, usize), ScanError> {
    let body = start + 1;
    let width = match ai {
        0..=23 => return Ok((u64::from(ai), body)),
        24 => 1,
        25 => 2,
        26 => 4,
        _ => 8,
    };
    // `start < bytes.len() <= isize::MAX`, so these additions cannot overflow.
    let arg = bytes
        .get(body..body + width)
        .ok_or(ScanError::Truncated { offset: start })?
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    Ok((arg, body + width))
}

/// `claimed` as a `usize`, if it is no more than `available`.
#[inline]
fn fits(claimed: u64, available: usize) -> Option<usize> {
    usize::try_from(claimed).ok().filter(|&n| n <= available)
}

/// Checks that `bytes` hold exactly one CBOR item within `limits`.
///
/// Accepts only a single well-formed, definite-length RFC 8949 data item that
/// uses every byte of `bytes`, nests no deeper than `limits.max_depth`, holds
/// no more than `limits.max_items` items, and has only valid UTF-8 text
/// strings. Integer and length arguments need not be minimally encoded; any
/// tag number is accepted; simple values are accepted except the reserved
/// two-byte forms below 32.
///
/// Runs in one pass over the input without recursion and without allocating
/// unless nesting exceeds 32 levels. Claimed lengths and element counts
/// are checked against the remaining input and the item budget at the header,
/// before anything they cover is read.
///
/// # Errors
///
/// Returns the first [`ScanError`] found walking the input front to back.
pub fn check(bytes: &[u8], limits: &CborLimits) -> Result<(), ScanError> {
    if bytes.is_empty() {
        return Err(ScanError::Truncated { offset: 0 });
    }
    if limits.max_items == 0 {
        return Err(ScanError::TooManyItems { max: 0 });
    }
    // Items counted so far: the top-level item, plus every item announced by
    // a container or tag header. Invariant: `items <= limits.max_items`.
    let mut items: usize = 1;
    let mut pending = Pending::new();
    let mut pos: usize = 0;

    loop {
        let start = pos;
        let Some(&initial) = bytes.get(start) else {
            return Err(ScanError::Truncated { offset: start });
        };
        let major = initial >> 5;
        let ai = initial & 0x1f;
        match ai {
            28..=30 => {
                return Err(ScanError::Malformed {
                    offset: start,
                    reason: "reserved additional information value (28, 29 or 30)",
                });
            }
            31 if matches!(major, 0 | 1 | 6) => {
                return Err(ScanError::Malformed {
                    offset: start,
                    reason: "additional information 31 is not valid for an integer or tag",
                });
            }
            31 => return Err(ScanError::IndefiniteLength { offset: start }),
            _ => {}
        }
        let (arg, body) = read_argument(bytes, start, ai)?;
        pos = body;

        // For arrays, maps and tags: how many items the header announces.
        let children = match major {
            0 | 1 => None,
            2 | 3 => {
                let content = usize::try_from(arg)
                    .ok()
                    .and_then(|len| body.checked_add(len))
                    .and_then(|end| bytes.get(body..end))
                    .ok_or(ScanError::Truncated { offset: start })?;
                // Most text is short ASCII (keys, names), which the cheap test settles.
                if major == 3 && !content.is_ascii() && std::str::from_utf8(content).is_err() {
                    return Err(ScanError::InvalidUtf8 { offset: start });
                }
                pos = body + content.len();
                None
            }
            4 | 5 => {
                let count = if major == 5 {
                    arg.checked_mul(2)
                } else {
                    Some(arg)
                };
                // Every item needs at least one byte.
                let count = count
                    .and_then(|n| fits(n, bytes.len() - body))
                    .ok_or(ScanError::Truncated { offset: start })?;
                Some(count)
            }
            6 => Some(1),
            _ => {
                if ai == 24 && arg < 32 {
                    return Err(ScanError::Malformed {
                        offset: start,
                        reason: "two-byte simple value below 32",
                    });
                }
                None
            }
        };

        if let Some(count) = children {
            if pending.len >= limits.max_depth {
                return Err(ScanError::TooDeep {
                    max: limits.max_depth,
                });
            }
            if count > limits.max_items - items {
                return Err(ScanError::TooManyItems {
                    max: limits.max_items,
                });
            }
            items += count;
            if count > 0 {
                pending.push(count);
                continue;
            }
        }

        // The item starting at `start` is complete: close every container
        // it finishes.
        loop {
            let Some(left) = pending.top_mut() else {
                let count = bytes.len() - pos;
                return if count == 0 {
                    Ok(())
                } else {
                    Err(ScanError::TrailingBytes { count })
                };
            };
            *left -= 1;
            if *left > 0 {
                break;
            }
            pending.pop();
        }
    }
}

#[cfg(test)]
mod tests;
