//! The protocol core: one [`Session`] per connection, sans-IO.
//!
//! A `Session` takes decoded peer messages (`handle_*`) and local commands (`send`,
//! `bootstrap`, `answer`, `drop_*`) and produces messages to transmit
//! ([`Session::poll_transmit`]) and events for the runtime ([`Session::poll_event`]).
//! It owns the four tables (questions, answers, imports, exports), promise pipelining,
//! reference counting for distributed GC, and the detection of protocol violations.
//!
//! It does no I/O, reads no clock and never runs user code (the instants it needs for the
//! handshake timeout and the keepalive are passed in): local objects are opaque
//! handles of type `O`, and the runtime's promise resolvers are opaque values of type
//! `R` that come back in [`Event::Return`]. That is what lets the tests in this module
//! wire two sessions together in memory and drive every message path without tokio.
//!
//! # Driving a session
//!
//! Time is passed in, never read: the session says when it next needs to be woken, and
//! the runtime wakes it then.
//!
//! ```text
//! let mut session = Session::new(limits, now);
//! loop {
//!     wait for bytes from the peer, a local command, or session.poll_timeout()
//!     bytes arrived:           session.handle_heard(now), then for each whole frame
//!                              session.handle_frame(body)
//!     a local command:         session.send(..) / bootstrap(..) / answer(..) / drop_*(..)
//!                              / cancel(..) / set_deadline(..)
//!     the deadline passed:     session.handle_timeout(now)
//!     drain events:            while let Some(ev) = session.poll_event() { .. }
//!                              (Event::Cancel: drop the method running for that answer)
//!     drain output:            while let Some(msg) = session.poll_transmit() { write it }
//!     stop once session.is_closed() and the output is written
//! }
//! ```
//!
//! Handling an event may feed new commands (answering a delivered call, for example);
//! drain events before output so that replies leave in the same write. Ask
//! `poll_timeout` again after every step: each can move the deadline.

mod ids;
mod session;
#[cfg(test)]
mod tests;

pub use ids::{AnswerId, ExportId, ImportId, QuestionId};
pub use session::{
    Call, CloseReason, Deadline, Event, InCap, InPayload, Introduction, LocalTarget, OutCap,
    OutPayload, PeerLimits, SHUTDOWN_REASON, Session, SessionStats, Violation, announce,
};
