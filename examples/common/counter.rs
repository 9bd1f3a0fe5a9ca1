//! Ada's remote counter, the interface the `counter_server` and `counter_client`
//! examples share: the server implements `Counter`, the client calls it through the
//! `CounterRef` that `#[captp::interface]` generates. (Each binary uses one side, hence
//! the `allow`.)
#![allow(dead_code)]

/// One number, shared by every caller.
#[captp::interface]
pub(crate) trait Counter {
    /// Adds one to the count. One-way: the caller gets no answer and waits for nothing.
    #[oneway]
    fn foo(&self);
    /// The count.
    fn bar(&self) -> u64;
}
