//! Protocol violations: each aborts the session with one `abort` naming the offence,
//! breaks the victim's pending questions with `disconnected`, and empties its tables
//! (checked by `expect_violation`).
//!
//! Violations of the handshake are in `handshake`; what a well-behaved peer does to stay
//! within the limits is in `limits`.

use super::*;

#[test]
fn deliver_to_an_unknown_export_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.b.session.handle_message(Message::Deliver {
        quiet: false,
        target: Target::Export(42),
        method: "x".to_owned(),
        payload: Payload::default(),
        question: Some(1),
    });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::UnknownExport(ExportId(42))),
        []
    );
}

#[test]
fn deliver_to_an_unknown_answer_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.b.session.handle_message(Message::Deliver {
        quiet: false,
        target: Target::Answer(7),
        method: "x".to_owned(),
        payload: Payload::default(),
        question: None,
    });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::UnknownAnswer(AnswerId(7))),
        []
    );
}

#[test]
fn unknown_receiver_hosted_descriptor_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    // A imports B's object (B export 1), then names a B export that does not exist.
    pair.a_imports_b_obj(1);
    pair.b.session.handle_message(Message::Deliver {
        quiet: false,
        target: Target::Export(1),
        method: "x".to_owned(),
        payload: wire_single(CapDescriptor::ReceiverHosted(5)),
        question: None,
    });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::UnknownExport(ExportId(5))),
        []
    );
}

#[test]
fn return_for_a_question_never_asked_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.b.session.handle_message(Message::Return {
        question: 5,
        result: ReturnResult::Ok(Payload::default()),
    });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::UnknownQuestion(QuestionId(5))),
        []
    );
}

#[test]
fn duplicate_return_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    assert_eq!(
        pair.bootstrap(B, 1, 2, 0),
        returned(1, Ok(in_single(InCap::Import(ImportId(1)))))
    );
    let sent = pair.a.take_sent();
    let again = sent.last().unwrap().clone();
    assert!(matches!(again, Message::Return { question: 1, .. }));
    pair.b.session.handle_message(again);
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::UnknownQuestion(QuestionId(1))),
        []
    );
}

#[test]
fn duplicate_question_id_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    let obj = pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "slow", no_args(), 3));
    pair.drive();
    pair.b.take_events();
    pair.b.session.handle_message(Message::Deliver {
        quiet: false,
        target: Target::Export(1),
        method: "again".to_owned(),
        payload: Payload::default(),
        question: Some(3),
    });
    pair.drive();
    // A's own pending question 3 breaks when B's abort arrives.
    let text = Violation::DuplicateQuestion(AnswerId(3)).to_string();
    assert_eq!(
        expect_violation(&mut pair, Violation::DuplicateQuestion(AnswerId(3))),
        [returned(
            3,
            Err(Broken::disconnected(CloseReason::PeerAborted(text)))
        )]
    );
}

#[test]
fn duplicate_bootstrap_question_id_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.a
        .session
        .bootstrap(QuestionId(4), swiss(1), Some(4), 0);
    pair.drive();
    pair.b.take_events();
    pair.b.session.handle_message(Message::Bootstrap {
        question: 4,
        swiss: swiss(1),
    });
    pair.drive();
    let text = Violation::DuplicateQuestion(AnswerId(4)).to_string();
    assert_eq!(
        expect_violation(&mut pair, Violation::DuplicateQuestion(AnswerId(4))),
        [returned(
            4,
            Err(Broken::disconnected(CloseReason::PeerAborted(text)))
        )]
    );
}

#[test]
fn finish_for_an_unknown_answer_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.b
        .session
        .handle_message(Message::Finish { question: 77 });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::UnknownAnswer(AnswerId(77))),
        []
    );
}

#[test]
fn release_of_an_unknown_export_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.b.session.handle_message(Message::Release {
        export: 5,
        count: 1,
    });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::UnknownExport(ExportId(5))),
        []
    );
}

