//! Regression tests: each is named after the bug it caught, with where it was found
//! (writing this suite, specifying references between peers, the fuzzers and the
//! property tests) in its comment. Grouped by topic.
//!
//! A test here pins one bug; the behaviour around it is specified in the other files.

use super::*;

// ---- exports, imports and their counts ----

#[test]
fn same_new_reference_twice_in_one_payload_counts_as_one_import() {
    // Found while writing this suite: two copies of a new reference in one payload counted
    // as two imports against the limit.
    let lb = Limits {
        max_imports: 1,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "pair",
        OutPayload {
            shape: None,
            data: data(&()),
            caps: vec![OutCap::Local(A_OBJ), OutCap::Local(A_OBJ)],
        },
    ));
    pair.drive();
    assert!(!pair.b.session.is_closed());
    assert_eq!(
        pair.b.take_events(),
        [delivered(
            B_OBJ,
            "pair",
            InPayload {
                data: data(&()),
                caps: vec![InCap::Import(ImportId(1)), InCap::Import(ImportId(1))]
            },
            None
        )]
    );
    assert_tables!(pair.a, imports: 1, exports: 1);
    assert_tables!(pair.b, imports: 1, exports: 1);
    pair.b.session.drop_import(ImportId(1));
    pair.b.session.drop_import(ImportId(1));
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [Message::Release {
            export: 1,
            count: 2
        }]
    );
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn same_new_object_twice_in_one_payload_counts_as_one_export() {
    // Found while writing this suite: two copies of a new object in one payload counted as
    // two exports against the limit.
    let la = Limits {
        max_exports: 1,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(la, Limits::default());
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(ask(
        LocalTarget::Import(obj),
        "pair",
        OutPayload {
            shape: None,
            data: data(&()),
            caps: vec![OutCap::Local(A_OBJ), OutCap::Local(A_OBJ)],
        },
        2,
    ));
    assert_eq!(pair.a.take_events(), []);
    pair.drive();
    let Message::Deliver { payload, .. } = &pair.a.take_sent()[0] else {
        panic!()
    };
    assert_eq!(
        payload.caps,
        [
            CapDescriptor::SenderHosted(1),
            CapDescriptor::SenderHosted(1)
        ]
    );
    assert_tables!(pair.a, questions: 1, imports: 1, exports: 1);
    assert_tables!(pair.b, answers: 1, imports: 1, exports: 1);
}

#[test]
fn pipelined_call_on_a_result_that_failed_to_export_breaks_too() {
    // Found while writing this suite.
    //
    // B may export one object. It already exports B_OBJ, so a result carrying a second
    // object cannot be exported: the return says too_large, and a call pipelined on it
    // must break the same way rather than reach the object the asker never got.
    let lb = Limits {
        max_exports: 1,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    pair.b.objects.insert([3; 32], 300);
    pair.a_imports_b_obj(1);
    pair.a
        .session
        .bootstrap(QuestionId(2), swiss(3), Some(2), 1);
    pair.a
        .session
        .send(ask(LocalTarget::Answer(QuestionId(2)), "use", no_args(), 3));
    pair.drive();
    pair.b.serve_bootstraps();
    pair.drive();
    assert_eq!(pair.b.take_events(), []);
    let events = pair.a.take_events();
    let [
        Seen::Return {
            resolver: 2,
            result: Err(b),
        },
        Seen::Return {
            resolver: 3,
            result: Err(b3),
        },
    ] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(b.kind(), BrokenKind::TooLarge);
    assert_eq!(b3, b);
    assert_tables!(pair.a, questions: 1, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn answer_resolved_to_a_peers_reference_keeps_it_until_finish() {
    // Found while specifying references between peers. B answers with a reference A
    // gave it and drops its own handle, as a runtime does once the method returned. A
    // keeps sending to the answer (its own object came home, so the finish is
    // deferred); B must still hold the import to forward them, rather than lose
    // one-way calls or break questions with "released".
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(
            LocalTarget::Import(obj),
            "echo",
            OutPayload::single_cap(OutCap::Local(A_OBJ)),
            2,
        )
    });
    pair.drive();
    pair.b.take_events();
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Import(ImportId(1)))),
    );
    pair.b.session.drop_import(ImportId(1));
    pair.drive();
    assert_tables!(pair.b, answers: 1, imports: 1, exports: 1);
    pair.a.session.send(ask(
        LocalTarget::Answer(QuestionId(2)),
        "late",
        no_args(),
        3,
    ));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [Seen::Forward {
            target: InCap::Import(ImportId(1)),
            method: "late".to_owned(),
            payload: in_data(data(&())),
            answer: Some(AnswerId(3)),
        }]
    );
    // A heard only of its own object coming home.
    assert_eq!(
        pair.a.take_events(),
        [returned(2, Ok(in_single(InCap::Local(A_OBJ))))]
    );
    // The forwarded delivery's handle, then the finish: the answer's own handle goes
    // last, and with it the import.
    pair.b.session.drop_import(ImportId(1));
    pair.b
        .session
        .answer(AnswerId(3), Ok(OutPayload::data(data(&()))));
    pair.a.session.drop_question_ref(QuestionId(2));
    pair.b.take_sent();
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [
            Message::Return {
                question: 3,
                result: ReturnResult::Ok(Payload {
                    data: data(&()),
                    caps: vec![]
                })
            },
            Message::Release {
                export: 1,
                count: 1
            },
        ]
    );
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn dropped_payloads_release_the_promises_in_them() {
    // Found while specifying references between peers: promise imports in dropped payloads
    // leaked until the session ended.
    //
    // A payload the session drops itself (a resolve for a promise already released, a
    // result nobody waits for, the arguments of a call that broke) holds a handle on
    // each promise in it, as on each object.
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "take",
        OutPayload::single_cap(OutCap::Promise(A_OBJ)),
    ));
    pair.drive();
    pair.b.take_events();
    pair.b.session.drop_import(ImportId(1));
    pair.a
        .session
        .resolve_export(&A_OBJ, Ok(OutPayload::single_cap(OutCap::Promise(201))));
    pair.drive();
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);

    // A result with a promise, for a question whose resolver and handles are gone.
    pair.a.session.send(Call {
        resolver: None,
        ..ask(LocalTarget::Import(obj), "later", no_args(), 2)
    });
    // A call with a promise in its arguments, pipelined on a promise that breaks.
    pair.a
        .session
        .bootstrap(QuestionId(3), swiss(UNKNOWN), None, 1);
    pair.a.session.send(tell(
        LocalTarget::Answer(QuestionId(3)),
        "take",
        OutPayload::single_cap(OutCap::Promise(202)),
    ));
    pair.drive();
    pair.b.serve_bootstraps();
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "later", in_data(data(&())), Some(2))]
    );
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Promise(300))),
    );
    pair.a.session.drop_question_ref(QuestionId(3));
    pair.drive();
    assert_eq!(
        (pair.a.take_events(), pair.b.take_events()),
        (vec![], vec![])
    );
    assert!(!pair.a.session.is_closed() && !pair.b.session.is_closed());
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

