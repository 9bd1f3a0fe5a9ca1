//! The hand-written CBOR codec for [`Message`]: what [`Message::encode_frame`] and
//! [`Message::decode`] run.
//!
//! Messages are small and frequent, and a generic serde pass over them (externally
//! tagged enums, string-keyed maps) cost more than all the rest of a call. This module
//! writes and reads the layout PROTOCOL.md section 7 fixes, byte for byte what the serde
//! derives on the message types produce (derived in test builds only, for the tests here
//! to compare the two on random messages), in one pass with no intermediate values.
//!
//! The decoder runs only on bytes that passed [`scan::check`](super::scan::check), so
//! lengths are definite and within the body, nesting is bounded and text is UTF-8; it
//! still checks every read and never panics, never recurses on peer input, and never
//! allocates more than the bytes it was given. It must not accept anything PROTOCOL.md
//! calls a violation; it is stricter than the serde derives in a few places (no tags, no
//! byte-string keys, no arrays in place of byte strings or field maps).

use bytes::Bytes;

use super::id::SwissNumber;
use super::message::{
    CapDescriptor, Hello, Kind, MAX_HINT_LEN, MAX_HINTS, Message, Payload, ReturnResult, Target,
    ThirdParty, WireBroken,
};

const UINT: u8 = 0;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;
/// `null`: major type 7, simple value 22.
const NULL: u8 = 0xf6;
/// `true`: major type 7, simple value 21.
const TRUE: u8 = 0xf5;
/// `false`: major type 7, simple value 20.
const FALSE: u8 = 0xf4;

// ---- encoding ----------------------------------------------------------------------

/// Appends a CBOR head in its shortest form.
fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    // Each arm's range makes its narrowing exact.
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, BYTES, b.len() as u64);
    out.extend_from_slice(b);
}

fn uint_field(out: &mut Vec<u8>, name: &str, n: u64) {
    text(out, name);
    head(out, UINT, n);
}

/// Opens `{kind: {` with `fields` fields.
fn open(out: &mut Vec<u8>, kind: Kind, fields: u64) {
    head(out, MAP, 1);
    text(out, kind.as_str());
    head(out, MAP, fields);
}

/// Where a payload's data was left out of an encoding (see [`encode`]).
type Detached = Option<usize>;

fn payload(out: &mut Vec<u8>, p: &Payload, detach: usize, detached: &mut Detached) {
    head(out, MAP, if p.caps.is_empty() { 1 } else { 2 });
    text(out, "data");
    if p.data.len() >= detach {
        head(out, BYTES, p.data.len() as u64);
        *detached = Some(out.len());
    } else {
        bytes(out, &p.data);
    }
    if !p.caps.is_empty() {
        text(out, "caps");
        head(out, ARRAY, p.caps.len() as u64);
        for cap in &p.caps {
            let (name, id) = match cap {
                CapDescriptor::SenderHosted(id) => ("sender_hosted", *id),
                CapDescriptor::SenderPromise(id) => ("sender_promise", *id),
                CapDescriptor::ReceiverHosted(id) => ("receiver_hosted", *id),
                CapDescriptor::ThirdParty(t) => {
                    third_party(out, t);
                    continue;
                }
            };
            head(out, MAP, 1);
            uint_field(out, name, id);
        }
    }
}

fn third_party(out: &mut Vec<u8>, t: &ThirdParty) {
    head(out, MAP, 1);
    text(out, "third_party");
    head(out, MAP, if t.hints.is_empty() { 3 } else { 4 });
    text(out, "host");
    bytes(out, &t.host);
    text(out, "gift");
    bytes(out, &t.gift);
    uint_field(out, "vine", t.vine);
    if !t.hints.is_empty() {
        text(out, "hints");
        hints(out, &t.hints);
    }
}

fn hints(out: &mut Vec<u8>, hints: &[String]) {
    head(out, ARRAY, hints.len() as u64);
    for h in hints {
        text(out, h);
    }
}

