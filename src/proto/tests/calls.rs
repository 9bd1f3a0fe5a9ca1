//! Calls on a reference the asker holds: delivery, return, finish, one-way sends,
//! and errors. A finish before the return (cancellation) is in `cancel`.
//!
//! Calls on promises (pipelining) are in `pipelining`; what a peer may not send is in
//! `violations`.

use super::*;

fn basic_call(codec: bool) {
    let mut pair = Pair::build(Limits::default(), Limits::default(), codec);
    let obj = pair.a_imports_b_obj(1);
    let args = data(&("add", 2u32, 3u32));
    pair.a.session.send(ask(
        LocalTarget::Import(obj),
        "add",
        OutPayload::data(args.clone()),
        2,
    ));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Deliver {
            quiet: false,
            target: Target::Export(1),
            method: "add".to_owned(),
            payload: Payload {
                data: args.clone(),
                caps: vec![]
            },
            question: Some(2),
        }]
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "add", in_data(args.clone()), Some(2))]
    );
    assert_tables!(pair.a, questions: 1, imports: 1);
    assert_tables!(pair.b, answers: 1, exports: 1);
    let (_, x, y): (String, u32, u32) = decode(&args);

    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&(x + y)))));
    pair.pump(B);
    // The return arrived; the finish is queued at A but B still holds the answer.
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, answers: 1, exports: 1);
    let events = pair.a.take_events();
    assert_eq!(events, [returned(2, Ok(in_data(data(&5u32))))]);
    let Seen::Return {
        result: Ok(payload),
        ..
    } = &events[0]
    else {
        unreachable!()
    };
    assert_eq!(decode::<u32>(&payload.data), 5);
    pair.drive();
    assert_eq!(pair.a.take_sent(), [Message::Finish { question: 2 }]);
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
    assert_eq!(
        (pair.a.take_events(), pair.b.take_events()),
        (vec![], vec![])
    );
}

#[test]
fn basic_call_returns_data_and_finishes() {
    basic_call(false);
}

#[test]
fn basic_call_through_the_frame_codec() {
    basic_call(true);
}

#[test]
fn send_only_delivers_without_return() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(tell(
        LocalTarget::Import(obj),
        "log",
        OutPayload::data(data("hi")),
    ));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Deliver {
            quiet: false,
            target: Target::Export(1),
            method: "log".to_owned(),
            payload: Payload {
                data: data("hi"),
                caps: vec![]
            },
            question: None,
        }]
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "log", in_data(data("hi")), None)]
    );
    assert_eq!(pair.b.take_sent(), []);
    assert_eq!(pair.a.take_events(), []);
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn remote_error_keeps_kind_and_message() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "withdraw", no_args(), 2));
    pair.drive();
    pair.b.take_events();
    pair.a.take_sent();
    let err = Broken::failed("insufficient funds");
    pair.b.session.answer(AnswerId(2), Err(err.clone()));
    pair.drive();
    assert_eq!(pair.a.take_events(), [returned(2, Err(err))]);
    assert_eq!(
        pair.b.take_sent(),
        [Message::Return {
            question: 2,
            result: ReturnResult::Err(WireBroken {
                kind: "failed".to_owned(),
                message: "insufficient funds".to_owned(),
                data: None
            })
        }]
    );
    assert_eq!(pair.a.take_sent(), [Message::Finish { question: 2 }]);
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn unknown_error_kind_from_a_newer_peer_becomes_other_and_keeps_its_name() {
    let mut pair = Pair::new();
    pair.a
        .session
        .bootstrap(QuestionId(1), swiss(1), Some(1), 0);
    pair.drive();
    pair.b.take_events();
    // B's runtime would never produce this kind; inject it as if from a newer B.
    pair.a.session.handle_message(Message::Return {
        question: 1,
        result: ReturnResult::Err(WireBroken {
            kind: "from_the_future".to_owned(),
            message: "new".to_owned(),
            data: None,
        }),
    });
    let events = pair.a.take_events();
    let [
        Seen::Return {
            resolver: 1,
            result: Err(broken),
        },
    ] = &events[..]
    else {
        panic!("{events:?}");
    };
    assert_eq!(broken.kind(), BrokenKind::Other);
    assert_eq!(broken.kind_name(), "from_the_future");
    assert_eq!(broken.message(), "new");
    // Passed on (a proxy answering with it), it keeps the peer's name.
    assert_eq!(WireBroken::from(broken).kind, "from_the_future");
}

#[test]
fn answering_twice_or_an_unknown_answer_does_nothing() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "get", no_args(), 2));
    pair.drive();
    pair.b.take_events();
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&1u8))));
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&2u8))));
    pair.b
        .session
        .answer(AnswerId(77), Ok(OutPayload::data(data(&3u8))));
    pair.drive();
    assert_eq!(pair.b.take_sent().len(), 1);
    assert_eq!(pair.a.take_events(), [returned(2, Ok(in_data(data(&1u8))))]);
    assert!(!pair.a.session.is_closed() && !pair.b.session.is_closed());
}

#[test]
fn send_to_a_released_import_breaks_locally() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.drop_import(obj);
    pair.drive();
    pair.a.take_sent();
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "get", no_args(), 2));
    assert_eq!(
        pair.a.take_events(),
        [returned(
            2,
            Err(Broken::new(BrokenKind::Other, "reference i1 was released"))
        )]
    );
    assert_eq!(pair.a.session.poll_transmit(), None);
    assert_tables!(pair.a);
    assert_tables!(pair.b);
}
