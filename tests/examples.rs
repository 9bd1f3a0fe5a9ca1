//! Runs the example programs as child processes, the way a person would in two
//! terminals: start a server, read the sturdy ref URI from the first line of its stdout,
//! run a client against it, and check what the client prints and how it exits.
//!
//! The examples are built once per test process with `cargo build --examples`. Every
//! wait on a child is bounded, and every child is killed when its test ends, pass or
//! fail. Everything listens on 127.0.0.1 only.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use captp::{SturdyRef, SwissNumber, VatId};

#[path = "common/process.rs"]
mod process;

use process::{Killed, example};

/// The longest any test waits for one child to print its URI or to finish.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the example `name` with `args`, its stdout and stderr piped and its stdin
/// as given.
fn spawn(name: &str, args: &[&str], stdin: Stdio) -> Killed {
    Killed(
        Command::new(example(name))
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {name} {args:?}: {e}")),
    )
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

/// A child's stderr, drained line by line on a thread as it comes (so the child never
/// blocks on a full pipe), which a test can read so far or wait on.
#[derive(Clone, Default)]
struct Log(Arc<(Mutex<LogText>, Condvar)>);

#[derive(Default)]
struct LogText {
    text: String,
    /// End of file: the child has exited (or closed its stderr).
    ended: bool,
}

impl Log {
    /// Starts draining `pipe`.
    fn drain(pipe: impl Read + Send + 'static) -> Log {
        let log = Log::default();
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.update(|log| {
                    log.text.push_str(&line);
                    log.text.push('\n');
                });
            }
            sink.update(|log| log.ended = true);
        });
        log
    }

    fn update(&self, change: impl FnOnce(&mut LogText)) {
        let (text, changed) = &*self.0;
        change(&mut text.lock().unwrap_or_else(|e| e.into_inner()));
        changed.notify_all();
    }

    /// The text so far.
    fn text(&self) -> String {
        let (text, _) = &*self.0;
        text.lock().unwrap_or_else(|e| e.into_inner()).text.clone()
    }

    /// Waits, within [`TIMEOUT`], until `done` holds for the log, and returns the text
    /// then (whether or not `done` came to hold).
    fn wait_until(&self, done: impl Fn(&LogText) -> bool) -> String {
        let (text, changed) = &*self.0;
        let guard = text.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = changed
            .wait_timeout_while(guard, TIMEOUT, |log| !done(log))
            .unwrap_or_else(|e| e.into_inner());
        guard.text.clone()
    }

    /// Waits, within [`TIMEOUT`], until the text contains `needle` or the pipe ends,
    /// and returns the text then.
    fn wait_for(&self, needle: &str) -> String {
        self.wait_until(|log| log.ended || log.text.contains(needle))
    }

    /// Waits, within [`TIMEOUT`], for the end of the pipe, and returns the text.
    fn wait_for_end(&self) -> String {
        self.wait_until(|log| log.ended)
    }
}

/// A running server example.
struct Server {
    /// The sturdy ref URI it printed.
    uri: String,
    /// Its stderr, for checks and failure messages.
    log: Log,
    child: Killed,
}

impl Server {
    /// Starts the server example `name` with `args` and waits for its URI.
    fn start(name: &str, args: &[&str]) -> Server {
        let mut child = spawn(name, args, Stdio::null());
        let stdout = child.0.stdout.take().expect("piped stdout");
        let stderr = child.0.stderr.take().expect("piped stderr");

        // Drain stderr as it comes, so a failure can show what the server said.
        let log = Log::drain(stderr);

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
        self.log.text()
    }

