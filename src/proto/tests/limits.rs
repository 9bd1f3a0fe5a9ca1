//! Local limits: what the peer would refuse (by the limits it announced in `hello`)
//! breaks here with `too_large` before it is sent, and questions past the peer's
//! question limit, or sends pipelined past its queue limit on one answer, are held back
//! and sent in order as answers come back (flow control).
//!
//! What happens to a peer that passes this side's limits is in `violations`.

use super::*;

#[test]
fn send_larger_than_the_peers_frame_limit_breaks_with_too_large() {
    let lb = Limits {
        max_frame: MIN_FRAME,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    assert_eq!(pair.a.session.peer_max_frame(), MIN_FRAME);
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(
            LocalTarget::Import(obj),
            "upload",
            OutPayload::data(data(&serde_bytes::Bytes::new(&[7; MIN_FRAME]))),
            2,
        )
    });
    let events = pair.a.take_events();
    let [
        Seen::Return {
            resolver: 2,
            result: Err(b),
        },
    ] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(b.kind(), BrokenKind::TooLarge);
    assert_eq!(pair.a.session.poll_transmit(), None);
    // The broken question is kept for its pipelined ref: sends to it break the same way.
    pair.a.session.send(ask(
        LocalTarget::Answer(QuestionId(2)),
        "then",
        no_args(),
        3,
    ));
    assert_eq!(pair.a.take_events(), [returned(3, Err(b.clone()))]);
    pair.a.session.drop_question_ref(QuestionId(2));
    // A small call still goes through.
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "small", no_args(), 4));
    pair.drive();
    assert_eq!(pair.a.take_sent().len(), 1);
    assert_eq!(pair.b.take_events().len(), 1);
    assert_tables!(pair.a, questions: 1, imports: 1);
    assert_tables!(pair.b, answers: 1, exports: 1);
}

