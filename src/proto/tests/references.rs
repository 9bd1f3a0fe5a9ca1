//! References: export ids reused for the same object, reference counts carried by
//! `release`, references passed in arguments, references coming home as the local
//! object, and an answer that resolves to the asker's own reference (calls on it go
//! back to the asker, in order).
//!
//! How references are let go of (drops, releases, the cycle collector) is in `gc`.

use super::*;

#[test]
fn export_reuse_shares_the_id_and_release_carries_the_count() {
    let mut pair = Pair::new();
    let first = pair.a_imports_b_obj(1);
    let second = pair.a_imports_b_obj(2);
    assert_eq!((first, second), (ImportId(1), ImportId(1)));
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
    pair.a.session.drop_import(first);
    pair.drive();
    assert_eq!(pair.a.take_sent(), []);
    pair.a.session.drop_import(second);
    // Still exported until the release arrives.
    assert_tables!(pair.b, exports: 1);
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Release {
            export: 1,
            count: 2
        }]
    );
    assert_tables!(pair.a);
    assert_tables!(pair.b);
    // A released export's id is not reused.
    assert_eq!(pair.a_imports_b_obj(3), ImportId(2));
}

#[test]
fn release_races_with_a_new_copy_of_the_same_export() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "me", no_args(), 2));
    pair.drive();
    pair.b.take_events();
    // A drops its import; B sends the object again before A's release (count 1)
    // arrives, so B's refcount goes 1 → 2 → 1 and A imports it afresh.
    pair.a.session.drop_import(obj);
    assert_tables!(pair.a, questions: 1);
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Local(B_OBJ))),
    );
    pair.drive();
    assert_eq!(
        pair.a.take_sent()[1..],
        [
            Message::Release {
                export: 1,
                count: 1
            },
            Message::Finish { question: 2 },
        ]
    );
    assert_eq!(
        pair.a.take_events(),
        [returned(2, Ok(in_single(InCap::Import(ImportId(1)))))]
    );
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
    pair.a.session.drop_import(ImportId(1));
    pair.drive();
    assert_tables!(pair.a);
    assert_tables!(pair.b);
}

#[test]
fn references_in_arguments_are_exported_and_released() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "subscribe",
        OutPayload {
            shape: None,
            data: data(&(1u8, 2u8)),
            caps: vec![OutCap::Local(A_OBJ), OutCap::Local(201)],
        },
    ));
    pair.drive();
    let Message::Deliver { payload, .. } = &pair.a.take_sent()[0] else {
        panic!()
    };
    assert_eq!(
        payload.caps,
        [
            CapDescriptor::SenderHosted(1),
            CapDescriptor::SenderHosted(2)
        ]
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(
            B_OBJ,
            "subscribe",
            InPayload {
                data: data(&(1u8, 2u8)),
                caps: vec![InCap::Import(ImportId(1)), InCap::Import(ImportId(2))]
            },
            None
        )]
    );
    assert_tables!(pair.a, imports: 1, exports: 2);
    assert_tables!(pair.b, imports: 2, exports: 1);
    pair.b.session.drop_import(ImportId(2));
    pair.b.session.drop_import(ImportId(1));
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [
            Message::Release {
                export: 2,
                count: 1
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
fn reference_coming_home_is_the_local_object() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(ask(
        LocalTarget::Import(obj),
        "echo",
        OutPayload::single_cap(OutCap::Local(A_OBJ)),
        2,
    ));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [delivered(
            B_OBJ,
            "echo",
            in_single(InCap::Import(ImportId(1))),
            Some(2)
        )]
    );
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Import(ImportId(1)))),
    );
    pair.b.session.drop_import(ImportId(1));
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [
            Message::Return {
                question: 2,
                result: ReturnResult::Ok(wire_single(CapDescriptor::ReceiverHosted(1)))
            },
            Message::Release {
                export: 1,
                count: 1
            },
        ]
    );
    assert_eq!(
        pair.a.take_events(),
        [returned(2, Ok(in_single(InCap::Local(A_OBJ))))]
    );
    // A holds no import for its own object, and the export went with the release.
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

// ---- between peers: an answer resolved to the asker's own object ----

