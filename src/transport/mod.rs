//! Mutually authenticated TLS connections between vats.
//!
//! [`connect`] dials a vat and succeeds only if the server proves it holds
//! the key whose vat ID the caller expects; [`accept`] completes a server
//! handshake and reports the client's vat ID. Both bound the whole
//! handshake by a timeout and require the `captp/1` ALPN protocol. On an
//! established stream, the crate's `Connection` (in `connection.rs`) reads
//! and writes whole frames, with bounded buffers.
//!
//! This module must not trust anything but the key hashes (no CAs, host
//! names or validity periods), must not return a stream whose peer vat ID
//! is unknown, and must not let a silent or slow peer hold a handshake open
//! past its timeout.

mod connection;
mod outbox;
pub mod tls;

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, OtherError};
use tokio::net::TcpStream;

use crate::error::TlsError;
use crate::identity::{VatId, vat_id_of_certificate};

pub(crate) use connection::{Connection, FrameBody};
pub use tls::{
    ALPN, PinMismatch, PinnedServerVerifier, SelfSignedClientVerifier, client_config, server_config,
};

/// A TLS stream over TCP, from either side of the handshake.
pub type TlsStream = tokio_rustls::TlsStream<TcpStream>;

/// Server name sent when the address's host is neither an IP address nor a
/// DNS name. Nothing checks server names; this only fills in SNI.
const FALLBACK_SERVER_NAME: &str = "captp.invalid";

/// Errors establishing a vat-to-vat connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// An I/O error on the connection.
    ///
    /// `From<io::Error>` unwraps rustls errors that tokio-rustls wraps in
    /// `io::Error`, so those become [`TransportError::Tls`] or
    /// [`TransportError::VatIdMismatch`] instead.
    #[error("I/O error on the vat connection: {0}")]
    Io(#[source] io::Error),
    /// Looking up or connecting to an address failed.
    #[error("could not connect to {address}: {source}")]
    Connect {
        /// The address being dialled.
        address: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The TLS layer failed, or the TLS configuration could not be built.
    #[error("TLS error: {0}")]
    Tls(#[source] TlsError),
    /// The TCP connect and TLS handshake did not finish in time.
    #[error(
        "the TLS handshake did not complete within {0:?}; the peer may not be a captp vat, \
         or the network is too slow for this timeout"
    )]
    HandshakeTimeout(Duration),
    /// The server is not the vat the sturdy ref names.
    #[error(
        "the server presented vat ID {presented} but the sturdy ref names vat ID {expected}: \
         wrong server or a changed key"
    )]
    VatIdMismatch {
        /// The vat ID the caller expected.
        expected: VatId,
        /// The vat ID of the key the server proved it holds.
        presented: VatId,
    },
    /// The peer completed the handshake without a certificate, so its vat
    /// ID is unknown.
    #[error("the peer presented no certificate, so its vat ID is unknown")]
    NoPeerCertificate,
    /// The peer did not negotiate the `captp/1` ALPN protocol.
    #[error(
        "the peer did not negotiate ALPN protocol \"captp/1\": it is not a captp vat, \
         or speaks another protocol version"
    )]
    AlpnMismatch,
    /// The address resolved to no IP addresses.
    #[error("the address {address} resolved to no IP addresses")]
    Resolve {
        /// The address being dialled.
        address: String,
    },
}

impl TransportError {
    /// Turns a [`PinMismatch`] reported by the verifier into
    /// [`TransportError::VatIdMismatch`]; everything else becomes
    /// [`TransportError::Tls`]. (Not a `From` impl: rustls stays out of the API.)
    pub(crate) fn from_tls(e: rustls::Error) -> Self {
        if let rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) = &e {
            if let Some(pin) = inner.downcast_ref::<PinMismatch>() {
                return TransportError::VatIdMismatch {
                    expected: pin.expected,
                    presented: pin.presented,
                };
            }
        }
        TransportError::Tls(TlsError::rustls(e))
    }
}

impl From<io::Error> for TransportError {
    /// Unwraps a `rustls::Error` carried inside an `io::Error` (as
    /// tokio-rustls reports handshake failures); other errors become
    /// [`TransportError::Io`].
    fn from(e: io::Error) -> Self {
        let tls = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned();
        match tls {
            Some(tls) => TransportError::from_tls(tls),
            None => TransportError::Io(e),
        }
    }
}

