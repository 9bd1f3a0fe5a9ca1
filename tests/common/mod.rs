//! Shared harness for the integration tests: a test object; the fixture that starts a
//! listening server vat on 127.0.0.1 exporting it (or an object of the test's own) and a
//! client vat holding a reference to it ([`Fixture`], [`connected`]); and a raw TLS
//! peer that writes and reads captp frames by hand.
//!
//! It uses only the crate's public API and never sleeps: every helper that waits does
//! so on a bounded timeout, so a hang fails the test instead of wedging the run.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use captp::Host;
use captp::internal::proto::announce;
use captp::internal::transport::{self, TlsStream};
use captp::internal::wire::message::PROTOCOL_VERSION;
use captp::internal::wire::{
    CapDescriptor, CborLimits, Hello, Message, Payload, ReturnResult, Target, WireBroken,
};
use captp::{
    Args, Broken, Identity, Limits, Object, Ref, Reply, SturdyRef, SwissNumber, Vat, VatId,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// The bound on every test body.
pub(crate) const TEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The bound on one raw read, write or connect.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest frame the raw peer accepts (and announces in its hello).
pub(crate) const RAW_MAX_FRAME: usize = 1 << 20;
/// The most reads one raw `read_frame` makes before giving up.
const MAX_READS_PER_FRAME: usize = 100_000;
/// The most frames the raw peer skips while looking for an `abort`.
const MAX_FRAMES_BEFORE_ABORT: usize = 10_000;

/// Runs a test body, failing it if it takes longer than [`TEST_TIMEOUT`].
pub(crate) async fn within<F: Future>(body: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("the test did not finish within its 30 s timeout")
}

/// Default limits changed by `f` (`Limits` is non-exhaustive, so no struct literal).
pub(crate) fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut limits = Limits::default();
    f(&mut limits);
    limits
}

/// Locks a mutex, ignoring poisoning (no test object panics while holding one).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- the test object ----

/// An enum with every variant shape, for the serde round trips.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Shape {
    Point,
    Circle(f64),
    Pair(i32, i32),
    Rect { w: u32, h: u32 },
}

/// A user struct holding most serde data kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sample {
    pub(crate) small: u8,
    pub(crate) int: i64,
    pub(crate) big: u64,
    pub(crate) float: f64,
    pub(crate) flag: bool,
    pub(crate) text: String,
    #[serde(with = "serde_bytes")]
    pub(crate) bytes: Vec<u8>,
    pub(crate) maybe: Option<String>,
    pub(crate) nothing: Option<i32>,
    pub(crate) pair: (u16, String),
    pub(crate) list: Vec<i32>,
    pub(crate) table: HashMap<String, Vec<u8>>,
    pub(crate) shape: Shape,
    pub(crate) shapes: Vec<Shape>,
}

/// A `Sample` with edge values in every field.
pub(crate) fn sample() -> Sample {
    Sample {
        small: u8::MAX,
        int: i64::MIN,
        big: u64::MAX,
        float: -1.25e-300,
        flag: true,
        text: "héllo, 世界 🦀 \u{0} \"quoted\"".to_owned(),
        bytes: (0..=255).collect(),
        maybe: Some(String::new()),
        nothing: None,
        pair: (65_535, "pair".to_owned()),
        list: vec![-1, 0, 1, i32::MIN, i32::MAX],
        table: HashMap::from([
            (String::new(), vec![]),
            ("k".to_owned(), vec![1, 2, 3]),
            ("ключ".to_owned(), vec![0xff; 40]),
        ]),
        shape: Shape::Rect { w: 3, h: 4 },
        shapes: vec![
            Shape::Point,
            Shape::Circle(0.5),
            Shape::Pair(-7, 7),
            Shape::Rect { w: 0, h: u32::MAX },
        ],
    }
}

/// What the test object reports to the test, out of band.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Note {
    /// `slow()` was called (and will never answer).
    Slow,
    /// `notify(k)` was called.
    Notify(u64),
}

