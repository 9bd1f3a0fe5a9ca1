//! Sturdy refs: the printable, persistent form of a capability.
//!
//! A sturdy ref `captp://<vat-id>@<host>:<port>/<swiss>` names a vat by the
//! hash of its public key, says where to reach it, and carries a swiss
//! number: an unguessable 256-bit secret that the hosting vat maps to an
//! object through a [`Registry`]. Holding the text of a sturdy ref is holding
//! the authority it designates.
//!
//! This module must not reveal swiss numbers by accident: [`SwissNumber`]
//! has no `Display`, its `Debug` is redacted, the `Debug` of [`SturdyRef`]
//! is redacted, and parse errors never echo any part of the input. Only
//! [`SturdyRef`]'s `Display` and [`SwissNumber::expose_base64`] print the
//! secret, deliberately. The registry is keyed by the SHA-256 of swiss
//! numbers so that lookups do not branch on the secret's bytes.
//!
//! [`SwissNumber`] itself, and the 43-character text form it shares with vat
//! IDs, live in [`crate::wire::id`], since messages carry swiss numbers too.

mod capfile;
mod host;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::identity::VatId;
use crate::wire::id::{self, IdKind, IdTextError};

pub(crate) use crate::wire::id::{SwissHash, SwissNumber};
pub use capfile::CapFileError;
pub use host::{Host, HostError};

/// The expected shape of a sturdy ref, quoted in error messages.
const FORM: &str = "captp://<vat-id>@<host>:<port>/<swiss>";
/// The scheme prefix of a sturdy ref.
const SCHEME: &str = "captp://";

/// Why the port part of a sturdy ref is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortError {
    /// The port contains something other than decimal digits (including a
    /// sign).
    #[error("the port must be decimal digits only (no sign)")]
    NotDigits,
    /// The port has a leading zero.
    #[error("the port must not have leading zeros")]
    LeadingZero,
    /// The port is 0.
    #[error("port 0 cannot be connected to")]
    Zero,
    /// The port is above 65535.
    #[error("the port is larger than 65535")]
    OutOfRange,
}

fn parse_port(s: &str) -> Result<u16, PortError> {
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortError::NotDigits);
    }
    if s == "0" {
        return Err(PortError::Zero);
    }
    if s.starts_with('0') {
        return Err(PortError::LeadingZero);
    }
    if s.len() > 5 {
        return Err(PortError::OutOfRange);
    }
    let port: u32 = s.parse().map_err(|_| PortError::OutOfRange)?;
    u16::try_from(port).map_err(|_| PortError::OutOfRange)
}

/// The swiss number of a sturdy ref from its text; the error names the
/// swiss number ([`IdKind::SwissNumber`]).
fn parse_swiss(s: &str) -> Result<SwissNumber, IdTextError> {
    id::parse_id(s, IdKind::SwissNumber).map(SwissNumber::from_bytes)
}

