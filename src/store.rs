//! [`Store`]: the embedded database that keeps persistent sturdy refs across restarts.
//!
//! A vat built with a store ([`crate::VatBuilder::store`]) writes one entry per
//! [`crate::Vat::export_persistent`]: the SHA-256 of the swiss number as the key, and as
//! the value the application's restorable record and an optional expiry. After a
//! restart, a fetch whose swiss number hashes to a stored key is answered by the
//! application's [`crate::Restorer`], which rebuilds the object from the record.
//!
//! This module must not store, log or return a swiss number: keys are hashes only, so
//! a copy of the file gives no authority (it cannot be turned back into a URI). It
//! must not acknowledge a write before it is durable: every change is one redb
//! transaction committed with redb's default durability (the commit returns after the
//! data and the new root are synced to disk; redb's copy-on-write pages and checksummed
//! commit slots mean a crash, even `kill -9` in the middle of a commit, leaves either
//! the old state or the new one). It reads no clock: callers pass `now`.
//!
//! Revoking deletes the entry. Swiss numbers are 256 random bits and never reused, so
//! a deleted key and one never written are the same thing: both answer
//! `unknown_object`.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTableMetadata, TableDefinition};

use crate::wire::id::SwissNumber;

/// One table: SHA-256 of a swiss number -> encoded [`StoredRef`].
const REFS: TableDefinition<'static, &[u8; 32], &[u8]> = TableDefinition::new("sturdy_refs");

/// The first byte of every stored value: the layout below.
const FORMAT: u8 = 1;
/// Flag bit: an expiry (8 bytes, big-endian unix seconds) follows the flags byte.
const HAS_EXPIRY: u8 = 1;

/// Why the store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store file could not be created or opened.
    #[error(
        "could not open the sturdy-ref store {}: {source}; check that the directory \
         exists and is writable by this user",
        path.display()
    )]
    Open {
        /// The store's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another process (or another open [`Store`] in this one) holds the file.
    #[error(
        "the sturdy-ref store {} is already open (another process, or another Store \
         in this one); stop the other user or give each vat its own store",
        path.display()
    )]
    InUse {
        /// The store's path.
        path: PathBuf,
    },
    /// The database failed (I/O, a full disk, a damaged file).
    #[error("the sturdy-ref store {} failed: {source}", path.display())]
    Database {
        /// The store's path.
        path: PathBuf,
        /// The database's own error, kept opaque.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// An entry does not have the layout this version writes (a newer version wrote
    /// it, or the file is damaged).
    #[error(
        "an entry in the sturdy-ref store {} is not in a format this version reads",
        path.display()
    )]
    Malformed {
        /// The store's path.
        path: PathBuf,
    },
}

/// What the store keeps for one persistent sturdy ref: the application's record and the
/// expiry. Never the swiss number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRef {
    record: Vec<u8>,
    expiry: Option<u64>,
}

impl StoredRef {
    /// The application's restorable record, as given to
    /// [`crate::Vat::export_persistent`].
    pub fn record(&self) -> &[u8] {
        &self.record
    }

