//! Promises passed as references (`sender_promise`): exported once, settled once with
//! `resolve`, to data, an error, an object of either side; messages sent to a promise
//! keep following it after it settles.
//!
//! Promises as answers to questions (pipelining) are in `pipelining`; settlements the
//! session defers until the runtime holds the promise are in `gc` and `regressions`.

use super::*;

#[test]
fn sender_promise_is_exported_and_resolved_once() {
    let mut pair = Pair::new();
    pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(ImportId(1)), "later", no_args(), 2));
    pair.drive();
    pair.b.take_events();
    pair.a.take_sent();
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Promise(300))),
    );
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [Message::Return {
            question: 2,
            result: ReturnResult::Ok(wire_single(CapDescriptor::SenderPromise(2)))
        }]
    );
    assert_eq!(pair.a.take_sent(), [Message::Finish { question: 2 }]);
    assert_eq!(
        pair.a.take_events(),
        [returned(2, Ok(in_single(InCap::Promise(ImportId(2)))))]
    );
    assert_tables!(pair.a, imports: 2);
    assert_tables!(pair.b, exports: 2);

    pair.b
        .session
        .resolve_export(&300, Ok(OutPayload::data(data(&7u8))));
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [Message::Resolve {
            export: 2,
            result: ReturnResult::Ok(Payload {
                data: data(&7u8),
                caps: vec![]
            })
        }]
    );
    assert_eq!(
        pair.a.take_events(),
        [Seen::Resolved {
            import: ImportId(2),
            result: Ok(in_data(data(&7u8)))
        }]
    );
    // A promise settles once: later reports send nothing.
    pair.b
        .session
        .resolve_export(&300, Ok(OutPayload::data(data(&8u8))));
    pair.b
        .session
        .resolve_export(&300, Err(Broken::failed("late")));
    assert_eq!(pair.b.session.poll_transmit(), None);
    // Settled, it travels as an object: sent again, it is `sender_hosted`.
    pair.a
        .session
        .send(ask(LocalTarget::Import(ImportId(1)), "again", no_args(), 3));
    pair.drive();
    pair.b.take_events();
    pair.b.session.answer(
        AnswerId(3),
        Ok(OutPayload::single_cap(OutCap::Promise(300))),
    );
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [Message::Return {
            question: 3,
            result: ReturnResult::Ok(wire_single(CapDescriptor::SenderHosted(2)))
        }]
    );
    assert_eq!(
        pair.a.take_events(),
        [returned(3, Ok(in_single(InCap::Import(ImportId(2)))))]
    );
    // Two receptions, one release with the full count.
    pair.a.take_sent();
    pair.a.session.drop_import(ImportId(2));
    pair.a.session.drop_import(ImportId(2));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Release {
            export: 2,
            count: 2
        }]
    );
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
    assert_eq!(
        (pair.a.take_events(), pair.b.take_events()),
        (vec![], vec![])
    );
}

#[test]
fn sender_promise_in_arguments_is_imported_as_a_promise() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "take",
        OutPayload::single_cap(OutCap::Promise(A_OBJ)),
    ));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Deliver {
            quiet: false,
            target: Target::Export(1),
            method: "take".to_owned(),
            payload: wire_single(CapDescriptor::SenderPromise(1)),
            question: None,
        }]
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(
            B_OBJ,
            "take",
            in_single(InCap::Promise(ImportId(1))),
            None
        )]
    );
    assert_tables!(pair.a, imports: 1, exports: 1);
    assert_tables!(pair.b, imports: 1, exports: 1);
    pair.a
        .session
        .resolve_export(&A_OBJ, Err(Broken::failed("gave up")));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [Seen::Resolved {
            import: ImportId(1),
            result: Err(Broken::failed("gave up"))
        }]
    );
    pair.b.session.drop_import(ImportId(1));
    pair.drive();
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn promise_resolves_to_a_reference() {
    let mut pair = Pair::new();
    pair.a_imports_b_obj(1);
    // B holds A's object, to resolve a promise to it.
    pair.a.session.send(tell(
        LocalTarget::Import(ImportId(1)),
        "take",
        OutPayload::single_cap(OutCap::Local(A_OBJ)),
    ));
    pair.drive();
    pair.b.take_events();
    pair.a.take_sent();
    let p = b_answers_with_a_promise(&mut pair, 2, 300);
    let home = b_answers_with_a_promise(&mut pair, 3, 302);
    assert_eq!((p, home), (ImportId(2), ImportId(3)));

    // To one of B's objects: A imports it.
    pair.b
        .session
        .resolve_export(&300, Ok(OutPayload::single_cap(OutCap::Local(301))));
    // To A's own object: it comes home as the local object.
    pair.b.session.resolve_export(
        &302,
        Ok(OutPayload::single_cap(OutCap::Import(ImportId(1)))),
    );
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [
            Message::Resolve {
                export: 2,
                result: ReturnResult::Ok(wire_single(CapDescriptor::SenderHosted(4)))
            },
            Message::Resolve {
                export: 3,
                result: ReturnResult::Ok(wire_single(CapDescriptor::ReceiverHosted(1)))
            },
        ]
    );
    assert_eq!(
        pair.a.take_events(),
        [
            Seen::Resolved {
                import: p,
                result: Ok(in_single(InCap::Import(ImportId(4))))
            },
            Seen::Resolved {
                import: home,
                result: Ok(in_single(InCap::Local(A_OBJ)))
            },
        ]
    );
    assert_tables!(pair.a, imports: 4, exports: 1);
    assert_tables!(pair.b, imports: 1, exports: 4);
    for i in [1, 2, 3, 4] {
        pair.a.session.drop_import(ImportId(i));
    }
    pair.b.session.drop_import(ImportId(1));
    pair.drive();
    assert_tables!(pair.a);
    assert_tables!(pair.b);
}