/// Why a string is not a sturdy ref.
///
/// Messages never contain any part of the input, since it may hold a real
/// swiss number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The input contains whitespace or a control character.
    #[error(
        "sturdy ref contains whitespace or a control character at position {position}; \
         expected {FORM} with nothing around it"
    )]
    Whitespace {
        /// Zero-based character position of the first such character.
        position: usize,
    },
    /// The input does not start with `captp://` (lowercase).
    #[error("sturdy ref must start with 'captp://' (lowercase); expected {FORM}")]
    Scheme,
    /// No `@`, or nothing before it.
    #[error("sturdy ref has no vat ID before an '@'; expected {FORM}")]
    MissingVatId,
    /// The vat ID is malformed (an [`IdTextError`] about [`IdKind::VatId`]).
    #[error("sturdy ref has a bad vat ID: {0}; expected {FORM}")]
    BadVatId(#[source] IdTextError),
    /// Nothing between `@` and `:`.
    #[error("sturdy ref has no host after the '@'; expected {FORM}")]
    MissingHost,
    /// The host is malformed.
    #[error("sturdy ref has a bad host: {0}; expected {FORM}")]
    BadHost(#[source] HostError),
    /// No `:port` after the host, or nothing after the `:`.
    #[error("sturdy ref has no ':<port>' after the host; expected {FORM}")]
    MissingPort,
    /// The port is malformed.
    #[error("sturdy ref has a bad port: {0}; expected {FORM}")]
    BadPort(#[source] PortError),
    /// No `/swiss` after the port, or nothing after the `/`.
    #[error("sturdy ref has no swiss number after the port; expected {FORM}")]
    MissingSwiss,
    /// The swiss number is malformed (an [`IdTextError`] about
    /// [`IdKind::SwissNumber`]).
    #[error("sturdy ref has a bad swiss number: {0}; expected {FORM}")]
    BadSwiss(#[source] IdTextError),
    /// Something (a query, fragment or further path segment) follows the
    /// swiss number.
    #[error(
        "sturdy ref has trailing data after the swiss number \
         (no query, fragment or further '/' allowed); expected {FORM}"
    )]
    TrailingData,
}

/// A persistent capability: which vat, where to reach it, and the swiss
/// number of the object.
///
/// # Authority
///
/// The `Display` form, `captp://<vat-id>@<host>:<port>/<swiss>`, includes
/// the swiss number: printing a sturdy ref shares the authority it
/// designates. That is its purpose, so only print it to hand it to someone
/// who should hold it. `Debug` redacts the swiss number.
#[derive(Clone, PartialEq, Eq)]
pub struct SturdyRef {
    vat_id: VatId,
    host: Host,
    port: u16,
    swiss: SwissNumber,
}

impl SturdyRef {
    /// Builds a sturdy ref from its parts.
    pub fn new(vat_id: VatId, host: Host, port: u16, swiss: SwissNumber) -> SturdyRef {
        SturdyRef {
            vat_id,
            host,
            port,
            swiss,
        }
    }

    /// Builds a sturdy ref for a vat listening on `addr`.
    pub fn from_socket_addr(vat_id: VatId, addr: SocketAddr, swiss: SwissNumber) -> SturdyRef {
        let host = match addr {
            SocketAddr::V4(a) => Host::Ipv4(*a.ip()),
            SocketAddr::V6(a) => Host::Ipv6(*a.ip()),
        };
        SturdyRef::new(vat_id, host, addr.port(), swiss)
    }

    /// The vat that hosts the object; the TLS connection is pinned to it.
    pub fn vat_id(&self) -> VatId {
        self.vat_id
    }

    /// Where the vat listens.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The TCP port the vat listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The object's swiss number (the secret).
    pub fn swiss(&self) -> &SwissNumber {
        &self.swiss
    }

    /// `host:port` (IPv6 in brackets), suitable for
    /// `tokio::net::TcpStream::connect`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for SturdyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}@{}:{}/{}",
            self.vat_id,
            self.host,
            self.port,
            self.swiss.expose_base64()
        )
    }
}

impl fmt::Debug for SturdyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SturdyRef")
            .field("vat_id", &self.vat_id)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("swiss", &format_args!("<redacted>"))
            .finish()
    }
}

impl FromStr for SturdyRef {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(position) = s.chars().position(|c| c.is_whitespace() || c.is_control()) {
            return Err(ParseError::Whitespace { position });
        }
        let rest = s.strip_prefix(SCHEME).ok_or(ParseError::Scheme)?;

        // The authority ends at the first '/', '?' or '#'.
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, after) = rest.split_at(authority_end);

        let (vat_text, host_port) = authority.split_once('@').ok_or(ParseError::MissingVatId)?;
        if vat_text.is_empty() {
            return Err(ParseError::MissingVatId);
        }
        let vat_id: VatId = vat_text.parse().map_err(ParseError::BadVatId)?;
        let (host, port) = parse_address(host_port)?;

        let path = after.strip_prefix('/').ok_or(ParseError::MissingSwiss)?;
        let swiss_end = path.find(['/', '?', '#']).unwrap_or(path.len());
        let (swiss_text, trailing) = path.split_at(swiss_end);
        if swiss_text.is_empty() {
            return Err(ParseError::MissingSwiss);
        }
        let swiss = parse_swiss(swiss_text).map_err(ParseError::BadSwiss)?;
        if !trailing.is_empty() {
            return Err(ParseError::TrailingData);
        }
        Ok(SturdyRef {
            vat_id,
            host,
            port,
            swiss,
        })
    }
}

