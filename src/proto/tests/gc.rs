//! Distributed garbage collection: dropping handles sends `release` with the count
//! received, a question's pipelined handles keep its import, and the cycle collector
//! releases imports kept alive only by deferred settlements (promises settled to each
//! other while the runtime held none of them), in bounded work per operation.
//!
//! Reference counting as such (reuse, races, coming home) is in `references`.

use super::*;

#[test]
fn release_on_drop_empties_every_table() {
    let mut pair = Pair::new();
    // One handle from the resolver, one held by the question for pipelining.
    let seen = pair.bootstrap(A, 1, 1, 1);
    assert_eq!(seen, returned(1, Ok(in_single(InCap::Import(ImportId(1))))));
    pair.a.take_sent();
    assert_tables!(pair.a, questions: 1, imports: 1);
    assert_tables!(pair.b, exports: 1);
    pair.a.session.drop_question_ref(QuestionId(1));
    assert_eq!(pair.a.session.poll_transmit(), None);
    assert_tables!(pair.a, imports: 1);
    pair.a.session.drop_import(ImportId(1));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Release {
            export: 1,
            count: 1
        }]
    );
    assert_tables!(pair.a);
    assert_tables!(pair.b);
    assert_eq!(
        (pair.a.take_events(), pair.b.take_events()),
        (vec![], vec![])
    );
}

#[test]
fn import_held_by_a_question_outlives_the_resolvers_handle() {
    let mut pair = Pair::new();
    pair.bootstrap(A, 1, 1, 1);
    pair.a.take_sent();
    pair.a.session.drop_import(ImportId(1));
    pair.drive();
    assert_eq!(pair.a.take_sent(), []);
    // Still usable through the promise.
    pair.a
        .session
        .send(tell(LocalTarget::Answer(QuestionId(1)), "poke", no_args()));
    pair.a.session.drop_question_ref(QuestionId(1));
    pair.drive();
    assert_eq!(
        pair.a.take_sent()[1],
        Message::Release {
            export: 1,
            count: 1
        }
    );
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "poke", in_data(data(&())), None)]
    );
    assert_tables!(pair.a);
    assert_tables!(pair.b);
}

#[test]
fn dropping_question_refs_before_the_return_cancels_the_question() {
    let mut pair = Pair::new();
    pair.a.session.bootstrap(QuestionId(1), swiss(1), None, 1);
    pair.a.session.drop_question_ref(QuestionId(1));
    // Nothing was sent on the answer and no one can see it: an early finish.
    assert_tables!(pair.a, questions: 1);
    pair.drive();
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
    // B was told to stop before it answered; its answer broke, and the return still
    // came, which freed A's question.
    assert_eq!(
        pair.b.take_events(),
        [
            Seen::Bootstrap {
                answer: AnswerId(1),
                swiss: [1; 32]
            },
            Seen::Cancel(AnswerId(1)),
        ]
    );
    assert_eq!(pair.b.serve_bootstraps(), []);
    pair.drive();
    assert_eq!(pair.a.take_events(), []);
    assert_tables!(pair.a);
    assert_tables!(pair.b);
}

// ---- the cycle collector: deferred settlements nobody holds ----

#[test]
fn promise_resolved_to_itself_while_unheld_is_released_at_the_end() {
    // Found by the session fuzzer (clean-up invariant). The peer resolves its promise
    // to itself while the runtime holds no handle on it: the settlement is deferred
    // (`Import::deferred`), and its payload's handle on the import kept the import
    // alive after every other holder let go, so it was never released. The cycle
    // collector now releases it, with both copies the peer sent.
    let mut s = session_holding_unheld_promises(1);
    s.handle_message(Message::Resolve {
        export: 1,
        result: ReturnResult::Ok(wire_single(CapDescriptor::SenderPromise(1))),
    });
    assert!(!s.is_closed());
    s.drop_question_ref(QuestionId(1));
    let (sent, _) = drain(&mut s);
    assert_tables!(s; "{sent:?}");
    assert!(sent.contains(&Message::Release {
        export: 1,
        count: 2
    }));
}

#[test]
fn promises_resolved_to_each_other_while_unheld_are_released_at_the_end() {
    // The same through a cycle of two: promise 1 resolves to promise 2 and promise 2 to
    // promise 1, both while the runtime holds no handle on either.
    let mut s = session_holding_unheld_promises(2);
    for (p, to) in [(1, 2), (2, 1)] {
        s.handle_message(Message::Resolve {
            export: p,
            result: ReturnResult::Ok(wire_single(CapDescriptor::SenderPromise(to))),
        });
    }
    assert!(!s.is_closed());
    s.drop_question_ref(QuestionId(1));
    s.drop_question_ref(QuestionId(2));
    let (sent, _) = drain(&mut s);
    assert_tables!(s; "{sent:?}");
    assert_eq!(releases(&sent), [(1, 2), (2, 2)]);
}

