//! Quiet questions (PROTOCOL.md 9.15): the answerer keeps the result until
//! `want_return`; a `finish` after messages were pipelined on the answer does not cancel
//! it, and the `return` (`null`) then ends it on both sides; a peer speaking version 2
//! never sees one.

use super::*;

/// A quiet call on B's object under question `q`, with one pipelined handle and
/// resolver `q`.
fn quiet(target: LocalTarget, method: &str, q: u64) -> Call<u32, u32> {
    Call {
        quiet: true,
        pipeline_refs: 1,
        ..ask(target, method, no_args(), q)
    }
}

/// A imports B's object, then asks `make` on it quiet as question 2; B is handed the
/// call. Returns A's import.
fn a_asks_make_quietly(pair: &mut Pair) -> ImportId {
    let obj = pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(quiet(LocalTarget::Import(obj), "make", 2));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "make", in_data(data(&())), Some(2))]
    );
    let [Message::Deliver { quiet: true, .. }] = &pair.a.take_sent()[..] else {
        panic!("the call did not go out quiet");
    };
    obj
}

/// A sends `next` (question 3) to the answer of its quiet question 2, then drops its
/// only handle on that answer.
fn a_pipelines_next_and_lets_go(pair: &mut Pair) {
    pair.a.session.send(ask(
        LocalTarget::Answer(QuestionId(2)),
        "next",
        no_args(),
        3,
    ));
    pair.a.session.drop_question_ref(QuestionId(2));
}

#[test]
fn a_quiet_answer_keeps_its_result_until_asked_for() {
    let mut pair = Pair::new();
    a_asks_make_quietly(&mut pair);
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::single_cap(OutCap::Local(50))));
    pair.drive();
    // No `return`: nothing exported, nothing reported, both still count the question.
    assert_eq!(pair.b.take_sent(), []);
    assert_eq!(pair.a.take_events(), []);
    assert_tables!(pair.b, answers: 1, exports: 1);
    assert_tables!(pair.a, questions: 1, imports: 1);
    // Asked for: the kept result goes, exported now.
    pair.a.session.want_return(QuestionId(2));
    pair.a.session.want_return(QuestionId(2));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [
            Message::WantReturn { question: 2 },
            Message::Finish { question: 2 }
        ],
        "asking twice sends one want_return; the finish follows the return"
    );
    let events = pair.a.take_events();
    let [
        Seen::Return {
            resolver: 2,
            result: Ok(p),
        },
    ] = &events[..]
    else {
        panic!("{events:?}");
    };
    assert!(matches!(p.caps[..], [InCap::Import(_)]), "{p:?}");
    assert_tables!(pair.b, exports: 2);
}

#[test]
fn finishing_a_settled_quiet_answer_returns_null_and_frees_it() {
    let mut pair = Pair::new();
    a_asks_make_quietly(&mut pair);
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::single_cap(OutCap::Local(50))));
    pair.drive();
    // A pipelines on the answer, then drops its only handle.
    a_pipelines_next_and_lets_go(&mut pair);
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [delivered(50, "next", in_data(data(&())), Some(3))]
    );
    let sent = pair.b.take_sent();
    assert_eq!(
        sent,
        [Message::Return {
            question: 2,
            result: ReturnResult::Ok(Payload {
                data: Bytes::from_static(&crate::wire::NULL_DATA),
                caps: Vec::new(),
            }),
        }],
        "the quiet question's return carries nothing"
    );
    // Object 50 was never exported; only `next` is still open.
    assert_tables!(pair.b, answers: 1, exports: 1);
    assert_tables!(pair.a, questions: 1, imports: 1);
}

#[test]
fn finishing_a_pending_quiet_answer_something_was_pipelined_on_does_not_cancel_it() {
    let mut pair = Pair::new();
    a_asks_make_quietly(&mut pair);
    a_pipelines_next_and_lets_go(&mut pair);
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [
            Message::Deliver {
                target: Target::Answer(2),
                method: "next".to_owned(),
                payload: Payload {
                    data: data(&()),
                    caps: Vec::new(),
                },
                question: Some(3),
                quiet: false,
            },
            Message::Finish { question: 2 },
        ]
    );
    // No cancel: `next` waits on the answer, which runs on.
    assert_eq!(pair.b.take_events(), []);
    assert_tables!(pair.b, answers: 2, exports: 1);
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::single_cap(OutCap::Local(50))));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [delivered(50, "next", in_data(data(&())), Some(3))]
    );
    // The return (null) went when it settled; both sides stopped counting it.
    assert_tables!(pair.b, answers: 1, exports: 1);
    assert_tables!(pair.a, questions: 1, imports: 1);
    pair.b.session.answer(AnswerId(3), Ok(no_args()));
    pair.drive();
    assert_tables!(pair.b, exports: 1);
    assert_tables!(pair.a, imports: 1);
}

#[test]
fn finishing_a_pending_quiet_answer_nothing_depends_on_cancels_it() {
    let mut pair = Pair::new();
    a_asks_make_quietly(&mut pair);
    pair.a.session.drop_question_ref(QuestionId(2));
    pair.drive();
    assert_eq!(pair.b.take_events(), [Seen::Cancel(AnswerId(2))]);
    assert_tables!(pair.b, exports: 1);
    assert_tables!(pair.a, imports: 1);
}

#[test]
fn want_return_after_finish_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.a_imports_b_obj(1);
    pair.b.session.handle_message(Message::Deliver {
        quiet: true,
        target: Target::Export(1),
        method: "x".to_owned(),
        payload: Payload::default(),
        question: Some(2),
    });
    pair.b.session.handle_message(Message::Deliver {
        quiet: false,
        target: Target::Answer(2),
        method: "y".to_owned(),
        payload: Payload::default(),
        question: None,
    });
    pair.b
        .session
        .handle_message(Message::Finish { question: 2 });
    pair.b.collect_events();
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "x", in_data(Bytes::new()), Some(2))]
    );
    pair.b
        .session
        .handle_message(Message::WantReturn { question: 2 });
    pair.drive();
    // B was handed `x` before the violation; nothing reached A but the abort.
    assert_eq!(
        expect_violation(&mut pair, Violation::WantReturnAfterFinish(AnswerId(2))),
        []
    );
}

#[test]
fn a_version_2_peer_is_never_asked_quietly() {
    let mut s = new_session(Limits::default());
    s.handle_message(Message::Hello(Hello {
        version: 2,
        ..announce(&Limits::default())
    }));
    assert!(s.is_established());
    s.bootstrap(QuestionId(1), swiss(1), Some(1), 1);
    s.send(quiet(LocalTarget::Answer(QuestionId(1)), "make", 2));
    s.want_return(QuestionId(2));
    let (sent, _) = drain(&mut s);
    assert!(
        sent.iter().all(|m| !matches!(
            m,
            Message::Deliver { quiet: true, .. } | Message::WantReturn { .. }
        )),
        "{sent:?}"
    );
    assert!(sent.iter().any(|m| matches!(m, Message::Deliver { .. })));
}