fn result(out: &mut Vec<u8>, r: &ReturnResult, detach: usize, detached: &mut Detached) {
    head(out, MAP, 1);
    match r {
        ReturnResult::Ok(p) => {
            text(out, "ok");
            payload(out, p, detach, detached);
        }
        ReturnResult::Err(w) => {
            text(out, "err");
            head(out, MAP, if w.data.is_some() { 3 } else { 2 });
            text(out, "kind");
            text(out, &w.kind);
            text(out, "message");
            text(out, &w.message);
            if let Some(data) = &w.data {
                text(out, "data");
                bytes(out, data);
            }
        }
    }
}

/// Appends the CBOR encoding of `msg` (no frame header).
///
/// Payload data of `detach` bytes or more is left out: only its byte-string head is
/// written, and the position in `out` where the data belongs is returned, so that a
/// caller can send a large payload from its own buffer instead of copying it.
pub(super) fn encode(msg: &Message, out: &mut Vec<u8>, detach: usize) -> Detached {
    let mut detached = None;
    let kind = Kind::of(msg);
    match msg {
        Message::Hello(hello) => {
            open(out, kind, Hello::FIELDS.len() as u64);
            for (name, value) in Hello::FIELDS.iter().zip(hello.values()) {
                uint_field(out, name, value);
            }
        }
        Message::Bootstrap { question, swiss } => {
            open(out, kind, 2);
            uint_field(out, "question", *question);
            text(out, "swiss");
            bytes(out, swiss.as_bytes());
        }
        Message::Deliver {
            target,
            method,
            payload: p,
            question,
            quiet,
        } => {
            let quiet = *quiet && question.is_some();
            open(
                out,
                kind,
                3 + u64::from(question.is_some()) + u64::from(quiet),
            );
            text(out, "target");
            head(out, MAP, 1);
            match *target {
                Target::Export(id) => uint_field(out, "export", id),
                Target::Answer(id) => uint_field(out, "answer", id),
            }
            text(out, "method");
            text(out, method);
            text(out, "payload");
            payload(out, p, detach, &mut detached);
            if let Some(q) = question {
                uint_field(out, "question", *q);
            }
            if quiet {
                text(out, "quiet");
                out.push(TRUE);
            }
        }
        Message::Return {
            question,
            result: r,
        } => {
            open(out, kind, 2);
            uint_field(out, "question", *question);
            text(out, "result");
            result(out, r, detach, &mut detached);
        }
        Message::Finish { question } | Message::WantReturn { question } => {
            open(out, kind, 1);
            uint_field(out, "question", *question);
        }
        Message::Resolve { export, result: r } => {
            open(out, kind, 2);
            uint_field(out, "export", *export);
            text(out, "result");
            result(out, r, detach, &mut detached);
        }
        Message::Release { export, count } => {
            open(out, kind, 2);
            uint_field(out, "export", *export);
            uint_field(out, "count", *count);
        }
        Message::Abort { reason } => {
            open(out, kind, 1);
            text(out, "reason");
            text(out, reason);
        }
        Message::Ping { nonce } => {
            open(out, kind, 1);
            uint_field(out, "nonce", *nonce);
        }
        Message::Pong { nonce } => {
            open(out, kind, 1);
            uint_field(out, "nonce", *nonce);
        }
        Message::Listen { hints: h } => {
            open(out, kind, 1);
            text(out, "hints");
            hints(out, h);
        }
    }
    detached
}

// ---- decoding ----------------------------------------------------------------------

/// Why bytes that passed the bounded check are not a message (becomes
/// [`DecodeError::Schema`](super::DecodeError::Schema)).
type Shape = String;

/// A cursor over one message body.
struct Reader<'a> {
    bytes: &'a [u8],
    /// The buffer `bytes` is, when the caller has it as [`Bytes`]: payload data is then
    /// a view of it instead of a copy.
    shared: Option<&'a Bytes>,
    pos: usize,
    /// Data items read so far (every head is one), for the item limit.
    items: usize,
}