// ---- settlements reported at the right time ----

#[test]
fn promise_settled_while_its_call_waits_on_an_answer_is_reported_after_the_call() {
    // Found by the tests of references between peers: a settlement that arrived before the
    // runtime held its promise import was dropped.
    //
    // A pipelines a call carrying a promise of A's on a question B has not answered,
    // then settles the promise. B's runtime first hears of the promise when the call is
    // delivered, so that is when it must learn of the settlement: after the delivery,
    // not before (a settlement for a reference it does not know, which it would drop).
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(LocalTarget::Import(obj), "slow", no_args(), 2)
    });
    pair.a.session.send(tell(
        LocalTarget::Answer(QuestionId(2)),
        "take",
        OutPayload::single_cap(OutCap::Promise(A_OBJ)),
    ));
    pair.a
        .session
        .resolve_export(&A_OBJ, Ok(OutPayload::single_cap(OutCap::Local(201))));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "slow", in_data(data(&())), Some(2))]
    );
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::single_cap(OutCap::Local(301))));
    assert_eq!(
        pair.b.take_events(),
        [
            delivered(301, "take", in_single(InCap::Promise(ImportId(1))), None),
            Seen::Resolved {
                import: ImportId(1),
                result: Ok(in_single(InCap::Import(ImportId(2))))
            },
        ]
    );
    pair.b.session.drop_import(ImportId(1));
    pair.b.session.drop_import(ImportId(2));
    pair.a.session.drop_question_ref(QuestionId(2));
    pair.drive();
    pair.a.take_events();
    pair.a.session.drop_import(ImportId(2));
    pair.drive();
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn settlement_of_a_promise_the_runtime_let_go_of_is_not_reported() {
    // Found by the tests of references between peers (the same fix as the test above).
    //
    // B's runtime dropped its handles on A's promise; B's answer still holds the import
    // (so A's calls on it are forwarded). The settlement concerns nobody at B, and it
    // is not reported. Handed out again (as the settled reference it now is), the
    // import is reported settled right after.
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(
            LocalTarget::Import(obj),
            "echo",
            OutPayload::single_cap(OutCap::Promise(A_OBJ)),
            2,
        )
    });
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [delivered(
            B_OBJ,
            "echo",
            in_single(InCap::Promise(ImportId(1))),
            Some(2)
        )]
    );
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Import(ImportId(1)))),
    );
    pair.b.session.drop_import(ImportId(1));
    pair.a
        .session
        .resolve_export(&A_OBJ, Ok(OutPayload::data(data(&1u8))));
    pair.drive();
    assert_eq!(pair.b.take_events(), []);
    assert_tables!(pair.b, answers: 1, imports: 1, exports: 1);
    pair.a
        .session
        .send(tell(LocalTarget::Answer(QuestionId(2)), "poke", no_args()));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [
            Seen::Forward {
                target: InCap::Import(ImportId(1)),
                method: "poke".to_owned(),
                payload: in_data(data(&())),
                answer: None,
            },
            Seen::Resolved {
                import: ImportId(1),
                result: Ok(in_data(data(&1u8)))
            },
        ]
    );
}

