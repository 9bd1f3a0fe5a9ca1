//! Deadlines and cancellation: a question past its deadline breaks with `timeout` and
//! gets an early `finish`; a cancelled question does too; the answerer stops the method,
//! answers `cancelled`, and still returns; the asker takes that late `return` (or one
//! already on its way) without complaint, and counts the question until it comes.
//!
//! The deadline clock is the sessions' own `T0`: the pair never hears the peer after
//! it, so the keepalive stays at `T0 + keepalive_idle`, far after every deadline here.

use std::time::{Duration, Instant};

use super::*;

const TICK: Duration = Duration::from_nanos(1);

fn t0() -> Instant {
    *T0
}

/// The deadline `secs` seconds after `T0`.
fn deadline(secs: u64) -> Deadline {
    Deadline::after(t0(), Duration::from_secs(secs)).unwrap()
}

fn timed_out(secs: u64) -> Broken {
    Broken::timeout(Duration::from_secs(secs))
}

/// The kind of the error in a `return` message, if it is one.
fn returned_kind(m: &Message) -> Option<(u64, String)> {
    match m {
        Message::Return {
            question,
            result: ReturnResult::Err(w),
        } => Some((*question, Broken::from(w.clone()).kind_name().to_owned())),
        _ => None,
    }
}

/// The kinds of the errors among `events`' returns.
fn broken_kinds(events: &[Seen]) -> Vec<BrokenKind> {
    events
        .iter()
        .filter_map(|e| match e {
            Seen::Return { result: Err(b), .. } => Some(b.kind()),
            _ => None,
        })
        .collect()
}

#[test]
fn deadline_fires_exactly_at_its_instant_and_the_late_return_drains_both_sides() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        deadline: Some(deadline(5)),
        ..ask(LocalTarget::Import(obj), "slow", no_args(), 2)
    });
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        [delivered(B_OBJ, "slow", in_data(data(&())), Some(2))]
    );
    pair.a.take_sent();
    // The session wakes for the deadline, not for the keepalive 30 s later.
    assert_eq!(
        pair.a.session.poll_timeout(),
        Some(t0() + Duration::from_secs(5))
    );

    pair.a
        .session
        .handle_timeout(t0() + Duration::from_secs(5) - TICK);
    assert_eq!(pair.a.take_events(), [], "not a tick before");
    assert_eq!(pair.a.session.poll_transmit(), None);

    pair.a.session.handle_timeout(t0() + Duration::from_secs(5));
    let events = pair.a.take_events();
    assert_eq!(events, [returned(2, Err(timed_out(5)))]);
    assert_eq!(broken_kinds(&events), [BrokenKind::Timeout]);
    // Kept until the peer's return: the peer still counts the question.
    assert_tables!(pair.a, questions: 1, imports: 1);
    assert_eq!(
        pair.a.session.poll_timeout(),
        Some(t0() + Limits::default().keepalive_idle)
    );

    // The early finish reaches B: it stops the method and answers `cancelled` at once.
    pair.pump(A);
    assert_eq!(pair.a.take_sent(), [Message::Finish { question: 2 }]);
    assert_eq!(pair.b.take_events(), [Seen::Cancel(AnswerId(2))]);
    assert_tables!(pair.b, exports: 1);
    pair.pump(B);
    let sent = pair.b.take_sent();
    assert_eq!(
        sent.iter().filter_map(returned_kind).collect::<Vec<_>>(),
        [(2, "cancelled".to_owned())]
    );
    // A takes the late return without a violation, reports nothing, and drains.
    assert!(!pair.a.session.is_closed());
    assert_eq!(pair.a.take_events(), []);
    assert_tables!(pair.a, imports: 1);
    // The method ends after all: its answer goes nowhere.
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&1u32))));
    pair.drive();
    assert_eq!(pair.b.take_sent(), []);
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn a_later_deadline_replaces_the_first_and_an_answered_question_never_times_out() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a.session.send(Call {
        deadline: Some(deadline(5)),
        ..ask(LocalTarget::Import(obj), "slow", no_args(), 2)
    });
    pair.a.session.set_deadline(QuestionId(2), deadline(8));
    pair.drive();
    assert_eq!(
        pair.a.session.poll_timeout(),
        Some(t0() + Duration::from_secs(8))
    );
    pair.a.session.handle_timeout(t0() + Duration::from_secs(5));
    assert_eq!(pair.a.take_events(), []);
    // Answered at 6 s: nothing happens at 8 s, and the deadline is forgotten.
    pair.b.take_events();
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::data(data(&7u32))));
    pair.drive();
    assert_eq!(
        pair.a.take_events(),
        [returned(2, Ok(in_data(data(&7u32))))]
    );
    assert_eq!(
        pair.a.session.poll_timeout(),
        Some(t0() + Limits::default().keepalive_idle)
    );
    pair.a.session.handle_timeout(t0() + Duration::from_secs(8));
    assert_eq!(pair.a.take_events(), []);
    assert_eq!(pair.a.session.poll_transmit(), None);
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn deadline_breaks_the_question_and_sends_pipelined_on_it_with_timeout() {
    let mut pair = Pair::new();
    // A fetch B does not serve yet, one pipelined handle, a 1 s deadline.
    pair.a
        .session
        .bootstrap(QuestionId(1), swiss(1), Some(1), 1);
    pair.a.session.set_deadline(QuestionId(1), deadline(1));
    // Sent on the promise before the deadline: it goes to B and waits on the answer.
    pair.a.session.send(ask(
        LocalTarget::Answer(QuestionId(1)),
        "early",
        no_args(),
        2,
    ));
    pair.drive();
    pair.a.take_sent();
    pair.a.session.handle_timeout(t0() + Duration::from_secs(1));
    assert_eq!(pair.a.take_events(), [returned(1, Err(timed_out(1)))]);
    // Sent on the promise after the deadline: breaks here with the same error.
    pair.a.session.send(ask(
        LocalTarget::Answer(QuestionId(1)),
        "late",
        no_args(),
        3,
    ));
    assert_eq!(pair.a.take_events(), [returned(3, Err(timed_out(1)))]);
    pair.drive();
    // The second finish is for the call queued on the fetch, which B broke.
    assert_eq!(
        pair.a.take_sent(),
        [
            Message::Finish { question: 1 },
            Message::Finish { question: 2 }
        ]
    );
    // B stopped the fetch; the call queued on it broke with `cancelled`.
    let b_events = pair.b.take_events();
    assert_eq!(b_events.last(), Some(&Seen::Cancel(AnswerId(1))));
    assert_eq!(pair.b.serve_bootstraps(), []);
    let events = pair.a.take_events();
    assert_eq!(broken_kinds(&events), [BrokenKind::Cancelled]);
    assert!(matches!(events[..], [Seen::Return { resolver: 2, .. }]));
    // The pipelined handle still holds the broken question; its drop frees it.
    assert_tables!(pair.a, questions: 1);
    pair.a.session.drop_question_ref(QuestionId(1));
    pair.drive();
    assert_tables!(pair.a);
    assert_tables!(pair.b);
}

