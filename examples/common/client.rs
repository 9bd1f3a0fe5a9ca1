//! What every client example does around its calls: complain about bad arguments, parse
//! the sturdy ref URI, and explain a broken call to a person.

use captp::{Broken, BrokenKind, SturdyRef};

/// Prints `problem` and the usage line to stderr and exits with code 2.
pub(crate) fn usage(problem: &str, usage: &str) -> ! {
    eprintln!("{problem}");
    eprintln!("usage: {usage}");
    std::process::exit(2);
}

/// Parses a sturdy ref URI, or `@` and the path of a `.cap` file holding one, or prints
/// why it is not one and exits with code 1.
///
/// The error never quotes the input or the file, so a mistyped URI does not end up in
/// the terminal's scrollback twice.
pub(crate) fn parse_uri(text: &str) -> SturdyRef {
    match SturdyRef::from_arg(text) {
        Ok(sturdy) => sturdy,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// Prints what went wrong with a call, in terms a person can act on, and exits with
/// code 1.
pub(crate) fn fail(broken: &Broken) -> ! {
    let explanation = match broken.kind() {
        BrokenKind::VatIdMismatch => format!(
            "the server's key does not match the vat ID in the URI: {}",
            broken.message()
        ),
        BrokenKind::UnknownObject => format!(
            "no object at that sturdy ref (wrong or revoked swiss number): {}",
            broken.message()
        ),
        BrokenKind::Unreachable => format!(
            "could not reach the server vat (is it running, at that address?): {}",
            broken.message()
        ),
        BrokenKind::Disconnected => format!(
            "the connection to the server vat was lost: {}",
            broken.message()
        ),
        // Application errors and the rest: the kind and the message say it already.
        _ => broken.to_string(),
    };
    eprintln!("error: {explanation}");
    std::process::exit(1);
}