impl<'a> Reader<'a> {
    /// `part` of the body (a slice [`Reader::take`] gave out) as owned bytes: a view of
    /// the shared buffer without copying, or a copy when there is none.
    fn owned(&self, part: &'a [u8]) -> Bytes {
        match self.shared {
            Some(body) => body.slice_ref(part),
            None => Bytes::copy_from_slice(part),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Shape> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let taken = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(taken)
    }

    /// Reads a head: major type and argument. Indefinite lengths were refused by the
    /// bounded check; here they are just another error.
    fn head(&mut self) -> Result<(u8, u64), Shape> {
        let at = self.pos;
        let initial = self.take(1)?[0];
        self.items += 1;
        let (major, info) = (initial >> 5, initial & 0x1f);
        let n = match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes(array(self.take(2)?))),
            26 => u64::from(u32::from_be_bytes(array(self.take(4)?))),
            27 => u64::from_be_bytes(array(self.take(8)?)),
            _ => return Err(format!("unexpected CBOR head at byte {at}")),
        };
        Ok((major, n))
    }

    fn expect(&mut self, want: u8, what: &str) -> Result<u64, Shape> {
        let at = self.pos;
        match self.head()? {
            (major, n) if major == want => Ok(n),
            (major, _) => Err(format!(
                "{what}: expected {}, found {} at byte {at}",
                type_name(want),
                type_name(major)
            )),
        }
    }

    fn uint(&mut self, what: &str) -> Result<u64, Shape> {
        self.expect(UINT, what)
    }

    /// `true` or `false`.
    fn bool(&mut self, what: &str) -> Result<bool, Shape> {
        let at = self.pos;
        let value = match self.take(1)?[0] {
            TRUE => true,
            FALSE => false,
            _ => return Err(format!("{what}: expected a boolean at byte {at}")),
        };
        self.items += 1;
        Ok(value)
    }

    fn len(&mut self, major: u8, what: &str) -> Result<usize, Shape> {
        let n = self.expect(major, what)?;
        usize::try_from(n).map_err(|_| format!("{what}: length {n} is too large"))
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], Shape> {
        let n = self.len(BYTES, what)?;
        self.take(n)
    }

    fn text(&mut self, what: &str) -> Result<&'a str, Shape> {
        let n = self.len(TEXT, what)?;
        std::str::from_utf8(self.take(n)?).map_err(|_| format!("{what}: invalid UTF-8"))
    }

    /// A text-string key, as raw bytes: keys are only compared with known ASCII names,
    /// so they need no UTF-8 check of their own (one that matches is valid UTF-8).
    fn key(&mut self, what: &str) -> Result<&'a [u8], Shape> {
        let n = self.len(TEXT, what)?;
        self.take(n)
    }

    /// A map with exactly one entry; returns its key.
    fn union(&mut self, what: &str) -> Result<&'a [u8], Shape> {
        match self.len(MAP, what)? {
            1 => self.key(what),
            n => Err(format!("{what}: expected a map with one entry, found {n}")),
        }
    }

    /// Reads a field map: `field` is called with each key, in wire order, and must
    /// consume the value. Duplicate keys are refused (at most 8 fields exist).
    fn fields(
        &mut self,
        what: &str,
        names: &[&str],
        mut field: impl FnMut(&mut Self, usize) -> Result<(), Shape>,
    ) -> Result<u16, Shape> {
        let n = self.len(MAP, what)?;
        let mut seen = 0u16;
        for _ in 0..n {
            let key = self.key(what)?;
            let Some(i) = names.iter().position(|name| name.as_bytes() == key) else {
                return Err(format!("unknown field `{}` in {what}", lossy(key)));
            };
            let bit = 1u16 << i;
            if seen & bit != 0 {
                return Err(format!("duplicate field `{}` in {what}", names[i]));
            }
            seen |= bit;
            field(self, i)?;
        }
        Ok(seen)
    }
}

