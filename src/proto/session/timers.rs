//! Time in the session: the handshake timeout, the keepalive and the questions'
//! deadlines, decided here and driven by the runtime with instants it passes in.
//!
//! The runtime reports arriving bytes with `handle_heard`, asks `poll_timeout` when to
//! wake, and calls `handle_timeout` then. This room must not read a clock, sleep, or
//! decide anything about a message's content; it sees only instants and silence.
//!
//! Keepalive pings are the session's own: their nonces have [`KEEPALIVE_NONCE_BIT`] set,
//! which the runtime's [`Session::ping`] nonces (counted up from 1) never reach, and
//! their pongs are not reported as [`super::Event::Pong`]. The runtime sees only the
//! pongs of the pings it asked for (and any other nonce the peer sends unasked).

use std::hash::Hash;
use std::time::{Duration, Instant};

use super::{Event, Session, State};
use crate::wire::Message;

/// Set in the nonce of every keepalive ping: its pong is the session's, not the runtime's.
const KEEPALIVE_NONCE_BIT: u64 = 1 << 63;

/// When the session started, when the peer was last heard, and the keepalive's progress.
#[derive(Debug)]
pub(super) struct Timers {
    started: Instant,
    last_heard: Instant,
    /// A keepalive ping went out in the current silent period.
    pinged: bool,
    /// Counts keepalive pings, for their nonces.
    keepalives_sent: u64,
}

impl Timers {
    pub(super) fn new(now: Instant) -> Timers {
        Timers {
            started: now,
            last_heard: now,
            pinged: false,
            keepalives_sent: 0,
        }
    }
}

impl<O: Clone + Eq + Hash, R> Session<O, R> {
    /// Bytes arrived from the peer at `now`: it is not silent. Call it for any bytes,
    /// even part of a frame (a peer sending a large frame slowly is not silent), before
    /// handling the frames they complete. It re-arms the keepalive ping.
    pub fn handle_heard(&mut self, now: Instant) {
        self.timers.last_heard = self.timers.last_heard.max(now);
        self.timers.pinged = false;
    }

    /// The earliest instant at which [`Session::handle_timeout`] has something to do:
    /// the handshake deadline while the peer's `hello` has not arrived, the keepalive
    /// ping after `keepalive_idle` of silence (once per silent period), the dead-peer
    /// limit after `keepalive_dead` of silence, and the earliest question deadline
    /// ([`super::Call::deadline`]). `None` once closed.
    ///
    /// It changes after `handle_heard`, `handle_timeout`, the peer's `hello`, and any
    /// command that asks, answers or cancels a question: ask again after each. It may
    /// name the deadline of a question answered since; `handle_timeout` then does
    /// nothing for it.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = &self.timers;
        let handshake = match self.state {
            State::Closed(_) => return None,
            State::AwaitingHello => after(t.started, self.limits.handshake_timeout),
            State::Open => None,
        };
        let idle = if t.pinged {
            None
        } else {
            after(t.last_heard, self.limits.keepalive_idle)
        };
        let dead = after(t.last_heard, self.limits.keepalive_dead);
        let question = self.deadlines.first().map(|&(at, _)| at);
        [handshake, idle, dead, question]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires whatever is due at `now`: questions past their deadline break with
    /// `Timeout` and get an early `finish` (first, so a deadline that falls with a
    /// session limit is reported as the call's own); past the handshake deadline
    /// without the peer's `hello`, the session aborts; past `keepalive_dead` of silence
    /// it closes as lost (every pending promise breaks with `Disconnected`); past
    /// `keepalive_idle` of silence it queues one keepalive ping. Calling it early, or
    /// when closed, does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        self.expire_questions(now);
        let t = &self.timers;
        if self.state == State::AwaitingHello
            && is_due(now, t.started, self.limits.handshake_timeout)
        {
            self.abort(format!(
                "no hello within the handshake timeout of {:?}",
                self.limits.handshake_timeout
            ));
        } else if is_due(now, t.last_heard, self.limits.keepalive_dead) {
            let silent = now.saturating_duration_since(t.last_heard);
            self.handle_connection_lost(format!(
                "the peer was silent for {silent:?} (keepalive limit)"
            ));
        } else if !t.pinged && is_due(now, t.last_heard, self.limits.keepalive_idle) {
            self.send_keepalive_ping();
        }
    }

    /// Queues a keepalive ping: the pong, or anything else the peer sends, shows it is
    /// still there.
    fn send_keepalive_ping(&mut self) {
        self.timers.pinged = true;
        self.timers.keepalives_sent += 1;
        let nonce = KEEPALIVE_NONCE_BIT | self.timers.keepalives_sent;
        self.outbox.push_back(Message::Ping { nonce });
    }

    /// A pong from the peer: reported to the runtime unless it answers a keepalive ping.
    pub(super) fn handle_pong(&mut self, nonce: u64) {
        if nonce & KEEPALIVE_NONCE_BIT == 0 {
            self.events.push_back(Event::Pong { nonce });
        }
    }
}

