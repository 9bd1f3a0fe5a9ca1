//! The captp messages and their CBOR shape (PROTOCOL.md is the normative text).
//!
//! Each message is a CBOR map with one key, the message kind, whose value is a map of
//! fields. Ids on the wire are plain unsigned integers whose meaning is fixed by the
//! message, from its *sender's* point of view: a `question` is always an id the asker
//! chose; an `export` target is an id the receiver of that message exported. The session
//! layer (`proto`) turns them into the typed ids of its four tables. Nothing here checks
//! that an id exists: that is the session's job.
//!
//! The hand-written codec (`codec.rs`) is what encodes and decodes these types. In test
//! builds they also derive serde, as an independent statement of the same layout: the
//! codec's tests compare the two. Nothing outside tests may rely on those derives.

use bytes::Bytes;
#[cfg(test)]
use serde::{Deserialize, Serialize};

use super::id::SwissNumber;
use super::{CborLimits, DecodeError, frame};
use crate::broken::Broken;

/// The protocol version this crate speaks, sent in [`Message::Hello`].
///
/// Version 2 added the flow-control limits to `hello` (`max_queued`, `max_imports`,
/// `max_caps`, `max_depth`, `max_items`); a version-1 decoder refuses them as unknown
/// fields, so the two versions do not interoperate (PROTOCOL.md, "Changes"). Version 3
/// added quiet questions (`deliver`'s `quiet`, `want_return`); a version-3 side still
/// speaks version 2 to a peer that announces it, and then sends neither. Version 4
/// added three-party handoff: the `third_party` descriptor and the `listen` message
/// (PROTOCOL.md 9.16); a version-4 side speaks 2 or 3 to a peer that announces it, and
/// then sends neither.
pub const PROTOCOL_VERSION: u32 = 4;

/// The first protocol version with three-party handoff (`third_party`, `listen`).
pub const HANDOFF_VERSION: u32 = 4;

/// The most address hints a `third_party` descriptor or a `listen` message carries.
pub const MAX_HINTS: usize = 4;

/// The longest address hint, in bytes: a 253-byte domain name or a bracketed IPv6
/// address, a colon and a port.
pub const MAX_HINT_LEN: usize = 300;

/// The oldest protocol version this crate still speaks: a peer announcing it (or any
/// version up to [`PROTOCOL_VERSION`]) gets only what that version has.
pub const MIN_PROTOCOL_VERSION: u32 = 2;

/// What a `hello` announces: the sender's protocol version and every limit on what it
/// accepts that the receiver could pass by itself (PROTOCOL.md 9.1). The receiver keeps
/// within each one (PROTOCOL.md 9.11); passing one is a violation at the sender.
///
/// Field names are the wire names. Build one for tests from [`Hello::MINIMUM`]:
/// `Hello { max_frame: 1 << 20, ..Hello::MINIMUM }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(test, derive(Serialize, Deserialize))]
#[cfg_attr(test, serde(deny_unknown_fields))]
pub struct Hello {
    /// Protocol version; this crate speaks [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The largest frame body, in bytes, the sender accepts (at least
    /// [`MIN_FRAME`](super::MIN_FRAME)).
    pub max_frame: u64,
    /// The most questions the sender accepts outstanding from the receiver (asked and
    /// not yet finished; at least [`MIN_QUESTIONS`](super::MIN_QUESTIONS)).
    pub max_questions: u64,
    /// The most messages the sender accepts queued on one of its unresolved answers
    /// (pipelined before the `return`; at least [`MIN_QUEUED`](super::MIN_QUEUED)).
    pub max_queued: u64,
    /// The most references the sender accepts imported from the receiver at once (at
    /// least [`MIN_IMPORTS`](super::MIN_IMPORTS)).
    pub max_imports: u64,
    /// The most capability-table entries the sender accepts in one message (at least
    /// [`MIN_CAPS`](super::MIN_CAPS)).
    pub max_caps: u64,
    /// The deepest CBOR nesting the sender accepts in one message or one payload's
    /// data (at least [`MIN_DEPTH`](super::MIN_DEPTH)).
    pub max_depth: u64,
    /// The most CBOR data items the sender accepts in one message or one payload's
    /// data (at least [`MIN_ITEMS`](super::MIN_ITEMS)).
    pub max_items: u64,
}