#[test]
fn release_with_count_zero_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.a_imports_b_obj(1);
    pair.b.session.handle_message(Message::Release {
        export: 1,
        count: 0,
    });
    pair.drive();
    let v = Violation::BadRelease {
        export: ExportId(1),
        count: 0,
        held: 1,
    };
    assert_eq!(expect_violation(&mut pair, v), []);
}

#[test]
fn release_of_more_than_held_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.a_imports_b_obj(1);
    pair.a_imports_b_obj(2);
    pair.b.session.handle_message(Message::Release {
        export: 1,
        count: 3,
    });
    pair.drive();
    let v = Violation::BadRelease {
        export: ExportId(1),
        count: 3,
        held: 2,
    };
    assert_eq!(
        v.to_string(),
        "release of export e1 with count 3, but the peer holds 2"
    );
    assert_eq!(expect_violation(&mut pair, v), []);
}

#[test]
fn promise_resolve_twice_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "take",
        OutPayload::single_cap(OutCap::Promise(A_OBJ)),
    ));
    pair.a
        .session
        .resolve_export(&A_OBJ, Ok(OutPayload::data(data(&1u8))));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [
            delivered(B_OBJ, "take", in_single(InCap::Promise(ImportId(1))), None),
            Seen::Resolved {
                import: ImportId(1),
                result: Ok(in_data(data(&1u8)))
            },
        ]
    );
    // A's session never sends a second resolve; a peer that does is aborted.
    pair.b.session.handle_message(Message::Resolve {
        export: 1,
        result: ReturnResult::Ok(Payload {
            data: data(&2u8),
            caps: vec![],
        }),
    });
    pair.drive();
    let v = Violation::BadResolve(ImportId(1));
    assert_eq!(
        v.to_string(),
        "resolve of i1, which is not an unresolved promise"
    );
    assert_eq!(expect_violation(&mut pair, v), []);
}

#[test]
fn resolve_of_an_import_that_is_not_a_promise_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "take",
        OutPayload::single_cap(OutCap::Local(A_OBJ)),
    ));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [delivered(
            B_OBJ,
            "take",
            in_single(InCap::Import(ImportId(1))),
            None
        )]
    );
    pair.b.session.handle_message(Message::Resolve {
        export: 1,
        result: ReturnResult::Err(WireBroken {
            kind: "failed".to_owned(),
            message: "x".to_owned(),
            data: None,
        }),
    });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::BadResolve(ImportId(1))),
        []
    );
}

// ---- past the victim's limits ----

#[test]
fn too_many_inbound_questions_is_a_violation() {
    let lb = Limits {
        max_inbound_questions: MIN_QUESTIONS,
        ..Limits::default()
    };
    let mut pair = Pair::victim(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let n = MIN_QUESTIONS as u64;
    for q in 2..2 + n {
        pair.a
            .session
            .send(ask(LocalTarget::Import(obj), "wait", no_args(), q));
    }
    pair.drive();
    assert_eq!(pair.b.take_events().len(), MIN_QUESTIONS);
    // A well-behaved asker never passes the limit: it holds the next question back.
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "held", no_args(), 2 + n));
    pair.drive();
    assert_eq!(pair.b.take_events(), []);
    assert_eq!(pair.a.session.stats().held, 1);
    // A peer that ignores the limit is aborted.
    pair.b.session.handle_message(Message::Deliver {
        quiet: false,
        target: Target::Export(obj.0),
        method: "one_more".into(),
        payload: Payload {
            data: data(&()),
            caps: vec![],
        },
        question: Some(10_000),
    });
    pair.drive();
    let v = Violation::TooManyQuestions {
        limit: MIN_QUESTIONS,
    };
    let broken = Broken::disconnected(CloseReason::PeerAborted(v.to_string()));
    let mut a_events = expect_violation(&mut pair, v);
    a_events.sort_by_key(|e| match e {
        Seen::Return { resolver, .. } => *resolver,
        _ => 0,
    });
    assert_eq!(
        a_events,
        (2..3 + n as u32)
            .map(|r| returned(r, Err(broken.clone())))
            .collect::<Vec<_>>()
    );
}

