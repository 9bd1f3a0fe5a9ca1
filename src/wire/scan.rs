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
//!   and depends on nothing in the crate but the wire's tag number for
//!   references.
//!
//! Payload data gets one more rule on the same walk ([`check_data`]): the tags
//! it may hold (big integers and references only) and how its references line
//! up with the payload's capability table (PROTOCOL.md 8.1).

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
    /// Payload data holds a tag other than 2 and 3 (big integers) and 25441
    /// (references).
    ForbiddenTag {
        /// Byte offset of the tag's header.
        offset: usize,
        /// The tag number.
        tag: u64,
    },
    /// A reference tag in payload data does not name its table entry as the
    /// rules of [`References`] require.
    BadReference {
        /// Byte offset of the tag's header.
        offset: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Payload data holds a different number of reference tags than it must.
    ReferenceCount {
        /// Reference tags found.
        tags: usize,
        /// Entries in the capability table.
        caps: usize,
    },
    /// An entry of the capability table is named by no reference tag.
    UnreferencedCap {
        /// The first such entry.
        index: usize,
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
            ScanError::ForbiddenTag { offset, tag } => write!(
                f,
                "CBOR tag {tag} at byte {offset} is not allowed in payload data (only 2 and 3, \
                 big integers, and 25441, references)"
            ),
            ScanError::BadReference { offset, reason } => {
                write!(f, "the reference tag at byte {offset} {reason}")
            }
            ScanError::ReferenceCount { tags, caps } => write!(
                f,
                "the data holds {tags} reference tag(s) for {caps} capability-table entries"
            ),
            ScanError::UnreferencedCap { index } => write!(
                f,
                "capability-table entry {index} is not referenced by the data"
            ),
        }
    }
}

impl std::error::Error for ScanError {}

/// How the reference tags in payload data must line up with the payload's
/// capability table (PROTOCOL.md 8.1). Either way, every reference tag must
/// enclose an unsigned integer that indexes the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum References {
    /// What a receiver accepts: a table of this many entries, each named by at
    /// least one tag (a tag may repeat an index).
    Table(usize),
    /// What this crate writes: exactly this many tags, the i-th in document
    /// order holding i. Data that a program encoded and that fails this holds a
    /// reference tag it did not make from a reference (a tag kept in a generic
    /// value, say), which must never be sent.
    Canonical(usize),
}

/// Tags allowed in payload data besides references: big integers, which serde
/// data models use for 128-bit integers.
const BIGNUM_TAGS: [u64; 2] = [2, 3];

/// The reference bookkeeping of one [`check_data`] walk.
struct RefCheck {
    rule: References,
    /// Reference tags seen so far.
    tags: usize,
    /// For [`References::Table`]: which entries have been named, 64 per word.
    named: Vec<u64>,
}

impl RefCheck {
    fn new(rule: References) -> RefCheck {
        let named = match rule {
            References::Table(caps) => vec![0; caps.div_ceil(64)],
            References::Canonical(_) => Vec::new(),
        };
        RefCheck {
            rule,
            tags: 0,
            named,
        }
    }

    /// Checks the tag whose header starts at `start` and whose content starts at
    /// `body`.
    fn tag(&mut self, bytes: &[u8], start: usize, tag: u64, body: usize) -> Result<(), ScanError> {
        let content = bytes
            .get(body)
            .copied()
            .ok_or(ScanError::Truncated { offset: start })?;
        if BIGNUM_TAGS.contains(&tag) {
            return match content >> 5 {
                2 => Ok(()),
                _ => Err(ScanError::Malformed {
                    offset: start,
                    reason: "a big-integer tag (2 or 3) must enclose a byte string",
                }),
            };
        }
        if tag != super::CAP_TAG {
            return Err(ScanError::ForbiddenTag { offset: start, tag });
        }
        let bad = |reason| ScanError::BadReference {
            offset: start,
            reason,
        };
        let ai = content & 0x1f;
        if content >> 5 != 0 || ai > 27 {
            return Err(bad("does not enclose an unsigned integer"));
        }
        let (index, _) = read_argument(bytes, body, ai)?;
        let caps = match self.rule {
            References::Table(caps) | References::Canonical(caps) => caps,
        };
        let index = usize::try_from(index)
            .ok()
            .filter(|&i| i < caps)
            .ok_or(bad("names no entry of the capability table"))?;
        match self.rule {
            References::Canonical(_) if index != self.tags => {
                return Err(bad(
                    "is out of order: the i-th reference must name entry i (a reference tag \
                     kept as plain data cannot be sent: keep the reference as a Ref)",
                ));
            }
            References::Canonical(_) => {}
            References::Table(_) => {
                if let Some(word) = self.named.get_mut(index / 64) {
                    *word |= 1 << (index % 64);
                }
            }
        }
        self.tags += 1;
        Ok(())
    }

