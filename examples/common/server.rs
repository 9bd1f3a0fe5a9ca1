//! What every server example does around its object: read `--listen <addr>`,
//! `--identity <dir>` and `--cap-file <path>`, start a listening vat, export the object
//! under the program's name, print its sturdy ref URI as the first line of stdout (and
//! save it to the `.cap` file if asked), and serve until Ctrl-C.
//!
//! The export is named ([`Vat::export_named`]), so with `--identity` and a fixed
//! `--listen` port a restarted server prints the same URI, and clients holding it carry
//! on.
//!
//! The URI is the capability: whoever reads it can call the object. So it goes to
//! stdout, once, for the person (or script) that started the server to hand on, and
//! never into the log on stderr.

use std::io::Write;

use captp::{Object, Vat};

/// The options, as the usage message explains them.
const OPTIONS: &str = "\
  --listen <addr>    address to listen on (default 127.0.0.1:0, a free port)
  --identity <dir>   keep the vat's key and export secret in <dir> (created on
                     first use), so that with a fixed --listen port the URI stays
                     the same across restarts
  --cap-file <path>  also write the URI to <path> (mode 0600), for clients to
                     read with @<path>
";

/// Where and as whom a server example runs.
struct Options {
    listen: String,
    identity: Option<String>,
    cap_file: Option<String>,
}

/// Parses the server options, or prints usage to stderr and exits with code 2.
///
/// `name` is how the server is invoked: a program (`tax_server`), or a program and its
/// subcommand (`chat serve`). The options are the arguments after those words.
fn parse_options(name: &str) -> Options {
    let usage = |problem: &str| -> ! {
        eprintln!("{name}: {problem}");
        eprintln!("usage: {name} [--listen <addr>] [--identity <dir>] [--cap-file <path>]");
        eprint!("{OPTIONS}");
        std::process::exit(2);
    };
    let mut options = Options {
        listen: "127.0.0.1:0".to_owned(),
        identity: None,
        cap_file: None,
    };
    let mut args = std::env::args().skip(name.split_whitespace().count());
    while let Some(flag) = args.next() {
        let slot = match flag.as_str() {
            "--listen" => &mut options.listen,
            "--identity" => options.identity.insert(String::new()),
            "--cap-file" => options.cap_file.insert(String::new()),
            _ => usage(&format!("unknown argument {flag:?}")),
        };
        match args.next() {
            Some(value) if !value.is_empty() => *slot = value,
            _ => usage(&format!("{flag} needs a value")),
        }
    }
    options
}

/// Runs a server example: starts a vat with the command-line options, exports `object`
/// under the name `name`, prints its sturdy ref URI as the first line of stdout (and
/// writes it to the `--cap-file`), and serves until Ctrl-C.
/// `name` is the program, or the program and its subcommand (`"chat serve"`): the
/// options are read after those words, and messages are prefixed with them.
///
/// Exits with code 2 on bad arguments and code 1 when the vat cannot start.
pub(crate) async fn serve(
    name: &str,
    object: impl Object,
) -> Result<(), Box<dyn std::error::Error>> {
    let options = parse_options(name);
    let mut builder = Vat::builder().listen(options.listen.as_str());
    if let Some(dir) = &options.identity {
        builder = builder.identity_dir(dir);
    }
    let vat = match builder.start().await {
        Ok(vat) => vat,
        Err(e) => {
            eprintln!("{name}: error: could not start the vat: {e}");
            std::process::exit(1);
        }
    };
    // Named: the same identity directory and port give the same URI after a restart.
    let uri = vat.export_named(name, object)?;
    if let Some(path) = &options.cap_file {
        if let Err(e) = uri.save(path) {
            eprintln!("{name}: error: could not write the .cap file: {e}");
            std::process::exit(1);
        }
    }

    // First line of stdout, flushed at once: a script waiting for it must not wait for
    // a buffer to fill.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{uri}")?;
    stdout.flush()?;
    drop(stdout);

    let address = vat
        .local_addr()
        .map_or_else(|| "nowhere".to_owned(), |a| a.to_string());
    match &options.identity {
        Some(dir) => eprintln!(
            "{name}: vat {} (key and export secret in {dir}: the URI survives restarts on the same port)",
            vat.vat_id()
        ),
        None => eprintln!("{name}: vat {} (fresh key)", vat.vat_id()),
    }
    eprintln!("{name}: listening on {address}; the sturdy ref URI is on stdout");
    eprintln!("{name}: serving until Ctrl-C");

    tokio::signal::ctrl_c().await?;
    eprintln!("{name}: shutting down");
    vat.shutdown().await;
    eprintln!("{name}: stopped");
    Ok(())
}