/// A key for an error message.
fn lossy(key: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(key)
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(b);
    a
}

fn type_name(major: u8) -> &'static str {
    match major {
        UINT => "an unsigned integer",
        1 => "a negative integer",
        BYTES => "a byte string",
        TEXT => "a text string",
        ARRAY => "an array",
        MAP => "a map",
        6 => "a tag",
        _ => "a simple value or float",
    }
}

/// Fails naming the first field of `names` whose bit is missing from `seen` among the
/// `required` ones.
fn require(seen: u16, required: u16, names: &[&str], what: &str) -> Result<(), Shape> {
    let missing = required & !seen;
    if missing == 0 {
        return Ok(());
    }
    let i = missing.trailing_zeros() as usize;
    Err(format!("missing field `{}` in {what}", names[i]))
}

/// All fields of `names` required.
fn all(names: &[&str]) -> u16 {
    u16::MAX >> (16 - names.len())
}

fn read_payload(r: &mut Reader<'_>) -> Result<Payload, Shape> {
    const NAMES: [&str; 2] = ["data", "caps"];
    let mut p = Payload::default();
    let seen = r.fields("payload", &NAMES, |r, i| {
        if i == 0 {
            let data = r.bytes("payload data")?;
            p.data = r.owned(data);
        } else {
            let n = r.len(ARRAY, "caps")?;
            // Each descriptor takes at least 3 bytes: never reserve past the input.
            p.caps.reserve(n.min(r.bytes.len() / 3));
            for _ in 0..n {
                let kind = r.union("capability descriptor")?;
                if kind == b"third_party" {
                    p.caps
                        .push(CapDescriptor::ThirdParty(Box::new(read_third_party(r)?)));
                    continue;
                }
                let id = r.uint("capability descriptor")?;
                p.caps.push(match kind {
                    b"sender_hosted" => CapDescriptor::SenderHosted(id),
                    b"sender_promise" => CapDescriptor::SenderPromise(id),
                    b"receiver_hosted" => CapDescriptor::ReceiverHosted(id),
                    other => {
                        return Err(format!("unknown capability descriptor `{}`", lossy(other)));
                    }
                });
            }
        }
        Ok(())
    })?;
    require(seen, 1, &NAMES, "payload")?;
    Ok(p)
}

fn read_third_party(r: &mut Reader<'_>) -> Result<ThirdParty, Shape> {
    const NAMES: [&str; 4] = ["host", "gift", "vine", "hints"];
    let mut t = ThirdParty {
        host: [0; 32],
        gift: [0; 32],
        vine: 0,
        hints: Vec::new(),
    };
    let seen = r.fields("third_party", &NAMES, |r, i| {
        match i {
            0 => t.host = id32(r.bytes("host")?, "host")?,
            1 => t.gift = id32(r.bytes("gift")?, "gift")?,
            2 => t.vine = r.uint("vine")?,
            _ => t.hints = read_hints(r)?,
        }
        Ok(())
    })?;
    require(seen, 0b0111, &NAMES, "third_party")?;
    Ok(t)
}

/// An array of at most [`MAX_HINTS`] address hints of at most [`MAX_HINT_LEN`] bytes.
/// Whether each is a good `host:port` is the runtime's question, not the codec's.
fn read_hints(r: &mut Reader<'_>) -> Result<Vec<String>, Shape> {
    let n = r.len(ARRAY, "hints")?;
    if n > MAX_HINTS {
        return Err(format!("{n} address hints (at most {MAX_HINTS})"));
    }
    let mut hints = Vec::with_capacity(n);
    for _ in 0..n {
        let h = r.text("hint")?;
        if h.len() > MAX_HINT_LEN {
            return Err(format!(
                "an address hint of {} bytes (at most {MAX_HINT_LEN})",
                h.len()
            ));
        }
        hints.push(h.to_owned());
    }
    Ok(hints)
}

