//! Bootstrap: a swiss number asks for one object, and the answer is a single reference
//! to it, or `unknown_object`, the same for a revoked number as for one never issued.
//!
//! Only the bootstrap question itself is here: calls on its result are in `calls` and
//! `pipelining`.

use super::*;

#[test]
fn bootstrap_known_swiss_resolves_to_single_reference() {
    let mut pair = Pair::new();
    assert_eq!(
        pair.bootstrap(A, 1, 1, 0),
        returned(1, Ok(in_single(InCap::Import(ImportId(1)))))
    );
    assert_eq!(
        pair.a.take_sent(),
        [
            Message::Bootstrap {
                question: 1,
                swiss: swiss(1)
            },
            Message::Finish { question: 1 },
        ]
    );
    assert_eq!(
        pair.b.take_sent(),
        [Message::Return {
            question: 1,
            result: ReturnResult::Ok(wire_single(CapDescriptor::SenderHosted(1)))
        }]
    );
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn bootstrap_unknown_swiss_breaks_with_unknown_object() {
    let mut pair = Pair::new();
    let seen = pair.bootstrap(A, 1, UNKNOWN, 0);
    assert_eq!(seen, returned(1, Err(Broken::unknown_object())));
    let Seen::Return { result: Err(b), .. } = seen else {
        unreachable!()
    };
    assert_eq!(b.kind(), BrokenKind::UnknownObject);
    assert_eq!(
        pair.b.take_sent(),
        [Message::Return {
            question: 1,
            result: ReturnResult::Err(WireBroken {
                kind: "unknown_object".to_owned(),
                message: Broken::unknown_object().message().to_owned(),
                data: None,
            })
        }]
    );
    assert_tables!(pair.a);
    assert_tables!(pair.b);
}

#[test]
fn bootstrap_revoked_swiss_is_indistinguishable_from_unknown() {
    let mut pair = Pair::new();
    let i = pair.a_imports_b_obj(1);
    pair.a.session.drop_import(i);
    pair.drive();
    // Revoke: the runtime forgets the swiss number.
    pair.b.objects.clear();
    let revoked = pair.bootstrap(A, 2, 1, 0);
    let unknown = pair.bootstrap(A, 3, UNKNOWN, 0);
    assert_eq!(revoked, returned(2, Err(Broken::unknown_object())));
    assert_eq!(unknown, returned(3, Err(Broken::unknown_object())));
    assert_tables!(pair.a);
    assert_tables!(pair.b);
}
