//! [`Broken`]: the error a promise or reference carries when it fails.
//!
//! A `Broken` crosses the wire (a remote method's error reaches the caller as one) and is
//! also made locally (a lost connection breaks every promise through it). It carries a
//! [`BrokenKind`] a program can match on and a message a person can act on. It never
//! carries a swiss number or any other secret.

use std::fmt;

/// Why a promise or reference broke. Match on this; show the message to people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BrokenKind {
    /// The session the promise or reference travelled over ended: the connection was
    /// lost, the peer went silent past the keepalive limit, either side aborted the
    /// session (a protocol violation or a limit), or the local vat shut down.
    Disconnected,
    /// The peer vat could not be reached: TCP connect or the TLS handshake failed.
    Unreachable,
    /// The server presented a key whose vat ID differs from the one in the sturdy ref.
    VatIdMismatch,
    /// No object is exported under that swiss number (unknown, or revoked: the two are
    /// indistinguishable on purpose).
    UnknownObject,
    /// The object has no method of that name.
    UnknownMethod,
    /// The callee could not decode the arguments into the types the method expects, or
    /// the caller could not encode them.
    BadArguments,
    /// The caller could not decode the result into the type it asked for.
    Decode,
    /// A message was sent to a promise that resolved to plain data, not an object.
    NotAnObject,
    /// The message or result would exceed a limit: the peer's frame limit, the CBOR
    /// depth or item limits, the references per message, or the exports per session.
    TooLarge,
    /// The method ran and returned an error (an application error).
    Failed,
    /// The call's deadline passed before its answer came: the per-call
    /// [`Promise::timeout`](crate::Promise::timeout) or the vat-wide
    /// [`Limits::call_timeout`](crate::Limits::call_timeout). The callee was told to
    /// stop (an early `finish`); whether the method had an effect is unknown.
    Timeout,
    /// The asker cancelled the call before it was answered (it dropped the promise, or
    /// its deadline passed): the callee stopped the method. Calls pipelined on the
    /// cancelled answer break with it.
    Cancelled,
    /// A kind this version of captp does not know, sent by a newer peer (its name is
    /// kept: [`Broken::kind_name`]), or a failure with no better kind.
    Other,
}

impl BrokenKind {
    /// The kind's name on the wire (`snake_case`), as PROTOCOL.md lists it.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokenKind::Disconnected => "disconnected",
            BrokenKind::Unreachable => "unreachable",
            BrokenKind::VatIdMismatch => "vat_id_mismatch",
            BrokenKind::UnknownObject => "unknown_object",
            BrokenKind::UnknownMethod => "unknown_method",
            BrokenKind::BadArguments => "bad_arguments",
            BrokenKind::Decode => "decode",
            BrokenKind::NotAnObject => "not_an_object",
            BrokenKind::TooLarge => "too_large",
            BrokenKind::Failed => "failed",
            BrokenKind::Timeout => "timeout",
            BrokenKind::Cancelled => "cancelled",
            BrokenKind::Other => "other",
        }
    }

    /// Parses a wire name; names this version does not know become [`BrokenKind::Other`].
    pub fn from_wire(name: &str) -> BrokenKind {
        match name {
            "disconnected" => BrokenKind::Disconnected,
            "unreachable" => BrokenKind::Unreachable,
            "vat_id_mismatch" => BrokenKind::VatIdMismatch,
            "unknown_object" => BrokenKind::UnknownObject,
            "unknown_method" => BrokenKind::UnknownMethod,
            "bad_arguments" => BrokenKind::BadArguments,
            "decode" => BrokenKind::Decode,
            "not_an_object" => BrokenKind::NotAnObject,
            "too_large" => BrokenKind::TooLarge,
            "failed" => BrokenKind::Failed,
            "timeout" => BrokenKind::Timeout,
            "cancelled" => BrokenKind::Cancelled,
            _ => BrokenKind::Other,
        }
    }
}

