//! Tests of the bounded CBOR check: hand-written encodings at every limit, and random
//! input compared with a reference decoder. (Kept apart from `scan.rs` for length.)

use super::*;
use ciborium::Value;
use serde::Serialize;
use std::collections::BTreeMap;

fn enc<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("ciborium encodes");
    out
}

fn ok(bytes: &[u8]) {
    assert_eq!(check(bytes, &CborLimits::DEFAULT), Ok(()), "{bytes:02x?}");
}

fn err(bytes: &[u8]) -> ScanError {
    check(bytes, &CborLimits::DEFAULT).expect_err("must be refused")
}

fn nested(header: u8, levels: usize, leaf: &[u8]) -> Vec<u8> {
    let mut v = vec![header; levels];
    v.extend_from_slice(leaf);
    v
}

#[derive(Serialize)]
enum Kind {
    Unit,
    Newtype(u32),
    Tuple(i8, String),
    Struct { a: bool, b: Vec<u16> },
}

#[derive(Serialize)]
struct Message {
    id: u64,
    name: String,
    note: Option<String>,
    missing: Option<u8>,
    kind: Kind,
    others: Vec<Kind>,
}

/// A spread of valid encodings produced by ciborium.
fn samples() -> Vec<Vec<u8>> {
    let mut s = vec![
        enc(&0u8),
        enc(&23u8),
        enc(&24u8),
        enc(&u8::MAX),
        enc(&u16::MAX),
        enc(&u32::MAX),
        enc(&u64::MAX),
        enc(&-1i8),
        enc(&-25i8),
        enc(&i16::MIN),
        enc(&i32::MIN),
        enc(&i64::MIN),
        enc(&u128::MAX),
        enc(&i128::MIN),
        enc(&1.5f32),
        enc(&0.1f64),
        enc(&1.0e300f64),
        enc(&f64::NAN),
        enc(&f64::NEG_INFINITY),
        enc(&true),
        enc(&false),
        enc(&()),
        enc(&Option::<u8>::None),
        enc(""),
        enc("hello"),
        enc("héllo ✓ 𝄞 日本語"),
        enc(&Value::Bytes(vec![])),
        enc(&Value::Bytes((0..=255).collect())),
        enc(&Vec::<u8>::new()),
        enc(&vec![1u32, 1000, 100_000, u32::MAX]),
        enc(&vec![vec![vec!["deep"]]]),
        enc(&(1u8, "x", -5i32, (true, ()), [0u8; 3])),
        enc(&ciborium::tag::Required::<u64, 25441>(7)),
        enc(&ciborium::tag::Required::<String, 0>(
            "2024-01-01T00:00:00Z".into(),
        )),
    ];
    let mut inner = BTreeMap::new();
    inner.insert(1u32, vec![true, false]);
    inner.insert(70_000u32, vec![]);
    let mut outer = BTreeMap::new();
    outer.insert("a".to_string(), inner.clone());
    outer.insert("b".to_string(), BTreeMap::new());
    outer.insert("ü".to_string(), inner);
    s.push(enc(&outer));
    s.push(enc(&Message {
        id: 42,
        name: "alice".into(),
        note: Some("hi".into()),
        missing: None,
        kind: Kind::Struct {
            a: true,
            b: vec![1, 2, 300],
        },
        others: vec![Kind::Unit, Kind::Newtype(9), Kind::Tuple(-3, "t".into())],
    }));
    s.push(enc(&Value::Map(vec![
        (Value::Integer(1.into()), Value::Float(2.5)),
        (
            Value::Tag(
                25441,
                Box::new(Value::Array(vec![Value::Null, Value::Bool(true)])),
            ),
            Value::Bytes(vec![0xff; 40]),
        ),
    ])));
    s
}

#[test]
fn accepts_ciborium_encodings() {
    for bytes in samples() {
        ok(&bytes);
    }
}

