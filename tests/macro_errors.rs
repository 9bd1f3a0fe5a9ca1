//! The mistakes `#[captp::interface]` refuses, each pinned with the error it gives
//! (in `tests/ui/*.stderr`): the message must point at the user's code and say what
//! to change. One `TestCases` for all of them keeps the compile time down.
//!
//! After a deliberate change to a message: `TRYBUILD=overwrite cargo test --test
//! macro_errors`, and review the new `.stderr` files.

#[test]
fn macro_errors_point_at_the_mistake() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