/// B's runtime forwarding what the session hands it for one of A's references (an
/// answer of B's resolved to it): each call is sent back through that import, in
/// order, and the delivery's handle dropped. A call that wants an answer is asked as
/// B's question `*next_q`, with the answer id as resolver. Returns B's other events.
fn forward_to_a(pair: &mut Pair, next_q: &mut u64) -> Vec<Seen> {
    let mut rest = Vec::new();
    for ev in pair.b.take_all_events() {
        let Seen::Forward {
            target: InCap::Import(i) | InCap::Promise(i),
            method,
            payload,
            answer,
        } = ev
        else {
            rest.push(ev);
            continue;
        };
        assert!(payload.caps.is_empty(), "{payload:?}");
        let args = OutPayload::data(payload.data);
        let call = match answer {
            Some(a) => {
                *next_q += 1;
                Call {
                    resolver: Some(u32::try_from(a.0).unwrap()),
                    ..ask(LocalTarget::Import(i), &method, args, *next_q)
                }
            }
            None => tell(LocalTarget::Import(i), &method, args),
        };
        pair.b.session.send(call);
        pair.b.session.drop_import(i);
    }
    rest
}

#[test]
fn return_of_own_object_forwards_through_the_answer_and_defers_finish() {
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
    let answer = LocalTarget::Answer(QuestionId(2));
    pair.a
        .session
        .send(tell(answer, "before", OutPayload::data(data(&1u8))));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [
            Message::Deliver {
                quiet: false,
                target: Target::Export(1),
                method: "echo".to_owned(),
                payload: wire_single(CapDescriptor::SenderHosted(1)),
                question: Some(2),
            },
            Message::Deliver {
                quiet: false,
                target: Target::Answer(2),
                method: "before".to_owned(),
                payload: Payload {
                    data: data(&1u8),
                    caps: vec![]
                },
                question: None,
            },
        ]
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(
            B_OBJ,
            "echo",
            in_single(InCap::Import(ImportId(1))),
            Some(2)
        )]
    );
    assert_tables!(pair.a, questions: 1, imports: 1, exports: 1);
    assert_tables!(pair.b, answers: 1, imports: 1, exports: 1);

    // B answers with the reference A gave it, and lets go of its own handle on it (as a
    // runtime does once the method returned). The queued call is handed to B's
    // runtime to forward to A.
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Import(ImportId(1)))),
    );
    pair.b.session.drop_import(ImportId(1));
    pair.b.collect_events();
    assert_eq!(
        pair.b.events,
        [Seen::Forward {
            target: InCap::Import(ImportId(1)),
            method: "before".to_owned(),
            payload: in_data(data(&1u8)),
            answer: None,
        }]
    );
    let mut b_q = 0;
    assert_eq!(forward_to_a(&mut pair, &mut b_q), []);
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [
            Message::Return {
                question: 2,
                result: ReturnResult::Ok(wire_single(CapDescriptor::ReceiverHosted(1)))
            },
            Message::Deliver {
                quiet: false,
                target: Target::Export(1),
                method: "before".to_owned(),
                payload: Payload {
                    data: data(&1u8),
                    caps: vec![]
                },
                question: None,
            },
        ]
    );
    assert_eq!(
        pair.a.take_events(),
        [
            returned(2, Ok(in_single(InCap::Local(A_OBJ)))),
            delivered(A_OBJ, "before", in_data(data(&1u8)), None),
        ]
    );
    // No finish: A still has a pipelined handle, and its sends keep going to B.
    assert_eq!(pair.a.take_sent(), []);

    pair.a
        .session
        .send(ask(answer, "after", OutPayload::data(data(&2u8)), 3));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Deliver {
            quiet: false,
            target: Target::Answer(2),
            method: "after".to_owned(),
            payload: Payload {
                data: data(&2u8),
                caps: vec![]
            },
            question: Some(3),
        }]
    );
    assert_eq!(forward_to_a(&mut pair, &mut b_q), []);
    pair.drive();
    assert_eq!(
        pair.a.take_events(),
        [delivered(A_OBJ, "after", in_data(data(&2u8)), Some(1))]
    );
    pair.a
        .session
        .answer(AnswerId(1), Ok(OutPayload::data(data(&5u8))));
    pair.drive();
    assert_eq!(pair.b.take_events(), [returned(3, Ok(in_data(data(&5u8))))]);
    pair.b
        .session
        .answer(AnswerId(3), Ok(OutPayload::data(data(&5u8))));
    pair.drive();
    assert_eq!(pair.a.take_events(), [returned(3, Ok(in_data(data(&5u8))))]);
    assert_tables!(pair.a, questions: 1, imports: 1, exports: 1);
    assert_tables!(pair.b, answers: 1, imports: 1, exports: 1);
    pair.a.take_sent();
    pair.b.take_sent();

    // The last pipelined handle goes: now the finish, and B frees the answer and the
    // import it held.
    pair.a.session.drop_question_ref(QuestionId(2));
    pair.drive();
    assert_eq!(pair.a.take_sent(), [Message::Finish { question: 2 }]);
    assert_eq!(
        pair.b.take_sent(),
        [Message::Release {
            export: 1,
            count: 1
        }]
    );
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
    assert_eq!(
        (pair.a.take_events(), pair.b.take_events()),
        (vec![], vec![])
    );
}

