//! Vat identities: the long-lived key pair of a vat and the vat ID derived
//! from it.
//!
//! A vat ID is the SHA-256 of the DER `SubjectPublicKeyInfo` of the vat's
//! certificate. It is what a sturdy ref pins, and what the TLS verifiers in
//! [`crate::transport`] compare against. The certificate itself is only a
//! carrier for the public key: it is self-signed, its names mean nothing and
//! its validity period is never checked.
//!
//! Beside the key, an identity directory keeps the vat's export secret
//! (`swiss.key`): 32 random bytes from which [`crate::Vat::export_named`]
//! derives swiss numbers (HMAC-SHA256 over the export's name), so that a
//! named export prints the same URI after a restart.
//!
//! This module must not print or log private key material or the export
//! secret (the `Debug` of [`Identity`] shows the vat ID only), must not load
//! a key or secret file that other users can read, and must not overwrite an
//! existing one.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use subtle::ConstantTimeEq;

use crate::error::TlsError;
use crate::wire::id::{self, IdKind, IdTextError, SwissNumber};

/// File name of the private key inside an identity directory.
const KEY_FILE: &str = "vat.key";
/// File name of the (informational) certificate inside an identity directory.
const CERT_FILE: &str = "vat.crt";
/// File name of the export secret (for named exports) inside an identity directory.
const SECRET_FILE: &str = "swiss.key";
/// Common name put in the self-signed certificate. Nothing checks it.
const CERT_COMMON_NAME: &str = "captp vat";
/// What the HMAC of a named export starts with, so that its output cannot be confused
/// with any other use of the secret (a later version would change the tag).
const NAMED_EXPORT_DOMAIN: &[u8] = b"captp named export v1\0";

/// The identity of a vat: SHA-256 of its certificate's DER
/// `SubjectPublicKeyInfo`.
///
/// Displayed (and parsed) as 43 characters of unpadded base64url.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VatId([u8; 32]);

impl VatId {
    /// The vat ID of a DER-encoded `SubjectPublicKeyInfo` (including its
    /// outer `SEQUENCE`).
    pub fn from_spki(spki_der: &[u8]) -> VatId {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki_der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        VatId(bytes)
    }

    /// A vat ID from its raw 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> VatId {
        VatId(bytes)
    }

    /// The raw 32 bytes of this vat ID.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Compares two vat IDs in constant time.
    pub fn ct_eq(&self, other: &VatId) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Display for VatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&id::encode_id(&self.0))
    }
}

impl fmt::Debug for VatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VatId({self})")
    }
}

impl FromStr for VatId {
    type Err = IdTextError;

    /// Parses exactly 43 characters of unpadded base64url, the canonical encoding of
    /// 32 bytes; the error names the vat ID ([`IdKind::VatId`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        id::parse_id(s, IdKind::VatId).map(VatId)
    }
}

/// Computes the vat ID of a DER certificate: SHA-256 of its
/// `SubjectPublicKeyInfo`.
///
/// This is exactly the computation the TLS verifiers perform on a peer's
/// certificate.
pub(crate) fn vat_id_of_certificate(cert: &CertificateDer<'_>) -> Result<VatId, rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
    let spki = parsed.subject_public_key_info();
    Ok(VatId::from_spki(spki.as_ref()))
}

/// Errors creating, loading or saving an [`Identity`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file system operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "read" or "create".
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The key file exists but does not hold a usable private key.
    #[error(
        "could not parse the private key in {}: {reason}; the file must hold a PKCS#8 PEM \
         private key (moving it away makes a new identity with a different vat ID)",
        path.display()
    )]
    KeyParse {
        /// The key file.
        path: PathBuf,
        /// What the parser reported.
        reason: String,
    },
    /// The key file can be read by users other than its owner.
    #[error(
        "refusing to use private key {} because other users can access it (mode {mode:03o}); \
         run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Generating the key pair or the self-signed certificate failed.
    #[error("could not generate the vat key or certificate: {0}")]
    Rcgen(#[source] TlsError),
    /// The generated certificate could not be parsed back (a bug).
    #[error("the generated vat certificate does not parse: {0}")]
    Certificate(#[source] TlsError),
    /// The export secret file exists but does not hold a secret.
    #[error(
        "the export secret in {} is not 43 characters of base64url; restore it from a \
         backup, or move it away to make a new one (every named export then gets a new URI)",
        path.display()
    )]
    SecretParse {
        /// The secret file.
        path: PathBuf,
    },
    /// [`Identity::load`] found no key file.
    #[error(
        "no vat key at {}; create one with Identity::load_or_create or point at the right directory",
        path.display()
    )]
    MissingKey {
        /// The key file that was expected.
        path: PathBuf,
    },
}