#[test]
fn a_held_call_past_its_deadline_never_goes_out() {
    let mut pair = Pair::with_limits(
        Limits::default(),
        Limits {
            max_inbound_questions: MIN_QUESTIONS,
            ..Limits::default()
        },
    );
    let obj = pair.a_imports_b_obj(1);
    for q in 2..2 + MIN_QUESTIONS as u64 {
        pair.a
            .session
            .send(ask(LocalTarget::Import(obj), "slow", no_args(), q));
    }
    let timed = 2 + MIN_QUESTIONS as u64;
    pair.a.session.send(Call {
        deadline: Some(deadline(2)),
        ..ask(LocalTarget::Import(obj), "slow", no_args(), timed)
    });
    pair.drive();
    assert_tables!(pair.a, held: 1, questions: MIN_QUESTIONS, imports: 1);
    pair.a.take_sent();
    pair.a.session.handle_timeout(t0() + Duration::from_secs(2));
    assert_eq!(
        pair.a.take_events(),
        [returned(u32::try_from(timed).unwrap(), Err(timed_out(2)))]
    );
    // Nothing to tell the peer: it never heard of the call.
    assert_eq!(pair.a.session.poll_transmit(), None);
    assert_tables!(pair.a, questions: MIN_QUESTIONS, imports: 1);
}