#[test]
fn accepts_hand_written_scalars() {
    // f16, f32, f64.
    ok(&[0xf9, 0x3c, 0x00]);
    ok(&[0xfa, 0x7f, 0x80, 0x00, 0x00]);
    ok(&[0xfb, 0, 0, 0, 0, 0, 0, 0, 0]);
    // Simple values 0..=23, and two-byte simple values 32..=255.
    for b in 0xe0..=0xf7u8 {
        ok(&[b]);
    }
    ok(&[0xf8, 0x20]);
    ok(&[0xf8, 0xff]);
    // Non-minimal integer, length and count encodings.
    ok(&[0x18, 0x00]);
    ok(&[0x1b, 0, 0, 0, 0, 0, 0, 0, 1]);
    ok(&[0x39, 0x00, 0x00]);
    ok(&[0x78, 0x01, b'a']);
    ok(&[0x59, 0x00, 0x01, 0x00]);
    ok(&[0x98, 0x01, 0x00]);
    ok(&[0xb9, 0x00, 0x01, 0x00, 0x00]);
    // Large tag numbers, and tags on anything.
    ok(&[0xdb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    ok(&[0xd8, 0x20, 0x80]);
    // Empty containers.
    ok(&[0x80]);
    ok(&[0xa0]);
}

#[test]
fn trailing_bytes() {
    assert_eq!(err(&[0x00, 0x00]), ScanError::TrailingBytes { count: 1 });
    assert_eq!(
        err(&[0x82, 0x01, 0x02, 0xff, 0xff, 0xff]),
        ScanError::TrailingBytes { count: 3 }
    );
    let mut v = enc("ok");
    v.push(0x60);
    assert_eq!(err(&v), ScanError::TrailingBytes { count: 1 });
}

#[test]
fn truncated() {
    assert_eq!(err(&[]), ScanError::Truncated { offset: 0 });
    // Byte string claiming 2^63 bytes.
    let mut v = vec![0x5b, 0x80, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(err(&v), ScanError::Truncated { offset: 0 });
    v.extend_from_slice(b"abc");
    assert_eq!(err(&v), ScanError::Truncated { offset: 0 });
    // Text string claiming u64::MAX bytes, inside an array.
    let v = [
        0x81, 0x7b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x61,
    ];
    assert_eq!(err(&v), ScanError::Truncated { offset: 1 });
    // Array claiming 2^32 items, 3 bytes of input after the header.
    let v = [0x9b, 0, 0, 0, 1, 0, 0, 0, 0, 0x00, 0x00, 0x00];
    assert_eq!(err(&v), ScanError::Truncated { offset: 0 });
    // Map whose 2 * count overflows u64.
    let v = [0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00];
    assert_eq!(err(&v), ScanError::Truncated { offset: 0 });
    // Map of 2 pairs needs 4 bytes; 3 are there.
    assert_eq!(
        err(&[0xa2, 0x00, 0x00, 0x00]),
        ScanError::Truncated { offset: 0 }
    );
    // Header argument cut short.
    assert_eq!(err(&[0x19, 0x01]), ScanError::Truncated { offset: 0 });
    assert_eq!(
        err(&[0x82, 0x00, 0xfb, 0x00]),
        ScanError::Truncated { offset: 2 }
    );
    // Element missing at the end, found only while walking.
    assert_eq!(err(&[0x82, 0x81, 0x00]), ScanError::Truncated { offset: 3 });
    assert_eq!(
        err(&[0x82, 0x81, 0x81, 0x00]),
        ScanError::Truncated { offset: 4 }
    );
}

#[test]
fn item_budget_checked_at_header() {
    // 65,536 items claimed (plus the array itself), all bytes present.
    let mut v = vec![0x9a, 0x00, 0x01, 0x00, 0x00];
    v.resize(v.len() + 65_536, 0x00);
    assert_eq!(err(&v), ScanError::TooManyItems { max: 65_536 });
    // Over a small budget, with every claimed byte present: refused at
    // the header (the zeros after it are never walked).
    let limits = CborLimits {
        max_depth: 32,
        max_items: 10,
    };
    let mut v = vec![0x8a];
    v.resize(11, 0x00);
    assert_eq!(check(&v, &limits), Err(ScanError::TooManyItems { max: 10 }));
    let mut v = vec![0x89];
    v.resize(10, 0x00);
    assert_eq!(check(&v, &limits), Ok(()));
    // When a claim exceeds both the input and the budget, truncation is
    // reported.
    let v = [0x9b, 0, 0, 0, 1, 0, 0, 0, 0, 0x00, 0x00, 0x00];
    assert_eq!(check(&v, &limits), Err(ScanError::Truncated { offset: 0 }));
}

#[test]
fn item_limit_exact() {
    // Array of 65,535 zeros: 65,536 items including the array.
    let mut v = vec![0x99, 0xff, 0xff];
    v.resize(v.len() + 65_535, 0x00);
    ok(&v);
    // One more element: 65,537 items.
    let mut v = vec![0x9a, 0x00, 0x01, 0x00, 0x00];
    v.resize(v.len() + 65_536, 0x00);
    assert_eq!(err(&v), ScanError::TooManyItems { max: 65_536 });
    // Nested containers, map keys and values, tags and their content
    // all count.
    let five = CborLimits {
        max_depth: 32,
        max_items: 5,
    };
    assert_eq!(check(&[0x82, 0x81, 0x00, 0x81, 0x00], &five), Ok(()));
    assert_eq!(
        check(&[0x82, 0x82, 0x00, 0x00, 0x81, 0x00], &five),
        Err(ScanError::TooManyItems { max: 5 })
    );
    assert_eq!(check(&[0xa2, 0x00, 0x00, 0x00, 0x00], &five), Ok(()));
    assert_eq!(check(&[0xc6, 0xc6, 0xc6, 0xc6, 0x00], &five), Ok(()));
    assert_eq!(
        check(&[0xc6, 0xc6, 0xc6, 0xc6, 0xc6, 0x00], &five),
        Err(ScanError::TooManyItems { max: 5 })
    );
    let one = CborLimits {
        max_depth: 32,
        max_items: 1,
    };
    assert_eq!(check(&[0x00], &one), Ok(()));
    assert_eq!(check(&[0x80], &one), Ok(()));
    assert_eq!(
        check(&[0xc6, 0x00], &one),
        Err(ScanError::TooManyItems { max: 1 })
    );
    let zero = CborLimits {
        max_depth: 32,
        max_items: 0,
    };
    assert_eq!(
        check(&[0x00], &zero),
        Err(ScanError::TooManyItems { max: 0 })
    );
}

#[test]
fn indefinite_lengths() {
    assert_eq!(
        err(&[0x9f, 0x01, 0x02, 0xff]),
        ScanError::IndefiniteLength { offset: 0 }
    );
    assert_eq!(
        err(&[0x5f, 0x41, 0x00, 0xff]),
        ScanError::IndefiniteLength { offset: 0 }
    );
    assert_eq!(
        err(&[0x7f, 0xff]),
        ScanError::IndefiniteLength { offset: 0 }
    );
    assert_eq!(
        err(&[0xbf, 0xff]),
        ScanError::IndefiniteLength { offset: 0 }
    );
    assert_eq!(err(&[0xff]), ScanError::IndefiniteLength { offset: 0 });
    // Inside a definite container the offset points at the offender.
    assert_eq!(
        err(&[0x82, 0x00, 0x9f, 0xff]),
        ScanError::IndefiniteLength { offset: 2 }
    );
    assert_eq!(
        err(&[0x81, 0xa1, 0x00, 0x5f, 0xff]),
        ScanError::IndefiniteLength { offset: 3 }
    );
    // A break where an item is expected.
    assert_eq!(
        err(&[0x82, 0x00, 0xff]),
        ScanError::IndefiniteLength { offset: 2 }
    );
}

#[test]
fn malformed() {
    for ai in 28..=30u8 {
        for major in 0..8u8 {
            let b = (major << 5) | ai;
            assert!(
                matches!(
                    err(&[b, 0, 0, 0, 0]),
                    ScanError::Malformed { offset: 0, .. }
                ),
                "{b:#04x}"
            );
        }
    }
    for b in [0x1f, 0x3f, 0xdf] {
        assert!(matches!(err(&[b]), ScanError::Malformed { offset: 0, .. }));
    }
    assert!(matches!(
        err(&[0xf8, 0x10]),
        ScanError::Malformed { offset: 0, .. }
    ));
    assert!(matches!(
        err(&[0x81, 0xf8, 0x1f]),
        ScanError::Malformed { offset: 1, .. }
    ));
    assert!(matches!(
        err(&[0x82, 0x00, 0x1c]),
        ScanError::Malformed { offset: 2, .. }
    ));
}

#[test]
fn invalid_utf8() {
    assert_eq!(
        err(&[0x62, 0xff, 0xfe]),
        ScanError::InvalidUtf8 { offset: 0 }
    );
    assert_eq!(
        err(&[0x82, 0x00, 0x62, 0xc3, 0x28]),
        ScanError::InvalidUtf8 { offset: 2 }
    );
    // Surrogate code point encoded in UTF-8 form is not valid UTF-8.
    assert_eq!(
        err(&[0x63, 0xed, 0xa0, 0x80]),
        ScanError::InvalidUtf8 { offset: 0 }
    );
    // The same bytes are fine in a byte string.
    ok(&[0x42, 0xff, 0xfe]);
}

#[test]
fn depth_limit() {
    ok(&nested(0x81, 32, &[0x00]));
    assert_eq!(
        err(&nested(0x81, 33, &[0x00])),
        ScanError::TooDeep { max: 32 }
    );
    // Empty containers and maps count as a level too.
    ok(&nested(0x81, 31, &[0x80]));
    assert_eq!(
        err(&nested(0x81, 32, &[0x80])),
        ScanError::TooDeep { max: 32 }
    );
    let mut m = Vec::new();
    for _ in 0..32 {
        m.extend_from_slice(&[0xa1, 0x00]);
    }
    m.push(0x00);
    ok(&m);
    let mut m2 = m.clone();
    m2.splice(0..0, [0xa1, 0x00]);
    assert_eq!(err(&m2), ScanError::TooDeep { max: 32 });
    // Scalars add no depth.
    let flat = CborLimits {
        max_depth: 0,
        max_items: 10,
    };
    assert_eq!(check(&[0x00], &flat), Ok(()));
    assert_eq!(check(&[0x80], &flat), Err(ScanError::TooDeep { max: 0 }));
    let two = CborLimits {
        max_depth: 2,
        max_items: 10,
    };
    assert_eq!(check(&[0x81, 0x81, 0x00], &two), Ok(()));
    assert_eq!(
        check(&[0x81, 0x81, 0x81, 0x00], &two),
        Err(ScanError::TooDeep { max: 2 })
    );
    // Siblings do not add depth.
    assert_eq!(check(&[0x82, 0x81, 0x00, 0x81, 0x00], &two), Ok(()));
}

#[test]
fn deep_tags_count_toward_depth() {
    ok(&nested(0xc6, 32, &[0x00]));
    assert_eq!(
        err(&nested(0xc6, 33, &[0x00])),
        ScanError::TooDeep { max: 32 }
    );
    let mut mixed = Vec::new();
    for _ in 0..16 {
        mixed.extend_from_slice(&[0x81, 0xc6]);
    }
    mixed.push(0x00);
    ok(&mixed);
    mixed.insert(0, 0xc6);
    assert_eq!(err(&mixed), ScanError::TooDeep { max: 32 });
}

#[test]
fn very_deep_nesting_fails_fast_without_recursion() {
    let v = nested(0x81, 100_000, &[0x00]);
    let started = std::time::Instant::now();
    assert_eq!(err(&v), ScanError::TooDeep { max: 32 });
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    // With the limits lifted, the explicit stack handles it.
    let lifted = CborLimits {
        max_depth: usize::MAX,
        max_items: usize::MAX,
    };
    assert_eq!(check(&v, &lifted), Ok(()));
    let v = nested(0xc6, 100_000, &[0x80]);
    assert_eq!(check(&v, &lifted), Ok(()));
    assert_eq!(
        check(&v[..v.len() - 1], &lifted),
        Err(ScanError::Truncated { offset: 100_000 })
    );
}

#[test]
fn huge_limits_do_not_overflow() {
    let lifted = CborLimits {
        max_depth: usize::MAX,
        max_items: usize::MAX,
    };
    for bytes in samples() {
        assert_eq!(check(&bytes, &lifted), Ok(()));
    }
    let v = [0xbb, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00];
    assert_eq!(check(&v, &lifted), Err(ScanError::Truncated { offset: 0 }));
}

#[test]
fn strict_prefixes_are_refused() {
    for bytes in samples() {
        for end in 0..bytes.len() {
            let r = check(&bytes[..end], &CborLimits::DEFAULT);
            assert!(
                matches!(r, Err(ScanError::Truncated { .. })),
                "prefix {end} of {bytes:02x?}: {r:?}"
            );
        }
    }
}

/// A straightforward recursive checker used as an oracle for `check`.
fn reference(bytes: &[u8], limits: &CborLimits) -> bool {
    fn item(
        b: &[u8],
        pos: &mut usize,
        depth: usize,
        items: &mut usize,
        limits: &CborLimits,
    ) -> Option<()> {
        *items += 1;
        if *items > limits.max_items {
            return None;
        }
        let ib = *b.get(*pos)?;
        let (major, ai) = (ib >> 5, ib & 0x1f);
        let width = match ai {
            0..=23 => 0,
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return None,
        };
        let mut arg = u64::from(ai);
        if width > 0 {
            arg = 0;
            for i in 0..width {
                arg = (arg << 8) | u64::from(*b.get(*pos + 1 + i)?);
            }
        }
        *pos += 1 + width;
        let nest = |n: u64, pos: &mut usize, items: &mut usize| -> Option<()> {
            if depth + 1 > limits.max_depth {
                return None;
            }
            for _ in 0..n {
                item(b, pos, depth + 1, items, limits)?;
            }
            Some(())
        };
        match major {
            0 | 1 => Some(()),
            2 | 3 => {
                let len = usize::try_from(arg).ok()?;
                let s = b.get(*pos..pos.checked_add(len)?)?;
                if major == 3 {
                    std::str::from_utf8(s).ok()?;
                }
                *pos += len;
                Some(())
            }
            4 => nest(arg, pos, items),
            5 => nest(arg.checked_mul(2)?, pos, items),
            6 => nest(1, pos, items),
            _ => (ai != 24 || arg >= 32).then_some(()),
        }
    }
    let mut pos = 0;
    let mut items = 0;
    item(bytes, &mut pos, 0, &mut items, limits).is_some() && pos == bytes.len()
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_inputs_never_panic_and_match_reference() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let samples = samples();
    let limit_sets = [
        CborLimits::DEFAULT,
        CborLimits {
            max_depth: 3,
            max_items: 12,
        },
        CborLimits {
            max_depth: 0,
            max_items: 1,
        },
    ];
    let mut accepted = 0;
    for round in 0..20_000 {
        let bytes: Vec<u8> = if round % 2 == 0 {
            // Fresh random bytes, biased towards small headers so that
            // some of them are well-formed.
            let len = rng.below(24);
            (0..len)
                .map(|_| {
                    let r = rng.next();
                    if r % 3 == 0 {
                        (r >> 8) as u8
                    } else {
                        ((r >> 8) as u8 & 0xe0) | ((r >> 16) as u8 % 26)
                    }
                })
                .collect()
        } else {
            // A valid sample with a few bytes changed, dropped or added.
            let mut v = samples[rng.below(samples.len())].clone();
            for _ in 0..1 + rng.below(3) {
                match rng.below(4) {
                    0 if !v.is_empty() => {
                        let i = rng.below(v.len());
                        v[i] = rng.next() as u8;
                    }
                    1 if !v.is_empty() => {
                        let i = rng.below(v.len());
                        v.remove(i);
                    }
                    2 => {
                        let i = rng.below(v.len() + 1);
                        v.insert(i, rng.next() as u8);
                    }
                    _ => {
                        let i = rng.below(v.len() + 1);
                        v.truncate(i);
                    }
                }
            }
            v
        };
        let limits = &limit_sets[round % limit_sets.len()];
        let got = check(&bytes, limits);
        assert_eq!(
            got.is_ok(),
            reference(&bytes, limits),
            "{bytes:02x?} under {limits:?}: {got:?}"
        );
        if let Err(e) = &got {
            assert!(!e.to_string().is_empty());
        }
        accepted += usize::from(got.is_ok());
    }
    assert!(accepted > 500, "only {accepted} random inputs were valid");
}

#[test]
fn display_messages() {
    assert_eq!(
        ScanError::TooDeep { max: 32 }.to_string(),
        "CBOR nested deeper than 32 levels (limit)"
    );
    assert_eq!(
        ScanError::IndefiniteLength { offset: 7 }.to_string(),
        "indefinite-length CBOR item at byte 7: captp requires definite lengths"
    );
    assert!(
        ScanError::TooManyItems { max: 65_536 }
            .to_string()
            .contains("65536")
    );
    assert!(
        ScanError::Truncated { offset: 3 }
            .to_string()
            .contains("byte 3")
    );
    assert!(
        ScanError::TrailingBytes { count: 2 }
            .to_string()
            .contains('2')
    );
    assert!(
        ScanError::InvalidUtf8 { offset: 9 }
            .to_string()
            .contains("UTF-8")
    );
    let e: Box<dyn std::error::Error> = Box::new(ScanError::Malformed {
        offset: 1,
        reason: "two-byte simple value below 32",
    });
    assert_eq!(
        e.to_string(),
        "malformed CBOR at byte 1: two-byte simple value below 32"
    );
    assert_eq!(CborLimits::default(), CborLimits::DEFAULT);
}

mod data;