/// A vat's private key, its self-signed certificate and its vat ID.
///
/// `Debug` shows the vat ID only, never the key.
pub struct Identity {
    key: PrivateKeyDer<'static>,
    certificate: CertificateDer<'static>,
    vat_id: VatId,
    export_secret: ExportSecret,
}

/// The 32-byte secret named exports are derived from. No `Debug` of its bytes.
#[derive(Clone)]
struct ExportSecret {
    bytes: [u8; 32],
    /// Whether it was read from (or written to) an identity directory.
    persistent: bool,
}

impl ExportSecret {
    /// A fresh secret that lives only in memory.
    fn ephemeral() -> ExportSecret {
        ExportSecret {
            bytes: *SwissNumber::generate().as_bytes(),
            persistent: false,
        }
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            key: self.key.clone_key(),
            certificate: self.certificate.clone(),
            vat_id: self.vat_id,
            export_secret: self.export_secret.clone(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("vat_id", &self.vat_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Generates a fresh ephemeral identity (ECDSA P-256), kept in memory
    /// only.
    ///
    /// Its export secret is ephemeral too: named exports of a vat with this
    /// identity get new URIs when the program restarts.
    pub fn generate() -> Result<Identity, IdentityError> {
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rcgen_error)?;
        Identity::from_key_pair(&key, ExportSecret::ephemeral())
    }

    /// Loads the identity stored in `dir`, creating `dir` and a new identity
    /// there if `dir/vat.key` does not exist.
    ///
    /// A new key is written as PKCS#8 PEM to `dir/vat.key` (mode 0600 on
    /// unix, set when the file is created) and its certificate to
    /// `dir/vat.crt`. On load the certificate is regenerated from the key,
    /// so an expired or missing `vat.crt` never matters; `vat.crt` is
    /// rewritten only if missing.
    ///
    /// The export secret for named exports is kept beside the key in
    /// `dir/swiss.key` (43 characters of base64url, mode 0600), created on
    /// first use by this function and by [`Identity::load`] alike.
    ///
    /// On unix, a key or secret file readable or writable by group or others
    /// is refused with [`IdentityError::InsecurePermissions`].
    pub fn load_or_create(dir: impl AsRef<Path>) -> Result<Identity, IdentityError> {
        let dir = dir.as_ref();
        let key_path = dir.join(KEY_FILE);
        if let Some(identity) = Identity::try_load(dir, &key_path)? {
            return Ok(identity);
        }
        create_dir(dir)?;
        let secret = load_or_create_secret(dir)?;
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rcgen_error)?;
        let identity = Identity::from_key_pair(&key, secret)?;
        match write_new_key_file(&key_path, key.serialize_pem().as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Another process created the key between our check and our
                // write: use theirs.
                return Identity::load(dir);
            }
            Err(source) => {
                return Err(IdentityError::Io {
                    action: "write",
                    path: key_path,
                    source,
                });
            }
        }
        let cert_path = dir.join(CERT_FILE);
        fs::write(&cert_path, cert_pem(&identity.certificate)).map_err(|source| {
            IdentityError::Io {
                action: "write",
                path: cert_path,
                source,
            }
        })?;
        Ok(identity)
    }

    /// Loads the identity stored in `dir`; fails with
    /// [`IdentityError::MissingKey`] if `dir/vat.key` does not exist.
    ///
    /// Same checks and certificate handling as [`Identity::load_or_create`].
    pub fn load(dir: impl AsRef<Path>) -> Result<Identity, IdentityError> {
        let dir = dir.as_ref();
        let key_path = dir.join(KEY_FILE);
        match Identity::try_load(dir, &key_path)? {
            Some(identity) => Ok(identity),
            None => Err(IdentityError::MissingKey { path: key_path }),
        }
    }

    /// This vat's ID.
    pub fn vat_id(&self) -> VatId {
        self.vat_id
    }

    /// Whether the export secret comes from an identity directory, so that named
    /// exports keep their URIs across restarts (`false` for [`Identity::generate`]).
    pub fn has_persistent_export_secret(&self) -> bool {
        self.export_secret.persistent
    }