/// The object the server exports. Methods:
///
/// - `echo(Sample)`, `echo_str(String)`, `echo_bytes(bytes)`, `echo_opt(Option<i64>)`,
///   `echo_tuple((i8, String, bool, f32))`, `echo_list(Vec<Option<u64>>)`,
///   `echo_map(HashMap<String, i64>)`, `echo_shape(Shape)`: return the argument;
/// - `add(i64, i64)`: the sum (`failed` on overflow);
/// - `fail(String)`: breaks with `Broken::failed(msg)`;
/// - `slow()`: never answers (and sends [`Note::Slow`]);
/// - `counter_next()`: 1, 2, 3...;
/// - `counter_push(u32)` (or `p(u32)`, to pack many into a few bytes), `counter_get()`:
///   push onto a list / read the list;
/// - `sub(String)`: a new [`Sub`] object with that name;
/// - `whoami()`: this object's name;
/// - `notify(u64)`: sends [`Note::Notify`];
/// - `gated()`: answers `"opened"` once the test opens the gate (one call per permit
///   added to [`TestObject::gate`]);
/// - `expand(u32)`: answers that many bytes (a small call with a large answer).
pub(crate) struct TestObject {
    name: String,
    counter: AtomicU64,
    pushed: Mutex<Vec<u32>>,
    notes: mpsc::UnboundedSender<Note>,
    gate: Arc<Semaphore>,
}

impl TestObject {
    pub(crate) fn new(name: &str) -> (TestObject, mpsc::UnboundedReceiver<Note>) {
        let (notes, rx) = mpsc::unbounded_channel();
        let object = TestObject {
            name: name.to_owned(),
            counter: AtomicU64::new(0),
            pushed: Mutex::new(Vec::new()),
            notes,
            gate: Arc::new(Semaphore::new(0)),
        };
        (object, rx)
    }

    /// The gate `gated()` waits on: add one permit to let one call answer.
    pub(crate) fn gate(&self) -> Arc<Semaphore> {
        self.gate.clone()
    }
}

/// Decodes the arguments as `T` and answers with what `f` makes of them.
fn with<T: DeserializeOwned, R: Serialize>(
    args: &Args,
    f: impl FnOnce(T) -> Result<R, Broken>,
) -> Reply {
    match args.decode::<T>() {
        Ok(value) => f(value).into(),
        Err(e) => Reply::err(e),
    }
}

impl Object for TestObject {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "echo" => with(&args, |(s,): (Sample,)| Ok(s)),
            "echo_str" => with(&args, |(s,): (String,)| Ok(s)),
            "echo_bytes" => with(&args, |(b,): (ByteBuf,)| Ok(b)),
            // Bulk data read without a copy (`Args::bytes`), echoed back.
            "echo_raw" => match args.bytes() {
                Ok(b) => Reply::ok(serde_bytes::Bytes::new(&b)),
                Err(e) => Reply::err(e),
            },
            "echo_opt" => with(&args, |(o,): (Option<i64>,)| Ok(o)),
            "echo_tuple" => with(&args, |(t,): ((i8, String, bool, f32),)| Ok(t)),
            "echo_list" => with(&args, |(v,): (Vec<Option<u64>>,)| Ok(v)),
            "echo_map" => with(&args, |(m,): (HashMap<String, i64>,)| Ok(m)),
            "echo_shape" => with(&args, |(s,): (Shape,)| Ok(s)),
            "add" => with(&args, |(a, b): (i64, i64)| {
                a.checked_add(b).ok_or_else(|| Broken::failed("overflow"))
            }),
            "fail" => with(&args, |(msg,): (String,)| Err::<(), _>(Broken::failed(msg))),
            "slow" => {
                let _ = self.notes.send(Note::Slow);
                Reply::later(std::future::pending::<Result<(), Broken>>())
            }
            "counter_next" => Reply::ok(self.counter.fetch_add(1, Ordering::SeqCst) + 1),
            "counter_push" | "p" => with(&args, |(i,): (u32,)| {
                lock(&self.pushed).push(i);
                Ok(())
            }),
            "counter_get" => Reply::ok(lock(&self.pushed).clone()),
            "sub" => match args.decode::<(String,)>() {
                Ok((name,)) => Reply::object(Sub { name }),
                Err(e) => Reply::err(e),
            },
            "whoami" => Reply::ok(self.name.clone()),
            "notify" => with(&args, |(k,): (u64,)| {
                let _ = self.notes.send(Note::Notify(k));
                Ok(())
            }),
            "expand" => with(&args, |(n,): (u32,)| {
                Ok(ByteBuf::from(vec![0x5a; n as usize]))
            }),
            "gated" => {
                let gate = self.gate.clone();
                Reply::later(async move {
                    match gate.acquire().await {
                        Ok(permit) => {
                            permit.forget();
                            Ok("opened".to_owned())
                        }
                        Err(_) => Err(Broken::failed("the gate was closed")),
                    }
                })
            }
            _ => Reply::unknown_method(method),
        }
    }
}