    /// Waits (within [`TIMEOUT`]) until the server has logged `needle`, and returns its
    /// log; fails the test if it does not.
    fn expect_log(&self, needle: &str) -> String {
        let log = self.log.wait_for(needle);
        assert!(
            log.contains(needle),
            "the server never logged {needle:?}:\n{log}"
        );
        log
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
    let mut child = spawn(name, args, Stdio::null());
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
    // The server logs each call as it serves it, but its stderr reaches this process
    // on its own schedule: wait for the line rather than race it.
    let log = server.expect_log(r#"log("foot")"#);
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
            .contains("error: the tax computer refused: amount must not be negative: -5 cents"),
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
        ("chat", &[]),
        ("chat", &["bogus"]),
        ("chat", &["join", uri]),
        ("chat", &["join", uri, "two words"]),
        ("chat", &["join", uri, "alice", "extra"]),
        ("chat", &["serve", "--bogus"]),
        ("pipelining", &[]),
        ("pipelining", &["call", uri]),
        ("pipelining", &["call", uri, "ten"]),
        ("pipelining", &["call", uri, "1001"]),
        ("pipelining", &["serve", "--listen"]),
        ("car_factory", &[]),
        ("car_factory", &["call", uri, "red"]),
        ("car_factory", &["demo", "extra"]),
        ("car_factory", &["serve", "extra"]),
        ("dynamic", &[]),
        ("dynamic", &["call", uri, "red"]),
        ("dynamic", &["methods"]),
        ("dynamic", &["demo", "extra"]),
        ("dynamic", &["serve", "--bogus"]),
        ("name_service", &[]),
        ("name_service", &["bogus"]),
        ("name_service", &["register", uri]),
        ("name_service", &["register", uri, "two words"]),
        ("name_service", &["lookup", uri, "greeter"]),
        ("name_service", &["list"]),
        ("name_service", &["demo", "extra"]),
        ("name_service", &["serve", "--bogus"]),
        ("group", &[]),
        ("group", &["join", uri]),
        ("group", &["join", uri, "two words"]),
        ("group", &["demo", "extra"]),
        ("group", &["serve", "--listen"]),
        ("work_spread", &[]),
        ("work_spread", &["coordinate"]),
        ("work_spread", &["coordinate", "100"]),
        ("work_spread", &["coordinate", "ten", uri]),
        ("work_spread", &["coordinate", "99999999999", uri]),
        ("work_spread", &["demo", "extra"]),
        ("work_spread", &["worker", "--identity"]),
        ("topic_store", &[]),
        ("topic_store", &["client"]),
        ("topic_store", &["client", uri]),
        ("topic_store", &["client", uri, "set", "answer"]),
        ("topic_store", &["client", uri, "get"]),
        ("topic_store", &["client", uri, "dump", "extra"]),
        ("topic_store", &["client", uri, "frob", "answer"]),
        ("topic_store", &["serve", "extra"]),
    ];
    for (name, args) in cases {
        let run = run(name, args);
        assert_eq!(run.code(), Some(2), "{name} {args:?}: {run}");
        assert!(run.stderr.contains("usage:"), "{name} {args:?}: {run}");
        assert!(run.stdout.is_empty(), "{name} {args:?}: {run}");
    }
}

#[test]
fn bad_arguments_show_the_subcommands_usage_and_help_exits_0() {
    let uri = "captp://AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA@127.0.0.1:1/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    // The failing subcommand's usage line, and the reason, on stderr; exit 2.
    let cases: &[(&str, &[&str], &str, &str)] = &[
        (
            "chat",
            &[],
            "requires a subcommand",
            "usage: chat <COMMAND>",
        ),
        (
            "chat",
            &["join", uri, "two words"],
            "a nick has no spaces",
            "usage: chat join <URI> <NICK>",
        ),
        (
            "pipelining",
            &["call", uri, "1001"],
            "1001 is not in 0..=1000",
            "usage: pipelining call <URI> <DEPTH>",
        ),
        (
            "topic_store",
            &["client", uri, "set", "answer"],
            "<VALUE>",
            "usage: topic_store client <URI> set <TOPIC> <VALUE>",
        ),
        (
            "counter_client",
            &["--bogus", uri],
            "'--bogus'",
            "usage: counter_client [OPTIONS] <URI>",
        ),
        (
            "group",
            &["serve", "--listen"],
            "--listen",
            "usage: group serve [OPTIONS]",
        ),
    ];
    for (name, args, reason, usage) in cases {
        let run = run(name, args);
        assert_eq!(run.code(), Some(2), "{name} {args:?}: {run}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 3, "{name} {args:?}: {run}");
        assert!(lines[0].contains(reason), "{name} {args:?}: {run}");
        assert_eq!(lines[1], *usage, "{name} {args:?}: {run}");
        assert!(run.stdout.is_empty(), "{name} {args:?}: {run}");
    }
    // --help, on a program, a subcommand and a serve subcommand: stdout, exit 0.
    let helps: &[(&str, &[&str], &str)] = &[
        ("log_client", &["--help"], "Usage: log_client <URI>"),
        ("chat", &["join", "--help"], "Usage: chat join <URI> <NICK>"),
        ("chat", &["serve", "--help"], "--cap-file <PATH>"),
        ("work_spread", &["--help"], "coordinate"),
    ];
    for (name, args, needle) in helps {
        let run = run(name, args);
        assert_eq!(run.code(), Some(0), "{name} {args:?}: {run}");
        assert!(run.stdout.contains(needle), "{name} {args:?}: {run}");
        assert!(run.stderr.is_empty(), "{name} {args:?}: {run}");
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
    // The servers export by name, and the swiss number of a name comes from the
    // directory's export secret: the same on both runs (the ports differ here).
    assert_eq!(first.swiss(), second.swiss());
    assert_ne!(first.port(), second.port());
}

#[test]
fn counter_server_keeps_its_count_across_restarts() {
    let dir = std::env::temp_dir().join(format!("captp-examples-count-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_str().expect("a UTF-8 temporary directory");
    let mut expected = 0;
    for restart in 0..2 {
        let server = Server::start("counter_server", &["--identity", dir_arg]);
        for _ in 0..2 {
            expected += 1;
            let run = run("counter_client", &[&server.uri]);
            assert_eq!(run.code(), Some(0), "counter_client: {run}");
            assert_eq!(
                run.stdout,
                format!("Calling Foo...\nCalling Bar: {expected}\n"),
                "run {expected}, after {restart} restarts: {run}"
            );
        }
        // Dropping the server kills it (SIGKILL): the count must already be on disk.
    }
    let saved = std::fs::read_to_string(dir.join("counter.count"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(saved.expect("the count file").trim(), "4");
}

#[test]
fn quickstart_runs() {
    let run = run("quickstart", &[]);
    assert_eq!(run.code(), Some(0), "quickstart: {run}");
    assert!(run.stdout.lines().any(|l| l == "done"), "quickstart: {run}");
}

/// A running `chat join`: its stdin to type into, and its stdout read line by line.
struct Member {
    nick: String,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every stdout line read so far, for checks and failure messages.
    seen: Vec<String>,
    log: Log,
    child: Killed,
}

impl Member {
    /// Starts `chat join <uri> <nick>` and waits until it has joined.
    fn join(uri: &str, nick: &str) -> Member {
        let mut member = Member::start("chat", &["join", uri, nick], nick);
        member.expect(&format!("* you joined as {nick}"), |l| {
            l.starts_with(&format!("* you joined as {nick};"))
        });
        member
    }

    /// Starts the example `name` with `args`, with stdin to type into and stdout read
    /// line by line; `nick` names it in failure messages.
    fn start(name: &str, args: &[&str], nick: &str) -> Member {
        let mut child = spawn(name, args, Stdio::piped());
        let stdin = child.0.stdin.take();
        let stdout = child.0.stdout.take().expect("piped stdout");
        let stderr = child.0.stderr.take().expect("piped stderr");
        let log = Log::drain(stderr);
        // The channel disconnects at end of file, when the member has exited.
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Member {
            nick: nick.to_owned(),
            stdin,
            lines,
            seen: Vec::new(),
            log,
            child,
        }
    }

    /// Types a line.
    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{line}").expect("could not write to the member's stdin");
        stdin.flush().expect("could not flush the member's stdin");
    }

    /// Closes the member's stdin: end of input, as Ctrl-D at a terminal.
    fn end_input(&mut self) {
        self.stdin = None;
    }

    /// Waits (within [`TIMEOUT`]) for a stdout line that `matches`, and returns it.
    fn expect(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "{} never printed {what} ({e}); stdout:\n{}\nstderr:\n{}",
                    self.nick,
                    self.seen.join("\n"),
                    self.stderr()
                ),
            }
        }
    }

    /// Waits (within [`TIMEOUT`]) for the member to exit, and says how it did.
    fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("{} did not exit within {TIMEOUT:?}", self.nick)
                }
            }
        }
        // Stdout is at end of file: the member has exited, so these waits are short.
        // Waiting for the end of stderr too makes `stderr()` complete from now on.
        self.log.wait_for_end();
        self.child.0.wait().expect("could not wait for the member")
    }

    fn stderr(&self) -> String {
        self.log.text()
    }
}

