//! The handshake: `hello` comes first, once, with a version this vat speaks and limits
//! no smaller than the protocol's minimums; what breaks it aborts the session.
//!
//! Only the opening exchange is here; what happens once both sides are established
//! belongs to the other files.

use super::*;

#[test]
fn hello_is_queued_first_and_establishes_both_sides() {
    let mut s = new_session(Limits::default());
    assert!(!s.is_established() && !s.is_closed());
    assert_eq!(
        drain(&mut s),
        (
            vec![Message::Hello(Hello {
                max_frame: 1 << 20,
                max_questions: 1024,
                ..announce(&Limits::default())
            })],
            vec![]
        )
    );
    s.handle_message(Message::Hello(Hello {
        max_frame: 10_000,
        max_questions: 1024,
        ..announce(&Limits::default())
    }));
    assert!(s.is_established() && !s.is_closed());
    assert_eq!(s.peer_max_frame(), 10_000);
    assert_eq!(drain(&mut s), (vec![], vec![]));
}

#[test]
fn own_frame_limit_below_the_minimum_is_raised() {
    let mut s = new_session(Limits {
        max_frame: 100,
        ..Limits::default()
    });
    let (sent, _) = drain(&mut s);
    assert_eq!(
        sent,
        [Message::Hello(Hello {
            max_frame: MIN_FRAME as u64,
            max_questions: 1024,
            ..announce(&Limits::default())
        })]
    );
}

#[test]
fn hello_exchange_learns_each_peers_frame_limit() {
    let la = Limits {
        max_frame: 9000,
        ..Limits::default()
    };
    let lb = Limits {
        max_frame: 12_000,
        ..Limits::default()
    };
    // `build` checks both hellos and that nothing else happened.
    let pair = Pair::build(la, lb, false);
    assert_eq!(pair.a.session.peer_max_frame(), 12_000);
    assert_eq!(pair.b.session.peer_max_frame(), 9000);
    assert_tables!(pair.a);
    assert_tables!(pair.b);
}

// ---- what breaks the handshake ----

#[test]
fn hello_with_a_frame_limit_below_the_minimum_is_a_violation() {
    let mut s = new_session(Limits::default());
    drain(&mut s);
    s.handle_message(Message::Hello(Hello {
        max_frame: MIN_FRAME as u64 - 1,
        max_questions: 1024,
        ..announce(&Limits::default())
    }));
    assert!(s.is_closed());
    let (sent, events) = drain(&mut s);
    let v = Violation::FrameLimitTooSmall {
        max_frame: MIN_FRAME as u64 - 1,
    };
    assert_eq!(
        sent,
        [Message::Abort {
            reason: v.to_string()
        }]
    );
    assert!(
        matches!(&events[..], [Seen::Closed(CloseReason::Violation(got))] if *got == v),
        "{events:?}"
    );
}

#[test]
fn hello_with_a_question_limit_below_the_minimum_is_a_violation() {
    let mut s = new_session(Limits::default());
    drain(&mut s);
    s.handle_message(Message::Hello(Hello {
        max_frame: MIN_FRAME as u64,
        max_questions: MIN_QUESTIONS as u64 - 1,
        ..announce(&Limits::default())
    }));
    assert!(s.is_closed());
    let (sent, events) = drain(&mut s);
    let v = Violation::QuestionLimitTooSmall {
        max_questions: MIN_QUESTIONS as u64 - 1,
    };
    assert_eq!(
        sent,
        [Message::Abort {
            reason: v.to_string()
        }]
    );
    assert!(
        matches!(&events[..], [Seen::Closed(CloseReason::Violation(got))] if *got == v),
        "{events:?}"
    );
}

#[test]
fn hello_with_a_flow_control_limit_below_its_minimum_is_a_violation() {
    /// A field of a hello, to set.
    type Field = fn(&mut Hello) -> &mut u64;
    let cases: [(&str, Field, usize); 5] = [
        ("max_queued", |h| &mut h.max_queued, MIN_QUEUED),
        ("max_imports", |h| &mut h.max_imports, MIN_IMPORTS),
        ("max_caps", |h| &mut h.max_caps, MIN_CAPS),
        ("max_depth", |h| &mut h.max_depth, MIN_DEPTH),
        ("max_items", |h| &mut h.max_items, MIN_ITEMS),
    ];
    for (field, slot, minimum) in cases {
        // The minimum itself is accepted.
        let mut s = new_session(Limits::default());
        drain(&mut s);
        let mut hello = Hello::MINIMUM;
        *slot(&mut hello) = minimum as u64;
        s.handle_message(Message::Hello(hello));
        assert!(s.is_established(), "{field} at its minimum");
        // One below is not.
        let mut s = new_session(Limits::default());
        drain(&mut s);
        *slot(&mut hello) = minimum as u64 - 1;
        s.handle_message(Message::Hello(hello));
        let v = Violation::LimitTooSmall {
            field,
            value: minimum as u64 - 1,
            minimum,
        };
        assert!(
            v.to_string().contains(&format!(
                "{field} {}, below the minimum of {minimum}",
                minimum - 1
            )),
            "{v}"
        );
        let (sent, events) = drain(&mut s);
        assert_eq!(
            sent,
            [Message::Abort {
                reason: v.to_string()
            }]
        );
        assert!(
            matches!(&events[..], [Seen::Closed(CloseReason::Violation(got))] if *got == v),
            "{field}: {events:?}"
        );
    }
}

