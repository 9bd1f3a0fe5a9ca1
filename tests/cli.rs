//! Runs the `captp` command as a child process, the way an operator would: every
//! subcommand against `captp serve-echo` (and `methods` against the typed `car_factory`
//! example), checking what it prints, how it exits, and that no swiss number is printed.
//!
//! Every wait on a child is bounded, and every child is killed when its test ends, pass
//! or fail. Everything listens on 127.0.0.1 only.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use captp::{SturdyRef, SwissNumber};

#[path = "common/process.rs"]
mod process;

use process::{Killed, example};

/// The longest any test waits for one child to print its URI or to finish.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The built `captp` binary.
fn captp() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_captp"))
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

/// A running server: its URI, and its stderr drained on a thread.
struct Server {
    uri: String,
    stderr: Arc<Mutex<String>>,
    child: Killed,
}

impl Server {
    /// Starts `program args` (with `RUST_LOG=captp=info`) and waits for its URI line.
    fn start(program: PathBuf, args: &[&str]) -> Server {
        Server::start_logging(program, args, "captp=info")
    }

    /// Starts `program args` with `RUST_LOG=filter` and waits for its URI line.
    fn start_logging(program: PathBuf, args: &[&str], filter: &str) -> Server {
        let mut child = Killed(
            Command::new(&program)
                .args(args)
                .env("RUST_LOG", filter)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("could not start {program:?}: {e}")),
        );
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.0.stderr.take().expect("piped stderr");
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
        let stdout = child.0.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let _ = tx.send(first);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = rx.recv_timeout(TIMEOUT).unwrap_or_default();
        assert!(
            line.starts_with("captp://"),
            "no URI from {program:?}: {line:?}"
        );
        Server {
            uri: line.trim_end().to_owned(),
            stderr,
            child,
        }
    }

    fn echo() -> Server {
        Server::start(captp(), &["serve-echo"])
    }

    fn sturdy(&self) -> SturdyRef {
        self.uri.parse().expect("a valid URI")
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits, within [`TIMEOUT`], until the stderr contains `needle`; returns it then.
    fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let text = self.stderr();
            if text.contains(needle) || Instant::now() > deadline {
                return text;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What a finished `captp` printed, and how it exited.
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

/// Runs `captp args` to completion, within [`TIMEOUT`].
fn run(args: &[&str]) -> Run {
    let mut child = Killed(
        Command::new(captp())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("could not start captp"),
    );
    let stdout = collect(child.0.stdout.take().expect("piped stdout"));
    let stderr = collect(child.0.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + TIMEOUT;
    let wait = |rx: Receiver<String>| {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left)
            .unwrap_or_else(|_| panic!("captp {args:?} did not finish within {TIMEOUT:?}"))
    };
    let stdout = wait(stdout);
    let stderr = wait(stderr);
    let status = child.0.wait().expect("could not wait for captp");
    Run {
        status,
        stdout,
        stderr,
    }
}

/// Fails the test if `text` holds `swiss` in base64url or hex.
fn assert_no_swiss(text: &str, swiss: &SwissNumber) {
    let hex: String = swiss
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        !text.contains(&swiss.expose_base64()),
        "swiss number printed:\n{text}"
    );
    assert!(!text.contains(&hex), "swiss number printed as hex:\n{text}");
}

/// A fresh directory under the system's temp dir, for identities.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("captp-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn help_and_version_and_usage_errors() {
    let help = run(&["--help"]);
    assert_eq!(help.code(), Some(0), "{help}");
    for sub in [
        "id",
        "keygen",
        "inspect",
        "ping",
        "call",
        "methods",
        "serve-echo",
    ] {
        assert!(help.stdout.contains(sub), "--help lacks {sub}: {help}");
    }
    let version = run(&["--version"]);
    assert_eq!(version.code(), Some(0), "{version}");
    assert_eq!(
        version.stdout,
        format!("captp {}\n", env!("CARGO_PKG_VERSION"))
    );
    let bad = run(&["frobnicate"]);
    assert_eq!(bad.code(), Some(2), "{bad}");
    assert!(bad.stdout.is_empty(), "{bad}");
    let missing = run(&["call"]);
    assert_eq!(missing.code(), Some(2), "{missing}");
}

