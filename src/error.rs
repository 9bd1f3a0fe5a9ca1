//! [`Error`]: what the vat's own operations (start, export) can fail with.
//!
//! Failures of calls between vats are not errors of this type: they break promises and
//! references with a [`crate::Broken`]. Each layer has its own error type, re-exported
//! here: [`crate::wire::DecodeError`] for bad bytes, [`crate::proto::Violation`] for bad
//! peer behaviour, [`crate::transport::TransportError`] for I/O and TLS,
//! [`crate::identity::IdentityError`] for keys on disk, [`crate::sturdy::ParseError`] for
//! URIs.

use crate::identity::IdentityError;
use crate::sturdy::ParseError;
use crate::transport::TransportError;

/// An error from starting or using a [`crate::Vat`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The vat's identity could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// TLS configuration or a connection failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The listen address could not be bound.
    #[error("could not listen on {address}: {source}")]
    Listen {
        /// The address asked for.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The advertised host is not a valid host name or address.
    #[error("bad advertised host: {0}")]
    BadAdvertise(String),
    /// The vat does not listen, so it cannot export sturdy refs.
    #[error(
        "this vat does not listen on any address, so it cannot export sturdy refs: give the builder a listen address"
    )]
    NotListening,
    /// A sturdy ref URI did not parse.
    #[error(transparent)]
    Parse(#[from] ParseError),
}
