//! Promise pipelining: calls sent to an answer before it resolves wait at the answerer
//! and go, in E-order, to what it resolved to; calls on a broken or data answer break
//! the same way.
//!
//! Promises that travel as references (`sender_promise`) are in `promises`.

use super::*;

#[test]
fn pipelined_calls_wait_for_the_bootstrap_in_e_order() {
    let mut pair = Pair::new();
    pair.a
        .session
        .bootstrap(QuestionId(1), swiss(1), Some(1), 1);
    let promise = LocalTarget::Answer(QuestionId(1));
    pair.a
        .session
        .send(ask(promise, "first", OutPayload::data(data(&1u8)), 2));
    pair.a
        .session
        .send(ask(promise, "second", OutPayload::data(data(&2u8)), 3));
    pair.a
        .session
        .send(tell(promise, "third", OutPayload::data(data(&3u8))));
    pair.a
        .session
        .send(ask(promise, "fourth", OutPayload::data(data(&4u8)), 4));
    pair.drive();
    let sent = pair.a.take_sent();
    assert_eq!(sent.len(), 5);
    for m in &sent[1..] {
        let Message::Deliver { target, .. } = m else {
            panic!("{m:?}")
        };
        assert_eq!(*target, Target::Answer(1));
    }
    // Queued at B: only the bootstrap is visible; B holds four answers.
    assert_eq!(
        pair.b.take_events(),
        [Seen::Bootstrap {
            answer: AnswerId(1),
            swiss: [1; 32]
        }]
    );
    assert_tables!(pair.a, questions: 4);
    assert_tables!(pair.b, answers: 4);

    pair.b.session.answer(
        AnswerId(1),
        Ok(OutPayload::single_cap(OutCap::Local(B_OBJ))),
    );
    assert_eq!(
        pair.b.take_events(),
        [
            delivered(B_OBJ, "first", in_data(data(&1u8)), Some(2)),
            delivered(B_OBJ, "second", in_data(data(&2u8)), Some(3)),
            delivered(B_OBJ, "third", in_data(data(&3u8)), None),
            delivered(B_OBJ, "fourth", in_data(data(&4u8)), Some(4)),
        ]
    );
    for q in [2u8, 3, 4] {
        pair.b
            .session
            .answer(AnswerId(q.into()), Ok(OutPayload::data(data(&(q * 10)))));
    }
    pair.drive();
    assert_eq!(
        pair.a.take_events(),
        [
            returned(1, Ok(in_single(InCap::Import(ImportId(1))))),
            returned(2, Ok(in_data(data(&20u8)))),
            returned(3, Ok(in_data(data(&30u8)))),
            returned(4, Ok(in_data(data(&40u8)))),
        ]
    );
    // Question 1 stays: one pipelined reference is still held.
    assert_tables!(pair.a, questions: 1, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn pipelined_call_arriving_after_the_answer_is_delivered_at_once() {
    let mut pair = Pair::new();
    pair.a
        .session
        .bootstrap(QuestionId(1), swiss(1), Some(1), 1);
    pair.pump(A);
    pair.b.serve_bootstraps();
    // B's return is still in flight when A pipelines a call on the answer.
    pair.a
        .session
        .send(ask(LocalTarget::Answer(QuestionId(1)), "now", no_args(), 2));
    pair.pump(A);
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "now", in_data(data(&())), Some(2))]
    );
    pair.drive();
    assert_eq!(
        pair.a.take_events(),
        [returned(1, Ok(in_single(InCap::Import(ImportId(1)))))]
    );
    assert_tables!(pair.a, questions: 2, imports: 1);
    assert_tables!(pair.b, answers: 1, exports: 1);
}

