//! The host part of a sturdy ref: an IPv4 address, a bracketed IPv6 address or a
//! domain name, parsed strictly (PROTOCOL.md section 3.2) and printed back the same.
//!
//! This module only reads and writes text: it must not resolve names or touch the
//! network, and its errors never quote the input (a sturdy ref is a secret).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Where a vat listens: an IP address or a domain name.
///
/// Construct domains through [`Host::from_str`] to have them validated; a
/// `Host::Domain` built directly is printed as is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 address, printed in dotted form.
    Ipv4(Ipv4Addr),
    /// An IPv6 address, printed in brackets (`[::1]`).
    Ipv6(Ipv6Addr),
    /// A DNS name: ASCII letters, digits, `-` and `.`.
    Domain(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ipv4(a) => write!(f, "{a}"),
            Host::Ipv6(a) => write!(f, "[{a}]"),
            Host::Domain(d) => f.write_str(d),
        }
    }
}

/// Why the host part of a sturdy ref is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// A `[` without a matching `]`.
    #[error("an IPv6 address opened with '[' is not closed with ']'")]
    UnclosedBracket,
    /// Something other than `:port` follows `]`.
    #[error("only ':<port>' may follow the ']' of an IPv6 address")]
    AfterBracket,
    /// The text in brackets is not an IPv6 address.
    #[error("the text in brackets is not an IPv6 address (zone IDs are not allowed)")]
    BadIpv6,
    /// The IPv6 address is not in canonical (RFC 5952) form.
    #[error(
        "the IPv6 address must be written in canonical RFC 5952 form \
         (lowercase, longest zero run as '::'), e.g. [::1]"
    )]
    NonCanonicalIpv6,
    /// An IPv6 address written without brackets.
    #[error("an IPv6 address must be written in brackets, e.g. [::1]")]
    UnbracketedIpv6,
    /// The domain name contains a character other than ASCII letters,
    /// digits, `-` and `.`.
    #[error(
        "character {position} of the host name is not allowed (only ASCII letters, digits, '-' and '.')"
    )]
    DomainCharacter {
        /// Zero-based character position of the first bad character.
        position: usize,
    },
    /// The domain name is longer than 253 characters.
    #[error("the host name is {len} characters long; at most 253 are allowed")]
    DomainTooLong {
        /// Length of the host name.
        len: usize,
    },
    /// A label (part between dots) is empty.
    #[error("the host name has an empty label (leading, trailing or doubled '.')")]
    EmptyLabel,
    /// A label is longer than 63 characters.
    #[error("a label of the host name is {len} characters long; at most 63 are allowed")]
    LabelTooLong {
        /// Length of the label.
        len: usize,
    },
    /// A label starts or ends with `-`.
    #[error("a label of the host name starts or ends with '-'")]
    LabelHyphen,
    /// The name ends in a numeric label but is not a dotted IPv4 address.
    #[error(
        "the host name ends in a number but is not a dotted-decimal IPv4 address \
         (write IPv4 as four decimal numbers without leading zeros, e.g. 127.0.0.1)"
    )]
    NumericDomain,
}

impl FromStr for Host {
    type Err = HostError;

    /// Parses `1.2.3.4`, `[::1]` or a domain name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(inner) = s.strip_prefix('[') {
            let Some(inner) = inner.strip_suffix(']') else {
                return Err(if inner.contains(']') {
                    HostError::AfterBracket
                } else {
                    HostError::UnclosedBracket
                });
            };
            return parse_ipv6(inner).map(Host::Ipv6);
        }
        if s.contains(':') {
            return Err(HostError::UnbracketedIpv6);
        }
        if let Ok(a) = s.parse::<Ipv4Addr>() {
            return Ok(Host::Ipv4(a));
        }
        validate_domain(s)?;
        Ok(Host::Domain(s.to_owned()))
    }
}

fn parse_ipv6(s: &str) -> Result<Ipv6Addr, HostError> {
    let addr: Ipv6Addr = s.parse().map_err(|_| HostError::BadIpv6)?;
    if addr.to_string() != s {
        return Err(HostError::NonCanonicalIpv6);
    }
    Ok(addr)
}

fn validate_domain(s: &str) -> Result<(), HostError> {
    if let Some(position) = s
        .chars()
        .position(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    {
        return Err(HostError::DomainCharacter { position });
    }
    // All ASCII from here on, so bytes are characters.
    if s.len() > 253 {
        return Err(HostError::DomainTooLong { len: s.len() });
    }
    let mut last = "";
    for label in s.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(HostError::LabelTooLong { len: label.len() });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostError::LabelHyphen);
        }
        last = label;
    }
    // Resolvers read names like `127.1` or `0x7f.1` as IPv4 addresses; top
    // level domains are never numeric, so refuse the ambiguity.
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
    if hex || last.chars().all(|c| c.is_ascii_digit()) {
        return Err(HostError::NumericDomain);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn host_parsing() {
        assert_eq!(
            "1.2.3.4".parse::<Host>(),
            Ok(Host::Ipv4(Ipv4Addr::new(1, 2, 3, 4)))
        );
        assert_eq!("[::1]".parse::<Host>(), Ok(Host::Ipv6(Ipv6Addr::LOCALHOST)));
        assert_eq!(Host::Ipv6(Ipv6Addr::LOCALHOST).to_string(), "[::1]");
        assert_eq!("".parse::<Host>(), Err(HostError::EmptyLabel));
        assert_eq!("a.".parse::<Host>(), Err(HostError::EmptyLabel));
        assert_eq!("0x7f.0x1".parse::<Host>(), Err(HostError::NumericDomain));
        assert_eq!("a-".parse::<Host>(), Err(HostError::LabelHyphen));
        assert!("xn--bcher-kva.example".parse::<Host>().is_ok());
        assert!("é.example".parse::<Host>().is_err());
        let max_label = "a".repeat(63);
        assert!(format!("{max_label}.example").parse::<Host>().is_ok());
    }
}