impl Hello {
    /// The current version with every limit at its protocol minimum: the least any
    /// peer may announce, and what a session assumes until the peer's `hello` arrives.
    pub const MINIMUM: Hello = Hello {
        version: PROTOCOL_VERSION,
        max_frame: super::MIN_FRAME as u64,
        max_questions: super::MIN_QUESTIONS as u64,
        max_queued: super::MIN_QUEUED as u64,
        max_imports: super::MIN_IMPORTS as u64,
        max_caps: super::MIN_CAPS as u64,
        max_depth: super::MIN_DEPTH as u64,
        max_items: super::MIN_ITEMS as u64,
    };

    /// The fields as numbers, in the order they are encoded ([`Hello::FIELDS`]).
    pub(super) fn values(&self) -> [u64; 8] {
        [
            u64::from(self.version),
            self.max_frame,
            self.max_questions,
            self.max_queued,
            self.max_imports,
            self.max_caps,
            self.max_depth,
            self.max_items,
        ]
    }

    /// A hello from its version and its limits, in the order they are encoded.
    pub(super) fn from_values(version: u32, limits: [u64; 7]) -> Hello {
        let [
            max_frame,
            max_questions,
            max_queued,
            max_imports,
            max_caps,
            max_depth,
            max_items,
        ] = limits;
        Hello {
            version,
            max_frame,
            max_questions,
            max_queued,
            max_imports,
            max_caps,
            max_depth,
            max_items,
        }
    }

    /// The wire names of the fields, in the order they are encoded.
    pub(super) const FIELDS: [&'static str; 8] = [
        "version",
        "max_frame",
        "max_questions",
        "max_queued",
        "max_imports",
        "max_caps",
        "max_depth",
        "max_items",
    ];
}

/// One captp message.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(test, derive(Serialize, Deserialize))]
#[cfg_attr(test, serde(rename_all = "snake_case", deny_unknown_fields))]
#[non_exhaustive]
pub enum Message {
    /// The first message each side sends: its protocol version and every limit the
    /// receiver must respect when sending to it.
    Hello(Hello),
    /// Asks for the object exported under a swiss number. Answered by a `return` whose
    /// payload is a single reference, or the error `unknown_object`.
    Bootstrap {
        /// The asker's new question id.
        question: u64,
        /// The swiss number (32 bytes).
        #[cfg_attr(test, serde(with = "swiss_bytes"))]
        swiss: SwissNumber,
    },
    /// Delivers a method call to a target at the receiver.
    Deliver {
        /// What the call is for.
        target: Target,
        /// The method name.
        method: String,
        /// The arguments.
        payload: Payload,
        /// The asker's new question id, or absent for a one-way send (`send_only`).
        #[cfg_attr(test, serde(default, skip_serializing_if = "Option::is_none"))]
        question: Option<u64>,
        /// A quiet question (protocol version 3): the answerer sends no result until
        /// `want_return` asks for it, and a `finish` after messages were pipelined on
        /// the answer does not cancel it (PROTOCOL.md 9.15). Absent on the wire when
        /// `false`; only with a question.
        #[cfg_attr(test, serde(default, skip_serializing_if = "std::ops::Not::not"))]
        quiet: bool,
    },
    /// Answers a question.
    Return {
        /// The question being answered (the asker's id).
        question: u64,
        /// The result.
        result: ReturnResult,
    },
    /// The asker is done with a question's answer; the answerer may free it.
    Finish {
        /// The asker's question id.
        question: u64,
    },
    /// The asker of a quiet question wants its result after all (protocol version 3):
    /// the answerer sends the `return` as for any question (PROTOCOL.md 9.15).
    WantReturn {
        /// The asker's question id.
        question: u64,
    },
    /// A promise the sender exported (as `sender_promise`) has settled. Messages sent
    /// to the promise still go to it; the sender forwards them to the resolution.
    Resolve {
        /// The sender's export id of the promise.
        export: u64,
        /// What it settled to: a payload (a single reference when it resolved to an
        /// object) or an error.
        result: ReturnResult,
    },
    /// Drops references to one of the receiver's exports.
    Release {
        /// The receiver's export id.
        export: u64,
        /// How many times the sender received it and now gives back (at least 1).
        count: u64,
    },
    /// The sender is closing the session, with a reason; nothing follows it.
    Abort {
        /// Why, for people.
        reason: String,
    },
    /// Asks the receiver to prove it is alive.
    Ping {
        /// Echoed in the pong.
        nonce: u64,
    },
    /// Answers a ping.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// Where the sender can be reached (protocol version 4): its address hints, each
    /// `host:port` as in a sturdy ref. Sent at most once, after the `hello`, by a vat
    /// that listens; an introducer passes them on in `third_party` descriptors.
    Listen {
        /// At most [`MAX_HINTS`], each at most [`MAX_HINT_LEN`] bytes.
        hints: Vec<String>,
    },
}

