//! Go's tax computer, the interface the `tax_server` and `tax_client` examples share.
//! Its error is a type of its own, `TaxError`: the server returns it, and the client
//! receives that same value (`CallError::App`), not a message to parse. (Each binary
//! uses one side of the interface, hence the `allow`.)
#![allow(dead_code)]

use serde::{Deserialize, Serialize};

/// Computes sales tax.
#[captp::interface]
pub(crate) trait TaxComputer {
    /// 5% of `cents`, rounded half away from zero; a negative amount is refused.
    fn tax(&self, cents: i64) -> Result<i64, TaxError>;
}

/// Why the tax computer refused an amount. It travels as CBOR data inside a `failed`
/// error; a caller without this type (a dynamic one, another language) still gets
/// the error, with its `Debug` form as the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum TaxError {
    /// The amount was below zero.
    Negative { cents: i64 },
}

impl std::fmt::Display for TaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaxError::Negative { cents } => {
                write!(f, "amount must not be negative: {cents} cents")
            }
        }
    }
}