/// The vat ID of the peer of an established connection: the SPKI hash of
/// the first certificate it presented.
pub fn peer_vat_id(conn: &rustls::CommonState) -> Result<VatId, TransportError> {
    let cert = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(TransportError::NoPeerCertificate)?;
    vat_id_of_certificate(cert).map_err(TransportError::from_tls)
}

fn check_alpn(conn: &rustls::CommonState) -> Result<(), TransportError> {
    if conn.alpn_protocol() == Some(ALPN) {
        Ok(())
    } else {
        Err(TransportError::AlpnMismatch)
    }
}

/// The host part of `host:port` or `[v6]:port`.
fn host_part(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        if let Some((host, _)) = rest.split_once(']') {
            return host;
        }
    }
    match address.rsplit_once(':') {
        Some((host, _)) => host,
        None => address,
    }
}

/// The TLS server name for `address`. Only used for SNI: no verifier looks
/// at it.
fn server_name_for(address: &str) -> ServerName<'static> {
    let host = host_part(address);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ServerName::IpAddress(ip.into());
    }
    if let Ok(name) = ServerName::try_from(host.to_owned()) {
        return name;
    }
    match ServerName::try_from(FALLBACK_SERVER_NAME) {
        Ok(name) => name,
        // Unreachable: the fallback is a valid DNS name.
        Err(_) => ServerName::IpAddress(IpAddr::from([0u8, 0, 0, 0]).into()),
    }
}

/// Resolves `address` and connects to the first IP address that answers.
async fn connect_tcp(address: &str) -> Result<TcpStream, TransportError> {
    let addrs =
        tokio::net::lookup_host(address)
            .await
            .map_err(|source| TransportError::Connect {
                address: address.to_owned(),
                source,
            })?;
    let mut last_error = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(source) => TransportError::Connect {
            address: address.to_owned(),
            source,
        },
        None => TransportError::Resolve {
            address: address.to_owned(),
        },
    })
}

/// What a completed TLS handshake agreed on, in the names rustls gives them
/// (`TLSv1_3`, `TLS13_AES_128_GCM_SHA256`, `X25519MLKEM768`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// The protocol version.
    pub version: String,
    /// The cipher suite.
    pub cipher: String,
    /// The key exchange group.
    pub group: String,
}

impl TlsInfo {
    /// Reads the parameters of an established connection (`"?"` for one not known).
    pub fn of(conn: &rustls::CommonState) -> TlsInfo {
        let unknown = || "?".to_owned();
        TlsInfo {
            version: conn
                .protocol_version()
                .map_or_else(unknown, |v| format!("{v:?}")),
            cipher: conn
                .negotiated_cipher_suite()
                .map_or_else(unknown, |c| format!("{:?}", c.suite())),
            group: conn
                .negotiated_key_exchange_group()
                .map_or_else(unknown, |g| format!("{:?}", g.name())),
        }
    }
}

/// The `DEBUG` event for a completed handshake: what was agreed, no key material.
fn log_handshake(conn: &rustls::CommonState) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let info = TlsInfo::of(conn);
        tracing::debug!(
            version = %info.version,
            cipher = %info.cipher,
            group = %info.group,
            "TLS handshake complete"
        );
    }
}

/// Connects to the vat at `address` (`host:port`, IPv6 in brackets) and
/// completes a TLS handshake in which the server must prove it holds the
/// key whose vat ID is `expected`.
///
/// `config` should come from [`client_config`] with the same `expected`.
/// The TCP connect and the handshake together must finish within
/// `handshake_timeout`. Returns the stream and the server's vat ID (equal
/// to `expected`).
pub async fn connect(
    address: &str,
    config: Arc<ClientConfig>,
    expected: VatId,
    handshake_timeout: Duration,
) -> Result<(TlsStream, VatId), TransportError> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let server_name = server_name_for(address);
    let attempt = async {
        let tcp = connect_tcp(address).await?;
        tcp.set_nodelay(true)?;
        let stream = connector.connect(server_name, tcp).await?;
        let (_, conn) = stream.get_ref();
        let presented = peer_vat_id(conn)?;
        // The verifier already enforced this; check again in case `config`
        // was built for a different vat.
        if !presented.ct_eq(&expected) {
            return Err(TransportError::VatIdMismatch {
                expected,
                presented,
            });
        }
        check_alpn(conn)?;
        log_handshake(conn);
        Ok((TlsStream::Client(stream), presented))
    };
    match tokio::time::timeout(handshake_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(TransportError::HandshakeTimeout(handshake_timeout)),
    }
}