/// The object `sub(name)` returns: `name()` and `child(name)` (another `Sub`).
pub(crate) struct Sub {
    name: String,
}

impl Object for Sub {
    fn call(&self, method: &str, args: Args) -> Reply {
        match method {
            "name" => Reply::ok(self.name.clone()),
            "child" => match args.decode::<(String,)>() {
                Ok((name,)) => Reply::object(Sub { name }),
                Err(e) => Reply::err(e),
            },
            _ => Reply::unknown_method(method),
        }
    }
}

// ---- vats ----

/// A listening vat on 127.0.0.1 with one exported object: by default a
/// [`TestObject`] named "root", whose notes and gate the test can reach through this.
pub(crate) struct Server {
    pub(crate) vat: Vat,
    /// The sturdy ref of the exported object.
    pub(crate) uri: SturdyRef,
    /// The root [`TestObject`]'s notes and gate; `None` when the fixture exported an
    /// object of the test's own.
    probe: Option<Probe>,
}

/// What a test can see and steer of the root [`TestObject`].
struct Probe {
    notes: mpsc::UnboundedReceiver<Note>,
    gate: Arc<Semaphore>,
}

impl Server {
    /// The loopback address the server listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.vat.local_addr().expect("the server listens")
    }

    /// A sturdy ref to this server with a swiss number it never issued.
    pub(crate) fn unknown_ref(&self) -> SturdyRef {
        SturdyRef::new(
            self.vat.vat_id(),
            Host::Ipv4(Ipv4Addr::LOCALHOST),
            self.addr().port(),
            SwissNumber::generate(),
        )
    }

    /// The next note from the root [`TestObject`], bounded by [`IO_TIMEOUT`].
    pub(crate) async fn next_note(&mut self) -> Note {
        let probe = self
            .probe
            .as_mut()
            .expect("the server exports the test's own object, not a TestObject");
        tokio::time::timeout(IO_TIMEOUT, probe.notes.recv())
            .await
            .expect("no note from the test object within 10 s")
            .expect("the test object is gone")
    }

    /// Lets `calls` more `gated()` calls on the root [`TestObject`] answer.
    pub(crate) fn open_gate(&self, calls: usize) {
        self.probe
            .as_ref()
            .expect("the server exports the test's own object, not a TestObject")
            .gate
            .add_permits(calls);
    }
}

/// A server vat, a client vat, and the client's live reference to the server's object
/// (enlivened, so its fetch is under way; nothing has been awaited yet).
pub(crate) struct Connected {
    pub(crate) server: Server,
    pub(crate) client: Vat,
    /// The client's reference to the object under `server.uri`.
    pub(crate) obj: Ref,
}

impl Connected {
    /// Shuts the client down, then the server.
    pub(crate) async fn stop(self) {
        self.client.shutdown().await;
        self.server.vat.shutdown().await;
    }

    /// A raw connection to the server with a fresh identity (no hello exchanged yet).
    pub(crate) async fn raw(&self) -> RawConn {
        RawConn::connect(&self.server.vat).await
    }

    /// Checks that the client is served: `add(round, 1000)` on the root [`TestObject`]
    /// answers the sum.
    pub(crate) async fn assert_served(&self, round: i64) {
        let sum: i64 = self
            .obj
            .send("add", (round, 1_000))
            .await
            .expect("the well-behaved client is served");
        assert_eq!(sum, round + 1_000);
    }

    /// After another peer's session ended: the client is still served, and its session
    /// is the only one the server has.
    pub(crate) async fn assert_only_client_left(&self) {
        self.assert_served(2).await;
        self.assert_served(3).await;
        let stats = self.server.vat.stats().await;
        assert_eq!(stats.sessions.len(), 1, "{stats:?}");
        assert_eq!(stats.sessions[0].peer, self.client.vat_id());
    }
}

