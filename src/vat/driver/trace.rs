//! What the session task logs: the `DEBUG` event of each delivered call, how a session
//! ended (at a level that fits: an orderly close is not an alarm), and read failures in
//! plain words. It must log no payload bytes and no swiss number, and escape a peer's
//! strings.

use super::*;

/// What the `DEBUG` event for a delivered call reports when the call ends.
pub(super) struct CallTrace {
    pub(super) method: String,
    pub(super) answer: Option<AnswerId>,
    pub(super) target: &'static str,
    pub(super) started: Instant,
}

impl CallTrace {
    /// Logs the call's end: `call` for a result or an application error, `call
    /// refused` for a refusal (unknown method, bad arguments, too large, ...).
    pub(super) fn finished(&self, outcome: &Outcome) {
        let micros = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let method = crate::broken::Escaped(&self.method);
        let answer = self.answer.map(|a| a.0);
        match outcome {
            Ok(_) => tracing::debug!(
                method = %method, answer, target = self.target, outcome = "ok", micros, "call"
            ),
            Err(b) if is_refusal(b.kind()) => tracing::debug!(
                method = %method, answer, target = self.target, outcome = b.kind_name(),
                reason = %b, micros, "call refused"
            ),
            Err(b) => tracing::debug!(
                method = %method, answer, target = self.target, outcome = b.kind_name(),
                micros, "call"
            ),
        }
    }
}

/// Failures the callee's side decided before (or instead of) running the method.
pub(super) fn is_refusal(kind: BrokenKind) -> bool {
    matches!(
        kind,
        BrokenKind::UnknownMethod
            | BrokenKind::BadArguments
            | BrokenKind::TooLarge
            | BrokenKind::UnknownObject
    )
}

/// The kind of target a delivered call has, for logs.
pub(super) fn target_kind(target: &InCap<ObjectHandle>) -> &'static str {
    match target {
        InCap::Local(o) if o.proxied().is_some() => "proxy",
        InCap::Local(_) => "local",
        InCap::Import(_) | InCap::Promise(_) | InCap::ThirdParty(..) => "forward",
    }
}

/// Logs how a session ended, at a level that fits: an orderly close (the peer shut down,
/// or this vat did) and a lost connection are ordinary (`INFO`/`DEBUG`); a peer that
/// aborted for another reason, or broke the protocol, is worth a `WARN`.
pub(super) fn log_close(reason: &CloseReason) {
    match reason {
        CloseReason::PeerAborted(r) if r == SHUTDOWN_REASON => {
            tracing::info!(ending = "closed", "the peer closed the session")
        }
        CloseReason::PeerAborted(_) => {
            tracing::warn!(ending = "peer_aborted", %reason, "the peer aborted the session")
        }
        CloseReason::Violation(_) => {
            tracing::warn!(ending = "violation", %reason, "aborted the session: the peer broke the protocol")
        }
        CloseReason::ConnectionLost(why) => {
            tracing::info!(ending = "connection_lost", reason = %why, "connection lost")
        }
        CloseReason::Local(r) if r == SHUTDOWN_REASON => {
            tracing::debug!(
                ending = "local_shutdown",
                "closed the session: this vat is shutting down"
            )
        }
        CloseReason::Local(_) => {
            tracing::info!(ending = "local_abort", %reason, "aborted the session")
        }
    }
}

/// Says why a read failed in plain words. A peer that vanished without TLS
/// `close_notify` (killed, or its machine lost) is an ordinary lost connection, not an
/// error to explain with a link; other errors keep their text.
pub(super) fn read_failure(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        "the peer went away without closing the connection".to_owned()
    } else {
        format!("read failed: {e}")
    }
}
