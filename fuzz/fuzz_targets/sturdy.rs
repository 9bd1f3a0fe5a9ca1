//! The sturdy-ref URI parser, with a parse/print round trip.
//!
//! Any string either fails to parse (with an error that never quotes the input) or
//! parses to a ref that prints back as exactly the input and parses again to an equal
//! ref. The parts (`host`, `port`, `address`) are consistent with the text, and
//! neither `Debug` nor an error message shows the secret.
#![no_main]

use captp::SturdyRef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    match text.parse::<SturdyRef>() {
        Ok(sturdy) => {
            let printed = sturdy.to_string();
            assert_eq!(printed, text, "parse/print is not the identity");
            let again: SturdyRef = printed.parse().expect("a printed ref parses");
            assert_eq!(again, sturdy);
            assert_eq!(again.to_string(), printed);
            // The address is what a TCP connect would use: host and port from the text.
            let address = sturdy.address();
            assert!(text.contains(&address), "{address} not in the URI");
            assert!(address.ends_with(&format!(":{}", sturdy.port())));
            assert_ne!(sturdy.port(), 0);
            // Debug never shows the secret. (It shows the vat ID and the host, which
            // may happen to spell the same text: take those out first.)
            let debug = format!("{sturdy:?}")
                .replace(&sturdy.vat_id().to_string(), "")
                .replace(&sturdy.host().to_string(), "");
            assert!(!debug.contains(&sturdy.swiss().expose_base64()), "{debug}");
        }
        Err(e) => {
            // Errors never echo the input, which may hold a real swiss number: no run
            // of 20 or more base64url characters from the input appears in the message
            // (the fixed text of the messages has no such run).
            let message = e.to_string();
            assert!(!message.is_empty());
            for run in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
                if run.len() >= 20 {
                    assert!(!message.contains(run), "the error quotes the input");
                }
            }
        }
    }
});