/// A 32-byte id (a vat ID or a gift id).
fn id32(bytes: &[u8], what: &str) -> Result<[u8; 32], Shape> {
    bytes
        .try_into()
        .map_err(|_| format!("{what} must be 32 bytes, got {}", bytes.len()))
}

fn read_result(r: &mut Reader<'_>) -> Result<ReturnResult, Shape> {
    match r.union("result")? {
        b"ok" => Ok(ReturnResult::Ok(read_payload(r)?)),
        b"err" => {
            // `data` is optional (protocol version 2); the other two are required.
            const NAMES: [&str; 3] = ["kind", "message", "data"];
            let (mut kind, mut message, mut data) = ("", "", None);
            let seen = r.fields("err", &NAMES, |r, i| {
                match i {
                    0 => kind = r.text("kind")?,
                    1 => message = r.text("message")?,
                    _ => data = Some(r.bytes("err data")?),
                }
                Ok(())
            })?;
            require(seen, 0b011, &NAMES, "err")?;
            Ok(ReturnResult::Err(WireBroken {
                kind: kind.to_owned(),
                message: message.to_owned(),
                data: data.map(<[u8]>::to_vec),
            }))
        }
        other => Err(format!("unknown result `{}`", lossy(other))),
    }
}

/// A swiss number from the bytes of a `bootstrap` (exactly 32 of them).
pub(super) fn swiss_from_slice(bytes: &[u8]) -> Result<SwissNumber, Shape> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| format!("swiss number must be 32 bytes, got {}", bytes.len()))?;
    Ok(SwissNumber::from_bytes(array))
}

/// Reads a message made only of unsigned integer fields.
fn uints<const N: usize>(
    r: &mut Reader<'_>,
    kind: &str,
    names: [&str; N],
) -> Result<[u64; N], Shape> {
    let mut values = [0; N];
    let seen = r.fields(kind, &names, |r, i| {
        values[i] = r.uint(names[i])?;
        Ok(())
    })?;
    require(seen, all(&names), &names, kind)?;
    Ok(values)
}

/// The deepest nesting a message has: message, fields, result, payload, caps,
/// descriptor, `third_party`'s fields, hints (the protocol's minimum `max_depth`).
pub(super) const MESSAGE_DEPTH: usize = 8;

