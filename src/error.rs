//! [`Error`]: what the vat's own operations (start, export) can fail with, and
//! [`TlsError`], the opaque wrapper for the TLS and certificate libraries' errors.
//!
//! Failures of calls between vats are not errors of this type: they break promises and
//! references with a [`crate::Broken`]. Each layer has its own error type: in the API,
//! [`crate::IdentityError`] for keys on disk, [`crate::TransportError`] for I/O and TLS
//! and [`crate::ParseError`] for URIs; inside the engine, `wire::DecodeError` for bad
//! bytes and `proto::Violation` for bad peer behaviour (they abort a peer's session and
//! reach a program only as a [`crate::Broken`]). This module must not let a dependency's
//! error type into a public signature: wrap it in [`TlsError`].

use crate::identity::IdentityError;
use crate::store::StoreError;
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
    /// The vat has no store, so it cannot export persistent sturdy refs.
    #[error(
        "this vat has no sturdy-ref store, so it cannot export persistent sturdy refs: \
         give the builder one with `VatBuilder::store(Store::open(path)?)`"
    )]
    NoStore,
    /// The sturdy-ref store failed; nothing was stored or deleted.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sturdy ref URI did not parse.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// An error from the TLS and certificate libraries underneath (rustls, rcgen), kept
/// opaque so that their types are not part of this crate's API. Its message says what
/// failed; `source()` leads further down.
pub struct TlsError(TlsErrorInner);

enum TlsErrorInner {
    Rustls(rustls::Error),
    Rcgen(rcgen::Error),
}

impl TlsError {
    pub(crate) fn rustls(e: rustls::Error) -> TlsError {
        TlsError(TlsErrorInner::Rustls(e))
    }

    pub(crate) fn rcgen(e: rcgen::Error) -> TlsError {
        TlsError(TlsErrorInner::Rcgen(e))
    }

    /// The rustls error inside, if it is one (for this crate's own checks and tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn as_rustls(&self) -> Option<&rustls::Error> {
        match &self.0 {
            TlsErrorInner::Rustls(e) => Some(e),
            TlsErrorInner::Rcgen(_) => None,
        }
    }
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            TlsErrorInner::Rustls(e) => e.fmt(f),
            TlsErrorInner::Rcgen(e) => e.fmt(f),
        }
    }
}

impl std::fmt::Debug for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            TlsErrorInner::Rustls(e) => e.fmt(f),
            TlsErrorInner::Rcgen(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            TlsErrorInner::Rustls(e) => e.source(),
            TlsErrorInner::Rcgen(e) => e.source(),
        }
    }
}
