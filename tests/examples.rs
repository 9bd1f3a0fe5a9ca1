//! Runs the example programs as child processes, the way a person would in two
//! terminals: start a server, read the sturdy ref URI from the first line of its stdout,
//! run a client against it, and check what the client prints and how it exits.
//!
//! The examples are built once per test process with `cargo build --examples`. Every
//! wait on a child is bounded, and every child is killed when its test ends, pass or
//! fail. Everything listens on 127.0.0.1 only.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use captp::{SturdyRef, SwissNumber, VatId};

/// The longest any test waits for one child to print its URI or to finish.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The path of a built example, building all the examples first (once per process).
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--examples", "--quiet"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("could not run cargo to build the examples");
        assert!(status.success(), "cargo build --examples failed: {status}");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    target
        .join("debug")
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// A child process that is killed (and reaped) when this is dropped, so a failing test
/// leaves no server behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads all of `pipe` on a thread; the receiver gets the text at end of file.
fn collect(mut pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// A running server example.
struct Server {
    /// The sturdy ref URI it printed.
    uri: String,
    /// Its stderr so far, for failure messages.
    log: Arc<Mutex<String>>,
    child: Killed,
}

impl Server {
    /// Starts the server example `name` with `args` and waits for its URI.
    fn start(name: &str, args: &[&str]) -> Server {
        let mut child = Killed(
            Command::new(example(name))
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("could not start {name}: {e}")),
        );
        let stdout = child.0.stdout.take().expect("piped stdout");
        let stderr = child.0.stderr.take().expect("piped stderr");

        // Drain stderr as it comes, so the server never blocks on a full pipe and a
        // failure can show what it said.
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });

        // The first line of stdout is the URI; keep draining after it.
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let _ = tx.send(first);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let first = rx.recv_timeout(TIMEOUT);
        let mut server = Server {
            uri: String::new(),
            log,
            child,
        };
        match first {
            Ok(line) if line.starts_with("captp://") && line.ends_with('\n') => {
                server.uri = line.trim_end().to_owned();
                server
            }
            Ok(line) => panic!(
                "{name} printed {line:?} instead of a URI line; stderr:\n{}",
                server.stderr()
            ),
            Err(_) => panic!(
                "{name} printed no URI within {TIMEOUT:?}; stderr:\n{}",
                server.stderr()
            ),
        }
    }

    fn sturdy(&self) -> SturdyRef {
        self.uri.parse().expect("the server printed a valid URI")
    }

    fn stderr(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Fails the test with the server's log if it has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.0.try_wait() {
            panic!("the server exited ({status}); stderr:\n{}", self.stderr());
        }
    }
}