/// A `host:port` address in the sturdy-ref grammar (PROTOCOL.md 3.1 and 3.2): what a
/// sturdy ref's authority holds after the `@`, and what an address hint holds.
pub(crate) fn parse_address(host_port: &str) -> Result<(Host, u16), ParseError> {
    if host_port.is_empty() || host_port.starts_with(':') {
        return Err(ParseError::MissingHost);
    }
    let (host_text, port_text) = if host_port.starts_with('[') {
        match host_port.find(']') {
            None => return Err(ParseError::BadHost(HostError::UnclosedBracket)),
            Some(close) => {
                let (host, tail) = host_port.split_at(close + 1);
                if tail.is_empty() {
                    return Err(ParseError::MissingPort);
                }
                let port = tail
                    .strip_prefix(':')
                    .ok_or(ParseError::BadHost(HostError::AfterBracket))?;
                (host, port)
            }
        }
    } else {
        match host_port.split_once(':') {
            None => return Err(ParseError::MissingPort),
            Some((_, port)) if port.contains(':') => {
                return Err(ParseError::BadHost(HostError::UnbracketedIpv6));
            }
            Some(pair) => pair,
        }
    };
    let host: Host = host_text.parse().map_err(ParseError::BadHost)?;
    if port_text.is_empty() {
        return Err(ParseError::MissingPort);
    }
    let port = parse_port(port_text).map_err(ParseError::BadPort)?;
    Ok((host, port))
}

/// Objects exported under swiss numbers.
///
/// Keyed by [`SwissHash`], so looking a swiss number up does not compare
/// its secret bytes. An unknown number and a revoked one are
/// indistinguishable: both give `None`.
pub(crate) struct Registry<T> {
    entries: HashMap<SwissHash, T>,
}

impl<T> Registry<T> {
    /// An empty registry.
    pub(crate) fn new() -> Registry<T> {
        Registry {
            entries: HashMap::new(),
        }
    }

    /// Exports `value` under `swiss`, returning what was there before.
    pub(crate) fn insert(&mut self, swiss: &SwissNumber, value: T) -> Option<T> {
        self.entries.insert(swiss.hash(), value)
    }

    /// The value exported under `swiss`, if any.
    pub(crate) fn get(&self, swiss: &SwissNumber) -> Option<&T> {
        self.entries.get(&swiss.hash())
    }

    /// Revokes `swiss`, returning what was exported under it.
    pub(crate) fn remove(&mut self, swiss: &SwissNumber) -> Option<T> {
        self.entries.remove(&swiss.hash())
    }

    /// Number of exported values for which `counted` holds.
    pub(crate) fn count(&self, counted: impl Fn(&T) -> bool) -> usize {
        self.entries.values().filter(|v| counted(v)).count()
    }
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Registry::new()
    }
}