// ---- flow control ----

/// A pair where A has `MIN_QUESTIONS` questions outstanding at B (calls B never
/// answers), so A's next question is held back; returns A's import of B's object.
fn pair_with_a_full_question_window() -> (Pair, ImportId) {
    let lb = Limits {
        max_inbound_questions: MIN_QUESTIONS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    for q in 2..2 + MIN_QUESTIONS as u64 {
        pair.a
            .session
            .send(ask(LocalTarget::Import(obj), "wait", no_args(), q));
    }
    pair.drive();
    assert_eq!(pair.b.take_events().len(), MIN_QUESTIONS);
    pair.a.take_sent();
    (pair, obj)
}

/// Answers every question A asked in `qs` with plain data.
fn b_answers(pair: &mut Pair, qs: std::ops::Range<u64>) {
    for q in qs {
        pair.b
            .session
            .answer(AnswerId(q), Ok(OutPayload::data(data(&()))));
    }
    pair.drive();
}

#[test]
fn deferred_finishes_count_against_the_peers_question_limit() {
    // Found while specifying references between peers: one deferred finish and 64 more
    // questions aborted the session.
    //
    // Each answer B holds counts against its limit until A's finish arrives. A finish
    // that A defers (its own object came back, and A still sends to the answer) must
    // keep counting at A too, or A's next questions pass B's limit and B aborts.
    let lb = Limits {
        max_inbound_questions: MIN_QUESTIONS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let n = MIN_QUESTIONS as u64;
    for q in 2..2 + n {
        pair.a.session.send(Call {
            pipeline_refs: 1,
            ..ask(
                LocalTarget::Import(obj),
                "echo",
                OutPayload::single_cap(OutCap::Local(A_OBJ)),
                q,
            )
        });
    }
    pair.drive();
    assert_eq!(pair.b.take_events().len(), MIN_QUESTIONS);
    for q in 2..2 + n {
        pair.b.session.answer(
            AnswerId(q),
            Ok(OutPayload::single_cap(OutCap::Import(ImportId(1)))),
        );
    }
    pair.b.session.drop_import(ImportId(1));
    pair.drive();
    assert_eq!(pair.a.take_events().len(), MIN_QUESTIONS);
    assert_tables!(pair.b, answers: MIN_QUESTIONS, imports: 1, exports: 1);
    // B still holds n answers: one more question must wait.
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "next", no_args(), 2 + n));
    pair.drive();
    assert!(!pair.b.session.is_closed());
    assert_eq!(pair.a.session.stats().held, 1);
    assert_eq!(pair.b.take_events(), []);
    // Letting go of one promise sends its finish, which makes room.
    pair.a.take_sent();
    pair.a.session.drop_question_ref(QuestionId(2));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [
            Message::Finish { question: 2 },
            Message::Deliver {
                quiet: false,
                target: Target::Export(1),
                method: "next".to_owned(),
                payload: Payload {
                    data: data(&()),
                    caps: vec![]
                },
                question: Some(2 + n),
            },
        ]
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "next", in_data(data(&())), Some(2 + n))]
    );
    assert_eq!(pair.a.session.stats().held, 0);
    assert!(!pair.b.session.is_closed());
}