#[test]
fn promise_resolves_to_an_error() {
    let mut pair = Pair::new();
    pair.a_imports_b_obj(1);
    let p = b_answers_with_a_promise(&mut pair, 2, 300);
    let err = Broken::failed("the disk is full");
    pair.b.session.resolve_export(&300, Err(err.clone()));
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [Message::Resolve {
            export: 2,
            result: ReturnResult::Err(WireBroken {
                kind: "failed".to_owned(),
                message: "the disk is full".to_owned(),
                data: None
            })
        }]
    );
    assert_eq!(
        pair.a.take_events(),
        [Seen::Resolved {
            import: p,
            result: Err(err)
        }]
    );
    // The promise is still an import until A lets go of it.
    assert_tables!(pair.a, imports: 2);
    assert_tables!(pair.b, exports: 2);
    pair.a.session.drop_import(p);
    pair.drive();
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn resolve_of_a_released_promise_is_tolerated_and_releases_what_it_brought() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "take",
        OutPayload::single_cap(OutCap::Promise(A_OBJ)),
    ));
    pair.drive();
    pair.b.take_events();
    pair.a.take_sent();
    // B lets go of the promise while A resolves it to a new object: the two cross.
    pair.b.session.drop_import(ImportId(1));
    pair.a
        .session
        .resolve_export(&A_OBJ, Ok(OutPayload::single_cap(OutCap::Local(201))));
    assert_tables!(pair.a, imports: 1, exports: 2);
    assert_tables!(pair.b, exports: 1);
    // The resolve reaches B, which no longer has the import: not a violation, and the
    // reference in it goes straight back.
    pair.pump(A);
    assert!(!pair.b.session.is_closed());
    assert_eq!(pair.b.take_events(), []);
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Resolve {
            export: 1,
            result: ReturnResult::Ok(wire_single(CapDescriptor::SenderHosted(2)))
        }]
    );
    assert_eq!(
        pair.b.take_sent(),
        [
            Message::Release {
                export: 1,
                count: 1
            },
            Message::Release {
                export: 2,
                count: 1
            },
        ]
    );
    assert_eq!(
        (pair.a.take_events(), pair.b.take_events()),
        (vec![], vec![])
    );
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn messages_to_a_promise_keep_following_it_after_it_resolves() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(LocalTarget::Import(obj), "later", no_args(), 2)
    });
    let answer = LocalTarget::Answer(QuestionId(2));
    let m = |n: u8| OutPayload::data(data(&n));
    // m1: pipelined on the answer before B answered it.
    pair.a.session.send(tell(answer, "m", m(1)));
    pair.drive();
    pair.b.take_events();
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Promise(300))),
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(300, "m", in_data(data(&1u8)), None)]
    );
    pair.pump(B);
    assert_eq!(
        pair.a.take_events(),
        [returned(2, Ok(in_single(InCap::Promise(ImportId(2)))))]
    );
    let promise = LocalTarget::Import(ImportId(2));
    // m2, m3: after the return, through the answer and through the promise itself.
    pair.a.session.send(tell(answer, "m", m(2)));
    pair.a.session.send(tell(promise, "m", m(3)));
    pair.pump(A);
    // B's promise settles to a new object; m4, m5 cross its resolve.
    pair.b
        .session
        .resolve_export(&300, Ok(OutPayload::single_cap(OutCap::Local(301))));
    pair.a.session.send(tell(answer, "m", m(4)));
    pair.a.session.send(tell(promise, "m", m(5)));
    pair.pump(B);
    assert_eq!(
        pair.a.take_events(),
        [Seen::Resolved {
            import: ImportId(2),
            result: Ok(in_single(InCap::Import(ImportId(3))))
        }]
    );
    // m6, m7: after A learned the resolution.
    pair.a.session.send(tell(answer, "m", m(6)));
    pair.a.session.send(tell(promise, "m", m(7)));
    pair.drive();
    // Every message went to the promise's export, never straight to the resolution...
    let targets: Vec<Target> = pair
        .a
        .take_sent()
        .into_iter()
        .filter_map(|msg| match msg {
            Message::Deliver { target, .. } => Some(target),
            _ => None,
        })
        .collect();
    assert_eq!(
        targets,
        [
            Target::Export(1),
            Target::Answer(2),
            Target::Export(2),
            Target::Export(2),
            Target::Export(2),
            Target::Export(2),
            Target::Export(2),
            Target::Export(2),
        ]
    );
    // ... and reached B's promise object in the order A sent them.
    assert_eq!(
        pair.b.take_events(),
        (2..=7u8)
            .map(|n| delivered(300, "m", in_data(data(&n)), None))
            .collect::<Vec<_>>()
    );
}