impl fmt::Display for BrokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A broken promise or reference: a kind to match on and a message for people.
///
/// # Examples
///
/// ```
/// use captp::{Broken, BrokenKind};
///
/// let b = Broken::failed("amount must not be negative");
/// assert_eq!(b.kind(), BrokenKind::Failed);
/// assert_eq!(b.to_string(), "failed: amount must not be negative");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Broken {
    kind: BrokenKind,
    message: String,
    /// The peer's name for a kind this version does not know (`kind` is then `Other`),
    /// kept so that it is shown, and passed on unchanged by a vat that forwards it.
    unknown_kind: Option<Box<str>>,
    /// Structured error data for programs: one CBOR item, as the method's typed error
    /// encoded it (`data` on the wire, PROTOCOL.md 12). Never a reference.
    data: Option<Box<[u8]>>,
}

impl Broken {
    /// A broken value of the given kind.
    pub fn new(kind: BrokenKind, message: impl Into<String>) -> Broken {
        Broken {
            kind,
            message: message.into(),
            unknown_kind: None,
            data: None,
        }
    }

    /// A broken value as a peer sent it: a kind name this version does not know becomes
    /// [`BrokenKind::Other`] and keeps its name.
    pub(crate) fn from_wire(kind: String, message: String) -> Broken {
        let known = BrokenKind::from_wire(&kind);
        Broken {
            kind: known,
            message,
            unknown_kind: (known == BrokenKind::Other && kind != BrokenKind::Other.as_str())
                .then(|| kind.into_boxed_str()),
            data: None,
        }
    }

    /// This error with `data` (one CBOR item, unchecked here) as its structured data,
    /// replacing any it had. The typed layer (`Broken::with_data`, in `vat/typed.rs`)
    /// encodes and bounds it; a peer's data arrives here as sent.
    pub(crate) fn with_data_bytes(mut self, data: Vec<u8>) -> Broken {
        self.data = Some(data.into_boxed_slice());
        self
    }

    /// An application error: what a method returns when it refuses or fails.
    pub fn failed(message: impl Into<String>) -> Broken {
        Broken::new(BrokenKind::Failed, message)
    }

    /// The error for a method name the object does not have.
    pub fn unknown_method(method: &str) -> Broken {
        Broken::new(
            BrokenKind::UnknownMethod,
            format!("no method named {method:?} on this object"),
        )
    }

    /// The error for arguments that do not decode into what the method expects.
    pub fn bad_arguments(detail: impl fmt::Display) -> Broken {
        Broken::new(
            BrokenKind::BadArguments,
            format!("arguments do not match the method's parameters: {detail}"),
        )
    }

    /// The error for a swiss number the vat does not know (or has revoked).
    pub fn unknown_object() -> Broken {
        Broken::new(
            BrokenKind::UnknownObject,
            "no object is exported under this sturdy ref (unknown or revoked swiss number)",
        )
    }

    /// The error for a message sent to a promise that resolved to plain data: there is
    /// no object to call. With the method's name, the message says which call broke.
    pub fn not_an_object(method: Option<&str>) -> Broken {
        let message = match method {
            Some(method) => {
                format!("cannot call {method:?}: the promise resolved to data, not an object")
            }
            None => "the promise resolved to data, not an object".to_owned(),
        };
        Broken::new(BrokenKind::NotAnObject, message)
    }

    /// The error for a lost session.
    pub fn disconnected(reason: impl fmt::Display) -> Broken {
        Broken::new(BrokenKind::Disconnected, format!("session ended: {reason}"))
    }

    /// The error for a call whose deadline passed after `waited` without an answer.
    pub fn timeout(waited: std::time::Duration) -> Broken {
        Broken::new(
            BrokenKind::Timeout,
            format!(
                "no answer within the call's deadline of {waited:?}; the callee was told to \
                 stop (raise the deadline with Promise::timeout or Limits::call_timeout if \
                 the method is slow)"
            ),
        )
    }