/// Decodes one message body; returns it with the number of data items it holds.
/// Payload data is copied out of `body`, or, when `shared` is the buffer `body` is, a
/// view of it.
///
/// Success means the body is a well-formed message of at most [`MESSAGE_DEPTH`] levels
/// with definite lengths, valid UTF-8 text and no trailing bytes: everything the bounded
/// check verifies, except the item limit, which the caller compares with the count.
pub(super) fn decode(body: &[u8], shared: Option<&Bytes>) -> Result<(Message, usize), Shape> {
    let mut r = Reader {
        bytes: body,
        shared,
        pos: 0,
        items: 0,
    };
    let key = r.union("message")?;
    let Some(kind) = Kind::from_bytes(key) else {
        return Err(format!("unknown message kind `{}`", lossy(key)));
    };
    // The kind's name, for errors about its fields.
    let name = kind.as_str();
    let msg = match kind {
        Kind::Hello => {
            let [version, limits @ ..] = uints(&mut r, name, Hello::FIELDS)?;
            let version = u32::try_from(version)
                .map_err(|_| format!("version {version} does not fit in 32 bits"))?;
            Message::Hello(Hello::from_values(version, limits))
        }
        Kind::Bootstrap => {
            const NAMES: [&str; 2] = ["question", "swiss"];
            let (mut question, mut swiss) = (0, None);
            let seen = r.fields(name, &NAMES, |r, i| {
                if i == 0 {
                    question = r.uint("question")?;
                } else {
                    swiss = Some(swiss_from_slice(r.bytes("swiss")?)?);
                }
                Ok(())
            })?;
            require(seen, all(&NAMES), &NAMES, name)?;
            let swiss = swiss.ok_or("missing field `swiss` in bootstrap")?;
            Message::Bootstrap { question, swiss }
        }
        Kind::Deliver => {
            const NAMES: [&str; 5] = ["target", "method", "payload", "question", "quiet"];
            let (mut target, mut method, mut payload, mut question, mut quiet) =
                (Target::Export(0), "", Payload::default(), None, false);
            let seen = r.fields(name, &NAMES, |r, i| {
                match i {
                    0 => {
                        let which = r.union("target")?;
                        let id = r.uint("target")?;
                        target = match which {
                            b"export" => Target::Export(id),
                            b"answer" => Target::Answer(id),
                            other => return Err(format!("unknown target `{}`", lossy(other))),
                        };
                    }
                    1 => method = r.text("method")?,
                    2 => payload = read_payload(r)?,
                    4 => quiet = r.bool("quiet")?,
                    _ => {
                        // `null` stands for an absent question (see PROTOCOL.md 6).
                        if r.bytes.get(r.pos) == Some(&NULL) {
                            r.pos += 1;
                            r.items += 1;
                        } else {
                            question = Some(r.uint("question")?);
                        }
                    }
                }
                Ok(())
            })?;
            require(seen, 0b0111, &NAMES, name)?;
            if quiet && question.is_none() {
                return Err("a quiet deliver must ask a question".into());
            }
            Message::Deliver {
                target,
                method: method.to_owned(),
                payload,
                question,
                quiet,
            }
        }
        Kind::Return | Kind::Resolve => {
            let id_name = if kind == Kind::Return {
                "question"
            } else {
                "export"
            };
            let names = [id_name, "result"];
            let (mut id, mut result) = (0, None);
            let seen = r.fields(name, &names, |r, i| {
                if i == 0 {
                    id = r.uint(id_name)?;
                } else {
                    result = Some(read_result(r)?);
                }
                Ok(())
            })?;
            require(seen, all(&names), &names, name)?;
            let result = result.ok_or("missing field `result`")?;
            if kind == Kind::Return {
                Message::Return {
                    question: id,
                    result,
                }
            } else {
                Message::Resolve { export: id, result }
            }
        }
        Kind::Finish => {
            let [question] = uints(&mut r, name, ["question"])?;
            Message::Finish { question }
        }
        Kind::WantReturn => {
            let [question] = uints(&mut r, name, ["question"])?;
            Message::WantReturn { question }
        }
        Kind::Release => {
            let [export, count] = uints(&mut r, name, ["export", "count"])?;
            Message::Release { export, count }
        }
        Kind::Abort => {
            const NAMES: [&str; 1] = ["reason"];
            let mut reason = "";
            let seen = r.fields(name, &NAMES, |r, _| {
                reason = r.text("reason")?;
                Ok(())
            })?;
            require(seen, 1, &NAMES, name)?;
            Message::Abort {
                reason: reason.to_owned(),
            }
        }
        Kind::Ping => {
            let [nonce] = uints(&mut r, name, ["nonce"])?;
            Message::Ping { nonce }
        }
        Kind::Pong => {
            let [nonce] = uints(&mut r, name, ["nonce"])?;
            Message::Pong { nonce }
        }
        Kind::Listen => {
            const NAMES: [&str; 1] = ["hints"];
            let mut hints = Vec::new();
            let seen = r.fields(name, &NAMES, |r, _| {
                hints = read_hints(r)?;
                Ok(())
            })?;
            require(seen, 1, &NAMES, name)?;
            Message::Listen { hints }
        }
    };
    if r.pos != body.len() {
        return Err(format!("{} bytes after the message", body.len() - r.pos));
    }
    Ok((msg, r.items))
}

#[cfg(test)]
mod tests;