/// How to set up a [`Server`] (and, for [`Fixture::connect`], a client of it): limits
/// for either vat and the object to export. Starts nothing until `serve` or `connect`.
pub(crate) struct Fixture<O = TestObject> {
    server_limits: Limits,
    client_limits: Limits,
    /// `None`: a [`TestObject`] named "root".
    object: Option<O>,
}

/// A server exporting a [`TestObject`] and a client holding a reference to it, both
/// with default limits.
pub(crate) async fn connected() -> Connected {
    Fixture::new().connect().await
}

/// A server exporting a [`TestObject`], with default limits.
pub(crate) async fn start_server() -> Server {
    Fixture::new().serve().await
}

impl Fixture {
    /// Default limits on both sides, and a [`TestObject`] as the exported object.
    pub(crate) fn new() -> Fixture {
        Fixture {
            server_limits: Limits::default(),
            client_limits: Limits::default(),
            object: None,
        }
    }
}

impl<O: Object> Fixture<O> {
    /// Limits for the server vat (a test of a limit usually sets it here).
    pub(crate) fn server_limits(self, server_limits: Limits) -> Fixture<O> {
        Fixture {
            server_limits,
            ..self
        }
    }

    /// Limits for the client vat of [`Fixture::connect`] (`serve` starts no client).
    pub(crate) fn client_limits(self, client_limits: Limits) -> Fixture<O> {
        Fixture {
            client_limits,
            ..self
        }
    }

    /// Exports `object` instead of a [`TestObject`] (so the server has no notes or
    /// gate).
    pub(crate) fn object<P: Object>(self, object: P) -> Fixture<P> {
        Fixture {
            server_limits: self.server_limits,
            client_limits: self.client_limits,
            object: Some(object),
        }
    }

    /// Starts the listening server vat and exports the object.
    pub(crate) async fn serve(self) -> Server {
        let vat = Vat::builder()
            .listen("127.0.0.1:0")
            .limits(self.server_limits)
            .start()
            .await
            .expect("the server vat starts");
        let (uri, probe) = match self.object {
            Some(object) => (vat.export(object), None),
            None => {
                let (object, notes) = TestObject::new("root");
                let gate = object.gate();
                (vat.export(object), Some(Probe { notes, gate }))
            }
        };
        let uri = uri.expect("the server exports");
        Server { vat, uri, probe }
    }

    /// Starts the server, then a client vat, and enlivens the server's sturdy ref.
    pub(crate) async fn connect(self) -> Connected {
        let client_limits = self.client_limits.clone();
        let server = self.serve().await;
        let client = start_client_with(client_limits).await;
        let obj = client.enliven(&server.uri);
        Connected {
            server,
            client,
            obj,
        }
    }
}

/// A non-listening vat with a fresh identity (it can still pass its own objects by
/// reference).
pub(crate) async fn start_client() -> Vat {
    start_client_with(Limits::default()).await
}

/// Like [`start_client`], with `limits`.
pub(crate) async fn start_client_with(limits: Limits) -> Vat {
    Vat::builder()
        .limits(limits)
        .start()
        .await
        .expect("the client vat starts")
}

// ---- raw frames ----

/// One message as a frame (length prefix and CBOR body).
pub(crate) fn encode(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    msg.encode_frame(&mut out).expect("the message encodes");
    out
}

/// Raw bytes as one frame.
pub(crate) fn frame(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("a test frame fits a u32 length");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Any serde value as CBOR.
pub(crate) fn cbor<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    captp::internal::wire::encode_value(value).expect("the value encodes")
}

/// A payload of plain data.
pub(crate) fn data_payload<T: Serialize + ?Sized>(value: &T) -> Payload {
    Payload {
        data: cbor(value).into(),
        caps: Vec::new(),
    }
}

/// The `hello` a well-behaved peer sends first (the default limits, with a frame limit
/// of `RAW_MAX_FRAME`).
pub(crate) fn hello() -> Message {
    Message::Hello(Hello {
        max_frame: RAW_MAX_FRAME as u64,
        ..announce(&Limits::default())
    })
}