#[test]
fn result_larger_than_the_askers_frame_limit_breaks_with_too_large() {
    let la = Limits {
        max_frame: MIN_FRAME,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(la, Limits::default());
    let obj = pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "download", no_args(), 2));
    pair.drive();
    pair.b.take_events();
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::data(data(&serde_bytes::Bytes::new(
            &[7; MIN_FRAME],
        )))),
    );
    pair.drive();
    let events = pair.a.take_events();
    let [
        Seen::Return {
            resolver: 2,
            result: Err(b),
        },
    ] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(b.kind(), BrokenKind::TooLarge);
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn too_many_caps_in_a_local_send_breaks_with_too_large() {
    // The peer's announced limit counts, not this side's own.
    let lb = Limits {
        max_caps_per_message: MIN_CAPS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(ask(
        LocalTarget::Import(obj),
        "many",
        OutPayload {
            shape: None,
            data: data(&()),
            caps: (1..=MIN_CAPS as u32 + 1).map(OutCap::Local).collect(),
        },
        2,
    ));
    let events = pair.a.take_events();
    let [
        Seen::Return {
            resolver: 2,
            result: Err(b),
        },
    ] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(b.kind(), BrokenKind::TooLarge);
    assert!(b.message().contains("the peer's limit of 16"), "{b}");
    assert_eq!(pair.a.session.poll_transmit(), None);
    assert_tables!(pair.a, imports: 1);
}

#[test]
fn introductions_count_their_size_against_the_peers_item_limit() {
    // A `third_party` with four hints is 15 CBOR items, not the 3 of other descriptors:
    // 16 of them pass the least `max_items` a peer may announce, so the send breaks
    // here instead of making the peer abort.
    let lb = Limits {
        max_cbor_items: MIN_ITEMS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let intro = |n: u32| {
        OutCap::ThirdParty(
            n,
            Box::new(Introduction {
                host: [1; 32],
                gift: [2; 32],
                hints: vec!["127.0.0.1:4433".to_owned(); 4],
            }),
        )
    };
    pair.a.session.send(ask(
        LocalTarget::Import(obj),
        "many",
        OutPayload {
            shape: None,
            data: data(&()),
            caps: (1..=16).map(intro).collect(),
        },
        2,
    ));
    let events = pair.a.take_events();
    let [
        Seen::Return {
            resolver: 2,
            result: Err(b),
        },
    ] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(b.kind(), BrokenKind::TooLarge);
    assert!(b.message().contains("240 CBOR items"), "{b}");
    assert_eq!(pair.a.session.poll_transmit(), None);
    // Fifteen fit (225 items and the message around them), and nothing is deposited
    // until they are written: the session reports them once sent.
    pair.a.session.send(ask(
        LocalTarget::Import(obj),
        "fewer",
        OutPayload {
            shape: None,
            data: data(&()),
            caps: (1..=15).map(intro).collect(),
        },
        3,
    ));
    assert!(matches!(
        pair.a.session.poll_transmit(),
        Some(Message::Deliver { ref payload, .. }) if payload.caps.len() == 15
    ));
    assert_eq!(pair.a.session.take_introduced().count(), 15);
}

#[test]
fn result_with_too_many_caps_breaks_with_too_large() {
    // The asker's announced limit counts, not the answerer's own.
    let la = Limits {
        max_caps_per_message: MIN_CAPS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(la, Limits::default());
    let obj = pair.a_imports_b_obj(1);
    let promise = b_answers_with_a_promise(&mut pair, 2, 300);
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(LocalTarget::Import(obj), "many", no_args(), 3)
    });
    pair.drive();
    pair.b.take_events();
    let too_many = OutPayload {
        shape: None,
        data: data(&()),
        caps: (301..=301 + MIN_CAPS as u32).map(OutCap::Local).collect(),
    };
    pair.b.session.answer(AnswerId(3), Ok(too_many.clone()));
    pair.b.session.resolve_export(&300, Ok(too_many));
    pair.drive();
    let events = pair.a.take_events();
    let [
        Seen::Return {
            resolver: 3,
            result: Err(b),
        },
        Seen::Resolved {
            import,
            result: Err(b2),
        },
    ] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(
        (b.kind(), b2.kind(), *import),
        (BrokenKind::TooLarge, BrokenKind::TooLarge, promise)
    );
    // Nothing of the result was exported, and the session goes on.
    assert!(!pair.a.session.is_closed() && !pair.b.session.is_closed());
    assert_tables!(pair.b, exports: 2);
}

#[test]
fn result_past_the_export_limit_breaks_with_too_large() {
    let lb = Limits {
        max_exports: 1,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    pair.b.objects.insert([3; 32], 300);
    pair.a_imports_b_obj(1);
    let seen = pair.bootstrap(A, 2, 3, 0);
    let Seen::Return {
        resolver: 2,
        result: Err(b),
    } = &seen
    else {
        panic!("{seen:?}")
    };
    assert_eq!(b.kind(), BrokenKind::TooLarge);
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn exports_stop_at_the_peers_import_limit() {
    let lb = Limits {
        max_imports: MIN_IMPORTS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    assert_eq!(pair.a.session.peer_limits().max_imports, MIN_IMPORTS);
    let obj = pair.a_imports_b_obj(1);
    let caps = |objs: std::ops::RangeInclusive<u32>| OutPayload {
        shape: None,
        data: data(&()),
        caps: objs.map(OutCap::Local).collect(),
    };
    let last = MIN_IMPORTS as u32;
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "fill", caps(1..=last), 2));
    pair.drive();
    assert_eq!(pair.b.take_events().len(), 1);
    assert_tables!(pair.b, answers: 1, imports: MIN_IMPORTS, exports: 1);
    // One more object would pass the peer's 64 imports: the call breaks here, nothing
    // is exported or sent, and the session goes on.
    pair.a.session.send(ask(
        LocalTarget::Import(obj),
        "more",
        caps(last + 1..=last + 1),
        3,
    ));
    let events = pair.a.take_events();
    let [
        Seen::Return {
            resolver: 3,
            result: Err(b),
        },
    ] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(b.kind(), BrokenKind::TooLarge);
    assert!(
        b.message().contains("the peer's limit of 64 exports"),
        "{b}"
    );
    assert_eq!(pair.a.session.poll_transmit(), None);
    assert_tables!(pair.a, questions: 1, imports: 1, exports: MIN_IMPORTS);
    assert!(!pair.b.session.is_closed());
}

#[test]
fn data_over_the_peers_cbor_limits_breaks_with_too_large() {
    let lb = Limits {
        max_cbor_depth: MIN_DEPTH,
        max_cbor_items: MIN_ITEMS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    // Arrays nested `depth` deep around a 0; an array of `items - 1` zeros.
    let nested = |depth: usize| Bytes::from([vec![0x81; depth], vec![0x00]].concat());
    let zeros = |items: usize| data(&vec![0u8; items - 1]);
    let cases = [
        (nested(MIN_DEPTH), true),
        (nested(MIN_DEPTH + 1), false),
        (zeros(MIN_ITEMS), true),
        (zeros(MIN_ITEMS + 1), false),
    ];
    for (n, (bytes, fits)) in cases.into_iter().enumerate() {
        let q = 2 + n as u64;
        pair.a.session.send(ask(
            LocalTarget::Import(obj),
            "take",
            OutPayload::data(bytes),
            q,
        ));
        pair.drive();
        let delivered = pair.b.take_events().len();
        let events = pair.a.take_events();
        if fits {
            assert_eq!((delivered, events.len()), (1, 0), "case {n}: {events:?}");
            pair.b
                .session
                .answer(AnswerId(q), Ok(OutPayload::data(data(&()))));
            pair.drive();
            pair.a.take_events();
        } else {
            assert_eq!(delivered, 0, "case {n}");
            let [Seen::Return { result: Err(b), .. }] = &events[..] else {
                panic!("case {n}: {events:?}")
            };
            assert_eq!(b.kind(), BrokenKind::TooLarge, "case {n}");
            assert!(b.message().contains("the peer's CBOR limits"), "{b}");
        }
    }
    assert!(!pair.b.session.is_closed());
    assert_tables!(pair.a, imports: 1);
}

#[test]
fn before_hello_only_what_fits_the_minimums_goes_out() {
    let mut s = new_session(Limits::default());
    s.poll_transmit();
    s.bootstrap(QuestionId(1), swiss(1), Some(1), 1);
    // Until the peer's hello, it may accept only MIN_QUEUED messages on one answer,
    // MIN_CAPS references in a message, and data of MIN_DEPTH levels.
    for _ in 0..MIN_QUEUED {
        s.send(tell(LocalTarget::Answer(QuestionId(1)), "fits", no_args()));
    }
    assert_eq!(s.stats().held, 0);
    s.send(tell(
        LocalTarget::Answer(QuestionId(1)),
        "queued",
        no_args(),
    ));
    assert_eq!(s.stats().held, 1);
    let mut s = new_session(Limits::default());
    s.poll_transmit();
    s.bootstrap(QuestionId(1), swiss(1), Some(1), 1);
    s.send(tell(
        LocalTarget::Answer(QuestionId(1)),
        "many",
        OutPayload {
            shape: None,
            data: data(&()),
            caps: (1..=MIN_CAPS as u32 + 1).map(OutCap::Local).collect(),
        },
    ));
    s.send(tell(
        LocalTarget::Answer(QuestionId(1)),
        "deep",
        OutPayload::data([vec![0x81; MIN_DEPTH + 1], vec![0x00]].concat()),
    ));
    assert_eq!(s.stats().held, 2);
    let sent: Vec<_> = std::iter::from_fn(|| s.poll_transmit()).collect();
    assert!(matches!(&sent[..], [Message::Bootstrap { .. }]), "{sent:?}");
    // The hello (with the default limits) lets both out, in order.
    s.handle_message(Message::Hello(announce(&Limits::default())));
    assert_eq!(s.stats().held, 0);
    let methods: Vec<_> = std::iter::from_fn(|| s.poll_transmit())
        .map(|m| match m {
            Message::Deliver { method, .. } => method,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(methods, ["many", "deep"]);
}

// ---- flow control: the peer's queue limit on one answer ----

#[test]
fn pipelining_past_the_peers_queue_limit_is_held_and_ends_in_order() {
    // The peer accepts only the protocol minimum of messages queued on one answer;
    // this side pipelines 10,000 one-way sends on the answer of a call the peer answers
    // later. Before the limit was honoured, message 17 aborted the session.
    let lb = Limits {
        max_queued_per_promise: MIN_QUEUED,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    assert_eq!(pair.a.session.peer_limits().max_queued, MIN_QUEUED);
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(LocalTarget::Import(obj), "later", no_args(), 2)
    });
    const N: u64 = 10_000;
    for n in 0..N {
        pair.a.session.send(tell(
            LocalTarget::Answer(QuestionId(2)),
            "next",
            OutPayload::data(data(&n)),
        ));
    }
    pair.pump(A);
    pair.drive();
    // The call and exactly MIN_QUEUED sends went out; the rest wait, in order.
    let to_answer = |sent: &[Message]| {
        sent.iter()
            .filter(|m| {
                matches!(
                    m,
                    Message::Deliver {
                        target: Target::Answer(2),
                        ..
                    }
                )
            })
            .count()
    };
    let sent = pair.a.take_sent();
    assert_eq!((sent.len(), to_answer(&sent)), (1 + MIN_QUEUED, MIN_QUEUED));
    assert_eq!(pair.a.session.stats().held, N as usize - MIN_QUEUED);
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "later", in_data(data(&())), Some(2))]
    );
    assert!(!pair.b.session.is_closed());
    // The answer (B's object itself) releases the rest, straight to the object.
    pair.b.session.answer(
        AnswerId(2),
        Ok(OutPayload::single_cap(OutCap::Local(B_OBJ))),
    );
    pair.pump(B);
    pair.pump(A);
    pair.drive();
    assert_eq!(pair.a.session.stats().held, 0);
    let expected: Vec<Seen> = (0..N)
        .map(|n| delivered(B_OBJ, "next", in_data(data(&n)), None))
        .collect();
    assert_eq!(pair.b.take_events(), expected);
    assert_eq!(to_answer(&pair.a.take_sent()), 0);
    assert!(!pair.a.session.is_closed() && !pair.b.session.is_closed());
    pair.a.session.drop_question_ref(QuestionId(2));
    pair.drive();
    pair.a.take_events();
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

// ---- flow control: the peer's question limit ----

#[test]
fn finished_questions_free_inbound_slots() {
    let lb = Limits {
        max_inbound_questions: MIN_QUESTIONS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let n = MIN_QUESTIONS as u64;
    for round in 0..3u64 {
        let first = 2 + round * n;
        for q in first..first + n {
            pair.a
                .session
                .send(ask(LocalTarget::Import(obj), "next", no_args(), q));
        }
        pair.drive();
        assert_eq!(pair.b.take_events().len(), MIN_QUESTIONS);
        assert_eq!(pair.a.session.stats().held, 0);
        for q in first..first + n {
            pair.b
                .session
                .answer(AnswerId(q), Ok(OutPayload::data(data(&()))));
        }
        pair.drive();
        assert_eq!(pair.a.take_events().len(), MIN_QUESTIONS);
    }
    assert!(!pair.b.session.is_closed());
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn questions_past_the_peers_limit_are_held_and_sent_in_order() {
    let lb = Limits {
        max_inbound_questions: MIN_QUESTIONS,
        ..Limits::default()
    };
    let mut pair = Pair::with_limits(Limits::default(), lb);
    let obj = pair.a_imports_b_obj(1);
    let n = MIN_QUESTIONS as u64;
    // n questions fill the peer's limit; then a one-way send and n more questions must
    // wait behind them, in order (a one-way send may not overtake a held question).
    for q in 2..2 + n {
        pair.a
            .session
            .send(ask(LocalTarget::Import(obj), "first", no_args(), q));
    }
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "second", no_args(), 2 + n));
    pair.a
        .session
        .send(tell(LocalTarget::Import(obj), "one_way", no_args()));
    for q in 3 + n..3 + 2 * n {
        pair.a
            .session
            .send(ask(LocalTarget::Import(obj), "third", no_args(), q));
    }
    pair.drive();
    assert_eq!(pair.a.session.stats().held, 2 + n as usize);
    let delivered_methods = |events: Vec<Seen>| -> Vec<String> {
        events
            .into_iter()
            .map(|e| match e {
                Seen::Deliver { method, .. } => method,
                other => panic!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(
        delivered_methods(pair.b.take_events()),
        vec!["first".to_owned(); MIN_QUESTIONS]
    );
    // Each answer lets exactly one more question out; the one-way send needs no room
    // and follows the held question at once.
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&()))));
    pair.drive();
    assert_eq!(
        delivered_methods(pair.b.take_events()),
        ["second", "one_way"]
    );
    for q in 3..2 + n {
        pair.b
            .session
            .answer(AnswerId(q), Ok(OutPayload::data(data(&()))));
    }
    pair.drive();
    assert_eq!(
        delivered_methods(pair.b.take_events()),
        vec!["third".to_owned(); MIN_QUESTIONS - 1]
    );
    assert_eq!(pair.a.session.stats().held, 1);
    pair.b
        .session
        .answer(AnswerId(2 + n), Ok(OutPayload::data(data(&()))));
    pair.drive();
    assert_eq!(delivered_methods(pair.b.take_events()), ["third"]);
    assert_eq!(pair.a.session.stats().held, 0);
    assert!(!pair.a.session.is_closed() && !pair.b.session.is_closed());
}

#[test]
fn held_questions_break_when_the_session_closes() {
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
            .send(ask(LocalTarget::Import(obj), "wait", no_args(), q));
    }
    pair.drive();
    assert_eq!(pair.a.session.stats().held, 1);
    pair.a.session.handle_connection_lost("cable cut");
    let events = pair.a.take_events();
    let returns = events
        .iter()
        .filter(|e| matches!(e, Seen::Return { result: Err(b), .. } if b.kind() == BrokenKind::Disconnected))
        .count();
    assert_eq!(returns, MIN_QUESTIONS + 1);
    assert_tables!(pair.a);
}