    /// The swiss number of the export named `name`: HMAC-SHA256 under the export
    /// secret of a domain tag followed by the name. The same secret and name always
    /// give the same number; without the secret it cannot be derived.
    pub(crate) fn named_swiss(&self, name: &str) -> SwissNumber {
        let key =
            aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.export_secret.bytes);
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
        ctx.update(NAMED_EXPORT_DOMAIN);
        ctx.update(name.as_bytes());
        let tag = ctx.sign();
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(tag.as_ref());
        SwissNumber::from_bytes(bytes)
    }

    /// This vat's self-signed certificate (DER).
    pub(crate) fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// A copy of this vat's private key (PKCS#8 DER), for building TLS
    /// configurations.
    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// Loads the key at `key_path` if it exists; `Ok(None)` if it does not.
    fn try_load(dir: &Path, key_path: &Path) -> Result<Option<Identity>, IdentityError> {
        let Some(pem) = read_key_file(key_path)? else {
            return Ok(None);
        };
        let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| IdentityError::KeyParse {
            path: key_path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let secret = load_or_create_secret(dir)?;
        let identity = Identity::from_key_pair(&key, secret)?;
        let cert_path = dir.join(CERT_FILE);
        match fs::symlink_metadata(&cert_path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The certificate file is informational only; failing to
                // write it must not stop the vat from starting.
                if let Err(e) = fs::write(&cert_path, cert_pem(&identity.certificate)) {
                    tracing::warn!(
                        path = %cert_path.display(),
                        error = %e,
                        "could not rewrite the vat certificate file"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(
                    path = %cert_path.display(),
                    error = %e,
                    "could not inspect the vat certificate file"
                );
            }
        }
        Ok(Some(identity))
    }

    fn from_key_pair(
        key: &rcgen::KeyPair,
        export_secret: ExportSecret,
    ) -> Result<Identity, IdentityError> {
        let mut params = rcgen::CertificateParams::default();
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::CommonName, CERT_COMMON_NAME);
        params.distinguished_name = name;
        let cert = params.self_signed(key).map_err(rcgen_error)?;
        let certificate = cert.der().clone();
        let vat_id = vat_id_of_certificate(&certificate)
            .map_err(|e| IdentityError::Certificate(TlsError::rustls(e)))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(Identity {
            key,
            certificate,
            vat_id,
            export_secret,
        })
    }
}

/// Reads the key file, refusing insecure permissions. `Ok(None)` if it
/// does not exist.
fn read_key_file(path: &Path) -> Result<Option<String>, IdentityError> {
    let io_err = |action: &'static str| {
        move |source: io::Error| IdentityError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open")(e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = file
            .metadata()
            .map_err(io_err("inspect"))?
            .permissions()
            .mode()
            & 0o7777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let mut pem = String::new();
    file.read_to_string(&mut pem).map_err(io_err("read"))?;
    Ok(Some(pem))
}

/// Reads `dir/swiss.key`, or creates it with a fresh random secret (mode 0600) if it
/// does not exist. Refuses a file others can read, as for the key.
fn load_or_create_secret(dir: &Path) -> Result<ExportSecret, IdentityError> {
    let path = dir.join(SECRET_FILE);
    for _ in 0..2 {
        if let Some(text) = read_key_file(&path)? {
            // Never quote the file's content: it is the secret.
            let bytes = id::parse_id(text.trim(), IdKind::SwissNumber)
                .map_err(|_| IdentityError::SecretParse { path: path.clone() })?;
            return Ok(ExportSecret {
                bytes,
                persistent: true,
            });
        }
        let secret = SwissNumber::generate();
        let line = format!("{}\n", secret.expose_base64());
        match write_new_key_file(&path, line.as_bytes()) {
            Ok(()) => {
                return Ok(ExportSecret {
                    bytes: *secret.as_bytes(),
                    persistent: true,
                });
            }
            // Another process wrote one first: read theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(IdentityError::Io {
                    action: "write",
                    path,
                    source,
                });
            }
        }
    }
    Err(IdentityError::Io {
        action: "create",
        path,
        source: io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the file appeared and vanished while it was being created",
        ),
    })
}