#[test]
fn pipelined_calls_on_a_broken_bootstrap_break_the_same_way() {
    let mut pair = Pair::new();
    pair.a
        .session
        .bootstrap(QuestionId(1), swiss(UNKNOWN), Some(1), 2);
    let promise = LocalTarget::Answer(QuestionId(1));
    pair.a.session.send(ask(promise, "one", no_args(), 2));
    pair.a.session.send(ask(promise, "two", no_args(), 3));
    pair.drive();
    pair.b.serve_bootstraps();
    pair.drive();
    let b = Broken::unknown_object();
    assert_eq!(
        pair.a.take_events(),
        [
            returned(1, Err(b.clone())),
            returned(2, Err(b.clone())),
            returned(3, Err(b.clone())),
        ]
    );
    assert_eq!(pair.b.take_events(), []);
    assert_tables!(pair.a, questions: 1);
    assert_tables!(pair.b);

    // The question is kept (two pipelined refs): later sends break at once, locally.
    pair.a.take_sent();
    pair.a.session.send(ask(promise, "three", no_args(), 4));
    pair.a.session.send(Call {
        resolver: Some(5),
        ..tell(promise, "four", no_args())
    });
    assert_eq!(
        pair.a.take_events(),
        [returned(4, Err(b.clone())), returned(5, Err(b))]
    );
    assert_eq!(pair.a.session.poll_transmit(), None);
    pair.a.session.drop_question_ref(QuestionId(1));
    assert_tables!(pair.a, questions: 1);
    pair.a.session.drop_question_ref(QuestionId(1));
    assert_tables!(pair.a);
    assert_tables!(pair.b);
}

#[test]
fn pipelined_send_only_on_a_broken_promise_releases_its_references() {
    let mut pair = Pair::new();
    pair.a
        .session
        .bootstrap(QuestionId(1), swiss(UNKNOWN), Some(1), 1);
    pair.a.session.send(tell(
        LocalTarget::Answer(QuestionId(1)),
        "take",
        OutPayload::single_cap(OutCap::Local(A_OBJ)),
    ));
    pair.drive();
    assert_tables!(pair.a, questions: 1, exports: 1);
    assert_tables!(pair.b, answers: 1, imports: 1);
    pair.b.serve_bootstraps();
    pair.drive();
    assert_eq!(
        pair.b.take_sent()[1..],
        [Message::Release {
            export: 1,
            count: 1
        }]
    );
    pair.a.session.drop_question_ref(QuestionId(1));
    assert_tables!(pair.a);
    assert_tables!(pair.b);
}

#[test]
fn send_to_a_resolved_question_goes_to_the_import() {
    let mut pair = Pair::new();
    let seen = pair.bootstrap(A, 1, 1, 1);
    assert_eq!(seen, returned(1, Ok(in_single(InCap::Import(ImportId(1))))));
    pair.a.take_sent();
    pair.a.session.send(ask(
        LocalTarget::Answer(QuestionId(1)),
        "later",
        no_args(),
        2,
    ));
    pair.drive();
    assert_eq!(
        pair.a.take_sent()[0],
        Message::Deliver {
            quiet: false,
            target: Target::Export(1),
            method: "later".to_owned(),
            payload: Payload {
                data: data(&()),
                caps: vec![]
            },
            question: Some(2),
        }
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "later", in_data(data(&())), Some(2))]
    );
}

#[test]
fn call_on_a_promise_resolved_to_data_breaks_with_not_an_object() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(LocalTarget::Import(obj), "balance", no_args(), 2)
    });
    let promise = LocalTarget::Answer(QuestionId(2));
    // Pipelined before the result: B breaks it.
    pair.a.session.send(ask(promise, "deposit", no_args(), 3));
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "balance", in_data(data(&())), Some(2))]
    );
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&42u32))));
    pair.drive();
    let not_an_object = |m: &str| {
        Broken::new(
            BrokenKind::NotAnObject,
            format!("cannot call {m:?}: the promise resolved to data, not an object"),
        )
    };
    assert_eq!(
        pair.a.take_events(),
        [
            returned(2, Ok(in_data(data(&42u32)))),
            returned(3, Err(not_an_object("deposit"))),
        ]
    );
    // Sent after the result: A breaks it without transmitting.
    pair.a.take_sent();
    pair.a.session.send(ask(promise, "withdraw", no_args(), 4));
    assert_eq!(
        pair.a.take_events(),
        [returned(4, Err(not_an_object("withdraw")))]
    );
    assert_eq!(pair.a.session.poll_transmit(), None);
    assert_tables!(pair.a, questions: 1, imports: 1);
    assert_tables!(pair.b, exports: 1);
}
