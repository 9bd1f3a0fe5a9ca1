//! rustls configuration for vat-to-vat mutual TLS.
//!
//! Both sides present self-signed certificates. The client pins the server
//! to the vat ID named in a sturdy ref ([`PinnedServerVerifier`]); the
//! server accepts any well-formed client certificate
//! ([`SelfSignedClientVerifier`]) and learns the client's vat ID from it.
//! In both directions TLS 1.3's CertificateVerify proves that the peer holds
//! the private key for the certificate it presented.
//!
//! This module must not consult certificate authorities, host names or
//! validity periods, must not allow TLS 1.2 or session resumption, and must
//! not use the process-wide default crypto provider: every configuration is
//! built with aws-lc-rs explicitly.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};

use super::TransportError;
use crate::identity::{Identity, VatId, vat_id_of_certificate};

/// The ALPN protocol identifier both sides require.
pub const ALPN: &[u8] = b"captp/1";

/// The one crypto provider used for every configuration.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server presented a certificate whose vat ID is not the one the
/// client expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinMismatch {
    /// The vat ID the sturdy ref names.
    pub expected: VatId,
    /// The vat ID of the certificate the server presented.
    pub presented: VatId,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server presented vat ID {} but the sturdy ref names vat ID {}: \
             wrong server or a changed key",
            self.presented, self.expected
        )
    }
}

impl std::error::Error for PinMismatch {}

/// Client-side verifier that accepts exactly one server key: the one whose
/// vat ID is `expected`.
///
/// No CA, no host name, no validity period; intermediates are ignored.
#[derive(Debug)]
pub struct PinnedServerVerifier {
    expected: VatId,
    signatures: SignatureCheck,
}

impl PinnedServerVerifier {
    /// A verifier pinned to `expected`, checking handshake signatures with
    /// aws-lc-rs.
    pub fn new(expected: VatId) -> PinnedServerVerifier {
        PinnedServerVerifier {
            expected,
            signatures: SignatureCheck::new(),
        }
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = vat_id_of_certificate(end_entity)?;
        if presented.ct_eq(&self.expected) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch {
                    expected: self.expected,
                    presented,
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// Server-side verifier that requires a client certificate and accepts any
/// one that parses; the client's vat ID is read from it after the
/// handshake.
#[derive(Debug)]
pub struct SelfSignedClientVerifier {
    signatures: SignatureCheck,
}

impl SelfSignedClientVerifier {
    /// A verifier checking handshake signatures with aws-lc-rs.
    pub fn new() -> SelfSignedClientVerifier {
        SelfSignedClientVerifier {
            signatures: SignatureCheck::new(),
        }
    }
}

impl Default for SelfSignedClientVerifier {
    fn default() -> Self {
        SelfSignedClientVerifier::new()
    }
}

impl ClientCertVerifier for SelfSignedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        ParsedCertificate::try_from(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// The handshake-signature checks every verifier here makes, written once: a TLS 1.3
/// CertificateVerify signature is checked with aws-lc-rs's algorithms (it proves the
/// peer holds the key of the certificate it presented); a TLS 1.2 one is refused.
///
/// The verifiers' trait methods only delegate here, so the two sides cannot drift
/// apart in what they accept.
#[derive(Debug)]
pub(crate) struct SignatureCheck {
    algs: WebPkiSupportedAlgorithms,
}

impl SignatureCheck {
    /// Checks with the algorithms of the one crypto provider, aws-lc-rs.
    pub(crate) fn new() -> SignatureCheck {
        SignatureCheck {
            algs: provider().signature_verification_algorithms,
        }
    }

    /// Refuses a TLS 1.2 signature, which can only arise if the configuration were
    /// changed to allow TLS 1.2.
    pub(crate) fn tls12(&self) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("captp accepts TLS 1.3 only".into()))
    }

    /// Verifies a TLS 1.3 handshake signature over `message` by the key of `cert`.
    pub(crate) fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    /// The signature schemes [`tls13`](Self::tls13) can verify, to offer the peer.
    pub(crate) fn schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The server configuration for `identity`: TLS 1.3 only, mandatory client
/// certificates, ALPN [`ALPN`], no session resumption.
pub fn server_config(identity: &Identity) -> Result<Arc<ServerConfig>, TransportError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TransportError::from_tls)?
        .with_client_cert_verifier(Arc::new(SelfSignedClientVerifier::new()))
        .with_single_cert(vec![identity.certificate().clone()], identity.private_key())
        .map_err(TransportError::from_tls)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The client configuration for connecting as `identity` to the vat
/// `expected`: TLS 1.3 only, server pinned by vat ID, client certificate
/// presented, ALPN [`ALPN`], no session resumption.
pub fn client_config(
    identity: &Identity,
    expected: VatId,
) -> Result<Arc<ClientConfig>, TransportError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TransportError::from_tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier::new(expected)))
        .with_client_auth_cert(vec![identity.certificate().clone()], identity.private_key())
        .map_err(TransportError::from_tls)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}