/// One step of [`own_object_race`].
#[derive(Debug, Clone, Copy)]
enum Race {
    /// A sends a one-way call with this number on the answer.
    Send(u8),
    /// Everything A has queued reaches B.
    PumpA,
    /// Everything B has queued reaches A.
    PumpB,
    /// B answers with A's own object (and drops its handle on it).
    Answer,
}

/// A pipelines one-way calls on an answer that B resolves to A's own object, the
/// frames interleaving as `steps` say; B's runtime forwards what it is handed at once.
/// Every call reaches A's object, in the order sent.
fn own_object_race(steps: &[Race]) {
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
    pair.pump(A);
    assert_eq!(pair.b.take_events().len(), 1);
    pair.a.take_sent();
    let mut sent = Vec::new();
    let mut b_q = 0;
    for &step in steps {
        match step {
            Race::Send(n) => {
                pair.a.session.send(tell(
                    LocalTarget::Answer(QuestionId(2)),
                    "m",
                    OutPayload::data(data(&n)),
                ));
                sent.push(n);
            }
            Race::PumpA => pair.pump(A),
            Race::PumpB => pair.pump(B),
            Race::Answer => {
                pair.b.session.answer(
                    AnswerId(2),
                    Ok(OutPayload::single_cap(OutCap::Import(ImportId(1)))),
                );
                pair.b.session.drop_import(ImportId(1));
            }
        }
        assert_eq!(forward_to_a(&mut pair, &mut b_q), [], "{steps:?}");
    }
    pair.drive();
    assert_eq!(forward_to_a(&mut pair, &mut b_q), [], "{steps:?}");
    pair.drive();
    let mut events = pair.a.take_events();
    assert_eq!(
        events.first(),
        Some(&returned(2, Ok(in_single(InCap::Local(A_OBJ))))),
        "{steps:?}"
    );
    events.remove(0);
    assert_eq!(
        events,
        sent.iter()
            .map(|n| delivered(A_OBJ, "m", in_data(data(n)), None))
            .collect::<Vec<_>>(),
        "{steps:?}"
    );
    // Every call went through the answer; the finish waits for the handle.
    assert!(
        pair.a.take_sent().iter().all(|m| match m {
            Message::Deliver { target, .. } => *target == Target::Answer(2),
            _ => !matches!(m, Message::Finish { question: 2 }),
        }),
        "{steps:?}"
    );
    pair.a.session.drop_question_ref(QuestionId(2));
    pair.drive();
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn pipelined_calls_crossing_a_return_of_own_object_stay_in_order() {
    use Race::{Answer, PumpA, PumpB, Send};
    // m1 waits on the answer; m2 is sent before the return arrives and reaches B after
    // the answer; m3 is sent after A has the return.
    own_object_race(&[Send(1), PumpA, Answer, Send(2), PumpB, Send(3), PumpA]);
    // The return reaches A before m1 reaches B; m2 follows the return.
    own_object_race(&[Answer, Send(1), PumpB, Send(2), PumpA]);
    // m1 reaches B (and is forwarded) before the return reaches A, while m2 is on its
    // way; m3 is sent when the return and the forwarded m1 are in.
    own_object_race(&[
        Answer,
        Send(1),
        PumpA,
        Send(2),
        PumpB,
        Send(3),
        PumpA,
        PumpB,
    ]);
}