#[test]
fn keygen_creates_once_and_id_reads_it_back() {
    let dir = temp_dir("keygen");
    let dir_arg = dir.to_str().expect("utf-8 temp dir");
    let made = run(&["keygen", dir_arg]);
    assert_eq!(made.code(), Some(0), "{made}");
    let vat_id = made.stdout.trim().to_owned();
    assert_eq!(
        vat_id.len(),
        43,
        "a vat ID is 43 base64url characters: {made}"
    );
    let again = run(&["id", dir_arg]);
    assert_eq!(again.code(), Some(0), "{again}");
    assert_eq!(again.stdout.trim(), vat_id);
    let json = run(&["id", dir_arg, "--json"]);
    let parsed: serde_json::Value = serde_json::from_str(json.stdout.trim()).expect("JSON");
    assert_eq!(parsed["vat_id"], vat_id.as_str());
    // keygen never overwrites a key.
    let refused = run(&["keygen", dir_arg]);
    assert_eq!(refused.code(), Some(1), "{refused}");
    assert!(
        refused.stderr.contains("already holds an identity"),
        "{refused}"
    );
    assert_eq!(run(&["id", dir_arg]).stdout.trim(), vat_id);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inspect_parses_files_and_connects_without_printing_the_swiss() {
    let server = Server::echo();
    let sturdy = server.sturdy();
    let parsed = run(&["inspect", &server.uri]);
    assert_eq!(parsed.code(), Some(0), "{parsed}");
    assert!(
        parsed.stdout.contains(&sturdy.vat_id().to_string()),
        "{parsed}"
    );
    assert!(parsed.stdout.contains(&sturdy.address()), "{parsed}");
    assert!(
        !parsed.stdout.contains("TLS"),
        "no connection without --connect: {parsed}"
    );
    assert_no_swiss(&format!("{parsed}"), sturdy.swiss());

    // The @file form: the content is read and trimmed, never echoed.
    let dir = temp_dir("inspect");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("echo.cap");
    std::fs::write(&file, format!("  {}\n", server.uri)).expect("write .cap");
    let at = format!("@{}", file.display());
    let connected = run(&["inspect", &at, "--connect", "--json"]);
    assert_eq!(connected.code(), Some(0), "{connected}");
    let json: serde_json::Value = serde_json::from_str(connected.stdout.trim()).expect("JSON");
    assert_eq!(json["vat_id"], sturdy.vat_id().to_string().as_str());
    assert_eq!(
        json["connect"]["vat_id_verified"],
        sturdy.vat_id().to_string().as_str()
    );
    assert_eq!(json["connect"]["tls_version"], "TLSv1_3");
    assert!(
        json["connect"]["handshake_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0),
        "{connected}"
    );
    assert_no_swiss(&format!("{connected}"), sturdy.swiss());

    // A URI naming another vat at that address: the server cannot prove that key.
    let impostor = SturdyRef::new(
        captp::Identity::generate().expect("key").vat_id(),
        sturdy.host().clone(),
        sturdy.port(),
        SwissNumber::generate(),
    );
    let mismatch = run(&["inspect", &impostor.to_string(), "--connect"]);
    assert_eq!(mismatch.code(), Some(4), "{mismatch}");

    // A file that does not hold a URI: the error does not quote it.
    std::fs::write(&file, "captp://not-a-uri-but-secret-looking").expect("write");
    let bad = run(&["inspect", &at]);
    assert_eq!(bad.code(), Some(1), "{bad}");
    assert!(!bad.stderr.contains("secret-looking"), "{bad}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ping_times_each_round_trip() {
    let server = Server::echo();
    let ping = run(&["ping", &server.uri, "--count", "4", "--json"]);
    assert_eq!(ping.code(), Some(0), "{ping}");
    let lines: Vec<serde_json::Value> = ping
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
        .collect();
    assert_eq!(lines.len(), 5, "four round trips and a summary: {ping}");
    for (seq, line) in lines[..4].iter().enumerate() {
        assert_eq!(line["seq"], seq);
        assert!(line["ms"].as_f64().is_some_and(|ms| ms > 0.0), "{ping}");
    }
    assert_eq!(lines[4]["count"], 4);
    assert_no_swiss(&format!("{ping}"), server.sturdy().swiss());

    // An unknown swiss number at a live vat, and a port nobody listens on.
    let sturdy = server.sturdy();
    let unknown = SturdyRef::new(
        sturdy.vat_id(),
        sturdy.host().clone(),
        sturdy.port(),
        SwissNumber::generate(),
    );
    let refused = run(&["ping", &unknown.to_string(), "--count", "1"]);
    assert_eq!(refused.code(), Some(5), "{refused}");
    assert!(refused.stderr.contains("unknown_object"), "{refused}");
    assert_no_swiss(&format!("{refused}"), unknown.swiss());
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let nowhere = SturdyRef::new(
        sturdy.vat_id(),
        sturdy.host().clone(),
        port,
        SwissNumber::generate(),
    );
    let unreachable = run(&["ping", &nowhere.to_string(), "--count", "1"]);
    assert_eq!(unreachable.code(), Some(3), "{unreachable}");
}

#[test]
fn call_prints_results_as_json_and_exits_by_kind() {
    let server = Server::echo();
    let uri = server.uri.as_str();
    let echoed = run(&["call", uri, "echo", "1", "\"two\"", "[3]", "word"]);
    assert_eq!(echoed.code(), Some(0), "{echoed}");
    assert_eq!(echoed.stdout, "[1,\"two\",[3],\"word\"]\n");

    let json = run(&["call", uri, "echo", "{\"a\":1}", "--json"]);
    assert_eq!(json.stdout, "{\"result\":[{\"a\":1}]}\n", "{json}");

    // A reference in a result is a handle; --then calls it, pipelined.
    let child = run(&["call", uri, "child"]);
    assert_eq!(child.stdout, "{\"$ref\":0}\n", "{child}");
    let then = run(&["call", uri, "child", "--then", "echo", "hi"]);
    assert_eq!(then.code(), Some(0), "{then}");
    assert_eq!(then.stdout, "[\"hi\"]\n", "{then}");

    let unknown = run(&["call", uri, "nope"]);
    assert_eq!(unknown.code(), Some(6), "{unknown}");
    assert!(
        unknown.stderr.starts_with("captp: unknown_method: "),
        "{unknown}"
    );
    let failed = run(&["call", uri, "fail", "oops", "--json"]);
    assert_eq!(failed.code(), Some(8), "{failed}");
    let err: serde_json::Value = serde_json::from_str(failed.stderr.trim()).expect("JSON error");
    assert_eq!(err["error"]["kind"], "failed");
    assert_eq!(err["error"]["message"], "oops");
    let bad = run(&["call", uri, "wait", "\"soon\""]);
    assert_eq!(bad.code(), Some(7), "{bad}");

    let started = Instant::now();
    let late = run(&["call", uri, "wait", "20000", "--deadline", "0.2"]);
    assert_eq!(late.code(), Some(9), "{late}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "--deadline did not cut the wait"
    );
    let on_time = run(&["call", uri, "wait", "10", "--deadline", "10"]);
    assert_eq!(on_time.stdout, "10\n", "{on_time}");

    for r in [
        &echoed, &json, &child, &then, &unknown, &failed, &bad, &late, &on_time,
    ] {
        assert_no_swiss(&format!("{r}"), server.sturdy().swiss());
    }
}

#[test]
fn methods_lists_a_typed_interface() {
    let server = Server::start(example("car_factory"), &["serve"]);
    let methods = run(&["methods", &server.uri]);
    assert_eq!(methods.code(), Some(0), "{methods}");
    assert_eq!(
        methods.stdout,
        "interface CarFactory\n\
         \x20 make(color: String, model: String) -> Car\n\
         \x20 check(model: &str) -> Result<(), MakeError>\n",
        "{methods}"
    );
    let json = run(&["methods", &server.uri, "--json"]);
    let parsed: serde_json::Value = serde_json::from_str(json.stdout.trim()).expect("JSON");
    assert_eq!(parsed["interface"], "CarFactory");
    assert_eq!(parsed["methods"][0]["name"], "make");
    // A call on a typed server, pipelined through the car it returns.
    let drive = run(&[
        "call",
        &server.uri,
        "make",
        "blue",
        "van",
        "--then",
        "drive",
    ]);
    assert_eq!(drive.code(), Some(0), "{drive}");
    assert_eq!(drive.stdout, "\"Vroom! I'm a blue van car!\"\n", "{drive}");
    // An object without a typed interface cannot list its methods.
    let echo = Server::echo();
    let untyped = run(&["methods", &echo.uri]);
    assert_eq!(untyped.code(), Some(6), "{untyped}");
    assert!(untyped.stderr.contains("typed interface"), "{untyped}");
}

/// A client that shuts down shows on the server as an orderly close, and SIGTERM stops
/// the server cleanly.
#[cfg(unix)]
#[test]
fn a_client_exit_is_an_orderly_close_and_sigterm_stops_the_server() {
    let mut server = Server::echo();
    let call = run(&["call", &server.uri, "echo", "1"]);
    assert_eq!(call.code(), Some(0), "{call}");
    let log = server.wait_for_log("the peer closed the session");
    assert!(log.contains("the peer closed the session"), "{log}");
    assert!(!log.contains("aborted"), "{log}");
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
    assert!(!log.contains("https://"), "{log}");

    let pid = server.child.0.id().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(kill.success());
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = server.child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "serve-echo ignored SIGTERM");
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
}

/// A client killed mid-call (no TLS `close_notify`) is a lost connection on the server,
/// logged in plain words at `INFO`: no warning, no error, no link to a manual.
#[cfg(unix)]
#[test]
fn a_vanished_client_is_a_lost_connection_not_an_alarm() {
    let server = Server::start_logging(captp(), &["serve-echo"], "captp=debug");
    let mut client = Killed(
        Command::new(captp())
            .args(["call", &server.uri, "wait", "30000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("could not start captp"),
    );
    // The session is up once the server has answered the client's bootstrap (the
    // `wait` call follows it; whether it has arrived does not matter here).
    let started = server.wait_for_log("bootstrap: found the object");
    assert!(started.contains("bootstrap: found the object"), "{started}");
    client.0.kill().expect("SIGKILL the client");
    let _ = client.0.wait();
    let log = server.wait_for_log("connection lost");
    assert!(log.contains("connection lost"), "{log}");
    assert!(log.contains("went away without closing"), "{log}");
    assert!(!log.contains("https://"), "{log}");
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
    assert!(!log.contains("aborted"), "{log}");
}
