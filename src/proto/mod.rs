//! The protocol core: one [`Session`] per connection, sans-IO.
//!
//! A `Session` takes decoded peer messages (`handle_*`) and local commands (`send`,
//! `bootstrap`, `answer`, `drop_*`) and produces messages to transmit
//! ([`Session::poll_transmit`]) and events for the runtime ([`Session::poll_event`]).
//! It owns the four tables (questions, answers, imports, exports), promise pipelining,
//! reference counting for distributed GC, and the detection of protocol violations.
//!
//! It does no I/O, reads no clock and never runs user code: local objects are opaque
//! handles of type `O`, and the runtime's promise resolvers are opaque values of type
//! `R` that come back in [`Event::Return`]. That is what lets the tests in this module
//! wire two sessions together in memory and drive every message path without tokio.
//!
//! # Driving a session
//!
//! ```text
//! loop {
//!     feed peer frames:        session.handle_frame(bytes)
//!     feed local commands:     session.send(..) / bootstrap(..) / answer(..) / drop_*(..)
//!     drain events:            while let Some(ev) = session.poll_event() { .. }
//!     drain output:            while let Some(msg) = session.poll_transmit() { write it }
//!     stop once session.is_closed() and the output is written
//! }
//! ```
//!
//! Handling an event may feed new commands (answering a delivered call, for example);
//! drain events before output so that replies leave in the same write.

mod ids;
mod session;
#[cfg(test)]
mod tests;

pub use ids::{AnswerId, ExportId, ImportId, QuestionId};
pub use session::{
    Call, CloseReason, Event, InCap, InPayload, LocalTarget, MIN_FRAME, MIN_QUESTIONS, OutCap,
    OutPayload, SINGLE_CAP_DATA, Session, SessionStats, Violation,
};
