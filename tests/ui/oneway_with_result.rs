#[captp::interface]
trait Counter {
    #[oneway]
    fn add(&self, n: u64) -> u64;
}

fn main() {}