    /// Checks the table as a whole once the walk is done; returns the tags seen.
    fn finish(self) -> Result<usize, ScanError> {
        match self.rule {
            References::Canonical(caps) if self.tags != caps => Err(ScanError::ReferenceCount {
                tags: self.tags,
                caps,
            }),
            References::Canonical(_) => Ok(self.tags),
            References::Table(caps) => {
                match (0..caps).find(|&i| {
                    self.named
                        .get(i / 64)
                        .is_none_or(|w| w & (1 << (i % 64)) == 0)
                }) {
                    Some(index) => Err(ScanError::UnreferencedCap { index }),
                    None => Ok(self.tags),
                }
            }
        }
    }
}

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
    walk(bytes, limits, None).map(|_| ())
}

/// How deeply an item nests and how many items it holds, as one walk measured them:
/// enough to tell whether it fits any [`CborLimits`] without walking it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The depth [`CborLimits::max_depth`] must allow: one more than the deepest level
    /// at which an array, map or tag opens (0 for a lone scalar).
    pub depth: usize,
    /// Data items, the top-level one included.
    pub items: usize,
}

impl Shape {
    /// Whether an item of this shape passes `limits`: the error [`check`] would give for
    /// them, if any (well-formedness aside, which the walk that measured it settled).
    ///
    /// # Errors
    ///
    /// [`ScanError::TooDeep`] or [`ScanError::TooManyItems`].
    pub fn check(&self, limits: &CborLimits) -> Result<(), ScanError> {
        if self.depth > limits.max_depth {
            return Err(ScanError::TooDeep {
                max: limits.max_depth,
            });
        }
        if self.items > limits.max_items {
            return Err(ScanError::TooManyItems {
                max: limits.max_items,
            });
        }
        Ok(())
    }
}

/// Checks payload data as [`check_data`] does, with no depth or item limit, and returns
/// its [`Shape`]: what an encoder runs once on its own output, so that each limit the
/// data later meets is a comparison rather than another walk.
///
/// # Errors
///
/// As [`check_data`], less the limits.
pub fn measure_data(bytes: &[u8], refs: References) -> Result<Shape, ScanError> {
    const UNBOUNDED: CborLimits = CborLimits {
        max_depth: usize::MAX,
        max_items: usize::MAX,
    };
    let mut check = RefCheck::new(refs);
    let shape = walk(bytes, &UNBOUNDED, Some(&mut check))?;
    check.finish()?;
    Ok(shape)
}

/// Checks payload data: what [`check`] checks, and that its only tags are big
/// integers (2 and 3, around a byte string) and references that line up with the
/// capability table as `refs` requires. Returns how many reference tags it holds.
///
/// Same single pass as [`check`]; the only allocation is one bit per table entry
/// for [`References::Table`].
///
/// # Errors
///
/// The first [`ScanError`] found walking the input front to back, or, after the
/// walk, [`ScanError::ReferenceCount`] or [`ScanError::UnreferencedCap`].
pub fn check_data(bytes: &[u8], limits: &CborLimits, refs: References) -> Result<usize, ScanError> {
    let mut check = RefCheck::new(refs);
    walk(bytes, limits, Some(&mut check))?;
    check.finish()
}

/// The walk behind [`check`], [`check_data`] and [`measure_data`]; `refs` is `Some` for
/// payload data. Returns what it measured.
fn walk(
    bytes: &[u8],
    limits: &CborLimits,
    mut refs: Option<&mut RefCheck>,
) -> Result<Shape, ScanError> {
    if bytes.is_empty() {
        return Err(ScanError::Truncated { offset: 0 });
    }
    if limits.max_items == 0 {
        return Err(ScanError::TooManyItems { max: 0 });
    }
    // Items counted so far: the top-level item, plus every item announced by
    // a container or tag header. Invariant: `items <= limits.max_items`.
    let mut items: usize = 1;
    // What `limits.max_depth` must allow so far (see `Shape::depth`).
    let mut depth: usize = 0;
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
            6 => {
                if let Some(refs) = refs.as_deref_mut() {
                    refs.tag(bytes, start, arg, body)?;
                }
                Some(1)
            }
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
            depth = depth.max(pending.len + 1);
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
                    Ok(Shape { depth, items })
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
