//! How a session ends (the peer aborts, this side aborts, the connection is lost) and
//! what it breaks on the way out, lost clients reported once, and the keepalive.
//!
//! Ends caused by a protocol violation are in `violations`.

use super::*;

#[test]
fn peer_abort_breaks_pending_questions_with_the_reason() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "slow", no_args(), 2));
    pair.drive();
    pair.b.take_events();
    pair.a.take_sent();
    pair.b.session.abort("shutting down for maintenance");
    pair.drive();
    assert_eq!(
        pair.b.take_sent(),
        [Message::Abort {
            reason: "shutting down for maintenance".to_owned()
        }]
    );
    assert_eq!(
        pair.b.take_events(),
        [Seen::Closed(CloseReason::Local(
            "shutting down for maintenance".to_owned()
        ))]
    );
    let reason = CloseReason::PeerAborted("shutting down for maintenance".to_owned());
    let events = pair.a.take_events();
    assert_eq!(
        events,
        [
            returned(2, Err(Broken::disconnected(&reason))),
            Seen::Closed(reason)
        ]
    );
    let Seen::Return { result: Err(b), .. } = &events[0] else {
        unreachable!()
    };
    assert_eq!(b.kind(), BrokenKind::Disconnected);
    assert!(b.message().contains("shutting down for maintenance"));
    assert_eq!(pair.a.take_sent(), []);
    assert_tables!(pair.a);
    assert_tables!(pair.b);
}

#[test]
fn connection_lost_breaks_pending_questions_and_later_sends() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "slow", no_args(), 2));
    pair.drive();
    pair.a.session.handle_connection_lost("EOF");
    let reason = CloseReason::ConnectionLost("EOF".to_owned());
    let broken = Broken::disconnected(&reason);
    assert_eq!(broken.message(), "session ended: connection lost: EOF");
    assert_eq!(
        pair.a.take_events(),
        [
            returned(2, Err(broken.clone())),
            Seen::Closed(reason.clone())
        ]
    );
    assert!(pair.a.session.is_closed());
    assert_tables!(pair.a);

    // Everything after the close breaks at once and nothing is transmitted.
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "after", no_args(), 3));
    pair.a.session.send(Call {
        resolver: Some(4),
        ..tell(LocalTarget::Import(obj), "after", no_args())
    });
    pair.a
        .session
        .bootstrap(QuestionId(5), swiss(1), Some(5), 1);
    pair.a.session.ping();
    pair.a.session.drop_import(obj);
    pair.a.session.abort("again");
    pair.a.session.handle_message(Message::Ping { nonce: 1 });
    assert_eq!(
        pair.a.take_events(),
        [
            returned(3, Err(broken.clone())),
            returned(4, Err(broken.clone())),
            returned(5, Err(broken)),
        ]
    );
    assert_eq!(pair.a.session.poll_transmit(), None);
    assert_tables!(pair.a);
}

// ---- exports lost when the session ends ----

/// B exports three objects to A (one of them twice, one a promise), then its session
/// closes as `close` does; returns B's events.
fn exports_lost_when(close: impl FnOnce(&mut Pair)) -> Vec<Seen> {
    let mut pair = Pair::new();
    pair.a_imports_b_obj(1);
    pair.a_imports_b_obj(2);
    b_answers_with_a_promise(&mut pair, 3, 300);
    pair.a
        .session
        .send(ask(LocalTarget::Import(ImportId(1)), "make", no_args(), 4));
    pair.drive();
    pair.b.take_events();
    pair.b
        .session
        .answer(AnswerId(4), Ok(OutPayload::single_cap(OutCap::Local(301))));
    pair.drive();
    pair.a.take_events();
    assert_tables!(pair.a, imports: 3);
    assert_tables!(pair.b, exports: 3);
    close(&mut pair);
    pair.drive();
    assert!(pair.b.session.is_closed());
    assert_tables!(pair.b);
    // A exported nothing: it hears of no lost client, whatever happened.
    assert!(
        pair.a
            .take_all_events()
            .iter()
            .all(|e| matches!(e, Seen::Closed(_))),
    );
    pair.b.take_all_events()
}

#[test]
fn exports_lost_lists_each_exported_object_once_when_the_session_closes() {
    let lost = || Seen::Lost(vec![B_OBJ, 300, 301]);
    assert_eq!(
        exports_lost_when(|p| p.a.session.abort("bye")),
        [
            lost(),
            Seen::Closed(CloseReason::PeerAborted("bye".to_owned()))
        ]
    );
    assert_eq!(
        exports_lost_when(|p| p.b.session.handle_connection_lost("EOF")),
        [
            lost(),
            Seen::Closed(CloseReason::ConnectionLost("EOF".to_owned()))
        ]
    );
    assert_eq!(
        exports_lost_when(|p| p.b.session.handle_message(Message::Finish { question: 77 })),
        [
            lost(),
            Seen::Closed(CloseReason::Violation(Violation::UnknownAnswer(AnswerId(
                77
            ))))
        ]
    );
    assert_eq!(
        exports_lost_when(|p| p.b.session.abort("shutdown")),
        [
            lost(),
            Seen::Closed(CloseReason::Local("shutdown".to_owned()))
        ]
    );
}

#[test]
fn no_exports_lost_when_nothing_is_exported_any_more() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.drop_import(obj);
    pair.drive();
    assert_tables!(pair.b);
    pair.a.session.abort("bye");
    pair.drive();
    assert_eq!(
        pair.b.take_all_events(),
        [Seen::Closed(CloseReason::PeerAborted("bye".to_owned()))]
    );
    assert_eq!(
        pair.a.take_all_events(),
        [Seen::Closed(CloseReason::Local("bye".to_owned()))]
    );
}

// ---- keepalive ----

#[test]
fn ping_is_answered_by_pong_with_the_same_nonce() {
    let mut pair = Pair::new();
    assert_eq!(pair.a.session.ping(), Some(1));
    assert_eq!(pair.a.session.ping(), Some(2));
    pair.drive();
    assert_eq!(
        pair.a.take_sent(),
        [Message::Ping { nonce: 1 }, Message::Ping { nonce: 2 }]
    );
    assert_eq!(
        pair.b.take_sent(),
        [Message::Pong { nonce: 1 }, Message::Pong { nonce: 2 }]
    );
    // Each pong is reported, for whoever waits on that round trip.
    assert_eq!(
        (pair.a.take_events(), pair.b.take_events()),
        (vec![Seen::Pong(1), Seen::Pong(2)], vec![])
    );
    // An unsolicited pong is harmless: reported, nothing else.
    pair.a
        .session
        .handle_message(Message::Pong { nonce: 12345 });
    assert_eq!(
        (pair.a.take_events(), pair.b.take_events()),
        (vec![Seen::Pong(12345)], vec![])
    );
    assert_eq!(pair.a.session.poll_transmit(), None);
    assert!(!pair.a.session.is_closed());
}

#[test]
fn a_peers_abort_reason_is_shown_escaped() {
    let reason = CloseReason::PeerAborted("bye\u{1b}[2J\nforged line".to_owned());
    let shown = reason.to_string();
    assert_eq!(
        shown,
        "the peer aborted the session: bye\\u{1b}[2J\\nforged line"
    );
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
    // And so is the Broken every pending promise gets from it.
    let broken = Broken::disconnected(&reason).to_string();
    assert!(!broken.chars().any(char::is_control), "{broken:?}");
}
