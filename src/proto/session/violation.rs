//! [`Violation`]: the ways a peer can break the protocol, one variant per offence.
//!
//! Each variant carries the numbers involved and reads as a sentence about what the peer
//! did. Detecting a violation is the job of the room whose table it concerns; this file
//! must not decide anything, only name and describe.

#[cfg(doc)]
use crate::limits::Limits;
use crate::proto::{AnswerId, ExportId, ImportId, QuestionId};
use crate::wire::message::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use crate::wire::{DecodeError, MIN_FRAME, MIN_QUESTIONS};

/// A protocol violation by the peer: bad bytes or bad behaviour. It aborts the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// A frame that is not a well-formed captp message.
    #[error("undecodable message: {0}")]
    Decode(#[from] DecodeError),
    /// The first message was not `hello`.
    #[error("expected hello as the first message, got {got}")]
    NoHello {
        /// The kind that came instead.
        got: &'static str,
    },
    /// A `hello` announcing a frame limit below [`MIN_FRAME`].
    #[error("the peer's frame limit of {max_frame} bytes is below the minimum of {MIN_FRAME}")]
    FrameLimitTooSmall {
        /// The limit the peer announced.
        max_frame: u64,
    },
    /// A `hello` announcing a question limit below [`MIN_QUESTIONS`].
    #[error(
        "the peer accepts only {max_questions} outstanding questions, below the minimum of {MIN_QUESTIONS}"
    )]
    QuestionLimitTooSmall {
        /// The limit the peer announced.
        max_questions: u64,
    },
    /// A `hello` announcing one of its other limits (`max_queued`, `max_imports`,
    /// `max_caps`, `max_depth`, `max_items`) below the protocol minimum.
    #[error("the peer's hello announces {field} {value}, below the minimum of {minimum}")]
    LimitTooSmall {
        /// The field's wire name.
        field: &'static str,
        /// The value the peer announced.
        value: u64,
        /// The protocol minimum for that field.
        minimum: usize,
    },
    /// A second `hello`.
    #[error("hello sent twice")]
    DuplicateHello,
    /// A protocol version this crate does not speak.
    #[error(
        "unsupported protocol version {version} (this vat speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})"
    )]
    UnsupportedVersion {
        /// The version the peer announced.
        version: u32,
    },
    /// A question id that is already in use.
    #[error("question id {0} is already in use")]
    DuplicateQuestion(AnswerId),
    /// A target or descriptor naming an export that does not exist.
    #[error("no export with id {0}")]
    UnknownExport(ExportId),
    /// A target or `finish` naming an answer that does not exist.
    #[error("no answer with id {0}")]
    UnknownAnswer(AnswerId),
    /// A `want_return` for a quiet question the asker had already finished
    /// (PROTOCOL.md 9.15).
    #[error("want_return for answer {0} after its finish")]
    WantReturnAfterFinish(AnswerId),
    /// A message or descriptor of a protocol version newer than the one the peer
    /// announced.
    #[error("{what} is not part of protocol version {version}, which the peer announced")]
    NotInVersion {
        /// The message kind or descriptor.
        what: &'static str,
        /// The version the peer announced.
        version: u32,
    },
    /// A `return` for a question never asked or already answered.
    #[error("return for question {0}, which was never asked or is already answered")]
    UnknownQuestion(QuestionId),
    /// A `resolve` for an import that is not a promise, or that already resolved.
    #[error("resolve of {0}, which is not an unresolved promise")]
    BadResolve(ImportId),
    /// A `release` with a zero count or a count above what the peer holds.
    #[error("release of export {export} with count {count}, but the peer holds {held}")]
    BadRelease {
        /// The export named.
        export: ExportId,
        /// The count in the message.
        count: u64,
        /// The count the peer actually holds.
        held: u64,
    },
    /// More outstanding questions than [`Limits::max_inbound_questions`].
    #[error("more than {limit} outstanding questions")]
    TooManyQuestions {
        /// The limit in force.
        limit: usize,
    },
    /// More imports than [`Limits::max_imports`].
    #[error("more than {limit} imported references")]
    TooManyImports {
        /// The limit in force.
        limit: usize,
    },
    /// More messages queued on one unresolved answer than
    /// [`Limits::max_queued_per_promise`].
    #[error("more than {limit} messages queued on one unresolved promise")]
    TooManyQueued {
        /// The limit in force.
        limit: usize,
    },
    /// More capability-table entries in one message than [`Limits::max_caps_per_message`].
    #[error("more than {limit} capability-table entries in one message")]
    TooManyCaps {
        /// The limit in force.
        limit: usize,
    },
}