#[test]
fn resolve_of_a_promise_that_settled_while_held_is_sent() {
    // Found while specifying references between peers: a promise that settled while the
    // send exporting it was held by flow control never got its resolve.
    let lb = Limits {
        max_inbound_questions: MIN_QUESTIONS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let n = MIN_QUESTIONS as u64;
    for q in 2..3 + n {
        pair.a
            .session
            .send(ask(LocalTarget::Import(obj), "fill", no_args(), q));
    }
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "take_promise",
        OutPayload::single_cap(OutCap::Promise(300)),
    ));
    pair.drive();
    assert_eq!(pair.a.session.stats().held, 2);
    // The promise settles while the send carrying it is held.
    pair.a
        .session
        .resolve_export(&300, Ok(OutPayload::data(data(&7u8))));
    pair.drive();
    // One answer makes room: the held send goes out.
    pair.b.take_events();
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&()))));
    pair.drive();
    let sent = pair.a.take_sent();
    let resolves = sent
        .iter()
        .filter(|m| matches!(m, Message::Resolve { .. }))
        .count();
    let promise_caps = sent.iter().filter(|m| matches!(m, Message::Deliver { payload, .. } if payload.caps == [CapDescriptor::SenderPromise(1)])).count();
    assert_eq!((promise_caps, resolves), (1, 1), "resolve lost");
}