#[test]
fn promises_resolved_in_a_cycle_of_three_while_unheld_are_released_at_the_end() {
    // 1 → 2 → 3 → 1. Until the last question lets go, each import is still held by a
    // question or by a settlement that a question's import holds.
    let mut s = session_holding_unheld_promises(3);
    for (p, to) in [(1, 2), (2, 3), (3, 1)] {
        resolve_to_promise(&mut s, p, to);
    }
    for q in [1, 2] {
        s.drop_question_ref(QuestionId(q));
        let (sent, events) = drain(&mut s);
        assert_eq!((sent, events), (vec![], vec![]));
        assert_eq!(s.stats().imports, 3);
    }
    s.drop_question_ref(QuestionId(3));
    let (sent, events) = drain(&mut s);
    assert_eq!(events, []);
    assert_tables!(s; "{sent:?}");
    assert_eq!(releases(&sent), [(1, 2), (2, 2), (3, 2)]);
}

#[test]
fn cycle_reachable_from_a_held_import_is_kept_until_that_import_is_dropped() {
    // Promise 1 is still held (by question 1's pipelined handle); it settled to promise
    // 2, which settled to promise 1. Nothing else holds 2, but the cycle is reachable:
    // the runtime would see both settlements if the peer sent promise 1 again. Only
    // when question 1 lets go is the cycle garbage.
    let mut s = session_holding_unheld_promises(2);
    resolve_to_promise(&mut s, 1, 2);
    resolve_to_promise(&mut s, 2, 1);
    s.drop_question_ref(QuestionId(2));
    let (sent, events) = drain(&mut s);
    assert_eq!((sent, events), (vec![], vec![]));
    assert_eq!(s.stats().imports, 2);

    s.drop_question_ref(QuestionId(1));
    let (sent, events) = drain(&mut s);
    assert_eq!(events, []);
    assert_tables!(s; "{sent:?}");
    // Each import goes back with every copy the peer sent: its return and the other's
    // settlement.
    assert_eq!(releases(&sent), [(1, 2), (2, 2)]);
}

#[test]
fn cycle_hanging_off_a_held_import_is_kept_until_that_import_is_dropped() {
    // 1 → 2, 2 → 3, 3 → 2: the cycle of 2 and 3 is not through the held import 1 but
    // reachable from it.
    let mut s = session_holding_unheld_promises(3);
    for (p, to) in [(1, 2), (2, 3), (3, 2)] {
        resolve_to_promise(&mut s, p, to);
    }
    s.drop_question_ref(QuestionId(2));
    s.drop_question_ref(QuestionId(3));
    let (sent, events) = drain(&mut s);
    assert_eq!((sent, events), (vec![], vec![]));
    assert_eq!(s.stats().imports, 3);

    s.drop_question_ref(QuestionId(1));
    let (sent, events) = drain(&mut s);
    assert_eq!(events, []);
    assert_tables!(s; "{sent:?}");
    // 2 came in its return, 1's settlement and 3's; 3 in its return and 2's.
    assert_eq!(releases(&sent), [(1, 1), (2, 3), (3, 2)]);
}

#[test]
fn garbage_settlement_releases_the_other_references_it_held() {
    // Promise 1 settles to data holding itself and a plain reference the peer sends
    // only there: both go when the cycle does.
    let mut s = session_holding_unheld_promises(1);
    s.handle_message(Message::Resolve {
        export: 1,
        result: ReturnResult::Ok(Payload {
            data: data(&()),
            caps: vec![
                CapDescriptor::SenderPromise(1),
                CapDescriptor::SenderHosted(9),
            ],
        }),
    });
    assert_eq!(s.stats().imports, 2);
    s.drop_question_ref(QuestionId(1));
    let (sent, events) = drain(&mut s);
    assert_eq!(events, []);
    assert_tables!(s; "{sent:?}");
    assert_eq!(releases(&sent), [(1, 2), (9, 1)]);
}

