//! Persistent sturdy refs across restarts: a vat with a [`Store`] and a [`Restorer`]
//! mints refs, stops, and a new vat on the same identity directory, port and store
//! serves them again through the restorer; revoked and expired refs answer exactly what
//! an unknown swiss number answers. Over real mutual TLS on 127.0.0.1, first within one
//! process, then with real server processes, and finally against `kill -9` in the
//! middle of writes.
//!
//! The process tests run this same test binary as the child (`child_server`,
//! `child_writer`, ignored unless the parent starts them with `CAPTP_PERSIST_CHILD`
//! set): the child prints one line per acknowledged ref on stdout, and the parent
//! reads them with bounded waits and kills the child when it is done with it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, SystemTime};

use captp::{
    Args, Broken, BrokenKind, Host, Ref, Reply, Restorer, Store, SturdyRef, SwissNumber, Vat,
};
use common::within;

/// The longest the parent waits for one line from a child.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "captp-persist-{name}-{}-{}",
            std::process::id(),
            SwissNumber::generate().hash().as_bytes()[0]
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn store(&self) -> PathBuf {
        self.0.join("refs.redb")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A room: answers `name` with the name it was made (or restored) with.
fn room(name: &str) -> impl Fn(&str, Args) -> Reply + Send + Sync + 'static {
    let name = name.to_owned();
    move |method: &str, _args: Args| match method {
        "name" => Reply::ok(name.clone()),
        _ => Reply::unknown_method(method),
    }
}

/// Restores rooms from records `room:<name>`, counting its calls.
#[derive(Clone, Default)]
struct Rooms(Arc<AtomicUsize>);

impl Restorer for Rooms {
    fn restore(&self, record: &[u8]) -> Result<Ref, Broken> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let name = std::str::from_utf8(record)
            .ok()
            .and_then(|r| r.strip_prefix("room:"))
            .ok_or_else(|| Broken::failed("not a room record"))?;
        Ok(Ref::from_object(room(name)))
    }
}

/// A listening vat on `listen` with the identity and store in `dir`.
async fn server(dir: &TempDir, listen: &str, rooms: &Rooms) -> Vat {
    Vat::builder()
        .identity_dir(dir.0.join("identity"))
        .listen(listen)
        .store(Store::open(dir.store()).expect("open the store"))
        .restorer(rooms.clone())
        .start()
        .await
        .expect("start the server vat")
}

/// What a fetch of `uri` and a call of `name` give, from a fresh client vat.
async fn name_of(uri: &SturdyRef) -> Result<String, Broken> {
    let client = Vat::builder().start().await.expect("client vat");
    let answer = client.enliven(uri).send::<String>("name", ()).await;
    client.shutdown().await;
    answer
}

/// A sturdy ref to `vat` under a swiss number it never issued.
fn unknown_ref(like: &SturdyRef) -> SturdyRef {
    SturdyRef::new(
        like.vat_id(),
        Host::Ipv4(Ipv4Addr::LOCALHOST),
        like.port(),
        SwissNumber::generate(),
    )
}

