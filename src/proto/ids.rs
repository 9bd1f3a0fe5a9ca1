//! Typed ids for the four per-session tables.
//!
//! On the wire every id is a plain integer whose meaning depends on who sent the message;
//! inside a session each table has its own type so an export id can never be looked up
//! in the import table by mistake.

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    };
}

id_type!(
    /// A question this side asked; chosen by this side, never reused in a session.
    QuestionId,
    "q"
);
id_type!(
    /// A question the peer asked, whose answer this side holds; chosen by the peer.
    AnswerId,
    "a"
);
id_type!(
    /// An object this side exports to the peer; chosen by this side.
    ExportId,
    "e"
);
id_type!(
    /// An object the peer exports to this side (the peer's export id).
    ImportId,
    "i"
);