#[test]
fn a_cancelled_question_counts_against_the_peers_limit_until_its_return() {
    let mut pair = Pair::with_limits(
        Limits::default(),
        Limits {
            max_inbound_questions: MIN_QUESTIONS,
            ..Limits::default()
        },
    );
    let obj = pair.a_imports_b_obj(1);
    for q in 2..2 + MIN_QUESTIONS as u64 {
        pair.a
            .session
            .send(ask(LocalTarget::Import(obj), "slow", no_args(), q));
    }
    let next = 2 + MIN_QUESTIONS as u64;
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "next", no_args(), next));
    assert_tables!(pair.a, held: 1, questions: MIN_QUESTIONS, imports: 1);
    pair.pump(A);
    pair.b.take_events();
    pair.a.take_sent();

    // Cancelled: the early finish goes, but the next call waits for the return.
    pair.a.session.cancel(QuestionId(2));
    let events = pair.a.take_events();
    assert_eq!(broken_kinds(&events), [BrokenKind::Cancelled]);
    pair.pump(A);
    assert_eq!(pair.a.take_sent(), [Message::Finish { question: 2 }]);
    assert_tables!(pair.a, held: 1, questions: MIN_QUESTIONS, imports: 1);
    assert_eq!(pair.b.take_events(), [Seen::Cancel(AnswerId(2))]);
    assert_tables!(pair.b, answers: MIN_QUESTIONS - 1, exports: 1);

    // The return frees the slot: the held call goes, and B holds exactly its limit.
    pair.pump(B);
    assert_tables!(pair.a, questions: MIN_QUESTIONS, imports: 1);
    pair.pump(A);
    assert_eq!(pair.b.session.stats().answers, MIN_QUESTIONS);
    assert!(!pair.b.session.is_closed());

    // A held call cancelled before it goes out is simply never sent.
    let after = next + 1;
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "never", no_args(), after));
    assert_tables!(pair.a, held: 1, questions: MIN_QUESTIONS, imports: 1);
    pair.a.session.cancel(QuestionId(after));
    assert_tables!(pair.a, questions: MIN_QUESTIONS, imports: 1);
    assert_eq!(pair.a.session.poll_transmit(), None);
}

#[test]
fn a_return_already_on_its_way_when_the_asker_cancels_is_accepted_and_released() {
    let mut pair = Pair::new();
    let obj = pair.a_imports_b_obj(1);
    pair.a
        .session
        .send(ask(LocalTarget::Import(obj), "make", no_args(), 2));
    pair.drive();
    pair.a.take_sent();
    pair.b.take_events();
    // B answers with a new object; its return crosses A's early finish.
    pair.b
        .session
        .answer(AnswerId(2), Ok(OutPayload::single_cap(OutCap::Local(301))));
    assert_tables!(pair.b, answers: 1, exports: 2);
    pair.a.session.cancel(QuestionId(2));
    pair.a.take_events();
    pair.pump(B);
    // Not a violation: the result's reference is released at once.
    assert!(!pair.a.session.is_closed());
    assert_eq!(pair.a.take_events(), []);
    pair.drive();
    let sent = pair.a.take_sent();
    assert_eq!(sent[0], Message::Finish { question: 2 });
    assert_eq!(releases(&sent), [(2, 1)]);
    // One finish only, and no return for it: B had answered already.
    assert_eq!(
        sent.iter()
            .filter(|m| matches!(m, Message::Finish { .. }))
            .count(),
        1
    );
    assert_eq!(pair.b.take_events(), []);
    assert_tables!(pair.a, imports: 1);
    assert_tables!(pair.b, exports: 1);
}

#[test]
fn an_early_finish_breaks_the_calls_queued_on_the_answer_with_cancelled() {
    let mut pair = Pair::new();
    pair.a
        .session
        .bootstrap(QuestionId(1), swiss(1), Some(1), 1);
    pair.a.session.send(tell(
        LocalTarget::Answer(QuestionId(1)),
        "queued_one_way",
        no_args(),
    ));
    pair.a.session.send(ask(
        LocalTarget::Answer(QuestionId(1)),
        "queued",
        no_args(),
        2,
    ));
    pair.drive();
    // Sends went on the answer: dropping the handle does not cancel it; a peer's
    // finish does (here written by hand, as another implementation might send it).
    pair.a.session.drop_question_ref(QuestionId(1));
    pair.drive();
    assert_eq!(
        pair.a.take_sent().len(),
        3,
        "bootstrap and two delivers only"
    );
    pair.b
        .session
        .handle_message(Message::Finish { question: 1 });
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
    let sent: Vec<_> = std::iter::from_fn(|| pair.b.session.poll_transmit()).collect();
    assert_eq!(
        sent.iter().filter_map(returned_kind).collect::<Vec<_>>(),
        [(1, "cancelled".to_owned()), (2, "cancelled".to_owned())]
    );
    // The one-way send is dropped; the answer to the call waits for its finish.
    assert_tables!(pair.b, answers: 1);
}