/// Whether `line` is `[HH:MM:SS] <nick>: <text>`.
fn is_chat_line(line: &str, nick: &str, text: &str) -> bool {
    let Some((clock, said)) = line
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("] "))
    else {
        return false;
    };
    let clock_ok = clock.len() == 8
        && clock.bytes().enumerate().all(|(i, b)| match i {
            2 | 5 => b == b':',
            _ => b.is_ascii_digit(),
        });
    clock_ok && said == format!("{nick}: {text}")
}

#[test]
fn chat_members_hear_each_other_rename_quit_and_die() {
    let mut room = Server::start("chat", &["serve"]);
    let mut alice = Member::join(&room.uri, "alice");
    let mut bob = Member::join(&room.uri, "bob");
    alice.expect("* bob joined", |l| l == "* bob joined");

    // A line one member types reaches the other, stamped, and not its sender.
    alice.type_line("hello");
    bob.expect("[..:..:..] alice: hello", |l| {
        is_chat_line(l, "alice", "hello")
    });

    // A rename is announced. The room tells alice in order, so by the time she sees it
    // she would have seen an echo of her own line.
    bob.type_line("/nick robert");
    bob.expect("* you are now robert", |l| l == "* you are now robert");
    alice.expect("* bob is now robert", |l| l == "* bob is now robert");
    assert!(
        !alice.seen.iter().any(|l| l.contains("alice: hello")),
        "alice heard herself: {:?}",
        alice.seen
    );

    // The new nick is used, and a taken one is refused without leaving the room.
    bob.type_line("/nick alice");
    bob.type_line("still here");
    alice.expect("[..:..:..] robert: still here", |l| {
        is_chat_line(l, "robert", "still here")
    });

    // /quit leaves, and the member exits 0.
    bob.type_line("/quit");
    alice.expect("* robert left", |l| l == "* robert left");
    let status = bob.exit_status();
    assert!(
        status.success(),
        "bob after /quit: {status}\n{}",
        bob.stderr()
    );
    assert!(
        bob.stderr().contains("the nick alice is taken"),
        "{}",
        bob.stderr()
    );

    // A member whose process dies is noticed (the room's lost-client hook) and the
    // others are told it left.
    let mut carol = Member::join(&room.uri, "carol");
    alice.expect("* carol joined", |l| l == "* carol joined");
    carol.child.0.kill().expect("could not kill carol");
    alice.expect("* carol left", |l| l == "* carol left");

    // End of input leaves too.
    let mut dave = Member::join(&room.uri, "dave");
    alice.expect("* dave joined", |l| l == "* dave joined");
    dave.end_input();
    alice.expect("* dave left", |l| l == "* dave left");
    let status = dave.exit_status();
    assert!(status.success(), "dave at end of input: {status}");

    room.assert_running();
    // Carol's vat went away: the room notices by whichever comes first, the session's
    // end (the membership's `lost_client`) or her listener breaking; either removes her
    // once.
    let log = room.expect_log("carol left (");
    let line = log
        .lines()
        .find(|l| l.contains("carol left ("))
        .unwrap_or_default();
    assert!(
        line.contains("(lost client: vat") || line.contains("(its listener broke: "),
        "carol left for an unexpected reason: {line}"
    );
    assert_eq!(log.matches("carol left").count(), 1, "{log}");
    assert!(
        !log.contains("hello"),
        "the room logged what was said:\n{log}"
    );
}