#[test]
fn self_resolved_promise_sent_again_before_the_collection_is_reported() {
    // Promise 1 settled to itself while the runtime held no handle on it; question 1
    // still holds it. Then the peer passes promise 1 again, in a call to one of our
    // objects: the runtime gets the import and, right after, the deferred settlement
    // (to itself). Once the runtime and the question let go, it is released with all
    // three copies the peer sent, and nothing is reported twice.
    let mut s = session_holding_unheld_promises(1);
    s.handle_message(Message::Bootstrap {
        question: 1,
        swiss: swiss(1),
    });
    drain(&mut s);
    s.answer(AnswerId(1), Ok(OutPayload::single_cap(OutCap::Local(7))));
    let (sent, _) = drain(&mut s);
    let export = match &sent[..] {
        [
            Message::Return {
                result: ReturnResult::Ok(p),
                ..
            },
        ] => match p.caps[..] {
            [CapDescriptor::SenderHosted(e)] => e,
            _ => panic!("{sent:?}"),
        },
        _ => panic!("{sent:?}"),
    };
    resolve_to_promise(&mut s, 1, 1);
    s.handle_message(Message::Deliver {
        quiet: false,
        target: Target::Export(export),
        method: "take".into(),
        payload: wire_single(CapDescriptor::SenderPromise(1)),
        question: None,
    });
    let (sent, events) = drain(&mut s);
    assert_eq!(sent, []);
    assert_eq!(
        events,
        [
            delivered(7, "take", in_single(InCap::Promise(ImportId(1))), None),
            Seen::Resolved {
                import: ImportId(1),
                result: Ok(in_single(InCap::Promise(ImportId(1)))),
            },
        ]
    );
    // The runtime holds two handles and the question one: dropping any two keeps it.
    s.drop_question_ref(QuestionId(1));
    s.drop_import(ImportId(1));
    let (sent, events) = drain(&mut s);
    assert_eq!((sent, events), (vec![], vec![]));
    assert_eq!(s.stats().imports, 1);
    s.drop_import(ImportId(1));
    let (sent, events) = drain(&mut s);
    assert_eq!(events, []);
    assert_eq!(
        sent,
        [Message::Release {
            export: 1,
            count: 3
        }]
    );
    assert_eq!(s.stats().imports, 0);
}

#[test]
fn self_resolved_promise_in_a_message_dropped_on_arrival_stays_deferred() {
    // The peer passes the self-settled promise 1 in a call pipelined on an answer that
    // broke: the call breaks and its handle goes at once. That changes nothing (no
    // event, no release, no collection); the cycle goes when the question lets go.
    let mut s = session_holding_unheld_promises(1);
    resolve_to_promise(&mut s, 1, 1);
    s.handle_message(Message::Bootstrap {
        question: 1,
        swiss: swiss(1),
    });
    drain(&mut s);
    s.answer(AnswerId(1), Err(Broken::unknown_object()));
    drain(&mut s);
    s.handle_message(Message::Deliver {
        quiet: false,
        target: Target::Answer(1),
        method: "take".into(),
        payload: wire_single(CapDescriptor::SenderPromise(1)),
        question: None,
    });
    let (sent, events) = drain(&mut s);
    assert_eq!((sent, events), (vec![], vec![]));
    assert_eq!(s.stats().imports, 1);
    s.handle_message(Message::Finish { question: 1 });
    s.drop_question_ref(QuestionId(1));
    let (sent, events) = drain(&mut s);
    assert_eq!(events, []);
    assert_eq!(
        sent,
        [Message::Release {
            export: 1,
            count: 3
        }]
    );
    assert_tables!(s);
}

#[test]
fn cycle_collection_waits_for_a_drop_held_behind_sends() {
    // The peer accepts MIN_QUESTIONS outstanding questions. Promise 1 (held by question
    // 1's pipelined handle) settled to itself; the runtime pipelines MIN_QUESTIONS calls
    // on question 1 and one more, which is held back, and then drops its pipelined
    // handle. The drop waits behind the held call, so the import stays until the call
    // has gone out to it; then the cycle is garbage and released, after the call.
    let mut s = new_session(Limits::default());
    s.handle_message(Message::Hello(Hello {
        max_frame: 1 << 20,
        max_questions: MIN_QUESTIONS as u64,
        ..announce(&Limits::default())
    }));
    s.bootstrap(QuestionId(1), swiss(1), Some(1), 1);
    s.handle_message(Message::Return {
        question: 1,
        result: ReturnResult::Ok(wire_single(CapDescriptor::SenderPromise(1))),
    });
    s.drop_import(ImportId(1));
    resolve_to_promise(&mut s, 1, 1);
    let last = 2 + MIN_QUESTIONS as u64;
    for q in 2..=last {
        s.send(ask(LocalTarget::Answer(QuestionId(1)), "m", no_args(), q));
    }
    s.drop_question_ref(QuestionId(1));
    drain(&mut s);
    assert_eq!(s.stats().held, 2);
    assert_eq!(s.stats().imports, 1);

    s.handle_message(Message::Return {
        question: 2,
        result: ReturnResult::Ok(Payload {
            data: data(&()),
            caps: Vec::new(),
        }),
    });
    let (sent, _) = drain(&mut s);
    assert!(
        matches!(
            &sent[..],
            [
                Message::Finish { question: 2 },
                Message::Deliver {
                    target: Target::Export(1),
                    question: Some(q),
                    ..
                },
                Message::Release {
                    export: 1,
                    count: 2
                },
            ] if *q == last
        ),
        "{sent:?}"
    );
    assert_eq!(s.stats().held, 0);
    assert_eq!(s.stats().imports, 0);
}