#[test]
fn too_many_messages_queued_on_one_promise_is_a_violation() {
    let lb = Limits {
        max_queued_per_promise: MIN_QUEUED,
        ..Limits::default()
    };
    let mut pair = Pair::victim(Limits::default(), lb);
    pair.a
        .session
        .bootstrap(QuestionId(1), swiss(1), Some(1), 1);
    for _ in 0..MIN_QUEUED {
        pair.a.session.send(tell(
            LocalTarget::Answer(QuestionId(1)),
            "queued",
            no_args(),
        ));
    }
    pair.drive();
    assert_eq!(pair.b.take_events().len(), 1);
    assert!(!pair.b.session.is_closed());
    // A well-behaved sender holds the next one back until the answer's `return`.
    pair.a
        .session
        .send(tell(LocalTarget::Answer(QuestionId(1)), "held", no_args()));
    pair.drive();
    assert_eq!(pair.a.session.stats().held, 1);
    // A peer that ignores the announced limit is aborted.
    pair.b.session.handle_message(Message::Deliver {
        quiet: false,
        target: Target::Answer(1),
        method: "one_more".into(),
        payload: Payload {
            data: data(&()),
            caps: vec![],
        },
        question: None,
    });
    pair.drive();
    let v = Violation::TooManyQueued { limit: MIN_QUEUED };
    let text = v.to_string();
    assert_eq!(
        expect_violation(&mut pair, v),
        [returned(
            1,
            Err(Broken::disconnected(CloseReason::PeerAborted(text)))
        )]
    );
}

#[test]
fn too_many_caps_in_one_message_is_a_violation() {
    let lb = Limits {
        max_caps_per_message: MIN_CAPS,
        ..Limits::default()
    };
    let mut pair = Pair::victim(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    // A well-behaved sender keeps within the announced limit (see `limits.rs`); a peer
    // that ignores it is aborted.
    pair.b.session.handle_message(Message::Deliver {
        quiet: false,
        target: Target::Export(obj.0),
        method: "many".into(),
        payload: Payload {
            data: data(&()),
            caps: (1..=MIN_CAPS as u64 + 1)
                .map(CapDescriptor::SenderHosted)
                .collect(),
        },
        question: None,
    });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::TooManyCaps { limit: MIN_CAPS }),
        []
    );
}

#[test]
fn too_many_caps_in_a_return_is_a_violation() {
    let lb = Limits {
        max_caps_per_message: MIN_CAPS,
        ..Limits::default()
    };
    let mut pair = Pair::victim(Limits::default(), lb);
    // B's pending bootstrap answered, by a peer ignoring the limit, with one reference
    // too many.
    pair.b.session.handle_message(Message::Return {
        question: 900,
        result: ReturnResult::Ok(Payload {
            data: data(&()),
            caps: (1..=MIN_CAPS as u64 + 1)
                .map(CapDescriptor::SenderHosted)
                .collect(),
        }),
    });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::TooManyCaps { limit: MIN_CAPS }),
        []
    );
}

#[test]
fn too_many_caps_in_a_resolve_is_a_violation() {
    let lb = Limits {
        max_caps_per_message: MIN_CAPS,
        ..Limits::default()
    };
    let mut pair = Pair::victim(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "take",
        OutPayload::single_cap(OutCap::Promise(A_OBJ)),
    ));
    pair.drive();
    assert_eq!(pair.b.take_events().len(), 1);
    assert_tables!(pair.b, questions: 1, imports: 1, exports: 1);
    // The promise (A's first export) resolved, by a peer ignoring the limit, with one
    // reference too many.
    pair.b.session.handle_message(Message::Resolve {
        export: 1,
        result: ReturnResult::Ok(Payload {
            data: data(&()),
            caps: (1..=MIN_CAPS as u64 + 1)
                .map(CapDescriptor::SenderHosted)
                .collect(),
        }),
    });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::TooManyCaps { limit: MIN_CAPS }),
        []
    );
}

