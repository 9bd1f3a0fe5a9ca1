#[captp::interface]
trait Store {
    fn put<T>(&self, value: T);
}

fn main() {}