#[test]
fn references_dropped_on_arrival_are_released_at_once_while_sends_are_held() {
    // A call pipelined on a broken answer brings a new reference; the call breaks and
    // the reference goes at once, even while a send is held by flow control: no held
    // send can name it, and the hold queue does not grow with what peers send.
    let mut s = new_session(Limits::default());
    s.handle_message(Message::Hello(Hello {
        max_frame: 1 << 20,
        max_questions: MIN_QUESTIONS as u64,
        ..announce(&Limits::default())
    }));
    for q in 1..=MIN_QUESTIONS as u64 + 1 {
        s.bootstrap(QuestionId(q), swiss(1), Some(u32::try_from(q).unwrap()), 0);
    }
    s.handle_message(Message::Bootstrap {
        question: 1,
        swiss: swiss(1),
    });
    drain(&mut s);
    s.answer(AnswerId(1), Err(Broken::unknown_object()));
    drain(&mut s);
    assert_eq!(s.stats().held, 1);
    s.handle_message(Message::Deliver {
        quiet: false,
        target: Target::Answer(1),
        method: "take".into(),
        payload: wire_single(CapDescriptor::SenderHosted(5)),
        question: None,
    });
    let (sent, events) = drain(&mut s);
    assert_eq!(events, []);
    assert_eq!(
        sent,
        [Message::Release {
            export: 5,
            count: 1
        }]
    );
    assert_eq!(s.stats().held, 1);
    assert_eq!(s.stats().imports, 0);
}

#[test]
fn closing_with_a_cycle_of_deferred_settlements_sends_no_release() {
    // The session ends while a self-settled promise is held: the tables are emptied
    // and no release follows the close.
    let mut s = session_holding_unheld_promises(1);
    resolve_to_promise(&mut s, 1, 1);
    s.handle_connection_lost("gone");
    s.drop_question_ref(QuestionId(1));
    let (sent, _) = drain(&mut s);
    assert_eq!(sent, []);
    assert_tables!(s);
}

#[test]
fn an_expensive_collection_is_paid_for_by_later_operations_before_the_next() {
    // Promise 1 (held by question 1) settled to promise 3, 3 to 4, and so on: a chain
    // that is alive, kept by settlements. A call queued on an answer carries promise 3;
    // when the program answers with an error, the call's handle goes, and the collector
    // walks the whole chain to find it still alive. A peer could have the program do
    // that again and again, so the walk must be paid for (a fixed amount of work per
    // operation) before the collector runs again: the self-settled promise 2, garbage
    // once its question lets go, is released only some operations later.
    const LEN: u64 = 1_000;
    let mut s = session_holding_unheld_promises(2);
    resolve_to_promise(&mut s, 1, 3);
    for p in 3..LEN + 2 {
        resolve_to_promise(&mut s, p, p + 1);
    }
    resolve_to_promise(&mut s, 2, 2);
    let imports = s.stats().imports;
    assert_eq!(imports, LEN as usize + 2);
    s.handle_message(Message::Bootstrap {
        question: 10,
        swiss: swiss(1),
    });
    s.handle_message(Message::Deliver {
        quiet: false,
        target: Target::Answer(10),
        method: "take".into(),
        payload: wire_single(CapDescriptor::SenderPromise(3)),
        question: None,
    });
    drain(&mut s);
    s.answer(AnswerId(10), Err(Broken::unknown_object()));
    s.handle_message(Message::Finish { question: 10 });
    let (sent, _) = drain(&mut s);
    assert_eq!(releases(&sent), []);
    assert_eq!(s.stats().imports, imports);

    s.drop_question_ref(QuestionId(2));
    let (sent, _) = drain(&mut s);
    assert_eq!(releases(&sent), [], "the walk is not paid for yet");
    let mut operations = 1;
    loop {
        s.handle_message(Message::Ping { nonce: operations });
        operations += 1;
        let (sent, _) = drain(&mut s);
        if !releases(&sent).is_empty() {
            assert_eq!(releases(&sent), [(2, 2)]);
            break;
        }
        assert!(operations < 3 * LEN / 256, "never collected");
    }
    assert_eq!(s.stats().imports, imports - 1);

    // The chain itself goes with promise 1, link by link (no collection needed).
    s.drop_question_ref(QuestionId(1));
    let (sent, _) = drain(&mut s);
    assert_eq!(releases(&sent).len(), LEN as usize + 1);
    assert_tables!(s);
}