#[test]
fn promise_settled_while_the_send_carrying_it_is_held_resolves_after_it() {
    // Found by the tests of references between peers: a promise nested in a settlement
    // waiting in the hold queue was not resolved.
    //
    // Flow control holds a send that carries a promise of A's; A's runtime settles the
    // promise (to another promise, which it settles too) before the send goes out. The
    // promise is not exported yet, but its settlement must not be lost: it follows the
    // send, or B would import a promise that never settles.
    let lb = Limits {
        max_inbound_questions: MIN_QUESTIONS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let n = MIN_QUESTIONS as u64;
    for q in 2..2 + n {
        pair.a
            .session
            .send(ask(LocalTarget::Import(obj), "fill", no_args(), q));
    }
    // One question too many is held, and the call after it.
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "wait", no_args(), 2 + n));
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "take",
        OutPayload::single_cap(OutCap::Promise(A_OBJ)),
    ));
    pair.a
        .session
        .resolve_export(&A_OBJ, Ok(OutPayload::single_cap(OutCap::Promise(201))));
    pair.a
        .session
        .resolve_export(&201, Ok(OutPayload::data(data(&1u8))));
    // The two sends are held; the settlements wait with them.
    assert_eq!(pair.a.session.stats().held, 2);
    pair.drive();
    assert_eq!(pair.b.take_events().len(), MIN_QUESTIONS);
    pair.a.take_sent();
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&()))));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [
            Message::Finish { question: 2 },
            Message::Deliver {
                quiet: false,
                target: Target::Export(1),
                method: "wait".to_owned(),
                payload: Payload {
                    data: data(&()),
                    caps: vec![]
                },
                question: Some(2 + n),
            },
            Message::Deliver {
                quiet: false,
                target: Target::Export(1),
                method: "take".to_owned(),
                payload: wire_single(CapDescriptor::SenderPromise(1)),
                question: None,
            },
            Message::Resolve {
                export: 1,
                result: ReturnResult::Ok(wire_single(CapDescriptor::SenderPromise(2)))
            },
            Message::Resolve {
                export: 2,
                result: ReturnResult::Ok(Payload {
                    data: data(&1u8),
                    caps: vec![]
                })
            },
        ]
    );
    assert_eq!(
        pair.b.take_events(),
        [
            delivered(B_OBJ, "wait", in_data(data(&())), Some(2 + n)),
            delivered(B_OBJ, "take", in_single(InCap::Promise(ImportId(1))), None),
            Seen::Resolved {
                import: ImportId(1),
                result: Ok(in_single(InCap::Promise(ImportId(2))))
            },
            Seen::Resolved {
                import: ImportId(2),
                result: Ok(in_data(data(&1u8)))
            },
        ]
    );
    // A promise that is in no held send and not exported is nobody's: nothing is sent.
    pair.a
        .session
        .resolve_export(&202, Ok(OutPayload::data(data(&2u8))));
    assert_eq!(pair.a.session.poll_transmit(), None);
    pair.b.session.drop_import(ImportId(1));
    pair.b.session.drop_import(ImportId(2));
    for q in 3..3 + n {
        pair.b
            .session
            .answer(AnswerId(q), Ok(OutPayload::data(data(&()))));
    }
    pair.drive();
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn call_held_by_flow_control_survives_the_drop_of_its_reference() {
    // Found by the session fuzzer and the property tests (on the code before drops
    // were queued behind held sends). The runtime sends on a reference and then drops
    // it (`obj.send(..)` then `drop(obj)`). While the peer's question limit held the
    // send back, the drop released the import at once, so the held call later broke
    // with "reference i1 was released" instead of going out. The drop must wait its
    // turn.
    let (mut pair, obj) = pair_with_a_full_question_window();
    let held_q = 2 + MIN_QUESTIONS as u64;
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "late", no_args(), held_q));
    // A one-way send passing the same reference home, then the runtime's drop.
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "home",
        OutPayload {
            shape: None,
            data: data(&()),
            caps: vec![OutCap::Import(obj)],
        },
    ));
    pair.a.session.drop_import(obj);
    pair.drive();
    assert_eq!(pair.a.take_events(), []);
    assert_eq!(
        pair.a.take_sent(),
        [],
        "the release must not overtake the sends"
    );
    assert_eq!(pair.a.session.stats().held, 3);

    b_answers(&mut pair, 2..3);
    assert_eq!(
        pair.b.take_events(),
        [
            delivered(B_OBJ, "late", in_data(data(&())), Some(held_q)),
            delivered(
                B_OBJ,
                "home",
                InPayload {
                    data: data(&()),
                    caps: vec![InCap::Local(B_OBJ)]
                },
                None
            ),
        ]
    );
    // The release followed the sends, with the count B gave.
    let sent = pair.a.take_sent();
    assert_eq!(
        sent.last(),
        Some(&Message::Release {
            export: obj.0,
            count: 1
        }),
        "{sent:?}"
    );
    assert_eq!(pair.a.session.stats().held, 0);
    b_answers(&mut pair, 3..held_q + 1);
    let returns = pair.a.take_events();
    assert_eq!(returns.len(), MIN_QUESTIONS + 1, "{returns:?}");
    assert!(
        returns
            .iter()
            .all(|e| matches!(e, Seen::Return { result: Ok(_), .. })),
        "{returns:?}"
    );
    assert_tables!(pair.a);
    assert_tables!(pair.b);
}

