#[captp::interface]
trait Store {
    fn put<'a>(&self, key: &'a str);
}

#[captp::interface]
trait Log {
    fn append(&self, line: Option<&'static str>);
}

fn main() {}