    /// The error an answer breaks with when its asker cancelled it: what calls
    /// pipelined on it receive.
    pub fn cancelled() -> Broken {
        Broken::new(
            BrokenKind::Cancelled,
            "the asker cancelled the call this one was sent to before it was answered",
        )
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> BrokenKind {
        self.kind
    }

    /// The kind's name as it travels on the wire: [`BrokenKind::as_str`], or, for a kind
    /// a newer peer sent that this version does not know ([`BrokenKind::Other`]), the
    /// peer's own name for it. It may come from a peer: print it escaped (as `Display`
    /// does).
    pub fn kind_name(&self) -> &str {
        self.unknown_kind.as_deref().unwrap_or(self.kind.as_str())
    }

    /// The human-readable message. It may come from a peer: print it escaped (as
    /// `Display` does), never raw to a terminal.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The structured error data as it travels: the bytes of one CBOR item, or `None`
    /// when the error has none. Programs decode it with `Broken::data`; this is for
    /// tools that show it raw. It may come from a peer.
    pub fn data_bytes(&self) -> Option<&[u8]> {
        self.data.as_deref()
    }
}

/// Shows `kind: message`, with control characters escaped: both may come from a peer,
/// and a terminal must not take them as commands.
impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.kind_name())?;
        f.write_str(": ")?;
        write_escaped(f, &self.message)
    }
}

/// Writes `text` with its control characters (newlines and escape sequences included)
/// escaped as `\n`, `\u{1b}` and so on; everything else as it is.
pub(crate) fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    for piece in text.split_inclusive(char::is_control) {
        match piece.char_indices().last() {
            Some((at, c)) if c.is_control() => {
                f.write_str(&piece[..at])?;
                write!(f, "{}", c.escape_default())?;
            }
            _ => f.write_str(piece)?,
        }
    }
    Ok(())
}

impl std::error::Error for Broken {}

/// Displays a string (a peer's, say) with [`write_escaped`], for log fields.
pub(crate) struct Escaped<'a>(pub(crate) &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for kind in [
            BrokenKind::Disconnected,
            BrokenKind::Unreachable,
            BrokenKind::VatIdMismatch,
            BrokenKind::UnknownObject,
            BrokenKind::UnknownMethod,
            BrokenKind::BadArguments,
            BrokenKind::Decode,
            BrokenKind::NotAnObject,
            BrokenKind::TooLarge,
            BrokenKind::Failed,
            BrokenKind::Timeout,
            BrokenKind::Cancelled,
            BrokenKind::Other,
        ] {
            assert_eq!(BrokenKind::from_wire(kind.as_str()), kind);
        }
        assert_eq!(BrokenKind::from_wire("from_the_future"), BrokenKind::Other);
    }

    #[test]
    fn an_unknown_kind_keeps_its_name() {
        let b = Broken::from_wire("from_the_future".into(), "soon".into());
        assert_eq!(b.kind(), BrokenKind::Other);
        assert_eq!(b.kind_name(), "from_the_future");
        assert_eq!(b.to_string(), "from_the_future: soon");
        let known = Broken::from_wire("failed".into(), "no".into());
        assert_eq!(
            (known.kind(), known.kind_name()),
            (BrokenKind::Failed, "failed")
        );
        assert_eq!(known, Broken::failed("no"));
        let other = Broken::from_wire("other".into(), "x".into());
        assert_eq!(other, Broken::new(BrokenKind::Other, "x"));
    }

    #[test]
    fn display_escapes_control_characters_a_peer_may_send() {
        let b = Broken::from_wire(
            "k\u{1b}[2J".into(),
            "line\nforged: \u{7}bell ünïcode".into(),
        );
        let shown = b.to_string();
        assert_eq!(shown, "k\\u{1b}[2J: line\\nforged: \\u{7}bell ünïcode");
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        // The values themselves are kept as sent.
        assert_eq!(b.message(), "line\nforged: \u{7}bell ünïcode");
    }

    #[test]
    fn not_an_object_names_the_method_when_given() {
        let b = Broken::not_an_object(Some("deposit"));
        assert_eq!(b.kind(), BrokenKind::NotAnObject);
        assert_eq!(
            b.message(),
            "cannot call \"deposit\": the promise resolved to data, not an object"
        );
        let b = Broken::not_an_object(None);
        assert_eq!(b.kind(), BrokenKind::NotAnObject);
        assert_eq!(b.message(), "the promise resolved to data, not an object");
    }
}
