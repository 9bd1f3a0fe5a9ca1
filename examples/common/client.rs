//! What every client example does around its calls: complain about bad arguments, parse
//! the sturdy ref URI, and explain a broken call to a person.

use captp::{Broken, BrokenKind, SturdyRef};

/// Parses the command line into `T` (a `clap` derive), the way every client example
/// does: `--help` and `--version` print and exit 0; bad arguments print the reason and
/// the aligned usage line (of the subcommand, where there is one) to stderr and exit
/// with code 2. A missing subcommand is such an error too, not a help text on stdout.
/// Installs the log subscriber.
#[allow(dead_code)]
pub(crate) fn parse_args<T: clap::Parser>() -> T {
    init_logging();
    let mut command = T::command().arg_required_else_help(false);
    let parsed = command
        .try_get_matches_from_mut(std::env::args_os())
        .and_then(|m| T::from_arg_matches(&m));
    match parsed {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let reason = first_paragraph(&e.render().to_string());
            // The subcommand the arguments name, if any: its usage is the one to show.
            let mut name = vec![command.get_name().to_owned()];
            let mut current: &clap::Command = &command;
            for word in std::env::args().skip(1) {
                if let Some(sub) = current.find_subcommand(&word) {
                    name.push(sub.get_name().to_owned());
                    current = sub;
                }
            }
            let name = name.join(" ");
            let usage = current.clone().bin_name(&name).render_usage().to_string();
            eprintln!("{name}: {}", reason.trim_start_matches("error: "));
            eprintln!("{}", usage.replacen("Usage:", "usage:", 1));
            eprintln!("Try '{name} --help' for more.");
            std::process::exit(2);
        }
    }
}

/// Parses a sturdy ref URI, or `@` and the path of a `.cap` file holding one, or prints
/// why it is not one and exits with code 1.
///
/// The parse error never quotes the input, so a mistyped URI does not end up in the
/// terminal's scrollback twice.
pub(crate) fn parse_uri(text: &str) -> SturdyRef {
    init_logging();
    match SturdyRef::from_arg(text) {
        Ok(sturdy) => sturdy,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// The reason in a clap error, on one line: its first paragraph (the error line and,
/// for missing arguments, their names).
fn first_paragraph(rendered: &str) -> String {
    let lines: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    if lines.is_empty() {
        "bad arguments".to_owned()
    } else {
        lines.join(" ")
    }
}

/// Installs a log subscriber on stderr filtered by `RUST_LOG` (default: warnings only),
/// with the `log` crate's records (rustls) bridged. Called by [`parse_uri`], which every
/// client runs first.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