/// The target of a `deliver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(test, derive(Serialize, Deserialize))]
#[cfg_attr(test, serde(rename_all = "snake_case"))]
pub enum Target {
    /// An object the receiver exported, by its export id.
    Export(u64),
    /// The answer to one of the sender's questions to the receiver (promise pipelining):
    /// the call is delivered to whatever that answer resolves to.
    Answer(u64),
}

/// Data plus the capability table its references index into.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(test, derive(Serialize, Deserialize))]
#[cfg_attr(test, serde(deny_unknown_fields))]
pub struct Payload {
    /// One CBOR data item, carried as a byte string. A reference inside it is the tag
    /// [`super::CAP_TAG`] holding an index into `caps`. Shared, not copied: decoded
    /// with [`Message::decode_shared`], it is a view of the received frame, and on the
    /// way out a large one is written from this buffer.
    #[cfg_attr(test, serde(with = "shared_bytes"))]
    pub data: Bytes,
    /// The capability table; absent when empty.
    #[cfg_attr(test, serde(default, skip_serializing_if = "Vec::is_empty"))]
    pub caps: Vec<CapDescriptor>,
}

/// How one reference in a payload is named, relative to the message's sender.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(test, derive(Serialize, Deserialize))]
#[cfg_attr(test, serde(rename_all = "snake_case"))]
pub enum CapDescriptor {
    /// An object the sender hosts, under the sender's export id. The receiver imports
    /// it and later releases it with `release`.
    SenderHosted(u64),
    /// A promise the sender hosts, under the sender's export id. The receiver imports it
    /// like `sender_hosted`; the sender later sends `resolve` for it (once).
    SenderPromise(u64),
    /// An object the receiver hosts, under the receiver's export id: a reference coming
    /// home.
    ReceiverHosted(u64),
    /// An object a third vat hosts, introduced by the sender (protocol version 4,
    /// PROTOCOL.md 9.16): the receiver may pick it up from the host, and meanwhile
    /// calls the vine, the sender's export that forwards to it.
    ThirdParty(Box<ThirdParty>),
}

/// A `third_party` descriptor: where an introduced object lives and how to pick it up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(test, derive(Serialize, Deserialize))]
#[cfg_attr(test, serde(deny_unknown_fields))]
pub struct ThirdParty {
    /// The host's vat ID (the SHA-256 of its public key).
    #[cfg_attr(test, serde(with = "id_bytes"))]
    pub host: [u8; 32],
    /// The gift the sender deposited at the host for the receiver (not a secret: the
    /// host hands it only to the receiver's vat ID).
    #[cfg_attr(test, serde(with = "id_bytes"))]
    pub gift: [u8; 32],
    /// The sender's export id of the vine: counted like a `sender_hosted` descriptor.
    pub vine: u64,
    /// Where the host may be reached, `host:port` each; absent when empty.
    #[cfg_attr(test, serde(default, skip_serializing_if = "Vec::is_empty"))]
    pub hints: Vec<String>,
}

/// The result in a `return`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(test, derive(Serialize, Deserialize))]
#[cfg_attr(test, serde(rename_all = "snake_case"))]
pub enum ReturnResult {
    /// The method's result.
    Ok(Payload),
    /// The method's error, or why the question could not be answered.
    Err(WireBroken),
}

/// A [`Broken`] as it crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(test, derive(Serialize, Deserialize))]
#[cfg_attr(test, serde(deny_unknown_fields))]
pub struct WireBroken {
    /// The kind's wire name: [`Broken::kind_name`] (a known kind's name, or an unknown
    /// kind's name as a peer sent it).
    pub kind: String,
    /// The message, for people.
    pub message: String,
    /// Structured data for programs (protocol version 2): one CBOR item, as a byte
    /// string; absent on the wire when `None`.
    #[cfg_attr(
        test,
        serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")
    )]
    pub data: Option<Vec<u8>>,
}

/// Longest error message sent to a peer, in bytes; longer ones are cut (at a character
/// boundary) so that an error can never exceed the peer's frame limit.
pub const MAX_ERROR_MESSAGE: usize = 4096;