#[test]
fn own_limits_below_the_minimums_are_raised_and_announced() {
    let tiny = Limits {
        max_frame: 1,
        max_inbound_questions: 1,
        max_queued_per_promise: 1,
        max_imports: 1,
        max_caps_per_message: 1,
        max_cbor_depth: 1,
        max_cbor_items: 1,
        ..Limits::default()
    };
    assert_eq!(announce(&tiny), Hello::MINIMUM);
    let mut s = new_session(tiny);
    assert_eq!(drain(&mut s).0, [Message::Hello(Hello::MINIMUM)]);
    // And the defaults are announced as they are.
    let d = Limits::default();
    assert_eq!(
        announce(&d),
        Hello {
            version: PROTOCOL_VERSION,
            max_frame: 1 << 20,
            max_questions: 1024,
            max_queued: 256,
            max_imports: 65_536,
            max_caps: 256,
            max_depth: 32,
            max_items: 65_536,
        }
    );
}

#[test]
fn first_message_not_hello_is_a_violation() {
    let mut s = new_session(Limits::default());
    // Questions may be asked before the peer's hello arrives.
    s.bootstrap(QuestionId(1), swiss(1), Some(7), 0);
    s.handle_message(Message::Ping { nonce: 5 });
    let v = Violation::NoHello { got: "ping" };
    let reason = CloseReason::Violation(v.clone());
    let (sent, events) = drain(&mut s);
    assert_eq!(
        sent,
        [
            Message::Hello(Hello {
                max_frame: 1 << 20,
                max_questions: 1024,
                ..announce(&Limits::default())
            }),
            Message::Bootstrap {
                question: 1,
                swiss: swiss(1)
            },
            // No pong: the ping itself was the violation.
            Message::Abort {
                reason: "expected hello as the first message, got ping".to_owned()
            },
        ]
    );
    assert_eq!(
        events,
        [
            returned(7, Err(Broken::disconnected(&reason))),
            Seen::Closed(reason)
        ]
    );
    assert!(s.is_closed() && !s.is_established());
    assert_tables!(s);
}

#[test]
fn unsupported_version_is_a_violation() {
    let mut s = new_session(Limits::default());
    s.poll_transmit();
    s.handle_message(Message::Hello(Hello {
        version: PROTOCOL_VERSION + 1,
        max_frame: 1000,
        max_questions: 1024,
        ..announce(&Limits::default())
    }));
    let v = Violation::UnsupportedVersion {
        version: PROTOCOL_VERSION + 1,
    };
    assert_eq!(
        drain(&mut s),
        (
            vec![Message::Abort {
                reason: "unsupported protocol version 5 (this vat speaks 2 to 4)".to_owned()
            }],
            vec![Seen::Closed(CloseReason::Violation(v))]
        )
    );
    assert!(s.is_closed() && !s.is_established());
}

#[test]
fn duplicate_hello_is_a_violation() {
    let mut pair = Pair::victim(Limits::default(), Limits::default());
    pair.b.session.handle_message(Message::Hello(Hello {
        max_frame: 1000,
        max_questions: 1024,
        ..announce(&Limits::default())
    }));
    pair.drive();
    assert_eq!(expect_violation(&mut pair, Violation::DuplicateHello), []);
}

#[test]
fn abort_before_hello_closes_as_peer_aborted() {
    let mut s = new_session(Limits::default());
    s.poll_transmit();
    s.handle_message(Message::Abort {
        reason: "go away".to_owned(),
    });
    assert_eq!(
        drain(&mut s),
        (
            vec![],
            vec![Seen::Closed(CloseReason::PeerAborted("go away".to_owned()))]
        )
    );
}

