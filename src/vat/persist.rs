//! [`Restorer`]: how an application rebuilds a persistent sturdy ref's object after a
//! restart, and `Export`, what the vat's registry holds per swiss number.
//!
//! The store (`crate::store`) keeps records; this file only says what the vat does
//! with them. It must not read the store or run the restorer itself: `shared.rs`
//! (`VatInner::lookup`) does both, under one lock, so that an object is restored once.

use std::sync::Arc;

use super::object::ObjectHandle;
use super::reference::Ref;
use crate::broken::Broken;

/// Rebuilds the object behind a persistent sturdy ref from the record the application
/// stored with it ([`crate::Vat::export_persistent`]), after a restart. Like Cap'n
/// Proto's `Restorer`.
///
/// The vat calls it on the first fetch of a stored swiss number that it does not hold
/// in memory, at most once per ref and run: the object it returns is kept in the vat's
/// registry and serves every later fetch, until the ref is revoked or the vat stops.
/// It is not called for an expired or revoked ref, nor for an unknown swiss number.
///
/// It runs on the session task that received the fetch, synchronously, and while it
/// runs no other restore starts: keep it quick (read a file, look up a row), and
/// return a reference to an object that does the slow work later.
///
/// What it returns is exported to the peer that asked: a local object
/// ([`Ref::from_object`]), or any other reference (forwarded through a proxy). An
/// `Err`, or a broken reference, breaks the peer's fetch with that [`Broken`]: its
/// message reaches the peer, so say nothing secret in it. A panic breaks it with
/// `failed`. Either way nothing is kept, and the next fetch asks again.
///
/// A closure `Fn(&[u8]) -> Result<Ref, Broken>` is a restorer.
///
/// # Examples
///
/// ```
/// use captp::{Broken, Ref, Reply, Restorer};
///
/// /// Rooms are stored as their names.
/// struct Rooms;
///
/// impl Restorer for Rooms {
///     fn restore(&self, record: &[u8]) -> Result<Ref, Broken> {
///         let name = String::from_utf8(record.to_vec())
///             .map_err(|_| Broken::failed("a stored room name is not UTF-8"))?;
///         Ok(Ref::from_object(move |_method: &str, _args: captp::Args| {
///             Reply::ok(name.clone())
///         }))
///     }
/// }
///
/// let room = Rooms.restore(b"lobby");
/// assert!(room.is_ok());
/// ```
pub trait Restorer: Send + Sync + 'static {
    /// The object for `record`, or why it cannot be restored.
    ///
    /// # Errors
    ///
    /// The [`Broken`] the peer's fetch breaks with.
    fn restore(&self, record: &[u8]) -> Result<Ref, Broken>;
}

impl<F> Restorer for F
where
    F: Fn(&[u8]) -> Result<Ref, Broken> + Send + Sync + 'static,
{
    fn restore(&self, record: &[u8]) -> Result<Ref, Broken> {
        self(record)
    }
}

/// A shared restorer, as the builder and the vat hold it.
#[derive(Clone)]
pub(crate) struct SharedRestorer(pub(crate) Arc<dyn Restorer>);

impl std::fmt::Debug for SharedRestorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Restorer")
    }
}

/// What the registry holds under a swiss number's hash.
pub(crate) enum Export {
    /// Served: the object, and its expiry in whole unix seconds (persistent refs only).
    Live {
        object: ObjectHandle,
        expiry: Option<u64>,
    },
    /// Revoked in this run although the store could not record it: refused, and never
    /// restored from the store again while the vat runs.
    Revoked,
}