#[test]
fn pipelined_call_held_by_flow_control_survives_the_drop_of_its_promise() {
    // Found by the session fuzzer: the same for a pipelined reference. The promise's
    // question resolved and its last pipelined handle was dropped while a call on it
    // was held, so the question was forgotten and the call broke with "promise q was
    // released".
    let (mut pair, _) = pair_with_a_full_question_window();
    let boot = 2 + MIN_QUESTIONS as u64;
    let held_q = boot + 1;
    pair.a
        .session
        .bootstrap(QuestionId(boot), swiss(1), None, 1);
    pair.a.session.send(ask(
        LocalTarget::Answer(QuestionId(boot)),
        "late",
        no_args(),
        held_q,
    ));
    pair.a.session.drop_question_ref(QuestionId(boot));
    pair.drive();
    assert_eq!(pair.a.session.stats().held, 3);

    // Room for the bootstrap, then for the call.
    b_answers(&mut pair, 2..3);
    assert_eq!(pair.b.serve_bootstraps(), [AnswerId(boot)]);
    pair.drive();
    b_answers(&mut pair, 3..4);
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "late", in_data(data(&())), Some(held_q))]
    );
    assert_eq!(pair.a.session.stats().held, 0);
    b_answers(&mut pair, 4..boot);
    b_answers(&mut pair, held_q..held_q + 1);
    let events = pair.a.take_events();
    assert!(
        events
            .iter()
            .all(|e| matches!(e, Seen::Return { result: Ok(_), .. })),
        "{events:?}"
    );
    // Everything A held on the bootstrap's result went with the dropped promise.
    let (a, b) = pair.stats();
    assert_eq!((a.questions, a.held, b.answers), (0, 0, 0));
    assert_eq!(
        (a.imports, b.exports),
        (1, 1),
        "only the first bootstrap's import"
    );
}

// ---- stack depth: chains as long as a peer likes ----

/// Runs `f` on a thread with a 256 KiB stack, as the stack-depth tests do.
fn on_a_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn long_chain_of_calls_pipelined_on_a_broken_answer_does_not_overflow_the_stack() {
    // Found while writing the hostile-peer tests. A peer pipelines a call on a pending
    // answer, another on that call's answer, and so on. When the first answer breaks
    // (or resolves to data), each call in the chain breaks in turn; that was a
    // recursion as deep as the chain, and a chain of the default 1,024 questions
    // overflowed a 2 MiB thread stack in a debug build (tokio's worker threads have
    // 2 MiB), aborting the whole process. Run it on a small stack to keep it honest.
    let chain = 20_000u64;
    let done = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let limits = Limits {
                max_inbound_questions: chain as usize + 1,
                ..Limits::default()
            };
            let mut s = new_session(limits);
            s.handle_message(Message::Hello(Hello {
                max_frame: 1 << 20,
                max_questions: 1024,
                ..announce(&Limits::default())
            }));
            s.handle_message(Message::Bootstrap {
                question: 1,
                swiss: swiss(1),
            });
            for q in 2..=chain {
                s.handle_message(Message::Deliver {
                    quiet: false,
                    target: Target::Answer(q - 1),
                    method: "next".into(),
                    payload: Payload {
                        data: data(&()),
                        caps: Vec::new(),
                    },
                    question: Some(q),
                });
            }
            assert!(!s.is_closed());
            drain(&mut s);
            s.answer(AnswerId(1), Ok(OutPayload::data(data(&"not an object"))));
            let (sent, events) = drain(&mut s);
            assert_eq!(events, []);
            // Every call broke, in chain order, with not_an_object.
            assert_eq!(sent.len(), chain as usize);
            for (q, msg) in (1..).zip(&sent) {
                match msg {
                    Message::Return {
                        question,
                        result: ReturnResult::Ok(_),
                    } if q == 1 => assert_eq!(*question, 1),
                    Message::Return {
                        question,
                        result: ReturnResult::Err(e),
                    } => {
                        assert_eq!(*question, q);
                        assert_eq!(e.kind, "not_an_object");
                    }
                    other => panic!("{other:?}"),
                }
            }
            s.stats()
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(done.answers, chain as usize);
}

