//! The `captp` command: small tools around vat identities and sturdy refs.
//!
//! ```text
//! captp id <dir>       load or create the vat identity in <dir>; print its vat ID
//! captp inspect <uri>  check a sturdy ref URI (or @file.cap); print its vat ID, host and port
//! ```
//!
//! `inspect` never prints the swiss number: the URI is a secret capability, and this
//! tool only says whether it is well-formed and where it points.

use std::process::ExitCode;

use captp::{Identity, SturdyRef};

const USAGE: &str = "usage:
  captp id <dir>        load or create the vat identity in <dir> and print its vat ID
  captp inspect <uri>   check a sturdy ref URI, or @file.cap, and print where it points
                        (never the secret)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["id", dir] => match Identity::load_or_create(dir) {
            Ok(identity) => {
                println!("{}", identity.vat_id());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("captp: {e}");
                ExitCode::FAILURE
            }
        },
        ["inspect", uri] => match SturdyRef::from_arg(uri) {
            Ok(sturdy) => {
                println!("vat id:  {}", sturdy.vat_id());
                println!("address: {}", sturdy.address());
                println!("swiss:   <present, 32 bytes, not shown>");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("captp: {e}");
                ExitCode::FAILURE
            }
        },
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