/// Creates `dir` and its parents (mode 0700 on unix for directories we
/// create).
fn create_dir(dir: &Path) -> Result<(), IdentityError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| IdentityError::Io {
        action: "create directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes a new key file; fails with `AlreadyExists` rather than
/// overwriting. On unix the file is created with mode 0600.
fn write_new_key_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn cert_pem(cert: &CertificateDer<'_>) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        // `body` is ASCII, so every chunk is valid UTF-8.
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// A failure of the certificate library, wrapped so its type stays out of the API.
fn rcgen_error(e: rcgen::Error) -> IdentityError {
    IdentityError::Rcgen(TlsError::rcgen(e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let mut bytes = [0u8; 16];
            rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes).unwrap();
            let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            TempDir(std::env::temp_dir().join(format!("captp-identity-test-{name}")))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn vat_id_is_43_chars_and_round_trips() {
        let identity = Identity::generate().unwrap();
        let text = identity.vat_id().to_string();
        assert_eq!(text.len(), 43);
        let parsed: VatId = text.parse().unwrap();
        assert_eq!(parsed, identity.vat_id());
        assert!(parsed.ct_eq(&identity.vat_id()));
        assert_eq!(format!("{:?}", parsed), format!("VatId({text})"));
        assert_eq!(VatId::from_bytes(*parsed.as_bytes()), parsed);
    }

    #[test]
    fn vat_id_matches_certificate_spki() {
        let identity = Identity::generate().unwrap();
        assert_eq!(
            vat_id_of_certificate(identity.certificate()).unwrap(),
            identity.vat_id()
        );
    }

    #[test]
    fn bad_vat_ids_rejected() {
        let good = VatId::from_bytes([7; 32]).to_string();
        let id = IdKind::VatId;
        assert_eq!("".parse::<VatId>(), Err(IdTextError::Length { id, len: 0 }));
        assert_eq!(
            good[..42].parse::<VatId>(),
            Err(IdTextError::Length { id, len: 42 })
        );
        assert_eq!(
            format!("{good}A").parse::<VatId>(),
            Err(IdTextError::Length { id, len: 44 })
        );
        let bad_alpha = format!("+{}", &good[1..]);
        assert_eq!(
            bad_alpha.parse::<VatId>(),
            Err(IdTextError::Alphabet { id, position: 0 })
        );
        let padded = format!("{}=", &good[..42]);
        assert_eq!(
            padded.parse::<VatId>(),
            Err(IdTextError::Alphabet { id, position: 42 })
        );
        let non_ascii = format!("é{}", &good[2..]);
        assert!(non_ascii.parse::<VatId>().is_err());
        // 32 bytes = 256 bits; 43 chars carry 258, so the last char's low
        // two bits must be zero. "A" + 42 chars ending in "B" sets one.
        let zero = VatId::from_bytes([0; 32]).to_string();
        assert!(zero.ends_with('A'));
        let non_canonical = format!("{}B", &zero[..42]);
        assert_eq!(
            non_canonical.parse::<VatId>(),
            Err(IdTextError::NonCanonical { id })
        );
        let msg = IdTextError::Length { id, len: 3 }.to_string();
        assert!(msg.contains("43 base64url characters"), "{msg}");
        assert!(msg.contains("vat ID"), "{msg}");
    }

    #[test]
    fn load_or_create_is_stable_and_private() {
        let dir = TempDir::new();
        let sub = dir.0.join("nested");
        let first = Identity::load_or_create(&sub).unwrap();
        let second = Identity::load_or_create(&sub).unwrap();
        assert_eq!(first.vat_id(), second.vat_id());
        let loaded = Identity::load(&sub).unwrap();
        assert_eq!(first.vat_id(), loaded.vat_id());
        assert!(sub.join(CERT_FILE).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(sub.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A missing certificate is regenerated and rewritten.
        fs::remove_file(sub.join(CERT_FILE)).unwrap();
        let third = Identity::load(&sub).unwrap();
        assert_eq!(first.vat_id(), third.vat_id());
        assert!(sub.join(CERT_FILE).exists());
    }

    #[test]
    fn export_secret_is_kept_private_and_gives_stable_named_swiss_numbers() {
        let dir = TempDir::new();
        let first = Identity::load_or_create(&dir.0).unwrap();
        assert!(first.has_persistent_export_secret());
        let secret_path = dir.0.join(SECRET_FILE);
        let text = fs::read_to_string(&secret_path).unwrap();
        assert_eq!(text.trim().len(), 43);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&secret_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let log = first.named_swiss("log");
        // Same directory, same name: same swiss number; other names differ.
        let again = Identity::load(&dir.0).unwrap();
        assert_eq!(again.named_swiss("log"), log);
        assert_ne!(first.named_swiss("log2"), log);
        assert_ne!(first.named_swiss(""), log);
        // The derivation is HMAC-SHA256(secret, tag || name), nothing else.
        let bytes = id::parse_id(text.trim(), IdKind::SwissNumber).unwrap();
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &bytes);
        let tag = aws_lc_rs::hmac::sign(&key, b"captp named export v1\0log");
        assert_eq!(log.as_bytes().as_slice(), tag.as_ref());
        // Another secret (another directory, or an ephemeral identity): another number.
        let other = TempDir::new();
        assert_ne!(
            Identity::load_or_create(&other.0)
                .unwrap()
                .named_swiss("log"),
            log
        );
        let ephemeral = Identity::generate().unwrap();
        assert!(!ephemeral.has_persistent_export_secret());
        assert_ne!(ephemeral.named_swiss("log"), log);
    }

    #[test]
    fn missing_export_secret_is_created_for_an_old_identity_dir() {
        let dir = TempDir::new();
        let first = Identity::load_or_create(&dir.0).unwrap();
        fs::remove_file(dir.0.join(SECRET_FILE)).unwrap();
        let second = Identity::load(&dir.0).unwrap();
        assert_eq!(first.vat_id(), second.vat_id());
        assert!(dir.0.join(SECRET_FILE).exists());
        assert_ne!(first.named_swiss("x"), second.named_swiss("x"));
    }

    #[cfg(unix)]
    #[test]
    fn readable_or_garbled_export_secret_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = TempDir::new();
        Identity::load_or_create(&dir.0).unwrap();
        let secret_path = dir.0.join(SECRET_FILE);
        fs::set_permissions(&secret_path, fs::Permissions::from_mode(0o640)).unwrap();
        match Identity::load(&dir.0).unwrap_err() {
            IdentityError::InsecurePermissions { path, mode } => {
                assert_eq!(path, secret_path);
                assert_eq!(mode, 0o640);
            }
            other => panic!("unexpected: {other:?}"),
        }
        fs::set_permissions(&secret_path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(
            &secret_path,
            "not-a-secret-but-long-enough-to-be-quoted-maybe\n",
        )
        .unwrap();
        let err = Identity::load(&dir.0).unwrap_err();
        assert!(matches!(err, IdentityError::SecretParse { .. }), "{err:?}");
        assert!(!err.to_string().contains("not-a-secret"), "{err}");
    }

    #[test]
    fn load_without_key_fails() {
        let dir = TempDir::new();
        match Identity::load(&dir.0) {
            Err(IdentityError::MissingKey { path }) => assert_eq!(path, dir.0.join(KEY_FILE)),
            other => panic!("unexpected: {other:?}"),
        }
    }

    #[test]
    fn garbage_key_is_a_parse_error() {
        let dir = TempDir::new();
        create_dir(&dir.0).unwrap();
        write_new_key_file(&dir.0.join(KEY_FILE), b"not a key").unwrap();
        match Identity::load_or_create(&dir.0) {
            Err(e @ IdentityError::KeyParse { .. }) => {
                assert!(e.to_string().contains(KEY_FILE), "{e}");
            }
            other => panic!("unexpected: {other:?}"),
        }
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = TempDir::new();
        Identity::load_or_create(&dir.0).unwrap();
        let key_path = dir.0.join(KEY_FILE);
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load_or_create(&dir.0).unwrap_err();
        match &err {
            IdentityError::InsecurePermissions { path, mode } => {
                assert_eq!(path, &key_path);
                assert_eq!(*mode, 0o644);
            }
            other => panic!("unexpected: {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&key_path.display().to_string()), "{msg}");
        assert!(msg.contains("chmod 600"), "{msg}");
    }

    #[test]
    fn debug_does_not_show_key() {
        let dir = TempDir::new();
        let identity = Identity::load_or_create(&dir.0).unwrap();
        let pem = fs::read_to_string(dir.0.join(KEY_FILE)).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let debug = format!("{identity:?}");
        assert!(debug.contains(&identity.vat_id().to_string()));
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!debug.contains(line), "{debug}");
        }
        assert!(!debug.contains(&body));
        assert!(!debug.contains("PRIVATE KEY"));
        let key_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(identity.private_key().secret_der());
        assert!(!debug.contains(&key_b64[..16]));
    }
}