/// A chain of deferred settlements the length of a peer's patience: promise 1 (held by
/// question 1) settled to promise 2, 2 to 3, and so on to `len`, none held by the
/// runtime; with `cycle`, the last settles back to 1.
fn session_with_a_chain_of_deferred_settlements(len: u64, cycle: bool) -> S {
    let mut s = session_holding_unheld_promises(1);
    for p in 1..len {
        resolve_to_promise(&mut s, p, p + 1);
    }
    if cycle {
        resolve_to_promise(&mut s, len, 1);
    }
    assert_eq!(s.stats().imports, len as usize);
    s
}

const CHAIN: u64 = 20_000;

#[test]
fn long_chain_of_deferred_settlements_released_from_its_head_does_not_overflow_the_stack() {
    // Found while fixing the cycle leak. Releasing an import drops the handles of its
    // unreported settlement, which may release the next import, and so on: that was a
    // recursion as deep as the chain, and a peer's chain of some 60,000 settlements
    // overflowed a 2 MiB stack in a debug build.
    let (sent, stats) = on_a_small_stack(|| {
        let mut s = session_with_a_chain_of_deferred_settlements(CHAIN, false);
        s.drop_question_ref(QuestionId(1));
        let (sent, _) = drain(&mut s);
        (sent, s.stats())
    });
    assert_tables!(stats);
    let expected: Vec<Message> = (1..=CHAIN)
        .map(|p| Message::Release {
            export: p,
            count: 1,
        })
        .collect();
    assert!(sent == expected, "not released in chain order");
}

#[test]
fn long_chain_of_deferred_settlements_reported_at_once_does_not_overflow_the_stack() {
    // The same for reporting: when the runtime is given promise 1, its settlement
    // follows, which hands it promise 2, whose settlement follows, and so on. That was
    // a recursion as deep as the chain too.
    let events = on_a_small_stack(|| {
        let mut s = session_with_a_chain_of_deferred_settlements(CHAIN, false);
        s.handle_message(Message::Bootstrap {
            question: 1,
            swiss: swiss(1),
        });
        drain(&mut s);
        s.answer(AnswerId(1), Ok(OutPayload::single_cap(OutCap::Local(7))));
        drain(&mut s);
        s.handle_message(Message::Deliver {
            quiet: false,
            target: Target::Export(1),
            method: "take".into(),
            payload: wire_single(CapDescriptor::SenderPromise(1)),
            question: None,
        });
        drain(&mut s).1
    });
    assert_eq!(events.len(), CHAIN as usize);
    assert_eq!(
        events[0],
        delivered(7, "take", in_single(InCap::Promise(ImportId(1))), None)
    );
    for (p, event) in (1..).zip(&events[1..]) {
        assert_eq!(
            *event,
            Seen::Resolved {
                import: ImportId(p),
                result: Ok(in_single(InCap::Promise(ImportId(p + 1)))),
            }
        );
    }
}

#[test]
fn long_cycle_of_deferred_settlements_is_collected_without_overflowing_the_stack() {
    let (sent, stats) = on_a_small_stack(|| {
        let mut s = session_with_a_chain_of_deferred_settlements(CHAIN, true);
        s.drop_question_ref(QuestionId(1));
        let (sent, _) = drain(&mut s);
        (sent, s.stats())
    });
    assert_tables!(stats);
    // Promise 1 came twice (its return and the last settlement), the others once.
    let expected: Vec<(u64, u64)> = (1..=CHAIN).map(|p| (p, 1 + u64::from(p == 1))).collect();
    assert!(releases(&sent) == expected, "{} releases", sent.len());
}