#[test]
fn too_many_imports_is_a_violation() {
    let lb = Limits {
        max_imports: MIN_IMPORTS,
        ..Limits::default()
    };
    let mut pair = Pair::victim(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let caps = |objs: std::ops::RangeInclusive<u32>| OutPayload {
        shape: None,
        data: data(&()),
        caps: objs.map(OutCap::Local).collect(),
    };
    let last = MIN_IMPORTS as u32;
    pair.a
        .session
        .send(tell(LocalTarget::Import(obj), "all", caps(1..=last)));
    pair.drive();
    assert_eq!(pair.b.take_events().len(), 1);
    assert_tables!(pair.b, questions: 1, imports: MIN_IMPORTS, exports: 1);
    // Sending an already imported reference again does not count.
    pair.a
        .session
        .send(tell(LocalTarget::Import(obj), "again", caps(last..=last)));
    pair.drive();
    assert_eq!(pair.b.take_events().len(), 1);
    // A well-behaved sender does not export one more (see `limits.rs`); a peer that
    // ignores the announced limit is aborted.
    pair.b.session.handle_message(Message::Deliver {
        quiet: false,
        target: Target::Export(obj.0),
        method: "one_more".into(),
        payload: Payload {
            data: data(&()),
            caps: vec![CapDescriptor::SenderHosted(10_000)],
        },
        question: None,
    });
    pair.drive();
    assert_eq!(
        expect_violation(&mut pair, Violation::TooManyImports { limit: MIN_IMPORTS }),
        []
    );
}

// ---- frames that do not decode ----

#[test]
fn garbage_frame_is_a_decode_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    // A lone break byte: not a definite-length CBOR item.
    pair.b.session.handle_frame(&[0xff]);
    pair.drive();
    let v = Violation::Decode(DecodeError::Cbor(ScanError::IndefiniteLength { offset: 0 }));
    assert_eq!(expect_violation(&mut pair, v), []);
}

#[test]
fn empty_frame_is_a_decode_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.b.session.handle_frame(&[]);
    pair.drive();
    let v = Violation::Decode(DecodeError::Cbor(ScanError::Truncated { offset: 0 }));
    assert_eq!(expect_violation(&mut pair, v), []);
}

#[test]
fn well_formed_cbor_that_is_not_a_message_is_a_decode_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    let mut body = HashMap::new();
    body.insert("frobnicate", 1u8);
    let body = data(&body);
    let expected = Message::decode(&body, &CborLimits::default()).unwrap_err();
    assert!(matches!(&expected, DecodeError::Schema(s) if s.starts_with("not a captp message")));
    pair.b.session.handle_frame(&body);
    pair.drive();
    assert_eq!(expect_violation(&mut pair, Violation::Decode(expected)), []);
}

#[test]
fn deeply_nested_frame_is_a_decode_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    // 40 nested one-element arrays around a zero: past the default depth of 32.
    let mut body = vec![0x81; 40];
    body.push(0x00);
    pair.b.session.handle_frame(&body);
    pair.drive();
    let v = Violation::Decode(DecodeError::Cbor(ScanError::TooDeep { max: 32 }));
    assert_eq!(expect_violation(&mut pair, v), []);
}

#[test]
fn oversized_frame_reported_by_the_reader_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    let err = frame::next_frame(&[0xff; 4], 1 << 20).unwrap_err();
    pair.b.session.handle_decode_error(err.clone());
    pair.drive();
    assert_eq!(
        err,
        DecodeError::FrameTooLarge {
            len: u64::from(u32::MAX),
            max: 1 << 20
        }
    );
    assert_eq!(expect_violation(&mut pair, Violation::Decode(err)), []);
}