/// A `deliver` of `method(args)` to `target`, asking question `question` (or one-way).
pub(crate) fn deliver<T: Serialize + ?Sized>(
    target: Target,
    method: &str,
    args: &T,
    question: Option<u64>,
) -> Message {
    Message::Deliver {
        quiet: false,
        target,
        method: method.to_owned(),
        payload: data_payload(args),
        question,
    }
}

/// Decodes a result payload's data as `T`.
pub(crate) fn decode_data<T: DeserializeOwned>(payload: &Payload) -> T {
    captp::internal::wire::decode_value(&payload.data, &CborLimits::default())
        .expect("the payload data decodes")
}

/// One side of a TLS connection driven by hand: frames in, frames out.
pub(crate) struct RawConn {
    stream: TlsStream,
    buf: Vec<u8>,
    /// This client's vat ID, when it made its own identity.
    vat_id: Option<VatId>,
}

impl RawConn {
    pub(crate) fn new(stream: TlsStream) -> RawConn {
        RawConn {
            stream,
            buf: Vec::new(),
            vat_id: None,
        }
    }

    /// This client's vat ID (the identity it presented to the vat).
    pub(crate) fn vat_id(&self) -> VatId {
        self.vat_id
            .expect("a raw client made by `connect` knows its identity")
    }

    /// Connects to `server` over mutual TLS with a fresh identity.
    pub(crate) async fn connect(server: &Vat) -> RawConn {
        let addr = server.local_addr().expect("the server listens");
        RawConn::connect_to(addr, server.vat_id()).await
    }

    /// Connects to the vat `server_id` at `addr` over mutual TLS with a fresh identity.
    pub(crate) async fn connect_to(addr: SocketAddr, server_id: VatId) -> RawConn {
        RawConn::try_connect_to(addr, server_id)
            .await
            .expect("the raw client connects")
    }

