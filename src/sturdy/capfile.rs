//! `.cap` files: a sturdy ref URI on one line, in a file only its owner can read, and
//! the `@path` form by which command lines name such a file instead of a URI.
//!
//! A `.cap` file holds a secret, so this module must not put the file's content in an
//! error or a log, and writes a file whole or not at all (a temporary file with mode
//! 0600 beside the target, then a rename).

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::{ParseError, SturdyRef, SwissNumber};

/// The longest `.cap` file [`SturdyRef::load`] reads: far above any URI (a domain
/// name is at most 253 characters), so a wrong path does not read a huge file.
const MAX_CAP_FILE: u64 = 4096;

/// Why a `.cap` file, or a command-line argument naming a sturdy ref, gave no sturdy
/// ref. Never quotes the file's content or the argument.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CapFileError {
    /// Reading or writing the file failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "read" or "rename into place".
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is larger than any sturdy ref.
    #[error(
        "{} is larger than {MAX_CAP_FILE} bytes, so it is not a .cap file (one sturdy ref URI on one line)",
        path.display()
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file (or, with no path, the argument) does not hold one sturdy ref URI.
    #[error("{}: {source}", match path {
        Some(path) => format!("{} does not hold a sturdy ref URI", path.display()),
        None => "that is not a sturdy ref URI (nor '@' and a .cap file's path)".to_owned(),
    })]
    Parse {
        /// The file, or `None` for a URI given directly.
        path: Option<PathBuf>,
        /// What is wrong with the text (never quoting it).
        #[source]
        source: ParseError,
    },
}