/// Longest error data sent to a peer, in bytes. Longer data is left out, never cut (cut
/// CBOR is not CBOR): with [`MAX_ERROR_MESSAGE`] it keeps an error within the smallest
/// frame a peer may announce ([`super::MIN_FRAME`]).
pub const MAX_ERROR_DATA: usize = 2048;

/// The longest prefix of `text` that has at most `max` bytes and ends at a character
/// boundary: how a text is cut to fit a limit in bytes without splitting a character.
pub(crate) fn truncate_at_char_boundary(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl From<&Broken> for WireBroken {
    fn from(b: &Broken) -> WireBroken {
        WireBroken {
            kind: b.kind_name().to_owned(),
            message: truncate_at_char_boundary(b.message(), MAX_ERROR_MESSAGE).to_owned(),
            data: b
                .data_bytes()
                .filter(|d| d.len() <= MAX_ERROR_DATA)
                .map(<[u8]>::to_vec),
        }
    }
}

impl From<WireBroken> for Broken {
    fn from(w: WireBroken) -> Broken {
        let b = Broken::from_wire(w.kind, w.message);
        match w.data {
            Some(data) => b.with_data_bytes(data),
            None => b,
        }
    }
}

/// The payload a message carries (`deliver`, and `return` or `resolve` with a result),
/// borrowed as the message is: shared from `&Message`, mutable from `&mut Message`.
/// (A macro because one function cannot return both kinds of borrow; it keeps the list
/// of payload-carrying messages in one place.)
macro_rules! carried_payload {
    ($msg:expr) => {
        match $msg {
            Message::Deliver { payload, .. }
            | Message::Return {
                result: ReturnResult::Ok(payload),
                ..
            }
            | Message::Resolve {
                result: ReturnResult::Ok(payload),
                ..
            } => Some(payload),
            _ => None,
        }
    };
}

impl Message {
    /// Appends this message to `out` as one frame (length prefix and CBOR body);
    /// returns the body length.
    ///
    /// # Errors
    ///
    /// Only if serialization itself fails, which the types here do not do.
    pub fn encode_frame(&self, out: &mut Vec<u8>) -> Result<usize, String> {
        let at = frame::begin(out);
        super::codec::encode(self, out, usize::MAX);
        Ok(frame::finish(out, at))
    }

    /// Appends this message to `out` as one frame, except that payload data of at
    /// least `detach` bytes is left out of `out`: the frame's length counts it, and the
    /// position in `out` where it belongs is returned. The caller sends `out` up to
    /// that position, then the data (see [`Message::payload_data_mut`]), then the rest.
    pub fn encode_frame_detached(&self, out: &mut Vec<u8>, detach: usize) -> Option<usize> {
        let at = frame::begin(out);
        let detached = super::codec::encode(self, out, detach);
        let data = match (detached, self.payload_data()) {
            (Some(_), Some(data)) => data.len(),
            _ => 0,
        };
        frame::finish_with(out, at, data);
        detached
    }

    /// The payload data this message carries (`deliver`, and `return` or `resolve`
    /// with a result), if any.
    pub fn payload_data(&self) -> Option<&Bytes> {
        carried_payload!(self).map(|payload| &payload.data)
    }

    /// The payload data this message carries, to take it out after
    /// [`Message::encode_frame_detached`].
    pub fn payload_data_mut(&mut self) -> Option<&mut Bytes> {
        carried_payload!(self).map(|payload| &mut payload.data)
    }

    /// Decodes one message body (a frame without its length prefix). Payload data is
    /// copied out of `body`; [`Message::decode_shared`] avoids the copy.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Cbor`] when the bytes fail the bounded check; [`DecodeError::Schema`]
    /// for an unknown message kind or a wrong shape.
    pub fn decode(body: &[u8], limits: &CborLimits) -> Result<Message, DecodeError> {
        Message::decode_from(body, None, limits)
    }

    /// [`Message::decode`] of a body held as [`Bytes`]: payload data is a view of
    /// `body` rather than a copy, and keeps the body's buffer alive while it lives.
    /// Worth it for a large frame; for a small one a copy costs less than sharing.
    ///
    /// # Errors
    ///
    /// As [`Message::decode`].
    pub fn decode_shared(body: &Bytes, limits: &CborLimits) -> Result<Message, DecodeError> {
        Message::decode_from(body, Some(body), limits)
    }

    fn decode_from(
        body: &[u8],
        shared: Option<&Bytes>,
        limits: &CborLimits,
    ) -> Result<Message, DecodeError> {
        use super::codec;
        // One pass for the usual case: a body that decodes is one the bounded check
        // accepts, once its item count is within the limit. Anything else goes through
        // the bounded check first, so that bad CBOR gets the check's own error.
        if limits.max_depth >= codec::MESSAGE_DEPTH {
            if let Ok((msg, items)) = codec::decode(body, shared) {
                if items <= limits.max_items {
                    return Ok(msg);
                }
            }
        }
        super::scan::check(body, limits)?;
        match codec::decode(body, shared) {
            Ok((msg, _)) => Ok(msg),
            Err(s) => Err(DecodeError::Schema(format!("not a captp message: {s}"))),
        }
    }

    /// Whether this message only keeps the peer's tables tidy (`hello`, `finish`,
    /// `release`): nothing waits for it, so a sender may hold it back briefly and send
    /// it with the next message that matters.
    pub fn is_bookkeeping(&self) -> bool {
        matches!(
            self,
            Message::Hello { .. } | Message::Finish { .. } | Message::Release { .. }
        )
    }

    /// The message kind's wire name, for logs and errors.
    pub fn kind(&self) -> &'static str {
        Kind::of(self).as_str()
    }
}