#[test]
fn chat_refuses_a_taken_nick() {
    let room = Server::start("chat", &["serve"]);
    let _alice = Member::join(&room.uri, "alice");
    let run = run("chat", &["join", &room.uri, "alice"]);
    assert_eq!(run.code(), Some(1), "second alice: {run}");
    assert!(
        run.stderr.contains("the nick alice is taken"),
        "second alice: {run}"
    );
}

#[test]
fn chat_member_exits_1_when_the_room_goes_away() {
    let mut room = Server::start("chat", &["serve"]);
    let mut alice = Member::join(&room.uri, "alice");
    room.child.0.kill().expect("could not kill the room");
    let status = alice.exit_status();
    assert_eq!(
        status.code(),
        Some(1),
        "alice: {status}\n{}",
        alice.stderr()
    );
    assert!(
        alice
            .stderr()
            .contains("the connection to the server vat was lost"),
        "alice:\n{}",
        alice.stderr()
    );
}

#[test]
fn pipelining_chain_reaches_its_depth() {
    let mut server = Server::start("pipelining", &["serve"]);
    let run = run("pipelining", &["call", &server.uri, "100"]);
    assert_eq!(run.code(), Some(0), "pipelining call: {run}");
    assert!(
        run.stdout.lines().any(|l| l == "value: 100"),
        "pipelining call: {run}"
    );
    for label in ["one round trip: ", "pipelined: ", "awaited: "] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with(label) && l.contains(" ms (")),
            "no {label:?} timing: {run}"
        );
    }
    server.assert_running();
}

#[test]
fn car_factory_drives_a_pipelined_car_and_refuses_a_tank() {
    let mut server = Server::start("car_factory", &["serve"]);
    let made = run("car_factory", &["call", &server.uri, "red", "roadster"]);
    assert_eq!(made.code(), Some(0), "car_factory call: {made}");
    assert_eq!(
        made.stdout, "Vroom! I'm a red roadster car!\n",
        "car_factory call: {made}"
    );
    let tank = run("car_factory", &["call", &server.uri, "grey", "tank"]);
    assert_eq!(tank.code(), Some(1), "car_factory call tank: {tank}");
    assert!(
        tank.stderr
            .contains("error: the factory does not make \"tank\""),
        "car_factory call tank: {tank}"
    );
    assert!(tank.stdout.is_empty(), "car_factory call tank: {tank}");
    server.assert_running();

    let wrong = run(
        "car_factory",
        &[
            "call",
            &with_other_swiss(&server.sturdy()),
            "red",
            "roadster",
        ],
    );
    assert_eq!(
        wrong.code(),
        Some(1),
        "car_factory call, wrong swiss: {wrong}"
    );
    assert!(
        wrong.stderr.contains("wrong or revoked swiss number"),
        "car_factory call, wrong swiss: {wrong}"
    );
    assert!(
        wrong.stdout.is_empty(),
        "car_factory call, wrong swiss: {wrong}"
    );
}