    /// When the ref stops working, if it does (whole seconds: a sub-second part of the
    /// expiry given is dropped, so a ref never lives longer than asked).
    pub fn expiry(&self) -> Option<SystemTime> {
        self.expiry
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// Whether the ref has expired at `now`: `now` is at or past the expiry.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        is_expired(self.expiry, now)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + self.record.len());
        out.push(FORMAT);
        match self.expiry {
            Some(secs) => {
                out.push(HAS_EXPIRY);
                out.extend_from_slice(&secs.to_be_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&self.record);
        out
    }

    fn decode(bytes: &[u8]) -> Option<StoredRef> {
        let (&format, rest) = bytes.split_first()?;
        let (&flags, rest) = rest.split_first()?;
        if format != FORMAT || flags & !HAS_EXPIRY != 0 {
            return None;
        }
        let (expiry, record) = if flags & HAS_EXPIRY != 0 {
            let (secs, record) = rest.split_first_chunk::<8>()?;
            (Some(u64::from_be_bytes(*secs)), record)
        } else {
            (None, rest)
        };
        Some(StoredRef {
            record: record.to_vec(),
            expiry,
        })
    }
}

/// An expiry as whole unix seconds, rounded down (a time before 1970 is 0: expired).
pub(crate) fn expiry_secs(expiry: SystemTime) -> u64 {
    expiry.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether an expiry in unix seconds has passed at `now`.
pub(crate) fn is_expired(expiry: Option<u64>, now: SystemTime) -> bool {
    match expiry {
        None => false,
        Some(secs) => now >= UNIX_EPOCH + Duration::from_secs(secs),
    }
}

/// An embedded, crash-safe store of persistent sturdy refs (a redb database file).
///
/// A vat uses it through [`crate::VatBuilder::store`]; a program can also read it
/// directly (to check what is stored, or to purge expired entries). `Store` is a cheap
/// handle: clones share one open database, which closes when the last clone (and the
/// last vat using it) is gone.
///
/// # What is stored
///
/// Per ref: the SHA-256 of its swiss number, the application's record, and the expiry.
/// Not the swiss number: whoever copies the file learns the records and expiries, and
/// can count the refs, but cannot call anything. The records are the application's
/// data, so the file is created with mode 0600 (owner only) on Unix.
///
/// # Examples
///
/// ```
/// use captp::{Store, SwissNumber};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = std::env::temp_dir().join(format!("captp-store-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let store = Store::open(dir.join("refs.redb"))?;
///
/// let swiss = SwissNumber::generate();
/// store.insert(&swiss, b"room 7", None)?; // durable once this returns
/// let stored = store.get(&swiss)?.expect("just stored");
/// assert_eq!(stored.record(), b"room 7");
///
/// assert!(store.remove(&swiss)?);
/// assert_eq!(store.get(&swiss)?, None);
/// # drop(store);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens the store at `path`, creating it (mode 0600 on Unix) if it does not exist.
    /// A vat with an identity directory conventionally keeps it at
    /// `<identity dir>/refs.redb`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] when the file cannot be created or opened,
    /// [`StoreError::InUse`] when another process or another `Store` has it open,
    /// [`StoreError::Database`] when it is not a readable database.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        // Create the file ourselves first so that it is never readable by others, not
        // even for a moment: redb would create it with the default mode.
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        drop(options.open(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?);
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::InUse { path });
            }
            Err(e) => return Err(database(&path, e)),
        };
        let store = Store {
            inner: Arc::new(StoreInner { db, path }),
        };
        // Create the table once, so that readers never meet a store without it.
        store.write(|table| {
            let _ = table;
            Ok(())
        })?;
        Ok(store)
    }

    /// The path the store was opened at.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Stores `record` and `expiry` for `swiss` (under its hash), replacing what was
    /// there. The write is committed and synced to disk before this returns.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`] when the write fails; nothing is stored then.
    pub fn insert(
        &self,
        swiss: &SwissNumber,
        record: &[u8],
        expiry: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        let entry = StoredRef {
            record: record.to_vec(),
            expiry: expiry.map(expiry_secs),
        };
        let value = entry.encode();
        let key = *swiss.hash().as_bytes();
        self.write(|table| table.insert(&key, value.as_slice()).map(drop))
    }

    /// What is stored for `swiss`, expired or not.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`] when the read fails, [`StoreError::Malformed`] for an
    /// entry in a layout this version does not write.
    pub fn get(&self, swiss: &SwissNumber) -> Result<Option<StoredRef>, StoreError> {
        let key = *swiss.hash().as_bytes();
        let path = &self.inner.path;
        let tx = self.inner.db.begin_read().map_err(|e| database(path, e))?;
        let table = tx.open_table(REFS).map_err(|e| database(path, e))?;
        let Some(value) = table.get(&key).map_err(|e| database(path, e))? else {
            return Ok(None);
        };
        StoredRef::decode(value.value())
            .map(Some)
            .ok_or_else(|| StoreError::Malformed { path: path.clone() })
    }

    /// Deletes the entry for `swiss`, durably; returns whether there was one.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`] when the write fails; the entry is still there then.
    pub fn remove(&self, swiss: &SwissNumber) -> Result<bool, StoreError> {
        let key = *swiss.hash().as_bytes();
        let mut found = false;
        self.write(|table| {
            found = table.remove(&key)?.is_some();
            Ok(())
        })?;
        Ok(found)
    }

    /// Deletes every entry expired at `now`, durably (in one transaction); returns how
    /// many. Expired entries are refused whether or not they are purged; purging only
    /// gives the space back.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`] when the write fails; nothing is deleted then.
    pub fn purge_expired(&self, now: SystemTime) -> Result<u64, StoreError> {
        let mut purged = 0;
        self.write(|table| {
            let before = table.len()?;
            table.retain(|_, value| match StoredRef::decode(value) {
                Some(entry) => !entry.is_expired(now),
                // Keep what this version cannot read: it may be a newer version's.
                None => true,
            })?;
            purged = before - table.len()?;
            Ok(())
        })?;
        Ok(purged)
    }

    /// How many refs are stored (expired ones included, until purged).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`] when the read fails.
    pub fn len(&self) -> Result<u64, StoreError> {
        let path = &self.inner.path;
        let tx = self.inner.db.begin_read().map_err(|e| database(path, e))?;
        let table = tx.open_table(REFS).map_err(|e| database(path, e))?;
        table.len().map_err(|e| database(path, e))
    }

    /// Whether the store holds no refs.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`] when the read fails.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        self.len().map(|n| n == 0)
    }

    /// Runs `change` on the table in one write transaction and commits it (durably:
    /// redb's default `Durability::Immediate`). An error aborts the transaction.
    fn write(
        &self,
        change: impl FnOnce(&mut redb::Table<'_, &[u8; 32], &[u8]>) -> Result<(), redb::StorageError>,
    ) -> Result<(), StoreError> {
        let path = &self.inner.path;
        let tx = self.inner.db.begin_write().map_err(|e| database(path, e))?;
        {
            let mut table = tx.open_table(REFS).map_err(|e| database(path, e))?;
            change(&mut table).map_err(|e| database(path, e))?;
        }
        tx.commit().map_err(|e| database(path, e))
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Wraps a redb error, keeping its type out of the API.
fn database(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Database {
        path: path.to_path_buf(),
        source: Box::new(e.into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "captp-store-{name}-{}-{}",
                std::process::id(),
                SwissNumber::generate().hash().as_bytes()[0]
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn round_trips_across_reopen() {
        let dir = TempDir::new("round-trip");
        let path = dir.0.join("refs.redb");
        let swisses: Vec<SwissNumber> = (0..10).map(|_| SwissNumber::generate()).collect();
        let expiry = UNIX_EPOCH + Duration::from_secs(4_000_000_000);
        {
            let store = Store::open(&path).unwrap();
            for (i, swiss) in swisses.iter().enumerate() {
                let exp = (i % 2 == 0).then_some(expiry);
                store
                    .insert(swiss, format!("record {i}").as_bytes(), exp)
                    .unwrap();
            }
            assert_eq!(store.len().unwrap(), 10);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.len().unwrap(), 10);
        for (i, swiss) in swisses.iter().enumerate() {
            let entry = store.get(swiss).unwrap().unwrap();
            assert_eq!(entry.record(), format!("record {i}").as_bytes());
            assert_eq!(entry.expiry(), (i % 2 == 0).then_some(expiry));
        }
        assert_eq!(store.get(&SwissNumber::generate()).unwrap(), None);
    }

    #[test]
    fn the_file_holds_hashes_never_swiss_numbers() {
        let dir = TempDir::new("hashes");
        let path = dir.0.join("refs.redb");
        let swisses: Vec<SwissNumber> = (0..50).map(|_| SwissNumber::generate()).collect();
        {
            let store = Store::open(&path).unwrap();
            for swiss in &swisses {
                store.insert(swiss, b"r", None).unwrap();
            }
        }
        let bytes = std::fs::read(&path).unwrap();
        let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        for swiss in &swisses {
            assert!(!contains(swiss.as_bytes()), "raw swiss number in the file");
            assert!(
                !contains(swiss.expose_base64().as_bytes()),
                "base64 swiss number in the file"
            );
            assert!(contains(swiss.hash().as_bytes()), "the hash is the key");
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_created_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("mode");
        let path = dir.0.join("refs.redb");
        drop(Store::open(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn remove_is_durable_and_reports_presence() {
        let dir = TempDir::new("remove");
        let path = dir.0.join("refs.redb");
        let (kept, gone) = (SwissNumber::generate(), SwissNumber::generate());
        {
            let store = Store::open(&path).unwrap();
            store.insert(&kept, b"kept", None).unwrap();
            store.insert(&gone, b"gone", None).unwrap();
            assert!(store.remove(&gone).unwrap());
            assert!(!store.remove(&gone).unwrap(), "removed twice");
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.len().unwrap(), 1);
        assert_eq!(store.get(&gone).unwrap(), None);
        assert_eq!(store.get(&kept).unwrap().unwrap().record(), b"kept");
    }

    #[test]
    fn expiry_is_whole_seconds_and_purgeable() {
        let dir = TempDir::new("expiry");
        let store = Store::open(dir.0.join("refs.redb")).unwrap();
        let at = |secs: u64, millis: u64| UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis);
        let (soon, later, never) = (
            SwissNumber::generate(),
            SwissNumber::generate(),
            SwissNumber::generate(),
        );
        store.insert(&soon, b"soon", Some(at(1_000, 900))).unwrap();
        store.insert(&later, b"later", Some(at(2_000, 0))).unwrap();
        store.insert(&never, b"never", None).unwrap();

        let soon_entry = store.get(&soon).unwrap().unwrap();
        // Rounded down: the ref never outlives what was asked.
        assert_eq!(soon_entry.expiry(), Some(at(1_000, 0)));
        assert!(!soon_entry.is_expired(at(999, 999)));
        assert!(soon_entry.is_expired(at(1_000, 0)));
        assert!(
            !store
                .get(&never)
                .unwrap()
                .unwrap()
                .is_expired(at(u32::MAX.into(), 0))
        );

        assert_eq!(store.purge_expired(at(1_500, 0)).unwrap(), 1);
        assert_eq!(store.get(&soon).unwrap(), None);
        assert_eq!(store.len().unwrap(), 2);
        assert_eq!(store.purge_expired(at(1_500, 0)).unwrap(), 0);
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused() {
        let dir = TempDir::new("in-use");
        let path = dir.0.join("refs.redb");
        let store = Store::open(&path).unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::InUse { .. })));
        drop(store);
        Store::open(&path).unwrap();
    }

    #[test]
    fn malformed_values_are_refused_not_misread() {
        assert_eq!(StoredRef::decode(&[]), None);
        assert_eq!(StoredRef::decode(&[2, 0]), None, "unknown format");
        assert_eq!(StoredRef::decode(&[1, 2]), None, "unknown flag");
        assert_eq!(StoredRef::decode(&[1, 1, 0, 0]), None, "short expiry");
        let entry = StoredRef {
            record: vec![9, 8, 7],
            expiry: Some(42),
        };
        assert_eq!(StoredRef::decode(&entry.encode()), Some(entry));
    }
}
