//! captp
pub mod broken;
pub mod error;
pub mod identity;
pub mod limits;
pub mod proto;
pub mod sturdy;
pub mod transport;
pub mod vat;
pub mod wire;

pub use broken::{Broken, BrokenKind};
pub use error::Error;
pub use identity::{Identity, VatId};
pub use limits::Limits;
pub use sturdy::{SturdyRef, SwissNumber};
pub use vat::{Args, Object, Promise, Ref, Reply, SessionInfo, Vat, VatBuilder, VatStats};