#[test]
fn car_factory_demo_runs() {
    let run = run("car_factory", &["demo"]);
    assert_eq!(run.code(), Some(0), "car_factory demo: {run}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines.contains(&"Vroom! I'm a red roadster car!"),
        "car_factory demo: {run}"
    );
    assert!(
        lines.contains(&"refused, as a typed error: NotACar { model: \"tank\" }"),
        "car_factory demo: {run}"
    );
}

#[test]
fn dynamic_client_drives_the_typed_factory_and_lists_its_methods() {
    let mut server = Server::start("car_factory", &["serve"]);
    // The wire format is the same: a dynamic client calls a typed server.
    let dynamic = run("dynamic", &["call", &server.uri, "blue", "van"]);
    assert_eq!(
        dynamic.code(),
        Some(0),
        "dynamic call, typed server: {dynamic}"
    );
    assert_eq!(
        dynamic.stdout, "Vroom! I'm a blue van car!\n",
        "dynamic call, typed server: {dynamic}"
    );
    // A typed server says what it answers.
    let methods = run("dynamic", &["methods", &server.uri]);
    assert_eq!(methods.code(), Some(0), "dynamic methods: {methods}");
    assert_eq!(
        methods.stdout,
        "CarFactory\n\
         \x20 make(color: String, model: String) -> Car (pipelined)\n\
         \x20 check(model: &str) -> Result<(), MakeError>\n",
        "dynamic methods: {methods}"
    );
    server.assert_running();
}

#[test]
fn typed_client_drives_the_dynamic_factory() {
    let mut server = Server::start("dynamic", &["serve"]);
    let made = run("car_factory", &["call", &server.uri, "red", "roadster"]);
    assert_eq!(
        made.code(),
        Some(0),
        "car_factory call, dynamic server: {made}"
    );
    assert_eq!(
        made.stdout, "Vroom! I'm a red roadster car!\n",
        "car_factory call, dynamic server: {made}"
    );
    // The dynamic server's refusal carries the data the typed client decodes as its
    // own `MakeError`.
    let tank = run("car_factory", &["call", &server.uri, "grey", "tank"]);
    assert_eq!(
        tank.code(),
        Some(1),
        "car_factory call tank, dynamic server: {tank}"
    );
    assert!(
        tank.stderr
            .contains("error: the factory does not make \"tank\""),
        "car_factory call tank, dynamic server: {tank}"
    );
    // A hand-written object does not answer the reserved describe method.
    let methods = run("dynamic", &["methods", &server.uri]);
    assert_eq!(
        methods.code(),
        Some(1),
        "dynamic methods, dynamic server: {methods}"
    );
    assert!(
        methods.stderr.contains("unknown_method"),
        "dynamic methods, dynamic server: {methods}"
    );
    assert!(
        methods.stdout.is_empty(),
        "dynamic methods, dynamic server: {methods}"
    );
    server.assert_running();
}

#[test]
fn dynamic_demo_runs() {
    let run = run("dynamic", &["demo"]);
    assert_eq!(run.code(), Some(0), "dynamic demo: {run}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l == "Vroom! I'm a red roadster car!"),
        "dynamic demo: {run}"
    );
}