/// What a finished example printed, and how it exited.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout:\n{}--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs the example `name` with `args` to completion, within [`TIMEOUT`].
fn run(name: &str, args: &[&str]) -> Run {
    let mut child = Killed(
        Command::new(example(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {name}: {e}")),
    );
    let stdout = collect(child.0.stdout.take().expect("piped stdout"));
    let stderr = collect(child.0.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + TIMEOUT;
    let wait = |rx: Receiver<String>| {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left)
            .unwrap_or_else(|_| panic!("{name} {args:?} did not finish within {TIMEOUT:?}"))
    };
    // Both pipes at end of file: the child has exited (or closed them, which these
    // examples never do), so this wait is short.
    let stdout = wait(stdout);
    let stderr = wait(stderr);
    let status = child.0.wait().expect("could not wait for the child");
    Run {
        status,
        stdout,
        stderr,
    }
}

/// `uri` with its vat ID replaced by another valid one.
fn with_other_vat_id(sturdy: &SturdyRef) -> String {
    let other = VatId::from_bytes([7; 32]);
    assert_ne!(other, sturdy.vat_id());
    SturdyRef::new(
        other,
        sturdy.host().clone(),
        sturdy.port(),
        sturdy.swiss().clone(),
    )
    .to_string()
}

/// `uri` with its swiss number replaced by another valid one.
fn with_other_swiss(sturdy: &SturdyRef) -> String {
    let other = SwissNumber::from_bytes([7; 32]);
    assert_ne!(&other, sturdy.swiss());
    SturdyRef::new(sturdy.vat_id(), sturdy.host().clone(), sturdy.port(), other).to_string()
}

/// Whether `line` is `At <digits>: <text>`.
fn is_match_line(line: &str, text: &str) -> bool {
    line.strip_prefix("At ")
        .and_then(|rest| rest.strip_suffix(&format!(": {text}")))
        .is_some_and(|time| !time.is_empty() && time.bytes().all(|b| b.is_ascii_digit()))
}

#[test]
fn log_client_logs_and_finds_foot() {
    let mut server = Server::start("log_service", &[]);
    let run = run("log_client", &[&server.uri]);
    assert_eq!(run.code(), Some(0), "log_client: {run}");
    assert!(
        run.stdout.lines().any(|l| is_match_line(l, "foot")),
        "no `At <time>: foot` line: {run}"
    );
    assert!(!run.stdout.contains("shoe"), "shoe matched foo: {run}");
    server.assert_running();
    let log = server.stderr();
    assert!(log.contains(r#"log("foot")"#), "server log:\n{log}");
    assert!(
        !log.contains(&server.sturdy().swiss().expose_base64()),
        "the server logged its swiss number:\n{log}"
    );
}

#[test]
fn log_client_explains_a_wrong_swiss_number() {
    let server = Server::start("log_service", &[]);
    let run = run("log_client", &[&with_other_swiss(&server.sturdy())]);
    assert_eq!(run.code(), Some(1), "log_client: {run}");
    assert!(
        run.stderr.contains("wrong or revoked swiss number"),
        "log_client: {run}"
    );
    assert!(run.stdout.is_empty(), "log_client: {run}");
}

#[test]
fn log_client_explains_a_wrong_vat_id() {
    let server = Server::start("log_service", &[]);
    let run = run("log_client", &[&with_other_vat_id(&server.sturdy())]);
    assert_eq!(run.code(), Some(1), "log_client: {run}");
    assert!(
        run.stderr
            .contains("the server's key does not match the vat ID in the URI"),
        "log_client: {run}"
    );
    assert!(run.stdout.is_empty(), "log_client: {run}");
}

#[test]
fn log_client_explains_an_unreachable_vat() {
    // A port nothing listens on any more: the server has been killed.
    let uri = Server::start("log_service", &[]).uri;
    let run = run("log_client", &[&uri]);
    assert_eq!(run.code(), Some(1), "log_client: {run}");
    assert!(
        run.stderr.contains("could not reach the server vat"),
        "log_client: {run}"
    );
}

#[test]
fn log_client_rejects_a_malformed_uri() {
    let run = run("log_client", &["captp://not-a-sturdy-ref"]);
    assert_eq!(run.code(), Some(1), "log_client: {run}");
    assert!(
        run.stderr.contains("not a sturdy ref URI"),
        "log_client: {run}"
    );
}

#[test]
fn counter_counts_across_clients() {
    let mut server = Server::start("counter_server", &[]);
    for expected in 1..=2 {
        let run = run("counter_client", &[&server.uri]);
        assert_eq!(run.code(), Some(0), "counter_client: {run}");
        assert_eq!(
            run.stdout,
            format!("Calling Foo...\nCalling Bar: {expected}\n"),
            "counter_client run {expected}: {run}"
        );
    }
    server.assert_running();
}

#[test]
fn tax_client_computes_tax() {
    let mut server = Server::start("tax_server", &[]);
    for (cents, tax) in [("300", "15"), ("10", "1"), ("29", "1")] {
        let run = run("tax_client", &[&server.uri, cents]);
        assert_eq!(run.code(), Some(0), "tax_client {cents}: {run}");
        assert_eq!(
            run.stdout,
            format!("Tax on {cents} cents is {tax} cents\n"),
            "tax_client {cents}: {run}"
        );
    }
    server.assert_running();
}

#[test]
fn tax_client_reports_the_remote_error() {
    let mut server = Server::start("tax_server", &[]);
    let run = run("tax_client", &[&server.uri, "-5"]);
    assert_eq!(run.code(), Some(1), "tax_client -5: {run}");
    assert!(
        run.stderr
            .contains("error: failed: amount must not be negative: -5 cents"),
        "tax_client -5: {run}"
    );
    assert!(run.stdout.is_empty(), "tax_client -5: {run}");
    server.assert_running();
}

#[test]
fn bad_arguments_exit_with_code_2() {
    let uri = "captp://AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA@127.0.0.1:1/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let cases: &[(&str, &[&str])] = &[
        ("log_client", &[]),
        ("log_client", &[uri, "extra"]),
        ("counter_client", &[]),
        ("tax_client", &[]),
        ("tax_client", &[uri]),
        ("tax_client", &[uri, "1.5"]),
        ("tax_client", &[uri, "ten"]),
        ("log_service", &["--bogus"]),
        ("counter_server", &["--listen"]),
        ("tax_server", &["--identity"]),
        ("quickstart", &["extra"]),
    ];
    for (name, args) in cases {
        let run = run(name, args);
        assert_eq!(run.code(), Some(2), "{name} {args:?}: {run}");
        assert!(run.stderr.contains("usage:"), "{name} {args:?}: {run}");
        assert!(run.stdout.is_empty(), "{name} {args:?}: {run}");
    }
}

#[test]
fn identity_dir_keeps_the_vat_id_across_restarts() {
    let dir = std::env::temp_dir().join(format!("captp-examples-identity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_str().expect("a UTF-8 temporary directory");
    let first = Server::start("counter_server", &["--identity", dir_arg]).sturdy();
    let second = Server::start("counter_server", &["--identity", dir_arg]).sturdy();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(first.vat_id(), second.vat_id());
    assert_ne!(first.swiss(), second.swiss());
}

#[test]
fn quickstart_runs() {
    let run = run("quickstart", &[]);
    assert_eq!(run.code(), Some(0), "quickstart: {run}");
    assert!(run.stdout.lines().any(|l| l == "done"), "quickstart: {run}");
}
