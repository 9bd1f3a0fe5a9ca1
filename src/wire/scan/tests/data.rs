//! Payload data on the same walk: the tags it may hold, how its references line up with
//! the capability table (PROTOCOL.md 8.1), and the shape one walk measures for every
//! later limit.

use super::*;

/// `tag(25441)` around `index`, as ciborium writes it.
fn cap(index: u8) -> Vec<u8> {
    assert!(index < 24);
    vec![0xd9, 0x63, 0x61, index]
}

/// A CBOR array of the given encoded items.
fn array(items: &[Vec<u8>]) -> Vec<u8> {
    assert!(items.len() < 24);
    let mut v = vec![0x80 | items.len() as u8];
    for item in items {
        v.extend_from_slice(item);
    }
    v
}

fn data(bytes: &[u8], refs: References) -> Result<usize, ScanError> {
    check_data(bytes, &CborLimits::DEFAULT, refs)
}

#[test]
fn references_in_order_pass_both_rules() {
    let two = array(&[enc("x"), cap(0), array(&[cap(1)])]);
    assert_eq!(data(&two, References::Canonical(2)), Ok(2));
    assert_eq!(data(&two, References::Table(2)), Ok(2));
    assert_eq!(data(&enc(&()), References::Canonical(0)), Ok(0));
    assert_eq!(data(&enc(&()), References::Table(0)), Ok(0));
}

#[test]
fn a_received_table_may_name_an_entry_twice_but_must_name_each() {
    let repeat = array(&[cap(1), cap(0), cap(1)]);
    assert_eq!(data(&repeat, References::Table(2)), Ok(3));
    assert!(matches!(
        data(&repeat, References::Canonical(2)),
        Err(ScanError::BadReference { offset: 1, .. })
    ));
    let unnamed = array(&[cap(0), cap(2)]);
    assert_eq!(
        data(&unnamed, References::Table(3)),
        Err(ScanError::UnreferencedCap { index: 1 })
    );
    assert_eq!(
        data(&enc(&()), References::Table(1)),
        Err(ScanError::UnreferencedCap { index: 0 })
    );
}

#[test]
fn a_reference_tag_kept_as_data_is_caught_before_it_is_sent() {
    // A stored tag(25441)(0) beside a real reference: two tags naming entry 0 of a
    // one-entry table. A receiver would take both as the real reference; the sender
    // must refuse, whichever comes first.
    let forged_first = array(&[cap(0), cap(0)]);
    assert!(matches!(
        data(&forged_first, References::Canonical(1)),
        Err(ScanError::BadReference { offset: 5, .. })
    ));
    // A stored tag with no real reference at all.
    assert!(matches!(
        data(&cap(0), References::Canonical(0)),
        Err(ScanError::BadReference { offset: 0, .. })
    ));
    // Too few tags for the table.
    assert_eq!(
        data(&array(&[cap(0)]), References::Canonical(2)),
        Err(ScanError::ReferenceCount { tags: 1, caps: 2 })
    );
}

#[test]
fn a_reference_tag_must_enclose_an_index_into_the_table() {
    let text = vec![0xd9, 0x63, 0x61, 0x63, b'f', b'o', b'o'];
    let negative = vec![0xd9, 0x63, 0x61, 0x20];
    let out_of_range = cap(3);
    for bytes in [text, negative, out_of_range] {
        for refs in [References::Table(1), References::Canonical(1)] {
            assert!(
                matches!(
                    data(&bytes, refs),
                    Err(ScanError::BadReference { offset: 0, .. })
                ),
                "{bytes:02x?} {refs:?}"
            );
        }
    }
    // The enclosed integer is read in full, whatever its width.
    let wide = vec![0xd9, 0x63, 0x61, 0x1b, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(data(&wide, References::Canonical(1)), Ok(1));
}

#[test]
fn only_big_integer_and_reference_tags_are_allowed_in_data() {
    // 1234("foo") and the self-describe tag 55799(null) are refused wherever they are.
    let custom = vec![0xd9, 0x04, 0xd2, 0x63, b'f', b'o', b'o'];
    let self_describe = vec![0xd9, 0xd9, 0xf7, 0xf6];
    for bytes in [custom.clone(), self_describe, array(&[enc(&1u8), custom])] {
        assert!(
            matches!(
                data(&bytes, References::Table(0)),
                Err(ScanError::ForbiddenTag { .. })
            ),
            "{bytes:02x?}"
        );
        // Messages are not payload data: the plain check does not look at tags.
        ok(&bytes);
    }
    // serde's 128-bit integers come as big-integer tags around byte strings.
    let big = enc(&(u128::from(u64::MAX) + 1));
    assert_eq!(big[0], 0xc2);
    assert_eq!(data(&big, References::Table(0)), Ok(0));
    let negative = enc(&i128::MIN);
    assert_eq!(negative[0], 0xc3);
    assert_eq!(data(&negative, References::Canonical(0)), Ok(0));
    assert!(matches!(
        data(&[0xc2, 0x01], References::Table(0)),
        Err(ScanError::Malformed { offset: 0, .. })
    ));
}

#[test]
fn a_measured_shape_decides_every_limit_as_a_walk_does() {
    // Every sample (scalars, nesting, maps, tags, strings), against a grid of limits
    // around its own shape: the comparison and the walk agree on pass or fail, and on
    // which limit fails when only one does.
    let mut measured = 0;
    for bytes in samples() {
        let Ok(shape) = measure_data(&bytes, References::Table(0)) else {
            continue;
        };
        measured += 1;
        for max_depth in 0..=shape.depth + 2 {
            for max_items in [
                0,
                1,
                shape.items.saturating_sub(1),
                shape.items,
                shape.items + 1,
            ] {
                let limits = CborLimits {
                    max_depth,
                    max_items,
                };
                let walked = check(&bytes, &limits);
                let compared = shape.check(&limits);
                assert_eq!(walked.is_ok(), compared.is_ok(), "{bytes:02x?} {limits:?}");
                let one_fails = (shape.depth > max_depth) != (shape.items > max_items);
                if one_fails {
                    assert_eq!(walked, compared, "{bytes:02x?} {limits:?}");
                }
            }
        }
    }
    assert!(measured >= 20, "only {measured} samples were data");
}