#[test]
fn name_service_registers_looks_up_and_forgets() {
    let mut registry = Server::start("name_service", &["serve"]);
    let mut greeter = Member::start(
        "name_service",
        &["register", &registry.uri, "greeter"],
        "greeter",
    );
    greeter.expect("registered greeter", |l| l == "registered greeter");

    let list = run("name_service", &["list", &registry.uri]);
    assert_eq!(list.code(), Some(0), "name_service list: {list}");
    assert_eq!(list.stdout, "greeter\n", "name_service list: {list}");
    let hello = run("name_service", &["lookup", &registry.uri, "greeter", "ada"]);
    assert_eq!(hello.code(), Some(0), "name_service lookup: {hello}");
    assert_eq!(
        hello.stdout, "Hello, ada! (from greeter)\n",
        "name_service lookup: {hello}"
    );
    // The call reached the greeter's own process, through the registry.
    let log = greeter.log.wait_for(r#"greet("ada")"#);
    assert!(log.contains(r#"greet("ada")"#), "greeter:\n{log}");

    let taken = run("name_service", &["register", &registry.uri, "greeter"]);
    assert_eq!(taken.code(), Some(1), "second greeter: {taken}");
    assert!(
        taken.stderr.contains("failed: name_taken: greeter"),
        "second greeter: {taken}"
    );
    let missing = run("name_service", &["lookup", &registry.uri, "printer", "ada"]);
    assert_eq!(missing.code(), Some(1), "lookup printer: {missing}");
    assert!(
        missing.stderr.contains("failed: not_found: printer"),
        "lookup printer: {missing}"
    );
    assert!(missing.stdout.is_empty(), "lookup printer: {missing}");

    // The greeter's process dies: its reference breaks and the registry forgets it.
    greeter.child.0.kill().expect("could not kill the greeter");
    registry.expect_log("forgot greeter (its reference broke");
    let gone = run("name_service", &["lookup", &registry.uri, "greeter", "ada"]);
    assert_eq!(
        gone.code(),
        Some(1),
        "lookup after the greeter died: {gone}"
    );
    assert!(
        gone.stderr.contains("failed: not_found: greeter"),
        "lookup after the greeter died: {gone}"
    );
    registry.assert_running();
}

#[test]
fn name_service_hands_the_service_off_and_outlives_the_registry() {
    let mut registry = Server::start("name_service", &["serve"]);
    let mut greeter = Member::start(
        "name_service",
        &[
            "register",
            &registry.uri,
            "greeter",
            "--listen",
            "127.0.0.1:0",
        ],
        "greeter",
    );
    greeter.expect("registered greeter", |l| l == "registered greeter");
    let mut client = Member::start(
        "name_service",
        &["greet", &registry.uri, "greeter"],
        "client",
    );
    let id = client.expect("its vat ID", |l| l.starts_with("client vat "));
    let client_id = id.trim_start_matches("client vat ").to_owned();
    client.expect("the handoff done", |l| {
        l == "direct: calls go to greeter's vat"
    });
    client.type_line("ada");
    client.expect("the greeting", |l| l == "Hello, ada! (from greeter)");
    // The call no longer passed through the registry: the greeter's vat received it
    // from the client's own.
    let from_client = format!(r#"greet("ada") from {client_id}"#);
    let log = greeter.log.wait_for(&from_client);
    assert!(log.contains(&from_client), "greeter:\n{log}");

    // The registry's process dies; the client keeps calling the greeter.
    registry
        .child
        .0
        .kill()
        .expect("could not kill the registry");
    registry
        .child
        .0
        .wait()
        .expect("could not wait for the registry");
    for who in ["bob", "cy"] {
        client.type_line(who);
        let hello = format!("Hello, {who}! (from greeter)");
        client.expect(&hello, |l| l == hello);
    }
    client.end_input();
    let status = client.exit_status();
    assert!(status.success(), "client: {status}\n{}", client.stderr());
}

#[test]
fn name_service_demo_runs() {
    let run = run("name_service", &["demo"]);
    assert_eq!(run.code(), Some(0), "name_service demo: {run}");
    for line in [
        "Hello, ada! (from greeter)",
        "after cancel: failed: not_found: greeter",
    ] {
        assert!(
            run.stdout.lines().any(|l| l == line),
            "no {line:?}: name_service demo: {run}"
        );
    }
}

#[test]
fn group_members_hear_the_others_in_order() {
    let mut group = Server::start("group", &["serve"]);
    let joined = |name: &str| {
        let mut member = Member::start("group", &["join", &group.uri, name], name);
        member.expect("the joined line", |l| {
            l == format!("* you joined as {name}")
        });
        member
    };
    let mut alice = joined("alice");
    let mut bob = joined("bob");
    alice.expect("* bob joined", |l| l == "* bob joined");

    // Each message reaches every other member once, stamped with the group's order.
    alice.type_line("hello");
    alice.type_line("again");
    bob.expect("[1] alice: hello", |l| l == "[1] alice: hello");
    bob.expect("[2] alice: again", |l| l == "[2] alice: again");
    bob.type_line("hi");
    alice.expect("[3] bob: hi", |l| l == "[3] bob: hi");

    // End of input leaves.
    bob.end_input();
    alice.expect("* bob left", |l| l == "* bob left");
    let status = bob.exit_status();
    assert!(status.success(), "bob at end of input: {status}");
    assert_eq!(
        bob.seen,
        [
            "* you joined as bob",
            "[1] alice: hello",
            "[2] alice: again"
        ],
        "bob heard himself, or something twice"
    );

    // A member whose process dies leaves too (the group's lost-client hook).
    let mut carol = joined("carol");
    alice.expect("* carol joined", |l| l == "* carol joined");
    carol.child.0.kill().expect("could not kill carol");
    alice.expect("* carol left", |l| l == "* carol left");
    group.expect_log("carol left (lost client");

    alice.end_input();
    let status = alice.exit_status();
    assert!(status.success(), "alice at end of input: {status}");
    assert!(
        !alice.seen.iter().any(|l| l.contains("alice:")),
        "alice heard herself: {:?}",
        alice.seen
    );
    group.assert_running();
}

#[test]
fn group_demo_keeps_one_order() {
    let run = run("group", &["demo"]);
    assert_eq!(run.code(), Some(0), "group demo: {run}");
    for name in ["alice", "bob", "carol"] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{name} heard: ["))),
            "no line for {name}: group demo: {run}"
        );
    }
    assert!(
        run.stdout.lines().any(|l| l
            == "every member heard the others' messages once each, in the group's order"),
        "group demo: {run}"
    );
}

#[test]
fn work_spread_demo_combines_four_partials() {
    let run = run("work_spread", &["demo"]);
    assert_eq!(run.code(), Some(0), "work_spread demo: {run}");
    let partials: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("worker ") && l.contains(" primes in "))
        .collect();
    assert_eq!(
        partials,
        [
            "worker 1: 2762 primes in 0..25000",
            "worker 2: 2371 primes in 25000..50000",
            "worker 3: 2260 primes in 50000..75000",
            "worker 4: 2199 primes in 75000..100000",
        ],
        "work_spread demo: {run}"
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("total: 9592 primes below 100000 (")),
        "work_spread demo: {run}"
    );
}

#[test]
fn work_spread_coordinates_worker_processes() {
    let mut first = Server::start("work_spread", &["worker"]);
    let mut second = Server::start("work_spread", &["worker"]);
    let run = run(
        "work_spread",
        &["coordinate", "20000", &first.uri, &second.uri],
    );
    assert_eq!(run.code(), Some(0), "work_spread coordinate: {run}");
    assert_eq!(
        run.stdout,
        "worker 1: 1229 primes in 0..10000\n\
         worker 2: 1033 primes in 10000..20000\n\
         total: 2262 primes below 20000\n",
        "work_spread coordinate: {run}"
    );
    first.expect_log("1229 primes in 0..10000");
    second.expect_log("1033 primes in 10000..20000");
    first.assert_running();
    second.assert_running();
}

#[test]
fn topic_store_sets_gets_deletes_and_dumps() {
    let mut store = Server::start("topic_store", &["serve"]);
    let client = |request: &[&str]| {
        let mut args = vec!["client", store.uri.as_str()];
        args.extend_from_slice(request);
        run("topic_store", &args)
    };
    let expect = |request: &[&str], stdout: &str| {
        let run = client(request);
        assert_eq!(run.code(), Some(0), "topic_store client {request:?}: {run}");
        assert_eq!(run.stdout, stdout, "topic_store client {request:?}: {run}");
    };
    expect(&["set", "answer", "41"], "answer = 41\n");
    expect(&["set", "answer", "42"], "answer = 42 (was 41)\n");
    expect(&["set", "pi", "3.25"], "pi = 3.25\n");
    expect(
        &["set", "motd", "hello, world"],
        "motd = \"hello, world\"\n",
    );
    expect(&["set", "quoted", "\"42\""], "quoted = \"42\"\n");
    expect(&["set", "flag", "true"], "flag = true\n");
    expect(&["set", "nothing", "null"], "nothing = null\n");
    expect(&["get", "answer"], "42\n");
    expect(&["get", "quoted"], "\"42\"\n");
    expect(&["delete", "flag"], "deleted flag\n");
    expect(
        &["dump"],
        "answer = 42\n\
         motd = \"hello, world\"\n\
         nothing = null\n\
         pi = 3.25\n\
         quoted = \"42\"\n",
    );
    for request in [&["get", "flag"][..], &["delete", "flag"][..]] {
        let run = client(request);
        assert_eq!(run.code(), Some(1), "topic_store client {request:?}: {run}");
        assert!(
            run.stderr.contains("failed: no_such_topic: flag"),
            "topic_store client {request:?}: {run}"
        );
        assert!(
            run.stdout.is_empty(),
            "topic_store client {request:?}: {run}"
        );
    }
    store.assert_running();
}

/// A port that was free a moment ago on 127.0.0.1 (bound to port 0, then closed), for a
/// server that must come back on the same port.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("a bound address").port()
}