    /// Like [`RawConn::connect_to`], but a refused or failed connection is an error
    /// (with the reason) instead of a panic.
    pub(crate) async fn try_connect_to(
        addr: SocketAddr,
        server_id: VatId,
    ) -> Result<RawConn, String> {
        let identity = Identity::generate().expect("an identity");
        let config = transport::tls::client_config(&identity, server_id).expect("a client config");
        let (stream, presented) = tokio::time::timeout(
            IO_TIMEOUT,
            transport::connect(&addr.to_string(), config, server_id, IO_TIMEOUT),
        )
        .await
        .map_err(|_| "connect did not finish within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
        assert_eq!(presented, server_id);
        let mut raw = RawConn::new(stream);
        raw.vat_id = Some(identity.vat_id());
        Ok(raw)
    }

    /// Writes `bytes` and flushes them (one TLS record per call).
    pub(crate) async fn write_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(IO_TIMEOUT, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        .expect("write did not finish within 10 s")
        .expect("the raw write succeeds");
    }

    /// Writes `bytes` and flushes them; an error (the vat closed the connection, say)
    /// or [`IO_TIMEOUT`] passing is returned, not a panic.
    pub(crate) async fn try_write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        tokio::time::timeout(IO_TIMEOUT, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }

    /// Sends a ping and expects its pong as the next message.
    pub(crate) async fn ping(&mut self, nonce: u64) {
        self.send(&Message::Ping { nonce }).await;
        match self.expect_message().await {
            Message::Pong { nonce: n } if n == nonce => {}
            other => panic!("expected the pong {nonce}, got {other:?}"),
        }
    }

    /// Calls `add(round, 1000)` on `export` as `question`, expects the sum, and finishes
    /// the question: a well-behaved client's round trip over a raw connection.
    pub(crate) async fn add(&mut self, export: u64, question: u64, round: i64) {
        self.send(&deliver(
            Target::Export(export),
            "add",
            &(round, 1_000i64),
            Some(question),
        ))
        .await;
        let payload = self.expect_return(question).await;
        assert_eq!(decode_data::<i64>(&payload), round + 1_000);
        self.send(&Message::Finish { question }).await;
    }

    /// Sends one message as a frame.
    pub(crate) async fn send(&mut self, msg: &Message) {
        self.write_raw(&encode(msg)).await;
    }

    /// Sends raw bytes as one frame body.
    pub(crate) async fn send_frame(&mut self, body: &[u8]) {
        self.write_raw(&frame(body)).await;
    }

    /// The next frame body, or `None` once the peer closed the connection (EOF or a
    /// TLS or I/O error). Panics if nothing happens within [`IO_TIMEOUT`].
    pub(crate) async fn read_frame(&mut self) -> Option<Vec<u8>> {
        tokio::time::timeout(IO_TIMEOUT, self.read_frame_unbounded())
            .await
            .expect("no frame and no close within 10 s")
    }

    async fn read_frame_unbounded(&mut self) -> Option<Vec<u8>> {
        let mut chunk = vec![0u8; 16 * 1024];
        for _ in 0..MAX_READS_PER_FRAME {
            if let Some(header) = self.buf.first_chunk::<4>() {
                let len = u32::from_be_bytes(*header) as usize;
                assert!(len <= RAW_MAX_FRAME, "the vat sent a {len}-byte frame");
                if self.buf.len() >= 4 + len {
                    let body = self.buf[4..4 + len].to_vec();
                    self.buf.drain(..4 + len);
                    return Some(body);
                }
            }
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    assert!(
                        self.buf.is_empty(),
                        "the connection closed inside a frame ({} bytes pending)",
                        self.buf.len()
                    );
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        panic!("no complete frame after {MAX_READS_PER_FRAME} reads");
    }

    /// The next message, or `None` once the connection closed. A listening vat's
    /// `listen` (its address, sent after its `hello`) is skipped: raw clients do not
    /// introduce anyone.
    pub(crate) async fn recv(&mut self) -> Option<Message> {
        for _ in 0..2 {
            let body = self.read_frame().await?;
            match Message::decode(&body, &CborLimits::default()) {
                Ok(Message::Listen { .. }) => continue,
                Ok(msg) => return Some(msg),
                Err(e) => panic!("the vat sent an invalid message: {e}"),
            }
        }
        panic!("two `listen` messages in a row")
    }

    /// The next message; panics if the connection closed.
    pub(crate) async fn expect_message(&mut self) -> Message {
        self.recv()
            .await
            .expect("the connection closed where a message was expected")
    }

    /// Expects the next message to answer `question` with a result; returns its payload.
    pub(crate) async fn expect_return(&mut self, question: u64) -> Payload {
        match self.expect_message().await {
            Message::Return {
                question: q,
                result: ReturnResult::Ok(payload),
            } if q == question => payload,
            other => panic!("expected the result of question {question}, got {other:?}"),
        }
    }

    /// Expects the next message to answer `question` with an error; returns it.
    pub(crate) async fn expect_broken(&mut self, question: u64) -> WireBroken {
        match self.expect_message().await {
            Message::Return {
                question: q,
                result: ReturnResult::Err(e),
            } if q == question => e,
            other => panic!("expected question {question} to break, got {other:?}"),
        }
    }

    /// Sends our `hello` and reads the vat's; returns the frame limit the vat announced.
    /// (The connecting side speaks first: a listening vat holds its `hello` until then.)
    pub(crate) async fn handshake(&mut self) -> u64 {
        self.send(&hello()).await;
        match self.expect_message().await {
            Message::Hello(Hello {
                version, max_frame, ..
            }) => {
                assert_eq!(version, PROTOCOL_VERSION);
                max_frame
            }
            other => panic!("expected hello first, got {other:?}"),
        }
    }

    /// The listening side's handshake: reads the client's `hello`, then sends ours.
    pub(crate) async fn handshake_as_server(&mut self) {
        match self.expect_message().await {
            Message::Hello(_) => {}
            other => panic!("expected the client's hello first, got {other:?}"),
        }
        self.send(&hello()).await;
    }

    /// Fetches the object under `swiss` as `question`, finishes the question, and
    /// returns the export id the vat gave it.
    pub(crate) async fn bootstrap(&mut self, question: u64, swiss: &SwissNumber) -> u64 {
        self.send(&Message::Bootstrap {
            question,
            swiss: swiss.clone(),
        })
        .await;
        let export = match self.expect_return(question).await.caps[..] {
            [CapDescriptor::SenderHosted(e)] => e,
            ref caps => panic!("expected one sender-hosted cap, got {caps:?}"),
        };
        self.send(&Message::Finish { question }).await;
        export
    }

    /// A well-behaved start: [`RawConn::handshake`], then [`RawConn::bootstrap`] of the
    /// object under `swiss` as question 1. Returns the export id the vat gave it.
    pub(crate) async fn hello_and_fetch(&mut self, swiss: &SwissNumber) -> u64 {
        self.handshake().await;
        self.bootstrap(1, swiss).await
    }

    /// Reads until an `abort` arrives (its reason) or the connection closes (`None`).
    pub(crate) async fn read_abort(&mut self) -> Option<String> {
        for _ in 0..MAX_FRAMES_BEFORE_ABORT {
            match self.recv().await? {
                Message::Abort { reason } => return Some(reason),
                _ => continue,
            }
        }
        panic!("no abort among {MAX_FRAMES_BEFORE_ABORT} frames");
    }

    /// Expects an `abort` followed by the end of the connection; returns the reason.
    pub(crate) async fn expect_abort(&mut self) -> String {
        let reason = self
            .read_abort()
            .await
            .expect("the vat closed the connection without an abort");
        self.expect_closed().await;
        reason
    }

    /// Expects the connection to be closed, with no further frame.
    pub(crate) async fn expect_closed(&mut self) {
        if let Some(body) = self.read_frame().await {
            panic!(
                "expected the connection to close, got a frame: {:?}",
                Message::decode(&body, &CborLimits::default())
            );
        }
    }
}

// ---- raw servers ----

/// A TLS server with a fresh identity on 127.0.0.1, for one connection: its vat ID,
/// its port, and the connection once a client has completed the handshake (the test
/// then speaks for the server, `hello` first: see [`RawConn::handshake_as_server`]).
pub(crate) async fn raw_server() -> (VatId, u16, JoinHandle<RawConn>) {
    let identity = Identity::generate().expect("an identity");
    let vat_id = identity.vat_id();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("a local address").port();
    let acceptor = TlsAcceptor::from(transport::tls::server_config(&identity).expect("a config"));
    let task = tokio::spawn(async move {
        let (tcp, _) = tokio::time::timeout(IO_TIMEOUT, listener.accept())
            .await
            .expect("no connection within 10 s")
            .expect("accept");
        let (stream, _peer) = transport::accept(tcp, &acceptor, IO_TIMEOUT)
            .await
            .expect("the TLS handshake completes");
        let mut raw = RawConn::new(stream);
        raw.vat_id = Some(vat_id);
        raw
    });
    (vat_id, port, task)
}

/// A TLS server with its own identity that completes the handshake, sends a valid
/// `hello`, and then reads everything and answers nothing.
pub(crate) struct SilentServer {
    pub(crate) vat_id: VatId,
    pub(crate) port: u16,
    /// Ends when the client closes the connection, with every message it sent.
    pub(crate) task: JoinHandle<Vec<Message>>,
}

pub(crate) async fn silent_server() -> SilentServer {
    let (vat_id, port, accepted) = raw_server().await;
    let task = tokio::spawn(async move {
        let mut conn = accepted.await.expect("the raw server accepted");
        conn.send(&hello()).await;
        let mut seen = Vec::new();
        for _ in 0..MAX_FRAMES_BEFORE_ABORT {
            match conn.recv().await {
                Some(msg) => seen.push(msg),
                None => return seen,
            }
        }
        panic!("the client sent more than {MAX_FRAMES_BEFORE_ABORT} messages");
    });
    SilentServer { vat_id, port, task }
}

/// Lets the network settle (each round is one real round trip on every session of
/// every vat: releases travel one hop per round) and checks that every table of every
/// session of every vat is empty. Bounded: fails after 20 rounds.
pub(crate) async fn drained(vats: &[&Vat]) {
    for _ in 0..20 {
        for vat in vats {
            vat.sync().await;
        }
        let mut empty = true;
        for vat in vats {
            empty &= vat
                .stats()
                .await
                .sessions
                .iter()
                .all(|s| s.tables == captp::Tables::default());
        }
        if empty {
            return;
        }
    }
    for vat in vats {
        eprintln!("{:?}", vat.stats().await);
    }
    panic!("tables did not drain");
}
