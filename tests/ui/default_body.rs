#[captp::interface]
trait Counter {
    fn get(&self) -> u64 {
        0
    }
}

fn main() {}