impl<T> fmt::Debug for Registry<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("len", &self.entries.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn vat() -> VatId {
        VatId::from_bytes([0x5a; 32])
    }

    fn swiss() -> SwissNumber {
        SwissNumber::from_bytes([0xc3; 32])
    }

    fn uri(host_port: &str, swiss_text: &str) -> String {
        format!("captp://{}@{host_port}/{swiss_text}", vat())
    }

    fn good_swiss_text() -> String {
        swiss().expose_base64()
    }

    #[test]
    fn round_trips() {
        for host_port in [
            "127.0.0.1:4433",
            "[::1]:1",
            "[2001:db8::8:800:200c:417a]:65535",
            "[::ffff:10.0.0.1]:80",
            "example.com:443",
            "Vat-1.Example.org:9",
            "localhost:8080",
            "a:1",
        ] {
            let s = uri(host_port, &good_swiss_text());
            let r: SturdyRef = s.parse().unwrap_or_else(|e| panic!("{host_port}: {e}"));
            assert_eq!(r.to_string(), s);
            assert_eq!(r.address(), host_port);
            assert_eq!(r.vat_id(), vat());
            assert_eq!(r.swiss(), &swiss());
        }
        let r: SturdyRef = uri("[::1]:7", &good_swiss_text()).parse().unwrap();
        assert_eq!(r.host(), &Host::Ipv6(Ipv6Addr::LOCALHOST));
        assert_eq!(r.port(), 7);
        let r: SturdyRef = uri("10.1.2.3:7", &good_swiss_text()).parse().unwrap();
        assert_eq!(r.host(), &Host::Ipv4(Ipv4Addr::new(10, 1, 2, 3)));
        let r: SturdyRef = uri("example.com:7", &good_swiss_text()).parse().unwrap();
        assert_eq!(r.host(), &Host::Domain("example.com".into()));
    }

    #[test]
    fn generated_refs_round_trip() {
        for addr in ["127.0.0.1:1234", "[::1]:443"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let r = SturdyRef::from_socket_addr(vat(), addr, SwissNumber::generate());
            let back: SturdyRef = r.to_string().parse().unwrap();
            assert_eq!(back, r);
            assert_eq!(r.address(), addr.to_string());
        }
    }

    #[test]
    fn each_error_variant() {
        let sw = good_swiss_text();
        let v = vat().to_string();
        let cases: Vec<(String, ParseError)> = vec![
            (
                format!(" {}", uri("h.example:1", &sw)),
                ParseError::Whitespace { position: 0 },
            ),
            (
                format!("{}\n", uri("h.example:1", &sw)),
                ParseError::Whitespace {
                    position: uri("h.example:1", &sw).len(),
                },
            ),
            (
                uri("h.example:1", &sw).replace("captp://", "CAPTP://"),
                ParseError::Scheme,
            ),
            (
                uri("h.example:1", &sw).replace("captp://", "https://"),
                ParseError::Scheme,
            ),
            (format!("{v}@h:1/{sw}"), ParseError::Scheme),
            (
                format!("captp://h.example:1/{sw}"),
                ParseError::MissingVatId,
            ),
            (
                format!("captp://@h.example:1/{sw}"),
                ParseError::MissingVatId,
            ),
            (
                format!("captp://{}@h.example:1/{sw}", &v[..40]),
                ParseError::BadVatId(IdTextError::Length {
                    id: IdKind::VatId,
                    len: 40,
                }),
            ),
            (uri(":1", &sw), ParseError::MissingHost),
            (uri("", &sw), ParseError::MissingHost),
            (
                uri("bad_host:1", &sw),
                ParseError::BadHost(HostError::DomainCharacter { position: 3 }),
            ),
            (
                uri("-a.example:1", &sw),
                ParseError::BadHost(HostError::LabelHyphen),
            ),
            (
                uri("a..example:1", &sw),
                ParseError::BadHost(HostError::EmptyLabel),
            ),
            (
                uri(&format!("{}.example:1", "a".repeat(64)), &sw),
                ParseError::BadHost(HostError::LabelTooLong { len: 64 }),
            ),
            (
                uri(&format!("{}b:1", "a.".repeat(127)), &sw),
                ParseError::BadHost(HostError::DomainTooLong { len: 255 }),
            ),
            (
                uri("127.1:1", &sw),
                ParseError::BadHost(HostError::NumericDomain),
            ),
            (
                uri("127.0.0.01:1", &sw),
                ParseError::BadHost(HostError::NumericDomain),
            ),
            (
                uri("[::1:1", &sw),
                ParseError::BadHost(HostError::UnclosedBracket),
            ),
            (uri("[::g]:1", &sw), ParseError::BadHost(HostError::BadIpv6)),
            (
                uri("[fe80::1%eth0]:1", &sw),
                ParseError::BadHost(HostError::BadIpv6),
            ),
            (
                uri("[0:0:0:0:0:0:0:1]:1", &sw),
                ParseError::BadHost(HostError::NonCanonicalIpv6),
            ),
            (
                uri("[::1]x:1", &sw),
                ParseError::BadHost(HostError::AfterBracket),
            ),
            (uri("::1:1", &sw), ParseError::MissingHost),
            (
                uri("fe80::1:1", &sw),
                ParseError::BadHost(HostError::UnbracketedIpv6),
            ),
            (uri("h.example", &sw), ParseError::MissingPort),
            (uri("h.example:", &sw), ParseError::MissingPort),
            (uri("[::1]", &sw), ParseError::MissingPort),
            (
                uri("h.example:+1", &sw),
                ParseError::BadPort(PortError::NotDigits),
            ),
            (
                uri("h.example:-1", &sw),
                ParseError::BadPort(PortError::NotDigits),
            ),
            (
                uri("h.example:8o", &sw),
                ParseError::BadPort(PortError::NotDigits),
            ),
            (
                uri("h.example:0", &sw),
                ParseError::BadPort(PortError::Zero),
            ),
            (
                uri("h.example:080", &sw),
                ParseError::BadPort(PortError::LeadingZero),
            ),
            (
                uri("h.example:65536", &sw),
                ParseError::BadPort(PortError::OutOfRange),
            ),
            (
                uri("h.example:99999999999999999999", &sw),
                ParseError::BadPort(PortError::OutOfRange),
            ),
            (format!("captp://{v}@h.example:1"), ParseError::MissingSwiss),
            (uri("h.example:1", ""), ParseError::MissingSwiss),
            (
                format!("captp://{v}@h.example:1?{sw}"),
                ParseError::MissingSwiss,
            ),
            (
                uri("h.example:1", &sw[..12]),
                ParseError::BadSwiss(IdTextError::Length {
                    id: IdKind::SwissNumber,
                    len: 12,
                }),
            ),
            (
                uri("h.example:1", &format!("{}%", &sw[..42])),
                ParseError::BadSwiss(IdTextError::Alphabet {
                    id: IdKind::SwissNumber,
                    position: 42,
                }),
            ),
            (
                uri("h.example:1", &format!("{}B", "A".repeat(42))),
                ParseError::BadSwiss(IdTextError::NonCanonical {
                    id: IdKind::SwissNumber,
                }),
            ),
            (
                uri("h.example:1", &format!("{sw}?x=1")),
                ParseError::TrailingData,
            ),
            (
                uri("h.example:1", &format!("{sw}#frag")),
                ParseError::TrailingData,
            ),
            (
                uri("h.example:1", &format!("{sw}/")),
                ParseError::TrailingData,
            ),
            (
                uri("h.example:1", &format!("{sw}/more")),
                ParseError::TrailingData,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                input.parse::<SturdyRef>(),
                Err(expected.clone()),
                "input: {input}"
            );
            let msg = expected.to_string();
            assert!(msg.contains(FORM), "{msg}");
            assert!(!msg.contains(&sw), "{msg}");
            assert!(!msg.contains(&sw[..12]), "{msg}");
        }
    }

    #[test]
    fn errors_never_echo_swiss() {
        let secret = SwissNumber::generate().expose_base64();
        for bad in [
            format!("captp://{}@h:1/{}", vat(), &secret[..20]),
            format!("captp://{}@h:1/{}/x", vat(), secret),
            format!("captp://{}@h:1/{}x", vat(), secret),
            format!("captp://{}@h/{}", vat(), secret),
            format!("captp://{}/{}", secret, secret),
            format!("captp://{}@{}:1/x", vat(), secret),
            format!("http://{}", secret),
            format!("captp://{}@h:1/{} ", vat(), secret),
        ] {
            let err = bad.parse::<SturdyRef>().unwrap_err();
            let msg = err.to_string();
            let debug = format!("{err:?}");
            assert!(!msg.contains(&secret[..8]), "{msg}");
            assert!(!debug.contains(&secret[..8]), "{debug}");
        }
    }

    #[test]
    fn debug_redacts_swiss() {
        let sw = SwissNumber::generate();
        let text = sw.expose_base64();
        let debug = format!("{sw:?}");
        assert_eq!(debug, "SwissNumber(<redacted>)");
        let r = SturdyRef::new(vat(), Host::Domain("h.example".into()), 9, sw.clone());
        let debug = format!("{r:?}");
        assert!(!debug.contains(&text), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(debug.contains(&vat().to_string()), "{debug}");
        assert!(r.to_string().contains(&text));
        let hash_debug = format!("{:?}", sw.hash());
        assert!(!hash_debug.contains(&text));
    }

    #[test]
    fn registry_insert_get_remove() {
        let mut reg: Registry<&str> = Registry::default();
        assert_eq!(reg.count(|_| true), 0);
        let a = SwissNumber::generate();
        let b = SwissNumber::generate();
        assert_eq!(reg.insert(&a, "alice"), None);
        assert_eq!(reg.count(|_| true), 1);
        assert_eq!(reg.get(&a), Some(&"alice"));
        assert_eq!(
            reg.get(&SwissNumber::from_bytes(*a.as_bytes())),
            Some(&"alice")
        );
        assert_eq!(reg.get(&b), None);
        assert_eq!(reg.insert(&a, "alice2"), Some("alice"));
        assert_eq!(reg.remove(&a), Some("alice2"));
        assert_eq!(reg.get(&a), None);
        assert_eq!(reg.remove(&a), None);
        assert_eq!(reg.count(|_| true), 0);
        assert!(!format!("{reg:?}").contains(&a.expose_base64()));
    }
}