/// `start + wait`, or `None` when that is past what an `Instant` can hold (never due).
fn after(start: Instant, wait: Duration) -> Option<Instant> {
    start.checked_add(wait)
}

/// Whether `wait` has passed since `start` at `now`.
fn is_due(now: Instant, start: Instant, wait: Duration) -> bool {
    after(start, wait).is_some_and(|deadline| now >= deadline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use crate::proto::CloseReason;

    type S = Session<u32, u32>;

    const HANDSHAKE: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(30);
    const DEAD: Duration = Duration::from_secs(90);
    const TICK: Duration = Duration::from_nanos(1);

    fn limits() -> Limits {
        Limits {
            handshake_timeout: HANDSHAKE,
            keepalive_idle: IDLE,
            keepalive_dead: DEAD,
            ..Limits::default()
        }
    }

    /// Two sessions wired in memory: what one transmits, the other hears at the instant
    /// given to `drive`.
    struct Pair {
        a: S,
        b: S,
    }

    impl Pair {
        fn new(t0: Instant) -> Pair {
            Pair {
                a: Session::new(limits(), t0),
                b: Session::new(limits(), t0),
            }
        }

        /// Passes messages both ways until both outboxes are empty.
        fn drive(&mut self, now: Instant) {
            for _ in 0..100 {
                let moved =
                    pass(&mut self.a, &mut self.b, now) | pass(&mut self.b, &mut self.a, now);
                if !moved {
                    return;
                }
            }
            panic!("the sessions kept talking for 100 rounds");
        }
    }

    /// Passes everything `from` transmits to `to`, heard at `now`; whether anything moved.
    fn pass(from: &mut S, to: &mut S, now: Instant) -> bool {
        let mut moved = false;
        while let Some(msg) = from.poll_transmit() {
            to.handle_heard(now);
            to.handle_message(msg);
            moved = true;
        }
        moved
    }

    fn events(s: &mut S) -> Vec<Event<u32, u32>> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn sent(s: &mut S) -> Vec<Message> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    fn is_keepalive_ping(msg: &Message) -> bool {
        matches!(msg, Message::Ping { nonce } if nonce & KEEPALIVE_NONCE_BIT != 0)
    }

    #[test]
    fn hello_timeout_fires_exactly_at_its_deadline() {
        let t0 = Instant::now();
        let mut s: S = Session::new(limits(), t0);
        assert_eq!(s.poll_timeout(), Some(t0 + HANDSHAKE));
        s.handle_timeout(t0 + HANDSHAKE - TICK);
        assert!(!s.is_closed());
        assert_eq!(sent(&mut s).len(), 1, "only the hello");
        s.handle_timeout(t0 + HANDSHAKE);
        assert!(s.is_closed());
        let reason = "no hello within the handshake timeout of 10s";
        assert_eq!(
            sent(&mut s),
            [Message::Abort {
                reason: reason.to_owned()
            }]
        );
        assert!(matches!(
            &events(&mut s)[..],
            [Event::Closed { reason: CloseReason::Local(r) }] if r == reason
        ));
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn no_hello_timeout_once_hello_arrived() {
        let t0 = Instant::now();
        let mut pair = Pair::new(t0);
        pair.drive(t0 + Duration::from_secs(1));
        assert!(pair.a.is_established() && pair.b.is_established());
        // Heard at 1 s: the next deadline is the keepalive ping, not the handshake.
        assert_eq!(
            pair.a.poll_timeout(),
            Some(t0 + Duration::from_secs(1) + IDLE)
        );
        pair.a.handle_timeout(t0 + HANDSHAKE);
        pair.a
            .handle_timeout(t0 + HANDSHAKE + Duration::from_secs(5));
        assert!(!pair.a.is_closed());
        assert_eq!(sent(&mut pair.a), []);
    }

    #[test]
    fn keepalive_ping_goes_once_per_silent_period_and_handle_heard_rearms_it() {
        let t0 = Instant::now();
        let mut pair = Pair::new(t0);
        pair.drive(t0);
        pair.a.handle_timeout(t0 + IDLE - TICK);
        assert_eq!(sent(&mut pair.a), []);
        pair.a.handle_timeout(t0 + IDLE);
        let out = sent(&mut pair.a);
        assert!(
            matches!(&out[..], [ping] if is_keepalive_ping(ping)),
            "{out:?}"
        );
        // Still silent: no second ping; the next deadline is the dead-peer limit.
        assert_eq!(pair.a.poll_timeout(), Some(t0 + DEAD));
        pair.a.handle_timeout(t0 + IDLE + IDLE);
        assert_eq!(sent(&mut pair.a), []);
        // The peer is heard: a new silent period, a new ping at its idle limit.
        let heard = t0 + Duration::from_secs(61);
        pair.a.handle_heard(heard);
        assert_eq!(pair.a.poll_timeout(), Some(heard + IDLE));
        pair.a.handle_timeout(heard + IDLE);
        let out = sent(&mut pair.a);
        assert!(
            matches!(&out[..], [ping] if is_keepalive_ping(ping)),
            "{out:?}"
        );
        assert!(!pair.a.is_closed());
    }

    #[test]
    fn silence_past_keepalive_dead_closes_the_session_as_lost() {
        let t0 = Instant::now();
        let mut pair = Pair::new(t0);
        pair.drive(t0);
        pair.a.handle_timeout(t0 + IDLE);
        sent(&mut pair.a);
        pair.a.handle_timeout(t0 + DEAD - TICK);
        assert!(!pair.a.is_closed());
        pair.a.handle_timeout(t0 + DEAD);
        assert!(pair.a.is_closed());
        let reason = "the peer was silent for 90s (keepalive limit)";
        assert!(matches!(
            &events(&mut pair.a)[..],
            [Event::Closed { reason: CloseReason::ConnectionLost(r) }] if r == reason
        ));
        // A lost connection sends nothing: there is no one to tell.
        assert_eq!(sent(&mut pair.a), []);
        assert_eq!(pair.a.poll_timeout(), None);
        pair.a.handle_timeout(t0 + DEAD + DEAD);
        assert_eq!(events(&mut pair.a).len(), 0);
    }

    #[test]
    fn poll_timeout_reports_the_earliest_deadline_in_each_state() {
        let t0 = Instant::now();
        // Before hello, an idle limit shorter than the handshake timeout comes first.
        let short_idle = Limits {
            keepalive_idle: Duration::from_secs(4),
            ..limits()
        };
        let mut s: S = Session::new(short_idle, t0);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(4)));
        s.handle_timeout(t0 + Duration::from_secs(4));
        assert!(sent(&mut s).iter().any(is_keepalive_ping));
        // Pinged: the handshake deadline is next (it comes before the dead limit).
        assert_eq!(s.poll_timeout(), Some(t0 + HANDSHAKE));

        // Open and heard: the idle limit, then (pinged) the dead limit.
        let mut pair = Pair::new(t0);
        pair.drive(t0);
        assert_eq!(pair.a.poll_timeout(), Some(t0 + IDLE));
        pair.a.handle_timeout(t0 + IDLE);
        assert_eq!(pair.a.poll_timeout(), Some(t0 + DEAD));

        // Closed: nothing.
        pair.a.abort("done");
        assert_eq!(pair.a.poll_timeout(), None);
    }

    #[test]
    fn answered_keepalive_ping_keeps_the_session_alive_and_is_not_reported() {
        let t0 = Instant::now();
        let mut pair = Pair::new(t0);
        pair.drive(t0);
        pair.a.handle_timeout(t0 + IDLE);
        // The peer answers 1 s later.
        pair.drive(t0 + IDLE + Duration::from_secs(1));
        assert_eq!(
            events(&mut pair.a).len(),
            0,
            "a keepalive pong is not reported"
        );
        let heard = t0 + IDLE + Duration::from_secs(1);
        assert_eq!(pair.a.poll_timeout(), Some(heard + IDLE));
        // Past what would have been the dead limit: alive, and pinging again, since the
        // pong started a new silent period.
        pair.a.handle_timeout(t0 + DEAD);
        assert!(!pair.a.is_closed());
        let out = sent(&mut pair.a);
        assert!(
            matches!(&out[..], [ping] if is_keepalive_ping(ping)),
            "{out:?}"
        );
        assert_eq!(pair.a.poll_timeout(), Some(heard + DEAD));
        // A ping the runtime asked for is still reported.
        let nonce = pair.a.ping();
        pair.drive(t0 + DEAD);
        let got = events(&mut pair.a);
        assert!(
            matches!(&got[..], [Event::Pong { nonce: n }] if Some(*n) == nonce),
            "{got:?}"
        );
    }
}