/// A fresh, not yet existing directory under the system temp dir, removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(tag: &str) -> TempPath {
        let swiss = SwissNumber::generate().expose_base64();
        let path = std::env::temp_dir().join(format!(
            "captp-examples-{tag}-{}-{}",
            std::process::id(),
            &swiss[..8]
        ));
        TempPath(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The number in a `Calling Bar: <n>` line of `stdout`, if there is one.
fn bar_counts(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("Calling Bar: "))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|n| n.parse().ok())
        .collect()
}

#[test]
fn named_uri_survives_a_server_restart_and_clients_read_cap_files() {
    let dir = TempPath::new("restart");
    let cap = dir.0.join("counter.cap");
    let cap_arg = cap.to_str().expect("a UTF-8 path").to_owned();
    let listen = format!("127.0.0.1:{}", free_port());
    let args = [
        "--identity",
        dir.arg(),
        "--listen",
        &listen,
        "--cap-file",
        &cap_arg,
    ];

    let first = Server::start("counter_server", &args);
    // The .cap file holds the printed URI, on one line, readable by its owner only.
    let saved = std::fs::read_to_string(&cap).expect("the server wrote the .cap file");
    assert_eq!(saved, format!("{}\n", first.uri));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&cap)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let before = run("counter_client", &[&format!("@{cap_arg}")]);
    assert_eq!(before.code(), Some(0), "counter_client @file: {before}");
    let counted = bar_counts(&before.stdout);
    assert_eq!(counted.len(), 1, "{before}");
    assert!(counted[0] >= 1, "{before}");
    let uri = first.uri.clone();
    drop(first); // killed and reaped: the port is free again

    let second = Server::start("counter_server", &args);
    assert_eq!(second.uri, uri, "the restarted server printed another URI");
    // The old URI, as text and from the file, reaches the restarted server.
    for arg in [uri.clone(), format!("@{cap_arg}")] {
        let after = run("counter_client", &[&arg]);
        assert_eq!(
            after.code(),
            Some(0),
            "counter_client after restart: {after}"
        );
        assert_eq!(bar_counts(&after.stdout).len(), 1, "{after}");
    }
    // `captp inspect` takes the file too, and prints no secret.
    let inspect = Command::new(env!("CARGO_BIN_EXE_captp"))
        .args(["inspect", &format!("@{cap_arg}")])
        .output()
        .expect("run captp inspect");
    let out = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "captp inspect: {out}");
    assert!(out.contains(&listen), "{out}");
    let swiss = second.sturdy().swiss().expose_base64();
    assert!(!out.contains(&swiss), "inspect printed the swiss number");
}