#[test]
fn drops_after_held_sends_apply_after_them() {
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
    // Held: a question with a pipelined handle, a call on that promise, a call on the
    // import; then the promise's handle and the import are dropped. The drops must not
    // overtake the sends, or those would break with "released".
    let make = 2 + n;
    pair.a.session.send(Call {
        pipeline_refs: 1,
        ..ask(LocalTarget::Import(obj), "make", no_args(), make)
    });
    pair.a.session.send(tell(
        LocalTarget::Answer(QuestionId(make)),
        "use",
        no_args(),
    ));
    pair.a
        .session
        .send(tell(LocalTarget::Import(obj), "last", no_args()));
    pair.a.session.drop_question_ref(QuestionId(make));
    pair.a.session.drop_import(obj);
    assert_eq!(pair.a.session.stats().held, 5);
    pair.drive();
    assert_eq!(pair.a.take_events(), []);
    assert_eq!(pair.b.take_events().len(), MIN_QUESTIONS);
    pair.a.take_sent();

    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&()))));
    pair.drive();
    let to = |target, method: &str, question| Message::Deliver {
        quiet: false,
        target,
        method: method.to_owned(),
        payload: Payload {
            data: data(&()),
            caps: vec![],
        },
        question,
    };
    assert_eq!(
        pair.a.take_sent(),
        [
            Message::Finish { question: 2 },
            to(Target::Export(1), "make", Some(make)),
            to(Target::Answer(make), "use", None),
            to(Target::Export(1), "last", None),
            Message::Release {
                export: 1,
                count: 1
            },
        ]
    );
    assert_eq!(pair.a.session.stats().held, 0);
    assert_eq!(
        pair.b.take_events(),
        [
            delivered(B_OBJ, "make", in_data(data(&())), Some(make)),
            delivered(B_OBJ, "last", in_data(data(&())), None),
        ]
    );
    // B's export stays while it answers the questions A asked on it.
    assert_tables!(pair.b, answers: n as usize);
    pair.b.session.answer(
        AnswerId(make),
        Ok(OutPayload::single_cap(OutCap::Local(301))),
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(301, "use", in_data(data(&())), None)]
    );
    for q in 3..2 + n {
        pair.b
            .session
            .answer(AnswerId(q), Ok(OutPayload::data(data(&()))));
    }
    pair.drive();
    // The returns of all n + 1 questions asked on the import.
    let events = pair.a.take_events();
    assert_eq!(events.len(), MIN_QUESTIONS + 1);
    assert!(events.contains(&returned(
        u32::try_from(make).unwrap(),
        Ok(in_single(InCap::Import(ImportId(2))))
    )));
    pair.a.session.drop_import(ImportId(2));
    pair.drive();
    assert_tables!(pair.a);
    assert_tables!(pair.b);
}