/// Completes the server side of a TLS handshake on an accepted TCP
/// connection and returns the stream with the client's vat ID.
///
/// The handshake must finish within `handshake_timeout`. The acceptor
/// should be built from [`server_config`].
pub async fn accept(
    tcp: TcpStream,
    acceptor: &tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
) -> Result<(TlsStream, VatId), TransportError> {
    tcp.set_nodelay(true)?;
    let attempt = async {
        let stream = acceptor.accept(tcp).await?;
        let (_, conn) = stream.get_ref();
        let peer = peer_vat_id(conn)?;
        check_alpn(conn)?;
        log_handshake(conn);
        Ok((TlsStream::Server(stream), peer))
    };
    match tokio::time::timeout(handshake_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(TransportError::HandshakeTimeout(handshake_timeout)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::identity::Identity;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// Binds 127.0.0.1:0 and accepts one connection as `server`.
    async fn serve_once(
        server: &Identity,
        timeout: Duration,
    ) -> (
        String,
        JoinHandle<Result<(TlsStream, VatId), TransportError>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(server).unwrap());
        let handle = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            accept(tcp, &acceptor, timeout).await
        });
        (address, handle)
    }

    /// Accepts any server certificate, but still checks the handshake signature.
    #[derive(Debug)]
    struct AcceptAnything(tls::SignatureCheck);

    impl ServerCertVerifier for AcceptAnything {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.tls12()
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.tls13(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.schemes()
        }
    }

    fn client_config_with_alpn(
        client: &Identity,
        expected: VatId,
        alpn: Vec<Vec<u8>>,
    ) -> Arc<ClientConfig> {
        let mut config = (*client_config(client, expected).unwrap()).clone();
        config.alpn_protocols = alpn;
        Arc::new(config)
    }

    #[tokio::test]
    async fn mutual_handshake_reports_both_vat_ids() {
        let server = Identity::generate().unwrap();
        let client = Identity::generate().unwrap();
        let (address, handle) = serve_once(&server, TIMEOUT).await;
        let config = client_config(&client, server.vat_id()).unwrap();
        let (mut client_stream, seen_server) = connect(&address, config, server.vat_id(), TIMEOUT)
            .await
            .unwrap();
        let (mut server_stream, seen_client) = handle.await.unwrap().unwrap();
        assert_eq!(seen_server, server.vat_id());
        assert_eq!(seen_client, client.vat_id());
        assert_eq!(
            peer_vat_id(client_stream.get_ref().1).unwrap(),
            server.vat_id()
        );
        assert_eq!(
            peer_vat_id(server_stream.get_ref().1).unwrap(),
            client.vat_id()
        );
        assert_eq!(client_stream.get_ref().1.alpn_protocol(), Some(ALPN));
        let conn = client_stream.get_ref().1;
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        // The post-quantum hybrid key exchange is what two vats agree on.
        assert_eq!(
            conn.negotiated_key_exchange_group().map(|g| g.name()),
            Some(rustls::NamedGroup::X25519MLKEM768)
        );

        client_stream.write_all(b"ping").await.unwrap();
        client_stream.flush().await.unwrap();
        let mut buf = [0u8; 4];
        server_stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn wrong_vat_id_is_a_mismatch() {
        let server = Identity::generate().unwrap();
        let client = Identity::generate().unwrap();
        let other = Identity::generate().unwrap().vat_id();
        let (address, handle) = serve_once(&server, TIMEOUT).await;
        let config = client_config(&client, other).unwrap();
        let err = connect(&address, config, other, TIMEOUT).await.unwrap_err();
        match err {
            TransportError::VatIdMismatch {
                expected,
                presented,
            } => {
                assert_eq!(expected, other);
                assert_eq!(presented, server.vat_id());
            }
            other => panic!("unexpected error: {other:?}"),
        }
        let msg = err_message(other, server.vat_id());
        assert!(msg.contains("wrong server or a changed key"), "{msg}");
        assert!(handle.await.unwrap().is_err());
    }

    fn err_message(expected: VatId, presented: VatId) -> String {
        TransportError::VatIdMismatch {
            expected,
            presented,
        }
        .to_string()
    }

    #[tokio::test]
    async fn client_without_certificate_is_refused() {
        let server = Identity::generate().unwrap();
        let (address, handle) = serve_once(&server, TIMEOUT).await;
        let mut config = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(tls::SignatureCheck::new())))
        .with_no_client_auth();
        config.alpn_protocols = vec![ALPN.to_vec()];
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(&address).await.unwrap();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let name = ServerName::try_from("captp.invalid").unwrap();
            let result = connector.connect(name, tcp).await;
            if let Ok(mut stream) = result {
                // TLS 1.3: the client may think it is done; the server's
                // alert arrives on the next read.
                let mut buf = [0u8; 1];
                let _ = stream.read(&mut buf).await;
            }
        });
        let err = handle.await.unwrap().unwrap_err();
        assert!(
            matches!(
                &err,
                TransportError::Tls(e) if e.as_rustls() == Some(&rustls::Error::NoCertificatesPresented)
            ),
            "unexpected error: {err:?}"
        );
        client.await.unwrap();
    }

    #[tokio::test]
    async fn other_alpn_is_refused() {
        let server = Identity::generate().unwrap();
        let client = Identity::generate().unwrap();
        let (address, handle) = serve_once(&server, TIMEOUT).await;
        let config = client_config_with_alpn(&client, server.vat_id(), vec![b"other/1".to_vec()]);
        let client_result = connect(&address, config, server.vat_id(), TIMEOUT).await;
        assert!(client_result.is_err());
        let err = handle.await.unwrap().unwrap_err();
        assert!(
            matches!(
                &err,
                TransportError::Tls(e) if e.as_rustls() == Some(&rustls::Error::NoApplicationProtocol)
            ),
            "unexpected error: {err:?}"
        );
    }

    #[tokio::test]
    async fn missing_alpn_is_refused() {
        let server = Identity::generate().unwrap();
        let client = Identity::generate().unwrap();
        let (address, handle) = serve_once(&server, TIMEOUT).await;
        let config = client_config_with_alpn(&client, server.vat_id(), Vec::new());
        let client_result = connect(&address, config, server.vat_id(), TIMEOUT).await;
        assert!(
            matches!(client_result, Err(TransportError::AlpnMismatch)),
            "unexpected client result: {:?}",
            client_result.map(|(_, id)| id)
        );
        let err = handle.await.unwrap().unwrap_err();
        assert!(
            matches!(err, TransportError::AlpnMismatch),
            "unexpected error: {err:?}"
        );
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let server = Identity::generate().unwrap();
        let timeout = Duration::from_millis(200);
        let (address, handle) = serve_once(&server, timeout).await;
        let silent = TcpStream::connect(&address).await.unwrap();
        let err = handle.await.unwrap().unwrap_err();
        assert!(
            matches!(err, TransportError::HandshakeTimeout(d) if d == timeout),
            "unexpected error: {err:?}"
        );
        drop(silent);
    }

    #[test]
    fn server_names() {
        assert_eq!(host_part("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(host_part("[::1]:80"), "::1");
        assert_eq!(host_part("example.com:80"), "example.com");
        assert!(matches!(
            server_name_for("[::1]:80"),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name_for("example.com:80"),
            ServerName::DnsName(_)
        ));
        let fallback = server_name_for("bad name!:80");
        assert_eq!(
            fallback,
            ServerName::try_from(FALLBACK_SERVER_NAME).unwrap()
        );
    }

    #[test]
    fn io_wrapped_pin_mismatch_is_unwrapped() {
        let pin = PinMismatch {
            expected: VatId::from_bytes([1; 32]),
            presented: VatId::from_bytes([2; 32]),
        };
        let tls =
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(pin))));
        let io = io::Error::new(io::ErrorKind::InvalidData, tls);
        match TransportError::from(io) {
            TransportError::VatIdMismatch {
                expected,
                presented,
            } => {
                assert_eq!(expected, pin.expected);
                assert_eq!(presented, pin.presented);
            }
            other => panic!("unexpected: {other:?}"),
        }
        let plain = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
        assert!(matches!(TransportError::from(plain), TransportError::Io(_)));
    }
}