/// The kind of a message: the key of its one-entry CBOR map.
///
/// [`Kind::as_str`] is the one place the kinds' wire names are written; the codec and
/// [`Message::kind`] both go through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Hello,
    Bootstrap,
    Deliver,
    Return,
    Finish,
    WantReturn,
    Resolve,
    Release,
    Abort,
    Ping,
    Pong,
    Listen,
}

impl Kind {
    /// Every kind, for looking a wire name up.
    const ALL: [Kind; 12] = [
        Kind::Hello,
        Kind::Bootstrap,
        Kind::Deliver,
        Kind::Return,
        Kind::Finish,
        Kind::WantReturn,
        Kind::Resolve,
        Kind::Release,
        Kind::Abort,
        Kind::Ping,
        Kind::Pong,
        Kind::Listen,
    ];

    /// The kind of `msg`.
    pub(super) fn of(msg: &Message) -> Kind {
        match msg {
            Message::Hello { .. } => Kind::Hello,
            Message::Bootstrap { .. } => Kind::Bootstrap,
            Message::Deliver { .. } => Kind::Deliver,
            Message::Return { .. } => Kind::Return,
            Message::Finish { .. } => Kind::Finish,
            Message::WantReturn { .. } => Kind::WantReturn,
            Message::Resolve { .. } => Kind::Resolve,
            Message::Release { .. } => Kind::Release,
            Message::Abort { .. } => Kind::Abort,
            Message::Ping { .. } => Kind::Ping,
            Message::Pong { .. } => Kind::Pong,
            Message::Listen { .. } => Kind::Listen,
        }
    }

    /// The wire name: the map key on the wire, and the name in logs and errors.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::Bootstrap => "bootstrap",
            Kind::Deliver => "deliver",
            Kind::Return => "return",
            Kind::Finish => "finish",
            Kind::WantReturn => "want_return",
            Kind::Resolve => "resolve",
            Kind::Release => "release",
            Kind::Abort => "abort",
            Kind::Ping => "ping",
            Kind::Pong => "pong",
            Kind::Listen => "listen",
        }
    }

    /// The kind whose wire name is `key` (compared as bytes: a key that matches is
    /// ASCII, so it needs no UTF-8 check of its own), if any.
    pub(super) fn from_bytes(key: &[u8]) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.as_str().as_bytes() == key)
    }
}

/// Serde for payload data as a CBOR byte string (the test-only derives).
#[cfg(test)]
mod shared_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(data: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(data)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        Ok(Bytes::from(
            serde_bytes::ByteBuf::deserialize(d)?.into_vec(),
        ))
    }
}

/// Serde for a vat ID or gift id as a 32-byte CBOR byte string (the test-only derives).
#[cfg(test)]
mod id_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(id: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(id)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        <[u8; 32]>::try_from(&bytes[..]).map_err(|_| D::Error::custom("expected 32 bytes"))
    }
}

/// Serde for a swiss number as a 32-byte CBOR byte string (the test-only derives).
#[cfg(test)]
mod swiss_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::wire::id::SwissNumber;

    pub(super) fn serialize<S: Serializer>(swiss: &SwissNumber, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(swiss.as_bytes())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SwissNumber, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        crate::wire::codec::swiss_from_slice(&bytes).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests;
