#[captp::interface]
trait Counter {
    fn zero() -> u64;
}

fn main() {}