#[test]
fn counter_client_reconnects_across_a_server_restart() {
    let dir = TempPath::new("reconnect");
    let listen = format!("127.0.0.1:{}", free_port());
    let args = ["--identity", dir.arg(), "--listen", &listen];
    let server = Server::start("counter_server", &args);

    let mut client = spawn(
        "counter_client",
        &["--reconnect", &server.uri],
        Stdio::piped(),
    );
    let mut stdin: ChildStdin = client.0.stdin.take().expect("piped stdin");
    let stdout = Log::drain(client.0.stdout.take().expect("piped stdout"));
    let stderr = Log::drain(client.0.stderr.take().expect("piped stderr"));
    let round = |stdin: &mut ChildStdin, done: usize| -> String {
        stdin.write_all(b"\n").expect("write to the client");
        stdin.flush().expect("flush the client's stdin");
        // Wait for this round's outcome: one more result or lost-call line.
        stdout.wait_until(|log| {
            log.ended
                || log
                    .text
                    .lines()
                    .filter(|l| l.starts_with("Calling Bar: ") || l.starts_with("call lost: "))
                    .count()
                    > done
        })
    };

    let text = round(&mut stdin, 0);
    assert_eq!(bar_counts(&text).len(), 1, "{text}\n{}", stderr.text());
    assert!(text.contains("(reconnected 0 times)"), "{text}");
    drop(server);
    let server = Server::start("counter_server", &args);

    // At most one round is lost (its call was in flight on the dead connection, had
    // the client not yet seen the connection end); the next one reconnects.
    let mut text = String::new();
    for done in 1..=3 {
        text = round(&mut stdin, done);
        if bar_counts(&text).len() == 2 {
            break;
        }
    }
    assert_eq!(bar_counts(&text).len(), 2, "{text}\n{}", stderr.text());
    assert!(text.contains("(reconnected 1 times)"), "{text}");
    assert!(
        text.lines().filter(|l| l.starts_with("call lost")).count() <= 1,
        "{text}"
    );

    drop(stdin); // end of input: the client exits
    let end = stdout.wait_for_end();
    let status = client.0.wait().expect("wait for the client");
    assert!(
        status.success(),
        "client: {status}\n{end}\n{}",
        stderr.text()
    );
    drop(server);
}
