//! Placeholder: the benchmark lands with its issue.
fn main() {}