#[test]
fn before_the_peers_hello_a_call_larger_than_the_minimum_frame_waits_for_it() {
    // No handshake yet: A's first flight is built before B has said anything.
    let mut pair = Pair {
        a: Peer::new(Limits::default(), &[]),
        b: Peer::new(Limits::default(), &[(1, B_OBJ)]),
        codec: true,
    };
    let small = || OutPayload::data(data(&(serde_bytes::ByteBuf::from(vec![1u8; 1_000]),)));
    let large = OutPayload::data(data(&(serde_bytes::ByteBuf::from(vec![2u8; MIN_FRAME]),)));
    let on_root = LocalTarget::Answer(QuestionId(1));
    pair.a.session.bootstrap(QuestionId(1), swiss(1), None, 1);
    pair.a.session.send(tell(on_root, "small", small()));
    pair.a.session.send(tell(on_root, "large", large));
    pair.a.session.send(tell(on_root, "after", small()));
    // The large call waits for B's hello, and the call after it waits behind it.
    assert_tables!(pair.a, held: 2, questions: 1);
    pair.pump(A);
    let sent: Vec<&str> = pair.a.take_sent().iter().map(Message::kind).collect();
    assert_eq!(sent, ["hello", "bootstrap", "deliver"]);
    // B's hello (it announces 1 MiB frames) lets them go, in order.
    pair.drive();
    assert_tables!(pair.a, questions: 1);
    pair.b.serve_bootstraps();
    pair.drive();
    let methods: Vec<String> = pair
        .b
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Seen::Deliver { method, .. } => Some(method),
            _ => None,
        })
        .collect();
    assert_eq!(methods, ["small", "large", "after"]);
    assert!(!pair.a.session.is_closed() && !pair.b.session.is_closed());
}

#[test]
fn a_listening_side_answers_the_peers_hello_in_the_lower_version() {
    for (theirs, expected) in [(2, 2), (PROTOCOL_VERSION, PROTOCOL_VERSION)] {
        let mut s: S = Session::new_listening(Limits::default(), *T0);
        assert_eq!(
            s.poll_transmit(),
            None,
            "the listener's hello waits for the peer's"
        );
        s.handle_message(Message::Hello(Hello {
            version: theirs,
            ..announce(&Limits::default())
        }));
        assert!(s.is_established());
        assert_eq!(
            s.poll_transmit(),
            Some(Message::Hello(Hello {
                version: expected,
                ..announce(&Limits::default())
            })),
            "a peer announcing {theirs}"
        );
        assert_eq!(s.peer_limits().version, theirs);
    }
}

#[test]
fn a_listening_side_that_refuses_the_peers_hello_sends_only_the_abort() {
    let mut s: S = Session::new_listening(Limits::default(), *T0);
    s.handle_message(Message::Hello(Hello {
        version: 1,
        ..announce(&Limits::default())
    }));
    let (sent, _) = drain(&mut s);
    assert!(
        matches!(&sent[..], [Message::Abort { .. }]),
        "no hello before the abort: {sent:?}"
    );
}

// ---- `listen` (protocol version 4, PROTOCOL.md 9.16.2) ----

fn hints() -> Vec<String> {
    vec!["127.0.0.1:4433".to_owned()]
}

#[test]
fn a_connecting_side_sends_listen_right_after_its_hello() {
    let mut s = new_session(Limits::default());
    s.set_listen(hints());
    let (sent, _) = drain(&mut s);
    assert!(
        matches!(&sent[..], [Message::Hello(_), Message::Listen { hints: h }] if *h == hints()),
        "{sent:?}"
    );
}

#[test]
fn a_listening_side_sends_listen_after_its_hello_to_a_version_4_peer_only() {
    for (theirs, listens) in [(PROTOCOL_VERSION, true), (3, false), (2, false)] {
        let mut s: S = Session::new_listening(Limits::default(), *T0);
        s.set_listen(hints());
        assert_eq!(s.poll_transmit(), None, "nothing before the peer's hello");
        s.handle_message(Message::Hello(Hello {
            version: theirs,
            ..announce(&Limits::default())
        }));
        let (sent, _) = drain(&mut s);
        match &sent[..] {
            [Message::Hello(h), Message::Listen { hints: got }] if listens => {
                assert_eq!(h.version, theirs);
                assert_eq!(*got, hints());
            }
            [Message::Hello(h)] if !listens => assert_eq!(h.version, theirs),
            other => panic!("a peer announcing {theirs}: {other:?}"),
        }
    }
}

#[test]
fn listen_is_reported_from_a_version_4_peer_and_a_violation_from_an_older_one() {
    for theirs in [PROTOCOL_VERSION, 3] {
        let mut s = new_session(Limits::default());
        s.poll_transmit();
        s.handle_message(Message::Hello(Hello {
            version: theirs,
            ..announce(&Limits::default())
        }));
        s.handle_message(Message::Listen { hints: hints() });
        let (sent, seen) = drain(&mut s);
        if theirs == PROTOCOL_VERSION {
            assert_eq!(seen, vec![Seen::Listen(hints())]);
            assert!(!s.is_closed());
        } else {
            assert!(
                matches!(&sent[..], [Message::Abort { reason }] if reason.contains("listen is not part of protocol version 3")),
                "{sent:?}"
            );
            assert!(s.is_closed());
        }
    }
}