impl SturdyRef {
    /// Writes this sturdy ref's URI, and a newline, to `path`: the `.cap` file form.
    ///
    /// The file is created with mode 0600 (on unix) under a temporary name in the same
    /// directory, synced, then renamed over `path`, so a reader sees the old file or the
    /// whole new one, never a part.
    ///
    /// # Authority
    ///
    /// The file holds the capability: whoever can read it can call the object.
    ///
    /// # Errors
    ///
    /// [`CapFileError::Io`] when the file cannot be written or renamed.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let uri: captp::SturdyRef =
    ///     "captp://AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA@127.0.0.1:4433/\
    ///      AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    ///         .parse()?;
    /// let path = std::env::temp_dir().join(format!("captp-doc-{}.cap", std::process::id()));
    /// uri.save(&path)?;
    /// assert_eq!(captp::SturdyRef::load(&path)?, uri);
    /// // Command lines take `@file` wherever they take a URI.
    /// let arg = format!("@{}", path.display());
    /// assert_eq!(captp::SturdyRef::from_arg(&arg)?, uri);
    /// # std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), CapFileError> {
        let path = path.as_ref();
        let io_err = |action: &'static str, at: &Path| {
            let at = at.to_path_buf();
            move |source: io::Error| CapFileError::Io {
                action,
                path: at,
                source,
            }
        };
        let name = path.file_name().ok_or_else(|| CapFileError::Io {
            action: "write",
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
        })?;
        // A random suffix: two writers never share a temporary file.
        let suffix = &SwissNumber::generate().expose_base64()[..12];
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{suffix}.tmp"));
        let temp = path.with_file_name(temp_name);

        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&temp).map_err(io_err("create", &temp))?;
        let written = file
            .write_all(format!("{self}\n").as_bytes())
            .and_then(|()| file.sync_all());
        drop(file);
        let renamed = written
            .map_err(io_err("write", &temp))
            .and_then(|()| fs::rename(&temp, path).map_err(io_err("rename into place", path)));
        if renamed.is_err() {
            // Best effort: the error to report is the one above.
            let _ = fs::remove_file(&temp);
        }
        renamed
    }

    /// Reads a `.cap` file written by [`SturdyRef::save`] (or by hand): one sturdy ref
    /// URI, surrounding whitespace ignored.
    ///
    /// # Errors
    ///
    /// [`CapFileError::Io`] when the file cannot be read, [`CapFileError::TooLarge`]
    /// past 4096 bytes, [`CapFileError::Parse`] when the text is not one URI. No error
    /// quotes the file's content.
    pub fn load(path: impl AsRef<Path>) -> Result<SturdyRef, CapFileError> {
        let path = path.as_ref();
        let io_err = |action: &'static str| {
            move |source: io::Error| CapFileError::Io {
                action,
                path: path.to_path_buf(),
                source,
            }
        };
        let file = fs::File::open(path).map_err(io_err("open"))?;
        let mut bytes = Vec::new();
        file.take(MAX_CAP_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("read"))?;
        if bytes.len() as u64 > MAX_CAP_FILE {
            return Err(CapFileError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let parse = |source| CapFileError::Parse {
            path: Some(path.to_path_buf()),
            source,
        };
        // Not UTF-8: report it as the parser does, without the bytes.
        let text = String::from_utf8(bytes).map_err(|e| {
            parse(ParseError::Whitespace {
                position: e.utf8_error().valid_up_to(),
            })
        })?;
        text.trim().parse().map_err(parse)
    }

    /// A sturdy ref as a command line gives it: a URI, or `@` and the path of a `.cap`
    /// file holding one (see [`SturdyRef::load`]). Tools that take a URI call this, so
    /// that users can keep the secret out of their shell history and process list.
    ///
    /// # Errors
    ///
    /// As [`SturdyRef::load`] for `@path`; [`CapFileError::Parse`] with no path for a
    /// malformed URI. No error quotes the argument or the file.
    pub fn from_arg(arg: &str) -> Result<SturdyRef, CapFileError> {
        match arg.strip_prefix('@') {
            Some(path) => SturdyRef::load(path),
            None => arg
                .parse()
                .map_err(|source| CapFileError::Parse { path: None, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::identity::VatId;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "captp-capfile-{tag}-{}-{}",
            std::process::id(),
            &SwissNumber::generate().expose_base64()[..8]
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sample() -> SturdyRef {
        SturdyRef::new(
            VatId::from_bytes([7; 32]),
            "127.0.0.1".parse().unwrap(),
            4433,
            SwissNumber::from_bytes([9; 32]),
        )
    }

    #[test]
    fn save_load_round_trip_one_line_mode_0600() {
        let dir = temp_dir("round");
        let path = dir.join("log.cap");
        let sturdy = sample();
        sturdy.save(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{sturdy}\n"));
        assert_eq!(text.lines().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(SturdyRef::load(&path).unwrap(), sturdy);
        // Saving again replaces the file whole and leaves no temporary file behind.
        let other = SturdyRef::new(
            VatId::from_bytes([1; 32]),
            crate::sturdy::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST),
            1,
            SwissNumber::from_bytes([2; 32]),
        );
        other.save(&path).unwrap();
        assert_eq!(SturdyRef::load(&path).unwrap(), other);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        let arg = format!("@{}", path.display());
        assert_eq!(SturdyRef::from_arg(&arg).unwrap(), other);
        assert_eq!(SturdyRef::from_arg(&other.to_string()).unwrap(), other);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_tolerates_whitespace_and_errors_never_quote_content() {
        let dir = temp_dir("bad");
        let path = dir.join("x.cap");
        let sturdy = sample();
        fs::write(&path, format!("  {sturdy}\r\n\n")).unwrap();
        assert_eq!(SturdyRef::load(&path).unwrap(), sturdy);

        let secret = sturdy.swiss().expose_base64();
        for bad in [
            format!("{sturdy}\n{sturdy}\n"),
            format!("{sturdy}x"),
            format!("http://{secret}"),
        ] {
            fs::write(&path, &bad).unwrap();
            let e = SturdyRef::load(&path).unwrap_err();
            assert!(matches!(e, CapFileError::Parse { .. }), "{e}");
            assert!(!e.to_string().contains(&secret[..10]), "{e}");
        }
        fs::write(&path, vec![b'a'; 5000]).unwrap();
        assert!(matches!(
            SturdyRef::load(&path).unwrap_err(),
            CapFileError::TooLarge { .. }
        ));
        let e = SturdyRef::from_arg(&format!("captp:/{secret}")).unwrap_err();
        assert!(!e.to_string().contains(&secret[..10]), "{e}");
        assert!(matches!(
            SturdyRef::from_arg(&format!("@{}", dir.join("missing.cap").display())),
            Err(CapFileError::Io { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