/// Asserts that `refused` is exactly what an unknown swiss number gets.
fn assert_like_unknown(what: &str, refused: Result<String, Broken>, unknown: &Broken) {
    let refused = refused.expect_err(what);
    assert_eq!(
        refused.kind(),
        BrokenKind::UnknownObject,
        "{what}: {refused}"
    );
    assert_eq!(&refused, unknown, "{what}");
    assert_eq!(refused.message(), unknown.message(), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_refs_are_restored_after_the_vat_restarts() {
    within(async {
        let dir = TempDir::new("in-process");
        let rooms = Rooms::default();
        let first = server(&dir, "127.0.0.1:0", &rooms).await;
        let port = first.local_addr().expect("listening").port();
        let a_day = SystemTime::now() + Duration::from_secs(86_400);
        let kept = first
            .export_persistent(room("lobby"), b"room:lobby", None)
            .expect("export kept");
        let dated = first
            .export_persistent(room("garden"), b"room:garden", Some(a_day))
            .expect("export dated");
        let revoked = first
            .export_persistent(room("attic"), b"room:attic", None)
            .expect("export revoked");
        let expired = first
            .export_persistent(
                room("cellar"),
                b"room:cellar",
                Some(SystemTime::now() - Duration::from_secs(5)),
            )
            .expect("export expired");
        let unknown = name_of(&unknown_ref(&kept)).await.expect_err("unknown");
        assert_eq!(unknown, Broken::unknown_object());

        // This run serves the objects themselves; expiry holds before a restart too.
        assert_eq!(name_of(&kept).await.expect("kept"), "lobby");
        assert_like_unknown("expired, same run", name_of(&expired).await, &unknown);
        assert!(first.try_revoke(&revoked).expect("revoke"));
        assert!(!first.try_revoke(&revoked).expect("revoke twice"));
        assert_like_unknown("revoked, same run", name_of(&revoked).await, &unknown);
        assert_eq!(rooms.0.load(Ordering::SeqCst), 0, "nothing restored yet");
        first.shutdown().await;
        drop(first);

        let second = server(&dir, &format!("127.0.0.1:{port}"), &rooms).await;
        assert_eq!(second.vat_id(), kept.vat_id());
        assert_eq!(name_of(&kept).await.expect("kept, restored"), "lobby");
        assert_eq!(name_of(&dated).await.expect("dated, restored"), "garden");
        assert_eq!(rooms.0.load(Ordering::SeqCst), 2, "one restore per ref");
        // Restored once: later fetches use the object kept in the registry.
        assert_eq!(name_of(&kept).await.expect("kept, again"), "lobby");
        assert_eq!(rooms.0.load(Ordering::SeqCst), 2);

        assert_like_unknown("revoked", name_of(&revoked).await, &unknown);
        assert_like_unknown("expired", name_of(&expired).await, &unknown);
        assert_like_unknown("unknown", name_of(&unknown_ref(&kept)).await, &unknown);
        assert_eq!(
            rooms.0.load(Ordering::SeqCst),
            2,
            "the restorer never sees a revoked or expired record"
        );

        // Revoking a restored ref is durable too.
        assert!(second.try_revoke(&kept).expect("revoke restored"));
        assert_like_unknown("revoked after restore", name_of(&kept).await, &unknown);
        second.shutdown().await;
        drop(second);
        let store = Store::open(dir.store()).expect("reopen");
        assert_eq!(store.get(kept.swiss()).expect("read"), None);
        assert!(store.get(dated.swiss()).expect("read").is_some());
        assert_eq!(store.len().expect("len"), 2, "dated and expired remain");
        assert_eq!(store.purge_expired(SystemTime::now()).expect("purge"), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vat_without_a_store_cannot_export_persistently() {
    within(async {
        let vat = Vat::builder()
            .listen("127.0.0.1:0")
            .start()
            .await
            .expect("vat");
        let err = vat
            .export_persistent(room("x"), b"room:x", None)
            .expect_err("no store");
        assert!(matches!(err, captp::Error::NoStore), "{err}");
        assert!(err.to_string().contains("VatBuilder::store"), "{err}");
        vat.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_restorer_breaks_the_fetch_and_is_asked_again() {
    within(async {
        let dir = TempDir::new("failing");
        let rooms = Rooms::default();
        let first = server(&dir, "127.0.0.1:0", &rooms).await;
        let port = first.local_addr().expect("listening").port();
        let bad = first
            .export_persistent(room("x"), b"not a room", None)
            .expect("export");
        first.shutdown().await;
        drop(first);
        let second = server(&dir, &format!("127.0.0.1:{port}"), &rooms).await;
        for attempt in 1..=2 {
            let broken = name_of(&bad).await.expect_err("cannot restore");
            assert_eq!(broken.kind(), BrokenKind::Failed, "{broken}");
            assert_eq!(broken.message(), "not a room record");
            assert_eq!(rooms.0.load(Ordering::SeqCst), attempt);
        }
        second.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_after_a_restart_restore_once() {
    within(async {
        let dir = TempDir::new("concurrent");
        let rooms = Rooms::default();
        let first = server(&dir, "127.0.0.1:0", &rooms).await;
        let port = first.local_addr().expect("listening").port();
        let uri = first
            .export_persistent(room("hall"), b"room:hall", None)
            .expect("export");
        first.shutdown().await;
        drop(first);
        let second = server(&dir, &format!("127.0.0.1:{port}"), &rooms).await;
        let (a, b, c, d) = tokio::join!(name_of(&uri), name_of(&uri), name_of(&uri), name_of(&uri));
        for name in [a, b, c, d] {
            assert_eq!(name.expect("restored"), "hall");
        }
        assert_eq!(
            rooms.0.load(Ordering::SeqCst),
            1,
            "four fetches, one restore"
        );
        assert_eq!(second.stats().await.sturdy_refs, 1);
        second.shutdown().await;
    })
    .await;
}

// ---- real processes: the child side ----

/// Which child this process is, when a parent test started it.
fn child_mode() -> Option<String> {
    std::env::var("CAPTP_PERSIST_CHILD").ok()
}

fn child_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("the parent sets {name}"))
}

/// What starts every line a child says, since the test harness may print its own
/// text on the same line before it.
const SAYS: &str = "child says: ";

/// Prints one line to stdout at once (the parent reads lines as they come).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{SAYS}{line}").expect("stdout");
    out.flush().expect("stdout");
}

/// The child server: starts on `CAPTP_PERSIST_LISTEN` with the identity and store in
/// `CAPTP_PERSIST_DIR`; with `CAPTP_PERSIST_CHILD=mint` it first mints a kept, a
/// revoked and an expired room and prints them (`kept <uri>` ...). It prints
/// `port <n>` and `ready`, then serves until killed.
#[test]
#[ignore = "run by the process tests as a child"]
fn child_server() {
    let Some(mode) = child_mode() else { return };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let dir = TempDir(PathBuf::from(child_var("CAPTP_PERSIST_DIR")));
        let vat = server(&dir, &child_var("CAPTP_PERSIST_LISTEN"), &Rooms::default()).await;
        std::mem::forget(dir); // the parent owns the directory
        if mode == "mint" {
            let kept = vat
                .export_persistent(room("lobby"), b"room:lobby", None)
                .expect("kept");
            let revoked = vat
                .export_persistent(room("attic"), b"room:attic", None)
                .expect("revoked");
            assert!(vat.try_revoke(&revoked).expect("revoke"));
            let past = SystemTime::now() - Duration::from_secs(5);
            let expired = vat
                .export_persistent(room("cellar"), b"room:cellar", Some(past))
                .expect("expired");
            say(&format!("kept {kept}"));
            say(&format!("revoked {revoked}"));
            say(&format!("expired {expired}"));
        }
        let port = vat.local_addr().expect("listening").port();
        say(&format!("port {port}"));
        say("ready");
        // Serve until the parent kills this process (bounded, in case it never does).
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

/// The child writer: mints persistent refs in a loop (at most 5,000) and prints
/// `uri <n> <uri>` after each one's commit has returned.
#[test]
#[ignore = "run by the process tests as a child"]
fn child_writer() {
    let Some(_) = child_mode() else { return };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let dir = TempDir(PathBuf::from(child_var("CAPTP_PERSIST_DIR")));
        let vat = server(&dir, "127.0.0.1:0", &Rooms::default()).await;
        std::mem::forget(dir);
        for n in 0..5_000 {
            let record = format!("room:{n}");
            let uri = vat
                .export_persistent(room(&record), record.as_bytes(), None)
                .expect("export");
            say(&format!("uri {n} {uri}"));
        }
    });
}

// ---- real processes: the parent side ----

/// A child process of this test binary, killed (SIGKILL) and reaped on drop.
struct ChildProcess {
    child: Child,
    lines: Receiver<String>,
}

impl ChildProcess {
    fn start(test: &str, mode: &str, dir: &Path, listen: &str) -> ChildProcess {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                test,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CAPTP_PERSIST_CHILD", mode)
            .env("CAPTP_PERSIST_DIR", dir)
            .env("CAPTP_PERSIST_LISTEN", listen)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the child");
        let stdout = child.stdout.take().expect("piped stdout");
        ChildProcess {
            child,
            lines: lines_of(stdout),
        }
    }

    /// The next line the child said, within [`LINE_TIMEOUT`] (skipping the test
    /// harness's own lines); `None` at end of output.
    fn next_line(&self) -> Option<String> {
        loop {
            match self.lines.recv_timeout(LINE_TIMEOUT) {
                Ok(line) => match said(&line) {
                    Some(said) => return Some(said.to_owned()),
                    None => continue,
                },
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the child said nothing for 30 s")
                }
            }
        }
    }

    /// The rest of the next line that starts with `key `.
    fn value(&self, key: &str) -> String {
        let prefix = format!("{key} ");
        for _ in 0..100 {
            let line = self
                .next_line()
                .unwrap_or_else(|| panic!("no {key:?} line"));
            if let Some(value) = line.strip_prefix(&prefix) {
                return value.to_owned();
            }
        }
        panic!("no {key:?} line within 100 lines");
    }

    fn wait_ready(&self) {
        for _ in 0..100 {
            if self.next_line().as_deref() == Some("ready") {
                return;
            }
        }
        panic!("the child never said ready");
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the child said on `line`, if anything.
fn said(line: &str) -> Option<&str> {
    line.find(SAYS).map(|at| &line[at + SAYS.len()..])
}

/// Reads `stdout` line by line on a thread.
fn lines_of(stdout: ChildStdout) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_process_restores_refs_and_keeps_refusals() {
    let dir = TempDir::new("process");
    let first = ChildProcess::start("child_server", "mint", &dir.0, "127.0.0.1:0");
    let kept: SturdyRef = first.value("kept").parse().expect("kept uri");
    let revoked: SturdyRef = first.value("revoked").parse().expect("revoked uri");
    let expired: SturdyRef = first.value("expired").parse().expect("expired uri");
    let port = first.value("port");
    first.wait_ready();
    within(async {
        assert_eq!(name_of(&kept).await.expect("kept, first run"), "lobby");
    })
    .await;
    drop(first); // SIGKILL: no clean shutdown either

    let second = ChildProcess::start(
        "child_server",
        "serve",
        &dir.0,
        &format!("127.0.0.1:{port}"),
    );
    assert_eq!(second.value("port"), port);
    second.wait_ready();
    within(async {
        let unknown = name_of(&unknown_ref(&kept)).await.expect_err("unknown");
        assert_eq!(unknown, Broken::unknown_object());
        assert_eq!(name_of(&kept).await.expect("kept, restored"), "lobby");
        assert_like_unknown("revoked", name_of(&revoked).await, &unknown);
        assert_like_unknown("expired", name_of(&expired).await, &unknown);
    })
    .await;
}

#[test]
fn kill_9_during_writes_loses_nothing_acknowledged() {
    let dir = TempDir::new("kill");
    let mut writer = ChildProcess::start("child_writer", "write", &dir.0, "127.0.0.1:0");
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 40 {
        let uri = writer.value("uri");
        acknowledged.push(uri);
    }
    writer.child.kill().expect("SIGKILL the writer");
    writer.child.wait().expect("reap the writer");
    // Lines printed before the kill are acknowledged too: read them all.
    while let Ok(line) = writer.lines.recv_timeout(LINE_TIMEOUT) {
        if let Some(uri) = said(&line).and_then(|l| l.strip_prefix("uri ")) {
            acknowledged.push(uri.to_owned());
        }
    }
    assert!(acknowledged.len() >= 40);
    assert!(
        acknowledged.len() < 5_000,
        "the writer finished before the kill: nothing was tested"
    );

    let store = Store::open(dir.store()).expect("reopen after kill -9");
    for line in &acknowledged {
        let (n, uri) = line.split_once(' ').expect("`<n> <uri>`");
        let uri: SturdyRef = uri.parse().expect("a printed URI");
        let stored = store
            .get(uri.swiss())
            .expect("read")
            .unwrap_or_else(|| panic!("acknowledged ref {n} lost"));
        assert_eq!(stored.record(), format!("room:{n}").as_bytes());
    }
    let stored = store.len().expect("len");
    let printed = u64::try_from(acknowledged.len()).expect("small");
    eprintln!("kill -9: {printed} refs acknowledged, {stored} found in the store");
    // At most the one in flight at the kill was stored without being printed.
    assert!(
        stored == printed || stored == printed + 1,
        "{stored} stored, {printed} acknowledged"
    );
}
