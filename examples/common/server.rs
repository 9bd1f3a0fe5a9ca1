//! What every server example does around its object: read `--listen <addr>`,
//! `--identity <dir>` and `--cap-file <path>`, start a listening vat, export the object
//! under the program's name, print its sturdy ref URI as the first line of stdout (and
//! save it to the `.cap` file if asked), and serve until Ctrl-C or SIGTERM. Also installs
//! the log subscriber (`RUST_LOG`) every example uses.
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

/// Where and as whom a server example runs.
#[derive(clap::Parser)]
#[command(
    version,
    about = "Serves one object and prints its sturdy ref URI on stdout"
)]
struct Options {
    /// Address to listen on (the default picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: String,
    /// Keep the vat's key and export secret in DIR (created on first use), so that with
    /// a fixed --listen port the URI stays the same across restarts.
    #[arg(long, value_name = "DIR")]
    identity: Option<String>,
    /// Also write the URI to PATH (mode 0600), for clients to read with @PATH.
    #[arg(long, value_name = "PATH")]
    cap_file: Option<String>,
}

/// The options of a program's `serve` subcommand, as its own `clap` parser sees them:
/// everything after the subcommand's name, unparsed, for [`serve`] to read (so
/// `chat serve --help` shows the server options). Flatten it into a subcommand that
/// has `#[command(disable_help_flag = true)]`.
#[derive(clap::Args)]
#[allow(dead_code)]
pub(crate) struct ServeOptions {
    /// [--listen ADDR] [--identity DIR] [--cap-file PATH]; see `serve --help`.
    #[arg(
        value_name = "OPTIONS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    options: Vec<String>,
}

/// Parses the server options; on bad arguments clap prints usage to stderr and exits
/// with code 2 (`--help` and `--version` exit 0).
///
/// `name` is how the server is invoked: a program (`tax_server`), or a program and its
/// subcommand (`chat serve`). The options are the arguments after those words.
fn parse_options(name: &str) -> Options {
    use clap::{CommandFactory, FromArgMatches};
    let words = name.split_whitespace().count();
    let args = std::iter::once(name.to_owned()).chain(std::env::args().skip(words));
    let mut command = Options::command().bin_name(name.to_owned());
    let usage = command.render_usage().to_string();
    let parsed = command
        .try_get_matches_from(args)
        .and_then(|m| Options::from_arg_matches(&m));
    match parsed {
        Ok(options) => options,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // The one-line reason, then the aligned usage, exit code 2.
            let reason = first_paragraph(&e.render().to_string());
            eprintln!("{name}: {}", reason.trim_start_matches("error: "));
            eprintln!("{}", usage.replacen("Usage:", "usage:", 1));
            eprintln!("Try '{name} --help' for the options.");
            std::process::exit(2);
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

/// Installs a log subscriber on stderr filtered by `RUST_LOG` (`RUST_LOG=captp=debug`
/// shows each call; default: warnings only). The `log` crate's records (rustls) are
/// bridged. Never logs a swiss number: the library does not emit one.
#[allow(dead_code)]
pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Waits for Ctrl-C or, on Unix, SIGTERM (what `kill` and service managers send), so
/// either way the vat shuts down and its peers see an orderly close.
pub(crate) async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

/// Runs a server example: starts a vat with the command-line options, exports `object`
/// under the name `name`, prints its sturdy ref URI as the first line of stdout (and
/// writes it to the `--cap-file`), and serves until Ctrl-C or SIGTERM.
/// `name` is the program, or the program and its subcommand (`"chat serve"`): the
/// options are read after those words, and messages are prefixed with them.
///
/// Exits with code 2 on bad arguments and code 1 when the vat cannot start.
pub(crate) async fn serve(
    name: &str,
    object: impl Object,
) -> Result<(), Box<dyn std::error::Error>> {
    let options = parse_options(name);
    init_logging();
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
    eprintln!("{name}: serving until Ctrl-C or SIGTERM");

    stop_signal().await?;
    eprintln!("{name}: shutting down");
    vat.shutdown().await;
    eprintln!("{name}: stopped");
    Ok(())
}
