struct Opaque;

#[captp::interface]
trait Store {
    fn put(&self, key: String, value: Opaque);
}

fn main() {}
